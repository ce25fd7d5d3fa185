"""The cron entry's second line of defence against a hung job: a job whose own
supervisor cannot end it is ended from outside.

Every job ends itself at its wall-clock limit (scripts/job.py: a supervisor forks the
worker and kills it at the limit; the worker ends both when the supervisor is stopped).
That leaves the moments when no part of the job can act: the job stopped (``kill
-STOP``) or hung before its supervisor forked, or its supervisor and worker stopped
together. Then Snakemake waits for it forever and the lane stalls. While a lane's
Snakemake runs, the cron entry looks at the jobs below it once a second: a job (the
top process of a ``python -m scripts.MODULE ... --time-limit N --output MARKER``) alive
`GRACE` seconds past its limit is killed with everything below it, and, unless the job
recorded its own end meanwhile, recorded as failed, "timed out after N s". Snakemake
sees the job fail and the lane goes on.

What to end is decided by `overdue` from what /proc shows (a pure function); `Watchdog`
only reads /proc, kills and records.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import os
import signal
import threading
from collections.abc import Iterable
from pathlib import Path

from scripts.job import record_timeout
from scripts.markers import read_failure

log = logging.getLogger("watchdog")
#: Seconds past a job's limit before the watchdog ends it: its supervisor acts at the
#: limit and its worker at the limit plus scripts.job.WORKER_GRACE; this only catches
#: what they could not.
GRACE = 10.0
#: Seconds between two looks.
INTERVAL = 1.0
_TICKS = os.sysconf("SC_CLK_TCK")


@dataclasses.dataclass(frozen=True)
class Process:
    """What /proc says of one process below the run."""

    pid: int
    parent: int
    argv: tuple[str, ...]
    age: float  # seconds since it started


@dataclasses.dataclass(frozen=True)
class OverdueJob:
    pid: int
    rule: str
    marker: str
    limit: float
    age: float


def job_of(argv: tuple[str, ...]) -> tuple[str, str, float] | None:
    """(rule, marker, limit) of a job's command line (``python -m scripts.MODULE ...
    --rule R --output M --time-limit N``); None for anything else (a shell running it
    holds the command in one argument, and so is not a job)."""
    module = argv[argv.index("-m") + 1:][:1] if "-m" in argv else ()
    if not module or not module[0].startswith("scripts."):
        return None
    options = {}
    for name in ("--rule", "--output", "--time-limit"):
        if name in argv[:-1]:
            options[name] = argv[argv.index(name) + 1]
    if len(options) != 3:
        return None
    try:
        limit = float(options["--time-limit"])
    except ValueError:
        return None
    return options["--rule"], options["--output"], limit


def overdue(processes: Iterable[Process], grace: float = GRACE) -> list[OverdueJob]:
    """The jobs among `processes` alive more than `grace` seconds past their limit. A
    job is the top process of its command line: its forked worker (same command line,
    its child) is not counted again."""
    processes = list(processes)
    by_pid = {p.pid: p for p in processes}
    found = []
    for process in processes:
        job = job_of(process.argv)
        if job is None:
            continue
        parent = by_pid.get(process.parent)
        if parent is not None and parent.argv == process.argv:
            continue  # the worker of a job already looked at
        rule, marker, limit = job
        if process.age > limit + grace:
            found.append(OverdueJob(process.pid, rule, marker, limit, process.age))
    return found


def _children(pid: int) -> list[int]:
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []
    found = []
    for task in tasks:
        try:
            found += [int(c) for c in Path(f"/proc/{pid}/task/{task}/children")
                      .read_text().split()]
        except OSError:
            continue
    return found


def _process(pid: int, uptime: float) -> Process | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        argv = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    started = int(fields[19]) / _TICKS
    return Process(pid, int(fields[1]),
                   tuple(a.decode(errors="replace") for a in argv.split(b"\0")[:-1]),
                   uptime - started)


def below(top: int) -> list[Process]:
    """Every process below `top` (not `top` itself), as /proc shows it now."""
    try:
        uptime = float(Path("/proc/uptime").read_text().split()[0])
    except OSError:
        return []
    found, todo = [], _children(top)
    while todo:
        pid = todo.pop()
        process = _process(pid, uptime)
        if process is not None:
            found.append(process)
            todo += _children(pid)
    return found


def end(job: OverdueJob) -> None:
    """Kill `job` and everything below it; record its timeout unless it recorded its
    own end since it started."""
    pids = [job.pid] + [p.pid for p in below(job.pid)]
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)  # ends a stopped process too
        except ProcessLookupError:
            continue
    started = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=job.age)
    record = read_failure(job.marker) or {}
    try:
        recorded = dt.datetime.fromisoformat(str(record.get("time", "")).replace("Z", "+00:00"))
    except ValueError:
        recorded = None
    log.error("%s (pid %d) ran %.0f s, past its limit of %.0f s, and did not end itself:"
              " ended by the cron entry", job.rule, job.pid, job.age, job.limit)
    if recorded is None or recorded.tzinfo is None or recorded < started - dt.timedelta(
            seconds=1):
        record_timeout(job.marker, job.rule, job.limit)


class Watchdog:
    """Ends overdue jobs below the process `top` (a lane's Snakemake) while in a
    ``with`` block."""

    def __init__(self, top: int, grace: float = GRACE, interval: float = INTERVAL):
        self.top, self.grace, self.interval = top, grace, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="job watchdog",
                                        daemon=True)
        self.ended: list[OverdueJob] = []

    def __enter__(self) -> Watchdog:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _watch(self) -> None:
        while not self._stop.wait(self.interval):
            for job in overdue(below(self.top), self.grace):
                if job.pid not in {j.pid for j in self.ended}:
                    self.ended.append(job)
                    end(job)
