"""Case 5: freshness. How long tonight's exposures wait, from publication to installed.

A local mountain publishes a new small exposure every `PERIOD` seconds for a window of
a few minutes while the data centre is busy with

  (a) a night's backup whose htar takes minutes (the HPSS emulator's ``HTAR_HANG``), or
  (b) a backlog of 3 nights × 100 exposures (the mountain was unreachable for days).

Cron is emulated by starting ``scripts/cron_entry.py CONFIG`` every N seconds (N = 10
and 60), without waiting for the previous one, as cron does. The latency of an
exposure is its ``.installed`` marker's mtime minus its link's mtime (when the
mountain published it). Each scenario runs with this workflow (lanes) and with the
single-lane design it replaces (commit ``SINGLE_LANE``, checked out in a git worktree
under bench/work), in the same run. For (b) the backlog's drain time (start to the
last backlog exposure installed) is compared with a backlog-only run (no fresh
exposures) of the same workflow.

With cron every 60 s, this workflow runs twice in the same run: as it ended each
invocation after its work (``cron_interval: 0``, the baseline) and with the exposure
lane watching tonight between cron starts (``cron_interval: 60``,
``remote.poll_interval: 5``: scripts/watch.py).

One probe by hand: ``python -m bench.freshness backup|backlog|backlog-only N
lanes|single|watch [WINDOW]``.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.common import (
    REPO,
    STREAM,
    WORK,
    BenchError,
    Row,
    base_config,
    remove_tree,
    verdict,
    write_config,
)
from scripts.mountain import make_exposure

ROOT = WORK / "freshness"
#: The single-lane design: main before lanes (#12), with `script:` jobs.
SINGLE_LANE = "a5dc7e1"
NOW = "2026-11-28T21:00:00Z"  # 20261127's backup due; 20261128 is tonight
TONIGHT = "20261128"
BACKUP_NIGHT = "20261127"
BACKLOG_NIGHTS = ("20261125", "20261126", "20261127")
PERIOD = 3.0  # seconds between two fresh exposures
FILES = {"desi-{e}.fits.fz": 4096, "guide-{e}.fits.fz": 2048, "sky-{e}.fits.fz": 1024}


@dataclass
class Outcome:
    """What one scenario measured."""

    latencies: list[float] = field(default_factory=list)  # s, one per fresh exposure
    missing: int = 0  # fresh exposures not installed when the scenario ended
    drained: float | None = None  # s from the start to the last backlog exposure installed
    wall: float = 0.0
    cron_runs: int = 0

    def quantile(self, q: float) -> float:
        if self.missing or not self.latencies:
            return float("inf")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def single_lane_checkout() -> Path:
    """A git worktree of the single-lane design (made once, removed by `clean`)."""
    where = ROOT / "single-lane"
    if not (where / "Snakefile").exists():
        where.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", "--force",
                        str(where), SINGLE_LANE], check=True, capture_output=True)
    return where


def exposure(mountain: Path, night: str, expid: str) -> None:
    files = {name.format(e=expid): os.urandom(size) for name, size in FILES.items()}
    make_exposure(mountain, night, expid, files)


class Scenario:
    """One site, one contender, one kind of pressure, one cron period."""

    def __init__(self, kind: str, period: int, contender: str, window: float,
                 hang: float, backlog: int):
        self.kind, self.period, self.contender = kind, period, contender
        self.window, self.hang, self.backlog = window, hang, backlog
        self.root = ROOT / f"{kind}-{period}s-{contender}"
        self.repo = single_lane_checkout() if contender == "single" else REPO
        self.mountain = self.root / "mountain"
        self.state = self.root / "state"
        self.fresh: list[str] = []
        self.env = {**os.environ, "HPSS_ROOT": str(self.root / "hpss")}

    def prepare(self) -> Path:
        remove_tree(self.root)
        self.root.mkdir(parents=True)
        config = base_config(self.root, self.mountain / "raw", NOW)
        config["kill_file"] = str(self.root / "stop")
        if self.repo == REPO:  # the watch between cron starts, or one pass as before
            config["cron_interval"] = self.period if self.contender == "watch" else 0
            config["remote"]["poll_interval"] = 5
        if self.kind == "backup":
            config["backup"] = {"backend": "htar", "hpss_status": "", "timeout": 3600,
                                "hpss_bin": str(REPO / "tests" / "hpss_emulator")}
            for n in range(5):  # a night already installed, its backup due
                exposure(self.mountain, BACKUP_NIGHT, f"{1000 + n:08d}")
            early = dict(config, now="2026-11-28T08:00:00Z")  # before catch-up and backup
            path = write_config(self.root / "early.yaml", early)
            self._cron(path).wait()
        else:
            for night in BACKLOG_NIGHTS:
                for n in range(self.backlog):
                    exposure(self.mountain, night, f"{int(night[-2:]) * 1000 + n:08d}")
        return write_config(self.root / "config.yaml", config)

    def _cron(self, config_file: Path) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, str(self.repo / "scripts" / "cron_entry.py"),
                                 str(config_file)], cwd=self.root, env=self.env,
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)

    def _publish(self, start: float, stop: threading.Event) -> None:
        n = 0
        while not stop.is_set() and time.monotonic() - start < self.window:
            expid = f"{90000 + n:08d}"
            exposure(self.mountain, TONIGHT, expid)
            self.fresh.append(expid)
            n += 1
            stop.wait(max(0.0, start + n * PERIOD - time.monotonic()))

    def installed(self, night: str, expid: str) -> Path:
        return self.state / STREAM / night / f"{expid}.installed"

    def _done(self) -> bool:
        fresh = all(self.installed(TONIGHT, e).exists() for e in self.fresh)
        if self.kind == "backup":
            return fresh
        backlog = self.state / STREAM
        return fresh and all(
            len(list((backlog / night).glob("*.installed"))) >= self.backlog
            for night in BACKLOG_NIGHTS)

    def run(self) -> Outcome:
        config = self.prepare()
        if self.kind == "backup":
            self.env.update(HTAR_HANG=str(self.hang), HPSS_FAIL_ONCE="1")
        outcome = Outcome()
        stop = threading.Event()
        start_wall, start = time.time(), time.monotonic()
        publisher = None
        if self.kind != "backlog-only":
            publisher = threading.Thread(target=self._publish, args=(start, stop))
            publisher.start()
        runs: list[subprocess.Popen] = []
        limit = self.window + 900
        tick = 0
        try:
            while time.monotonic() - start < limit:
                runs.append(self._cron(config))
                tick += 1
                # The next cron tick; finished early when everything is in.
                while time.monotonic() < start + tick * self.period:
                    publishing = publisher is not None and publisher.is_alive()
                    if not publishing and self._done():
                        break
                    time.sleep(0.2)
                else:
                    continue
                break
        finally:
            stop.set()
            if publisher:
                publisher.join()
            (self.root / "stop").touch()  # the watching invocations end with the scenario
            for run in runs:
                try:
                    run.wait(timeout=max(1.0, self.hang + 120))
                except subprocess.TimeoutExpired:
                    run.kill()
                    run.wait()
        outcome.wall = time.monotonic() - start
        outcome.cron_runs = len(runs)
        for expid in self.fresh:
            marker = self.installed(TONIGHT, expid)
            link = self.mountain / "raw" / TONIGHT / expid
            if marker.exists():
                outcome.latencies.append(marker.stat().st_mtime - link.lstat().st_mtime)
            else:
                outcome.missing += 1
        if self.kind != "backup":
            last = [p.stat().st_mtime for night in BACKLOG_NIGHTS
                    for p in (self.state / STREAM / night).glob("*.installed")]
            if len(last) >= 3 * self.backlog:
                outcome.drained = max(last) - start_wall
        return outcome

    def clean(self) -> None:
        remove_tree(self.root)


def describe(outcome: Outcome) -> str:
    if not outcome.latencies:
        return "no fresh exposure"
    missing = f", {outcome.missing} never installed" if outcome.missing else ""
    return (f"median {statistics.median(outcome.latencies):.1f} s, p95"
            f" {outcome.quantile(0.95):.1f} s, worst {max(outcome.latencies):.1f} s"
            f" over {len(outcome.latencies)} exposures{missing}")


def run(opts) -> tuple[list[Row], list[str]]:
    """The freshness case for every cron period; rows and notes for the report."""
    rows, notes = [], []
    window, hang, backlog = opts.fresh_window, opts.fresh_hang, opts.fresh_backlog
    for period in opts.fresh_periods:
        for kind in ("backup", "backlog"):
            results = {}
            contenders = ("single", "lanes") if period == 10 else ("lanes", "watch")
            for contender in contenders:
                scenario = Scenario(kind, period, contender, window, hang, backlog)
                print(f"  freshness {kind}, cron every {period} s, {contender}", flush=True)
                results[contender] = outcome = scenario.run()
                scenario.clean()
                pressure = (f"htar {hang:.0f} s" if kind == "backup"
                            else f"backlog {len(BACKLOG_NIGHTS)} × {backlog}")
                name = f"{pressure}, cron every {period} s: " + {
                    "single": "single-lane design (baseline)",
                    "lanes": "lanes" + (", one pass per cron start (baseline)"
                                        if period != 10 else ""),
                    "watch": "lanes, watching tonight between cron starts"}[contender]
                row = Row("5 freshness", f"{name}; p95 publication → installed (s)")
                row.walls = [outcome.quantile(0.95)]
                target = period + 10
                if contender != contenders[0]:
                    baseline = max(results[contenders[0]].quantile(0.95), 1e-9)
                    row.ratio = f"{outcome.quantile(0.95) / baseline:.2f}×"
                    if contender == "watch":
                        target = 15
                    if period == 10 or contender == "watch":
                        row.target = f"p95 ≤ {target} s"
                        row.met = verdict(outcome.quantile(0.95) <= target)
                rows.append(row)
                notes.append(f"Case 5 ({name}): {describe(outcome)}; {outcome.cron_runs} cron"
                             f" starts, {outcome.wall:.0f} s"
                             + (f"; backlog drained after {outcome.drained:.0f} s"
                                if outcome.drained is not None else
                                ("; backlog NOT drained" if kind == "backlog" else "")))
            if kind == "backlog":
                last = contenders[-1]
                only = Scenario("backlog-only", period, last, window, hang, backlog)
                print(f"  freshness backlog only, cron every {period} s, {last}", flush=True)
                alone = only.run()
                only.clean()
                with_fresh = results[last].drained
                row = Row("5 freshness", f"backlog {len(BACKLOG_NIGHTS)} × {backlog}, cron every"
                          f" {period} s: {last}, drain time with fresh data vs backlog only"
                          " (s)")
                row.walls = [with_fresh if with_fresh is not None else float("inf")]
                if alone.drained and with_fresh:
                    row.ratio = f"{with_fresh / alone.drained:.2f}×"
                if period == 10 or last == "watch":
                    row.target = "≤ 1.2× backlog only"
                    row.met = verdict(bool(alone.drained and with_fresh
                                           and with_fresh <= 1.2 * alone.drained))
                rows.append(row)
                first = contenders[0]
                notes.append(f"Case 5 (backlog only, cron every {period} s, {last}): drained"
                             f" after {alone.drained or float('inf'):.0f} s; {first} with"
                             " fresh data: " + (f"{results[first].drained:.0f} s"
                                                if results[first].drained else "not drained"))
    return rows, notes


def clean() -> None:
    where = ROOT / "single-lane"
    if where.exists():
        subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(where)],
                       capture_output=True)
    remove_tree(ROOT)


if __name__ == "__main__":
    kind, period, contender = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    window = float(sys.argv[4]) if len(sys.argv) > 4 else 60
    result = Scenario(kind, period, contender, window, hang=window, backlog=100).run()
    print(describe(result), f"drained {result.drained}", f"runs {result.cron_runs}")
    if result.missing:
        raise SystemExit(BenchError(f"{result.missing} fresh exposures never installed"))
