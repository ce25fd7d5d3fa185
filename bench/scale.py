"""Cases 1 and 2: a no-op run over an archive-scale state, and planning a busy night.

The state is what years of operation leave: NIGHTS nights × EXPOSURES exposures, each
with its ``.staged``, ``.checksummed`` and ``.installed`` markers, each night with its
``.caughtup`` and ``.backedup`` records (the latter listing the night's archive and
exposures, as ``scripts/backup.py`` writes them). The mountain publishes the last 30
nights, all done. The rule logs a real state also holds live in a separate tree
(``STATE/logs``) that no parse reads, and are not generated.

Case 2 adds one new night of 300 exposures to the listing and times ``snakemake -n``
at a moment when the new night's catch-up and backup are due too: the largest DAG one
night can make (3 × 300 exposure jobs + 2 night jobs).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import time
from pathlib import Path

from bench.common import (
    STREAM,
    WORK,
    BenchError,
    Row,
    base_config,
    empty_command,
    empty_snakefile,
    measure,
    remove_tree,
    snakemake_command,
    verdict,
    write_config,
)

ROOT = WORK / "scale"
LAST_NIGHT = dt.date(2026, 11, 27)
LISTED_NIGHTS = 30
# Past the backup hour (20 UTC) of the day after the last night: every listed night
# is due for catch-up and backup, and all are done.
NOOP_NOW = "2026-11-28T21:00:00Z"
NEW_NIGHT = "20261128"
BUSY_NOW = "2026-11-29T21:00:00Z"
FIRST_EXPID = 1_000_000


def nights(count: int) -> list[str]:
    return [(LAST_NIGHT - dt.timedelta(days=d)).strftime("%Y%m%d")
            for d in range(count - 1, -1, -1)]


def _write(path: str, record: dict) -> None:
    # Plain writes: fsync-ing 600,000 generated markers would only measure the disk.
    with open(path, "w") as f:
        json.dump(record, f, indent=1, sort_keys=True)
        f.write("\n")


def _make_nights(args: tuple[str, list[str], int, int]) -> int:
    """Write the markers of some nights (one worker's share); return the files made."""
    root, night_list, exposures, first = args
    state = Path(root) / "state" / STREAM
    archive = Path(root) / "archive"
    made = 0
    expid = first
    for night in night_list:
        directory = state / night
        directory.mkdir(parents=True, exist_ok=True)
        expids = [f"{expid + i:08d}" for i in range(exposures)]
        expid += exposures
        base = str(directory)
        when = {"time": f"{night[:4]}-{night[4:6]}-{night[6:]}T12:00:00Z", "attempt": 1,
                "bytes": 1_000_000_000, "duration": 10.0}
        for e in expids:
            _write(f"{base}/{e}.staged", {**when, "files": 6, "location": "staging",
                                          "outcome": "staged"})
            _write(f"{base}/{e}.checksummed", {**when, "files": 5, "location": "staging",
                                               "outcome": "verified"})
            _write(f"{base}/{e}.installed", {**when, "files": 6, "outcome": "installed",
                                             "path": f"{archive}/{night}/{e}",
                                             "verification": "verified"})
            made += 3
        name = f"desi_spectro_data_{night}.tar"
        _write(f"{state}/{night}.caughtup", {**when, "outcome": "no changes",
                                             "changed_files": [], "exposures": {}})
        _write(f"{state}/{night}.backedup", {
            **when, "outcome": "backed up", "held": [], "exposures": expids,
            "archives": [{"name": name, "path": f"desi/spectro/data/{name}",
                          "size": 100 * 10**9, "members": 700, "exposures": expids}]})
        made += 2
    return made


def make_state(root: Path, night_list: list[str], exposures: int) -> int:
    """Write the markers of `night_list`, all installed and backed up; return files made.

    Night i holds the exposures FIRST_EXPID + i × exposures, … (unique, increasing).
    """
    from concurrent.futures import ProcessPoolExecutor

    workers = max(1, os.cpu_count() or 1)
    step = -(-len(night_list) // workers)
    shares = [(str(root), night_list[i:i + step], exposures, FIRST_EXPID + i * exposures)
              for i in range(0, len(night_list), step)]
    (root / "state" / STREAM).mkdir(parents=True, exist_ok=True)
    with ProcessPoolExecutor(workers) as pool:
        return sum(pool.map(_make_nights, shares))


def publish(mountain: Path, night: str, expids: list[str]) -> None:
    """Links ``raw/NIGHT/EXPID`` → ``../../data/NIGHT/EXPID`` (tiny empty exposures)."""
    (mountain / "raw" / night).mkdir(parents=True, exist_ok=True)
    for e in expids:
        (mountain / "data" / night / e).mkdir(parents=True, exist_ok=True)
        link = mountain / "raw" / night / e
        if not link.is_symlink():
            link.symlink_to(Path("..", "..", "data", night, e))


def prepare(opts) -> dict:
    """Generate the state and both mountains (reused across runs when already there)."""
    all_nights = nights(opts.nights)
    stamp = ROOT / f".made-{opts.nights}x{opts.exposures}"
    if not stamp.exists():
        remove_tree(ROOT)
        start = time.perf_counter()
        made = make_state(ROOT, all_nights, opts.exposures)
        listed = all_nights[-LISTED_NIGHTS:]
        offset = FIRST_EXPID + (len(all_nights) - LISTED_NIGHTS) * opts.exposures
        for i, night in enumerate(listed):
            expids = [f"{offset + i * opts.exposures + k:08d}" for k in range(opts.exposures)]
            publish(ROOT / "mountain", night, expids)
            publish(ROOT / "busy-mountain", night, expids)
        new = FIRST_EXPID + len(all_nights) * opts.exposures
        publish(ROOT / "busy-mountain", NEW_NIGHT, [f"{new + k:08d}" for k in range(300)])
        stamp.write_text(f"{made} marker files\n")
        print(f"  generated {made:,} marker files in {time.perf_counter() - start:.0f} s",
              flush=True)
    noop = write_config(ROOT / "noop.yaml", base_config(
        ROOT, ROOT / "mountain" / "raw", NOOP_NOW, backend="tar"))
    busy = write_config(ROOT / "busy.yaml", base_config(
        ROOT, ROOT / "busy-mountain" / "raw", BUSY_NOW, backend="tar"))
    empty_snakefile(ROOT / "empty")
    return {"noop": noop, "busy": busy, "files": stamp.read_text().split()[0]}


def planned(dry_run_stdout: str) -> int:
    """The total job count of a ``snakemake -n`` run (its "Job stats" table)."""
    for line in dry_run_stdout.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == "total" and parts[1].isdigit():
            return int(parts[1])
    return 0


def run_noop(opts, data: dict) -> tuple[list[Row], list[str]]:
    """Case 1: a full run with nothing to do, against the empty Snakefile's run."""
    empty = Row("1 no-op", "empty Snakefile run (baseline)")
    ours = Row("1 no-op", f"workflow run, nothing to do ({opts.nights:,} nights × "
                          f"{opts.exposures} exp. in state, {LISTED_NIGHTS} listed)")
    workdir = ROOT / "noop-run"
    workdir.mkdir(exist_ok=True)
    # One warm-up each (page cache, .pyc), not counted.
    measure(empty_command(ROOT / "empty"))
    first = measure(snakemake_command(workdir, data["noop"]))
    ran = set(re.findall(r"^(?:local)?rule (\w+):", first.stderr, re.MULTILINE))
    if ran - {"all"}:
        raise BenchError(f"case 1: the no-op run ran {sorted(ran)}:\n{first.stderr[-2000:]}")
    for _ in range(opts.repeat):
        for row, command in ((empty, empty_command(ROOT / "empty")),
                             (ours, snakemake_command(workdir, data["noop"]))):
            sample = measure(command)
            row.walls.append(sample.wall)
            row.rss.append(sample.rss_mb)
    ratio = ours.wall / empty.wall
    ours.ratio = f"{ratio:.2f}×"
    ours.target = "≤ 1.25× and < 200 MB"
    ours.met = verdict(ratio <= 1.25 and ours.peak < 200)
    notes = [f"Case 1: the first run after the state was generated (not counted) took"
             f" {first.wall:.1f} s.",
             f"Case 1: the state holds {int(data['files']):,} marker files; backup backend"
             f" `tar` (nothing to write: every listed night has its `.backedup` record);"
             f" remote host `local` with `listing_cache: 0` (every run lists the mountain);"
             f" Snakemake's own floor is {empty.wall:.2f} s, the workflow adds"
             f" {ours.wall - empty.wall:+.2f} s."]
    return [empty, ours], notes


def run_busy(opts, data: dict) -> tuple[list[Row], list[str]]:
    """Case 2: ``snakemake -n`` with one new night of 300 exposures."""
    empty = Row("2 plan", "empty Snakefile `-n` (baseline)")
    ours = Row("2 plan", "workflow `-n`, one new night of 300 exposures")
    workdir = ROOT / "busy-run"
    workdir.mkdir(exist_ok=True)
    first = measure(snakemake_command(workdir, data["busy"], "-n"))
    jobs = planned(first.stdout)
    for _ in range(opts.repeat):
        for row, command in ((empty, empty_command(ROOT / "empty", "-n")),
                             (ours, snakemake_command(workdir, data["busy"], "-n"))):
            sample = measure(command)
            row.walls.append(sample.wall)
            row.rss.append(sample.rss_mb)
    ours.name += f" ({jobs} jobs)"
    ours.ratio = f"{ours.wall / empty.wall:.2f}×"
    ours.target = "< 5 s"
    ours.met = verdict(ours.wall < 5)
    per_job = (ours.wall - empty.wall) / max(jobs, 1) * 1000
    notes = [f"Case 2: `snakemake -n` plans {jobs} jobs (3 × 300 exposure jobs, the new"
             f" night's catch-up and backup, `all`); {per_job:.1f} ms per planned job"
             " above the empty dry run."]
    return [empty, ours], notes


def clean() -> None:
    remove_tree(ROOT)


if __name__ == "__main__":  # generate only, for profiling by hand
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--nights", type=int, default=2000)
    parser.add_argument("--exposures", type=int, default=100)
    print(prepare(parser.parse_args()))
    os.sync()
