"""Case 7: what writing the metrics file adds to a no-op run at archive scale.

The state of case 1 (NIGHTS nights × EXPOSURES exposures, every night done, 30 nights
listed). A run writes the metrics in its ``onsuccess`` handler, in the Snakemake
process, after the parse has imported Snakemake and the status code: each measurement
is a fresh interpreter in that condition that times, in-process, the import of
``scripts.metrics`` and `scripts.metrics.metrics_after_run` (the import of
``prometheus_client`` included, since the first call makes it). The first call after
the state was generated summarises every night (the cold run, reported in a note);
the later ones find every night in the cache, as every run after it does.
"""

from __future__ import annotations

import json
import subprocess
import sys

from bench import scale
from bench.common import REPO, BenchError, Row, median, verdict

TARGET_MS = 50

CHILD = f"""
import json, sys, time
sys.path.insert(0, {str(REPO)!r})
import snakemake.api  # noqa: F401 (a run's process has Snakemake imported)
from scripts.configuration import load_yaml, with_defaults
import scripts.status.report  # noqa: F401 (rules/status.smk imports it at parse)
config = with_defaults(load_yaml(sys.argv[1]))
start = time.perf_counter()
import scripts.metrics
if sys.argv[2] == "fill":  # the cold cache at once, not 5 s per run
    scripts.metrics.OLDER_READ_SECONDS = float("inf")
line = scripts.metrics.metrics_after_run(config)
print(json.dumps({{"ms": (time.perf_counter() - start) * 1000, "line": line}}))
"""


def write_once(config_file: str, fill: bool = False) -> tuple[float, str]:
    """One measurement: milliseconds to import and write, and the log line."""
    result = subprocess.run([sys.executable, "-c", CHILD, config_file,
                             "fill" if fill else "run"], capture_output=True,
                            text=True, cwd=REPO, timeout=3600)
    if result.returncode != 0:
        raise BenchError(f"case 7: the metrics writer failed:\n{result.stderr[-2000:]}")
    out = json.loads(result.stdout.splitlines()[-1])
    if not out["line"].startswith("Metrics written"):
        raise BenchError(f"case 7: {out['line']}")
    return out["ms"], out["line"]


def run(opts, data: dict) -> tuple[list[Row], list[str]]:
    """Case 7: cold (every night read) once, then warm (every night cached) `repeat` times."""
    _forget_cache()  # the first write reads every night: measured apart
    cold, _ = write_once(str(data["noop"]), fill=True)
    warm, line = [], ""
    for _ in range(opts.repeat):
        ms, line = write_once(str(data["noop"]))
        warm.append(ms)
    row = Row("7 metrics", f"metrics file written after a no-op run ({opts.nights:,} nights"
                           f" × {opts.exposures} exp. in state)")
    row.walls = [ms / 1000 for ms in warm]
    row.target = f"< {TARGET_MS} ms added"
    row.met = verdict(median(warm) < TARGET_MS)
    row.ratio = f"{median(warm):.0f} ms"
    notes = [f"Case 7: writing the metrics takes {median(warm):.0f} ms (median of"
             f" {len(warm)}: {', '.join(f'{ms:.0f}' for ms in warm)} ms), the import of"
             f" prometheus_client included; summarising every night of the state"
             f" into the empty cache took {cold / 1000:.1f} s (a run spends at most"
             f" 5 s of it, the next runs go on). {line}"]
    return [row], notes


def _forget_cache() -> None:
    for path in (scale.ROOT / "state" / ".metrics").glob("*.json"):
        path.unlink()
