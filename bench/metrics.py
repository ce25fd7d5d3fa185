"""Case 8: what writing the metrics file adds to a no-op run at archive scale.

The state of case 1 (NIGHTS nights × EXPOSURES exposures, every night done, 30
nights listed), after one real no-op run (its listing cache, its lanes' records). A
run writes the metrics in its ``onsuccess`` handler, in the Snakemake process, after
the parse has imported Snakemake and the status code: each measurement is a fresh
interpreter in that condition that times, in-process, the import of
``scripts.metrics`` and `scripts.metrics.metrics_after_run` (the import of
``prometheus_client`` included, since the first call makes it). The cache is filled
first, at once (its time is reported in a note; a run spends at most
``OLDER_READ_SECONDS`` on it), and each measurement finds every night in it, as
every run after the first few does.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from bench import scale
from bench.common import REPO, BenchError, Row, measure, median, snakemake_command, verdict

TARGET_MS = 50

CHILD = f"""
import json, sys, time
sys.path.insert(0, {str(REPO)!r})
import snakemake.api  # noqa: F401 (a run's process has Snakemake imported)
from scripts.configuration import load_yaml, with_defaults
import scripts.status.report  # noqa: F401 (rules/status.smk imports it at parse)
config = with_defaults(load_yaml(sys.argv[1]))
# The run's parse holds the listings it planned from (get_listings in rules/common.smk).
from scripts.remote import Listing
from scripts.state_layout import listing_cache_path
LISTINGS = {{}}
for name in config["streams"]:
    data = json.loads(listing_cache_path(config["state"], name).read_text())
    LISTINGS[name] = Listing([tuple(e) for e in data["exposures"]], data["malformed"],
                             data["locked"], data["lock_age"], data["published"])
start = time.perf_counter()
import prometheus_client  # noqa: F401 (the first write imports it: timed apart too)
imported = time.perf_counter()
import scripts.metrics
if sys.argv[2] == "fill":  # the cold cache at once, not 5 s per run
    scripts.metrics.OLDER_READ_SECONDS = float("inf")
listings = {{name: listing for name, listing in LISTINGS.items()}}
line = scripts.metrics.metrics_after_run(config, listings)
print(json.dumps({{"ms": (time.perf_counter() - start) * 1000, "line": line,
                  "import_ms": (imported - start) * 1000}}))
"""


def write_once(config_file: str, fill: bool = False) -> tuple[float, str, float]:
    """One measurement: milliseconds to import and write, the log line, and the
    milliseconds of it that import prometheus_client."""
    # A production interpreter keeps the modules' bytecode: compiled once, here too
    # (an environment that sets PYTHONDONTWRITEBYTECODE would time the compiler).
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    result = subprocess.run([sys.executable, "-c", CHILD, config_file,
                             "fill" if fill else "run"], capture_output=True,
                            text=True, cwd=REPO, timeout=3600, env=env)
    if result.returncode != 0:
        raise BenchError(f"case 8: the metrics writer failed:\n{result.stderr[-2000:]}")
    out = json.loads(result.stdout.splitlines()[-1])
    if not out["line"].startswith("Metrics written"):
        raise BenchError(f"case 8: {out['line']}")
    return out["ms"], out["line"], out["import_ms"]


def run(opts, data: dict) -> tuple[list[Row], list[str]]:
    """Case 8: cold (every night read) once, then warm (every night cached) `repeat` times."""
    cache = scale.ROOT / "state" / ".metrics"
    kept = opts.keep and any(cache.glob("*.nights.json"))
    # A real no-op run first: the listing cache (30 nights × 100 links) and the lanes'
    # records the metrics read are then those of a running installation (and case 8
    # run alone has a listing to read).
    workdir = scale.ROOT / "noop-run"
    workdir.mkdir(exist_ok=True)
    measure(snakemake_command(workdir, data["noop"]))
    if not (scale.ROOT / "state" / ".listing").is_dir():
        raise BenchError("case 8: the no-op run left no listing cache")
    if not kept:
        _forget_cache()  # the first write reads every night: measured apart
    cold, _, _ = write_once(str(data["noop"]), fill=True)
    write_once(str(data["noop"]))  # warm-up (bytecode), not counted
    warm, imports, line = [], [], ""
    for _ in range(opts.repeat):
        ms, line, imported = write_once(str(data["noop"]))
        warm.append(ms)
        imports.append(imported)
    row = Row("8 metrics", f"metrics file written after a no-op run ({opts.nights:,} nights"
                           f" × {opts.exposures} exp. in state)")
    row.walls = [ms / 1000 for ms in warm]
    row.target = f"< {TARGET_MS} ms added"
    row.met = verdict(median(warm) < TARGET_MS)
    row.ratio = f"{median(warm):.0f} ms"
    notes = [f"Case 8: writing the metrics takes {median(warm):.0f} ms (median of"
             f" {len(warm)}: {', '.join(f'{ms:.0f}' for ms in warm)} ms), the import of"
             f" prometheus_client ({median(imports):.0f} ms) included; "
             + (f"the cache was kept from an earlier --keep run ({cold:.0f} ms)." if kept
                else f"summarising every night of the state into the empty cache took"
                     f" {cold / 1000:.1f} s (a run spends at most 5 s of it, the next"
                     f" runs go on).") + f" {line}"]
    return [row], notes


def _forget_cache() -> None:
    for path in (scale.ROOT / "state" / ".metrics").glob("*.json"):
        path.unlink()
