#!/usr/bin/env python3
"""Fault soak: many cron runs, interleaved with seeded faults, invariants after each.

    .venv/bin/python tests/fault_soak.py --runs 200 --seed 1

A seeded random sequence of cron runs (``scripts/cron_entry.py CONFIG``, started as
cron starts it: a new process, its own process group, stdin from /dev/null) on a
temporary mountain + data centre, with faults between and during the runs:

* ``kill``: SIGKILL of the whole run's process group after a seeded random delay;
  whatever survives is *not* cleaned up: it is looked for, and reported (the soak is
  the child subreaper of its runs, so a survivor is re-parented to it, never lost
  to init: the soak looks only at its own descendants);
* ``flip``: one byte of an installed exposure's file flipped at the mountain (its
  checksum file unchanged): the archive must keep its verified bytes;
* ``update``: a legitimate update at the mountain (new bytes and a checksum file
  listing them);
* ``late_file``: a new file and an updated checksum file in an installed exposure;
* ``late_exposure``: a new exposure published in an older night;
* ``rm_night_markers``, ``rm_marker``, ``rm_state``: a night's marker directory, one
  random marker, or the whole state directory deleted;
* ``htar_fail``, ``htar_hang``, ``hsi_fail``: the HPSS emulator's failure injection
  for one run (htar failing in its several ways, htar hanging within
  ``backup.timeout``, hsi failing);
* ``hpss_down``: the (real, HTTP) status endpoint says "down" for one run;
* ``time``: the simulated clock (configuration key ``now``) advances, so that nights
  become due for catch-up and backup;
* ``planted_link``: a group member's symbolic link where the workflow writes: in
  STAGING (``.catch-up`` -> the archive DESTINATION, ``NIGHT`` or ``NIGHT/EXPID`` -> a
  sentinel directory outside), in the archive's workspace
  (``DESTINATION/.desitransfer/NIGHT-EXPID.incoming`` -> the sentinel) or in the state (a
  lane's lock file -> a sentinel file outside). Planted by the soak's own uid (the
  workflow's user): the directories the workflow makes are not writable by another uid
  here, so a second uid could plant nothing (tests/test_shared_site.py runs the
  two-uid cases). Removed again two runs later (a person cleaned up);
* ``bad_date``: the mountain publishes an exposure under an impossible night
  (``20261131/EXPID``, ``20260230/EXPID``...); it stays published to the end;
* ``stale_checksum_lock``: the mountain's checksum lock, three days old (older than
  ``remote.checksum_lock_max_age``); removed again three runs later;
* ``sigstop_job``: a running stage or backup job's process (its worker, or its
  supervisor, before or after it forked) is stopped (SIGSTOP) during the run; the job's
  wall-clock limit (``runtime_margin`` is small here) must end it;
* ``kill_cron``: SIGKILL of the cron entry and its Snakemake processes (not the process
  group) while a job runs.

After every run, killed or not, the invariants are checked (`Soak.check`):

* every installed file has the bytes its exposure's installed checksum file names, and
  that checksum file is one the mountain published for the exposure (the soak keeps
  every published version); nothing is missing, nothing extra;
* a night directory holds exposure directories only (no ``.X.installing``, no rsync
  temporary); files are 0o440, directories 0o2750 or 0o2550;
* an ``.installed`` marker has its exposure in the destination; every exposure a backup
  record names is in the archive it names, read from the tar on tape (and the .idx is
  there); an archive on tape, once complete, never changes;
* ``python -m scripts.audit --config CONFIG`` exits 0 (skipped, and said so, while
  scripts/audit.py does not exist);
* nothing of a run is alive once the next run has started (see `check_lingering`);
* nothing outside the soak's staging and state is written or deleted through a planted
  link: a sentinel directory outside is unchanged after every run;
* never two htar processes of the same archive at once (looked for while a run goes);
* while a stale checksum lock stands, ``python -m scripts.status --failures`` names it;
* a stopped job is ended by its wall-clock limit: the run ends within the job's limit
  plus a grace, and a failure record says "timed out after N s".

After a final quiet phase (no faults, the clock past the last night's backup hour)
every published exposure must be installed, every night caught up and backed up, with
nobody intervening, and the last run must succeed. On the first broken
invariant the seed, the run and the fault sequence so far are printed and the exit
status is 1 (``--keep-going`` reports every new problem and carries on). A summary
table ends every soak. ``tests/test_fault_soak.py`` runs a short version in
``make test``; ``make soak`` the full one.
"""

from __future__ import annotations

import argparse
import collections
import ctypes
import dataclasses
import datetime as dt
import hashlib
import json
import os
import random
import re
import shutil
import signal
import stat
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

from conftest import STREAM, Site, StatusServer  # noqa: E402
from processes import children  # noqa: E402

#: Every fault kind; the short version (tests/test_fault_soak.py) exercises each.
FAULTS = ("kill", "flip", "update", "late_file", "late_exposure", "rm_night_markers",
          "rm_marker", "rm_state", "htar_fail", "htar_hang", "hsi_fail", "hpss_down", "time",
          "planted_link", "bad_date", "stale_checksum_lock", "sigstop_job", "kill_cron")
#: Faults that act on the HPSS side of one run: at most one of them per run.
HPSS_FAULTS = ("htar_fail", "htar_hang", "hsi_fail", "hpss_down")
#: Weights of the faults drawn at random beside the coverage queue.
WEIGHTS = {"kill": 0.0, "flip": 1.0, "update": 1.0, "late_file": 1.0, "late_exposure": 1.0,
           "rm_night_markers": 0.6, "rm_marker": 1.0, "rm_state": 0.3, "htar_fail": 1.0,
           "htar_hang": 0.8, "hsi_fail": 0.8, "hpss_down": 0.8, "time": 0.0,
           "planted_link": 0.5, "bad_date": 0.2, "stale_checksum_lock": 0.15,
           "sigstop_job": 0.3, "kill_cron": 0.3}
#: Faults that act on a run's processes while it goes: at most one of them per run.
RUN_FAULTS = ("kill", "sigstop_job", "kill_cron")
#: Impossible nights the mountain may publish under (``bad_date``).
BAD_NIGHTS = ("20261131", "20260230", "20261132", "20261100", "20261301", "20260931")
#: The wall-clock margin of every job (configuration key ``runtime_margin``), seconds.
RUNTIME_MARGIN = 3
#: A stopped job's run may take this much longer than the job's limit to end.
STOP_GRACE = 30
#: Runs after which a planted link, a stale checksum lock is removed (a person acted).
PLANTED_RUNS = 2
LOCK_RUNS = 3
#: Three days: older than any sensible ``remote.checksum_lock_max_age``.
STALE_LOCK_AGE = 3 * 86400
#: A job of these modules is stopped by ``sigstop_job`` (their limits are short here).
JOB_RE = re.compile(r"-m scripts\.(stage|backup)\b")
ANY_JOB_RE = re.compile(r"-m scripts\.(stage|verify|install|catch_up|backup)\b")
HTAR_RE = re.compile(r"htar .*-c\S*f (\S+)")
KILL_PROBABILITY = 0.3
TIME_PROBABILITY = 0.65
NEW_EXPOSURE_PROBABILITY = 0.6
#: The simulated clock starts during night 20261119 (a night ends at 14 UTC).
START = dt.datetime(2026, 11, 20, 11, 0, tzinfo=dt.UTC)
CATCHUP_HOUR = 14
BACKUP_HOUR = 20
LOOKBACK_NIGHTS = 30
#: Late exposures go only into nights this recent (well inside the look-back window).
LATE_WINDOW_NIGHTS = 20
BACKUP_TIMEOUT = 8
HTAR_HANG_MAX = 3.0
TRANSFER_TIMEOUT = 20
#: A run that takes longer than this is a hung run: an invariant failure.
RUN_LIMIT = 240
HPSS_DIR = "desi/spectro/data"
NIGHT_RE = re.compile(r"[0-9]{8}")
FILE_MODE = 0o440
DIR_MODES = (0o2750, 0o2550)
MARKER_RE = re.compile(r"\.(staged|checksummed|installed|caughtup|backedup(\.[0-9]+)?)$")
SOAK_RUN = "FAULT_SOAK_RUN"
INJECTION_VARS = ("HSI_FAIL", "HSI_HANG", "HTAR_HANG", "HTAR_FAIL_EXIT", "HTAR_FAIL_NOIDX",
                  "HTAR_NO_IDX", "HTAR_STDERR", "HTAR_CORRUPT", "HPSS_FAIL_ONCE")
PF_EXITING = 0x4
#: prctl option: orphaned descendants are re-parented to this process, not to init.
PR_SET_CHILD_SUBREAPER = 36
#: The ways htar fails (the emulator's injection variables for one run).
HTAR_FAILURES = {
    "exit70": {"HTAR_FAIL_EXIT": "70"},                            # HTAR SUCCESSFUL, then 70
    "exit70-noidx": {"HTAR_FAIL_EXIT": "70", "HTAR_FAIL_NOIDX": "1"},  # and no .idx
    "corrupt": {"HTAR_CORRUPT": "1"},                              # CRC check fails, exit 1
    "noidx": {"HTAR_NO_IDX": "1", "HTAR_STDERR": "HPSS connection reset"},  # exit 0, no .idx
}
#: DESTINATION entries with this prefix are the workflow's workspace, not nights.
WORKSPACE = ".desitransfer"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def checksum_text(listed: dict[str, str]) -> str:
    """A ``sha256sum`` file (text mode, two spaces) for `listed` (name -> hash)."""
    return "".join(f"{digest}  {name}\n" for name, digest in listed.items())


def parse_checksum(text: str) -> dict[str, str] | None:
    """name -> hash of a checksum file this soak wrote; None if it is not one."""
    listed = {}
    for line in text.splitlines():
        digest, sep, name = line.partition("  ")
        if not sep or len(digest) != 64:
            return None
        listed[name] = digest
    return listed


def night_of(now: dt.datetime) -> str:
    """The night an exposure taken at `now` belongs to (a night ends at 14 UTC)."""
    return (now - dt.timedelta(hours=CATCHUP_HOUR)).strftime("%Y%m%d")


def due(night: str, now: dt.datetime, hour: int) -> bool:
    start = dt.datetime.strptime(night, "%Y%m%d").replace(tzinfo=dt.UTC)
    return now >= start + dt.timedelta(days=1, hours=hour)


def iso(when: dt.datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


# --------------------------------------------------------------------------- mountain


@dataclasses.dataclass
class Exposure:
    """One exposure at the mountain, and every version of it that was published."""

    night: str
    expid: str
    listed: dict[str, str]                      # what the checksum file says now
    versions: list[str] = dataclasses.field(default_factory=list)  # checksum texts
    flipped: int = 0                            # bytes flipped at the mountain

    @property
    def checksum_name(self) -> str:
        return f"checksum-{self.expid}.sha256sum"


class Mountain:
    """The synthetic mountain (``ROOT/data/NIGHT/EXPID``, links in ``ROOT/raw``) and a
    model of everything it ever published. Written here, not with scripts/mountain.py:
    the adversary does not share code with what it tests."""

    def __init__(self, root: Path, rng: random.Random):
        self.root = root
        self.rng = rng
        self.exposures: dict[tuple[str, str], Exposure] = {}
        self.next_expid = 100000

    def data(self, exposure: Exposure) -> Path:
        return self.root / "data" / exposure.night / exposure.expid

    def random_bytes(self) -> bytes:
        return self.rng.randbytes(self.rng.randint(256, 6000))

    def publish_new(self, night: str) -> Exposure:
        expid = f"{self.next_expid:08d}"
        self.next_expid += 1
        exposure = Exposure(night, expid, {})
        data = self.data(exposure)
        data.mkdir(parents=True)
        names = [f"desi-{expid}.fits.fz", f"guide-{expid}.fits.fz"]
        if self.rng.random() < 0.5:
            names.append(f"sky-{expid}.fits.fz")
        for name in names:
            content = self.random_bytes()
            (data / name).write_bytes(content)
            exposure.listed[name] = sha256(content)
        self.write_checksum(exposure)
        link = self.root / "raw" / night / expid
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(Path("..", "..", "data", night, expid))
        self.exposures[(night, expid)] = exposure
        return exposure

    def write_checksum(self, exposure: Exposure) -> None:
        text = checksum_text(exposure.listed)
        (self.data(exposure) / exposure.checksum_name).write_text(text)
        if text not in exposure.versions:
            exposure.versions.append(text)

    def flip(self, exposure: Exposure) -> str:
        """Flip one byte of a data file; the checksum file stays as it is."""
        name = self.rng.choice(sorted(exposure.listed))
        path = self.data(exposure) / name
        content = bytearray(path.read_bytes())
        offset = self.rng.randrange(len(content))
        content[offset] ^= 1 << self.rng.randrange(8)
        path.write_bytes(bytes(content))
        exposure.flipped += 1
        return f"{name} byte {offset}"

    def update(self, exposure: Exposure) -> str:
        """New bytes for some files, and a checksum file listing them."""
        names = sorted(exposure.listed)
        chosen = self.rng.sample(names, self.rng.randint(1, len(names)))
        for name in chosen:
            content = self.random_bytes()
            (self.data(exposure) / name).write_bytes(content)
            exposure.listed[name] = sha256(content)
        self.write_checksum(exposure)
        return ", ".join(sorted(chosen))

    def late_file(self, exposure: Exposure) -> str:
        name = f"late-{exposure.expid}-{len(exposure.versions)}.json"
        content = json.dumps({"late": True, "noise": self.rng.random()}).encode()
        (self.data(exposure) / name).write_bytes(content)
        exposure.listed[name] = sha256(content)
        self.write_checksum(exposure)
        return name

    def nights(self) -> list[str]:
        return sorted({night for night, _ in self.exposures})


# --------------------------------------------------------------------------- processes


@dataclasses.dataclass(frozen=True)
class Proc:
    pid: int
    start: str        # /proc/PID/stat starttime: with pid, the process's identity
    pgid: int
    run: int | None   # the soak run whose environment (or parent's) it carries
    dying: bool       # exiting, or SIGKILL pending: it is on its way out
    command: str

    def __str__(self) -> str:
        origin = f"run {self.run}" if self.run is not None else "untagged"
        return f"pid {self.pid} (pgid {self.pgid}, {origin}): {self.command[:200]}"


def parent_of(pid: int) -> int | None:
    try:
        return int(Path("/proc", str(pid), "stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def kill_pending(proc: Path) -> bool:
    """Whether SIGKILL is pending for the process (thread or process-wide)."""
    try:
        status = (proc / "status").read_text()
    except OSError:
        return True  # gone
    masks = [int(line.split()[1], 16) for line in status.splitlines()
             if line.startswith(("SigPnd:", "ShdPnd:"))]
    return any(mask & (1 << (signal.SIGKILL - 1)) for mask in masks)


def become_subreaper() -> None:
    """Make this process the child subreaper of everything it starts: a process whose
    parent dies (a run killed with SIGKILL) is re-parented to it, so that whatever a
    run leaves behind stays among this process's descendants. It must then reap
    them (`reap`)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"prctl(PR_SET_CHILD_SUBREAPER): {os.strerror(errno)}")


def reap(spare: set[int]) -> None:
    """Collect this process's children that have ended (re-parented orphans), but for
    those in `spare`, whose ends are collected by whoever started them."""
    for pid in children(os.getpid()):
        if pid not in spare:
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                continue


def soak_processes(spare: set[int]) -> list[Proc]:
    """Live processes of this soak's runs: its descendants (it is their subreaper,
    see `become_subreaper`) but for its children in `spare` and what is below them.

    Only their own /proc entries are read. A process belongs to the run whose number
    its environment carries; without one, to its parent's run.
    """
    me = os.getpid()
    found = []
    todo: list[tuple[int, int, int | None]] = [
        (pid, me, None) for pid in children(me) if pid not in spare]
    while todo:
        pid, parent, parent_run = todo.pop()
        base = Path("/proc", str(pid))
        try:
            stat_fields = (base / "stat").read_text().rsplit(")", 1)[1].split()
            if int(stat_fields[1]) not in (parent, me):  # (orphaned meanwhile: me)
                continue  # ended, and its pid is another process's now
            cmdline = (base / "cmdline").read_bytes().replace(b"\0", b" ").decode(
                errors="replace").strip()
        except OSError:
            continue  # ended and reaped
        try:
            environ = (base / "environ").read_bytes().split(b"\0")
        except OSError:
            environ = []  # not readable (not dumpable): the parent's run
        run = parent_run
        for item in environ:
            if item.startswith(f"{SOAK_RUN}=".encode()):
                run = int(item.split(b"=", 1)[1])
        todo += [(child, pid, run) for child in children(pid)]
        state, pgid, flags, start = stat_fields[0], stat_fields[2], stat_fields[6], \
            stat_fields[19]
        if state in ("Z", "X"):
            continue  # ended, not yet reaped
        found.append(Proc(pid, start, int(pgid), run,
                          bool(int(flags) & PF_EXITING) or kill_pending(base), cmdline))
    return found


# --------------------------------------------------------------------------- the soak


class InvariantFailure(Exception):
    pass


@dataclasses.dataclass
class RunResult:
    number: int
    returncode: int | None
    killed: bool
    seconds: float
    stderr: str


class Soak:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.rng = random.Random(args.seed)
        parent = Path(args.workdir) if args.workdir else None
        if parent:
            parent.mkdir(parents=True, exist_ok=True)
        self.root = Path(tempfile.mkdtemp(prefix=f"fault-soak-{args.seed}-", dir=parent))
        self.site = Site(self.root)
        self.mountain = Mountain(self.site.mountain, self.rng)
        self.status = StatusServer()
        self.tape = self.root / "hpss"
        self.stream_state = self.site.state / STREAM
        self.runs_dir = self.root / "runs"
        self.runs_dir.mkdir()
        # Whatever a run leaves behind is re-parented to the soak; the soak's own
        # helpers started so far (none but threads today) are not runs.
        become_subreaper()
        self.helpers = set(children(os.getpid()))
        self.now = START
        self.enabled = set(args.faults)
        self.cover = self.coverage_queue()
        self.sequence: list[str] = []
        self.injected: collections.Counter = collections.Counter()
        self.effective: collections.Counter = collections.Counter()
        self.events: collections.Counter = collections.Counter()
        self.problems_seen: set[str] = set()
        self.failures: list[dict] = []
        self.lingering: list[Proc] = []
        self.deferred: set[tuple[int, str]] = set()
        self.last_pgid = 0
        self.notes: list[str] = []
        self.pending_problems: list[str] = []
        self.tar_cache: dict[tuple, dict] = {}
        self.tape_seen: dict[str, tuple[tuple, str]] = {}
        self.audit = (REPO / "scripts" / "audit.py").is_file() and not args.no_audit
        self.audit_note = ("ran after every run" if self.audit else
                           "SKIPPED (scripts/audit.py does not exist)" if not args.no_audit
                           else "skipped (--no-audit)")
        self.run_seconds: list[float] = []
        self.killed_runs = 0
        self.failed_runs = 0
        self.checks = 0
        self.check_seconds = self.audit_seconds = 0.0
        # What a group member's links point at: must never change.
        self.sentinel = self.root / "outside"
        (self.sentinel / "private").mkdir(parents=True)
        (self.sentinel / "private" / "key").write_bytes(b"not for the archive\n")
        (self.sentinel / "notes.txt").write_bytes(b"a group member's file\n")
        self.sentinel_seen = snapshot(self.sentinel)
        self.planted: list[tuple[int, Path]] = []     # (run planted, link)
        self.bad_links: list[Path] = []
        self.lock_planted: int | None = None
        self.stop: dict | None = None                 # what sigstop_job stopped
        self.configure()

    def coverage_queue(self) -> list[str]:
        """Every enabled kind once, in a seeded order, except that the HPSS faults come
        in the order that keeps a due backup pending for the next one (down, hsi, htar
        failing, then htar hanging, which lets the backup succeed)."""
        queue = [k for k in self.rng.sample(FAULTS, len(FAULTS)) if k in self.enabled]
        hpss = iter(["hpss_down", "hsi_fail", "htar_fail", "htar_hang"])
        return [next(k for k in hpss if k in self.enabled) if kind in HPSS_FAULTS else kind
                for kind in queue]

    # ----------------------------------------------------------------- set-up

    def configure(self) -> None:
        config = self.site.config
        config.update({
            "now": iso(self.now), "lookback_nights": LOOKBACK_NIGHTS,
            "catchup_hour": CATCHUP_HOUR, "backup_hour": BACKUP_HOUR,
            "kill_file": str(self.root / "stop_desi_transfer"),
            "logs": str(self.root / "logs"),
        })
        config["remote"].update(timeout=10, transfer_timeout=TRANSFER_TIMEOUT)
        config["runtime_margin"] = RUNTIME_MARGIN
        config["verify"] = {"max_attempts": 3, "on_failure": "hold", "threads": 1}
        config["backup"] = {
            "backend": "htar", "hpss_bin": str(HERE / "hpss_emulator"),
            "hpss_status": self.status.url, "status_timeout": 3, "timeout": BACKUP_TIMEOUT,
        }
        self.site.write_config()

    def base_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in INJECTION_VARS
               and k != SOAK_RUN}
        env["HPSS_ROOT"] = str(self.tape)
        return env

    # ----------------------------------------------------------------- what is where

    def installed_exposures(self) -> list[Exposure]:
        return [e for e in self.mountain.exposures.values()
                if (self.site.destination / e.night / e.expid).is_dir()]

    def backup_pending(self, now: dt.datetime) -> bool:
        """Whether a backup (first or supplementary) is due and not done at `now`."""
        for night in self.mountain.nights():
            if not due(night, now, BACKUP_HOUR):
                continue
            record = read_json(self.stream_state / f"{night}.backedup")
            if record is None:
                return True
            archived = {e for a in record.get("archives", []) for e in a.get("exposures", [])}
            if any(e not in archived for n, e in self.mountain.exposures if n == night):
                return True
        return False

    def markers(self) -> list[Path]:
        if not self.stream_state.is_dir():
            return []
        return sorted(p for p in self.stream_state.rglob("*")
                      if p.is_file() and MARKER_RE.search(p.name))

    # ----------------------------------------------------------------- faults

    def eligible(self, kind: str, now: dt.datetime) -> bool:
        if kind in ("flip", "update", "late_file"):
            return bool(self.installed_exposures())
        if kind == "late_exposure":
            return bool(self.late_nights(now))
        if kind == "rm_night_markers":
            return self.stream_state.is_dir() and any(
                p.is_dir() for p in self.stream_state.iterdir())
        if kind == "rm_marker":
            return bool(self.markers())
        if kind == "rm_state":
            return self.site.state.is_dir()
        if kind in HPSS_FAULTS:
            return self.backup_pending(now)
        if kind == "stale_checksum_lock":
            return self.lock_planted is None
        if kind in ("sigstop_job", "kill_cron"):
            # a job must run: an exposure to stage (no checksum lock holding it back) or
            # a backup due
            return self.lock_planted is None and (
                len(self.installed_exposures()) < len(self.mountain.exposures)
                or self.backup_pending(now))
        return True

    @staticmethod
    def clash(kind: str, kinds: list[str]) -> bool:
        """Whether `kind` may not join `kinds` in one run: one HPSS fault and one fault
        on the run's processes per run; a new stale checksum lock would keep the job that
        a process fault waits for from starting."""
        return kind in kinds or any(kind in group and set(kinds) & set(group) for group in (
            HPSS_FAULTS, RUN_FAULTS, ("stale_checksum_lock", "sigstop_job", "kill_cron")))

    def late_nights(self, now: dt.datetime) -> list[str]:
        current = night_of(now)
        oldest = (now - dt.timedelta(days=LATE_WINDOW_NIGHTS)).strftime("%Y%m%d")
        return [n for n in self.mountain.nights() if oldest <= n < current]

    def plan(self) -> list[str]:
        """The faults of the next run: up to two from the coverage queue (the first whose
        preconditions hold), and a few drawn at random; at most one HPSS fault."""
        kinds: list[str] = []
        self.step = dt.timedelta(0)
        covering = bool(self.cover)
        if "time" in self.enabled and (self.rng.random() < TIME_PROBABILITY
                                       or "time" in self.cover[:2]):
            kinds.append("time")
            self.step = dt.timedelta(minutes=self.rng.randint(90, 300))
        if "kill" in self.enabled and self.rng.random() < KILL_PROBABILITY:
            kinds.append("kill")
        later = self.now + self.step
        for kind in list(self.cover):
            if len(kinds) - kinds.count("time") >= 2:
                break
            if not self.eligible(kind, later) or self.clash(kind, kinds):
                continue
            kinds.append(kind)
        population = [k for k in WEIGHTS if k in self.enabled and WEIGHTS[k] > 0
                      and not (k in HPSS_FAULTS and set(self.cover) & set(HPSS_FAULTS))]
        for _ in range(self.rng.choice((0, 1, 1, 2)) if population else 0):
            kind = self.rng.choices(population, [WEIGHTS[k] for k in population])[0]
            if not self.clash(kind, kinds):
                kinds.append(kind)
        if covering and set(kinds) & set(HPSS_FAULTS):
            # while covering, an HPSS fault must meet its backup
            kinds = [k for k in kinds if k not in ("kill", "kill_cron")]
        return kinds

    def apply(self, run: int, kinds: list[str]) -> tuple[dict[str, str], float | None, list]:
        """Apply the faults before run `run`; return the run's injected environment, the
        kill delay, and what to measure to tell whether the HPSS faults took effect."""
        env: dict[str, str] = {}
        kill_after = None
        hpss: list[str] = []
        self.during = next((k for k in kinds if k in ("sigstop_job", "kill_cron")), None)
        # The clock first: the other faults' preconditions look at it.
        if "time" in kinds:
            self.now += self.step
            self.note(run, "time", f"now {iso(self.now)} (+{self.step})")
        for kind in kinds:
            detail = None
            if kind == "time":
                continue
            if kind == "kill":
                # The first kill lands early, surely while the run is going.
                kill_after = round(self.rng.uniform(0.5, 2.5) if "kill" in self.cover
                                   else self.rng.uniform(0.3, 5.0), 2)
                detail = f"SIGKILL of the run's process group after {kill_after} s"
            elif not self.eligible(kind, self.now):
                continue
            elif kind in ("flip", "update", "late_file"):
                exposure = self.rng.choice(self.installed_exposures())
                what = getattr(self.mountain, kind)(exposure)
                detail = f"{exposure.night}/{exposure.expid}: {what}"
            elif kind == "late_exposure":
                night = self.rng.choice(self.late_nights(self.now))
                exposure = self.mountain.publish_new(night)
                detail = f"{night}/{exposure.expid} published"
            elif kind == "rm_night_markers":
                nights = sorted(p for p in self.stream_state.iterdir() if p.is_dir())
                victim = self.rng.choice(nights)
                shutil.rmtree(victim)
                detail = f"rm -r {victim.relative_to(self.root)}"
            elif kind == "rm_marker":
                victim = self.rng.choice(self.markers())
                victim.unlink()
                detail = f"rm {victim.relative_to(self.root)}"
            elif kind == "rm_state":
                shutil.rmtree(self.site.state)
                detail = f"rm -r {self.site.state.relative_to(self.root)}"
            elif kind == "htar_fail":
                how = self.rng.choice(sorted(HTAR_FAILURES))
                env.update(HTAR_FAILURES[how])
                detail = how
            elif kind == "htar_hang":
                seconds = round(self.rng.uniform(0.5, HTAR_HANG_MAX), 2)
                env["HTAR_HANG"] = str(seconds)
                detail = f"htar hangs {seconds} s (timeout {BACKUP_TIMEOUT} s)"
            elif kind == "hsi_fail":
                env["HSI_FAIL"] = "1"
                detail = "hsi fails"
            elif kind == "hpss_down":
                self.status.set_status("down")
                detail = "status endpoint says down"
            elif kind == "planted_link":
                detail = self.plant_link(run)
            elif kind == "bad_date":
                detail = self.publish_bad_date()
            elif kind == "stale_checksum_lock":
                self.site.lock.write_text("checksum running\n")
                old = self.now.timestamp() - STALE_LOCK_AGE
                os.utime(self.site.lock, (old, old))
                self.lock_planted = run
                detail = f"{self.site.lock.name} at the mountain, {STALE_LOCK_AGE} s old"
            elif kind == "sigstop_job":
                detail = "SIGSTOP of the first stage or backup job that runs"
            elif kind == "kill_cron":
                detail = "SIGKILL of the cron entry and its Snakemake while a job runs"
            if kind in HPSS_FAULTS:
                hpss.append(kind)
            self.note(run, kind, detail)
        return env, kill_after, hpss

    def plant_link(self, run: int) -> str:
        """A group member's link where the workflow writes (see the module's docstring)."""
        staging = self.site.staging
        pending = [e for e in self.mountain.exposures.values()
                   if not (self.site.destination / e.night / e.expid).exists()]
        choices = ["catch-up", "night", "lock"] + (["exposure", "workspace"] if pending else [])
        how = self.rng.choice(choices)
        if how == "catch-up":
            link, target = staging / ".catch-up", self.site.destination
        elif how == "night":
            night = (self.rng.choice(pending).night if pending and self.rng.random() < 0.7
                     else night_of(self.now))
            link, target = staging / night, self.sentinel
        elif how == "exposure":
            exposure = self.rng.choice(pending)
            link, target = staging / exposure.night / exposure.expid, self.sentinel / "private"
        elif how == "workspace":
            # the archive's workspace, where a verified copy waits for its rename
            exposure = self.rng.choice(pending)
            link = self.site.destination / ".desitransfer" / (
                f"{exposure.night}-{exposure.expid}.incoming")
            target = self.sentinel / "private"
        else:
            lane = self.rng.choice(("exposures", "nights"))
            link, target = self.site.state / ".lanes" / f"{lane}.lock", self.sentinel / "notes.txt"
        if link.is_symlink() or link.is_file():
            link.unlink()
        elif link.is_dir():
            remove_tree(link)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(target)
        self.planted.append((run, link))
        return f"ln -s {target.relative_to(self.root)} {link.relative_to(self.root)}"

    def publish_bad_date(self) -> str:
        """An exposure published under an impossible night: not one of the mountain's
        legitimate exposures (the model does not know it), so nothing expects it."""
        night = self.rng.choice(BAD_NIGHTS)
        expid = f"{self.mountain.next_expid:08d}"
        self.mountain.next_expid += 1
        data = self.mountain.root / "data" / night / expid
        data.mkdir(parents=True)
        content = self.mountain.random_bytes()
        (data / f"desi-{expid}.fits.fz").write_bytes(content)
        (data / f"checksum-{expid}.sha256sum").write_text(
            checksum_text({f"desi-{expid}.fits.fz": sha256(content)}))
        link = self.mountain.root / "raw" / night / expid
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(Path("..", "..", "data", night, expid))
        self.bad_links.append(link)
        return f"{night}/{expid} published"

    def clean_up(self, run: int, everything: bool = False) -> None:
        """A person removes planted links and the stale checksum lock some runs later."""
        for planted, link in list(self.planted):
            if everything or run - planted >= PLANTED_RUNS:
                if link.is_symlink():
                    link.unlink()
                self.planted.remove((planted, link))
                self.log(f"run {run:3d}: {'(cleaned up)':16s} rm {link.relative_to(self.root)}")
        if self.lock_planted is not None and (everything
                                              or run - self.lock_planted >= LOCK_RUNS):
            self.site.lock.unlink(missing_ok=True)
            self.lock_planted = None
            self.log(f"run {run:3d}: {'(cleaned up)':16s} rm the checksum lock")

    def note(self, run: int, kind: str, detail: str) -> None:
        self.injected[kind] += 1
        if kind in self.cover:
            self.cover.remove(kind)
        if kind not in ("kill", "sigstop_job", "kill_cron") and kind not in HPSS_FAULTS:
            self.effective[kind] += 1
        self.log(f"run {run:3d}: {kind:16s} {detail}")

    def log(self, line: str) -> None:
        """One line of the fault sequence (also kept in ROOT/sequence.txt)."""
        self.sequence.append(line)
        with open(self.root / "sequence.txt", "a") as f:
            f.write(line + "\n")

    def new_exposures(self, run: int) -> None:
        """The telescope at work: an exposure or two in tonight's night."""
        if self.rng.random() >= NEW_EXPOSURE_PROBABILITY:
            return
        for _ in range(self.rng.choice((1, 1, 2))):
            exposure = self.mountain.publish_new(night_of(self.now))
            self.events["new exposures"] += 1
            self.log(f"run {run:3d}: {'(new exposure)':16s} {exposure.night}/{exposure.expid}")

    # ----------------------------------------------------------------- one run

    def calls(self) -> collections.Counter:
        path = self.tape / ".calls.jsonl"
        counts: collections.Counter = collections.Counter()
        if path.exists():
            for line in path.read_text().splitlines():
                try:
                    counts[json.loads(line)["prog"]] += 1
                except (ValueError, KeyError):
                    continue
        return counts

    def cron(self, run: int, injected: dict[str, str], kill_after: float | None) -> RunResult:
        self.site.config["now"] = iso(self.now)
        config_file = self.site.write_config()
        env = {**self.base_env(), **injected, SOAK_RUN: str(run)}
        out = self.runs_dir / f"{run:03d}.stdout"
        err = self.runs_dir / f"{run:03d}.stderr"
        start = time.monotonic()
        with open(out, "w") as stdout, open(err, "w") as stderr:
            proc = subprocess.Popen(
                [sys.executable, str(REPO / "scripts" / "cron_entry.py"), str(config_file)],
                cwd=self.root, env=env, stdin=subprocess.DEVNULL, stdout=stdout,
                stderr=stderr, start_new_session=True)
        # The next run has started: nothing of an earlier run may still be alive.
        self.check_lingering(run)
        killed = False
        returncode = self.watch(run, proc, start, kill_after)
        if returncode is None:
            os.killpg(proc.pid, signal.SIGKILL)
            returncode = proc.wait()
            killed = True
        seconds = time.monotonic() - start
        self.after_run(run, proc.pid, killed)
        return RunResult(run, returncode, killed, seconds, err.read_text(errors="replace"))

    def watch(self, run: int, proc: subprocess.Popen, start: float,
              kill_after: float | None) -> int | None:
        """Wait for the run, polling its processes: stop or kill what `self.during`
        says, and look for two htar of one archive at once. None: the run is to be
        killed (its kill delay, or a hung run)."""
        limit = kill_after if kill_after else RUN_LIMIT
        acted = self.during is None
        self.acted = False
        self.stop = None
        while True:
            returncode = proc.poll()
            if returncode is not None:
                break
            elapsed = time.monotonic() - start
            if self.stop is not None and elapsed > self.stop["deadline"]:
                self.problem(run, f"a job stopped with SIGSTOP ({self.stop['command'][:120]})"
                             f" was not ended by its wall-clock limit of"
                             f" {self.stop['limit']} s: the run still went"
                             f" {STOP_GRACE} s later (killed)")
                return None
            if elapsed > limit:
                if not kill_after:
                    self.problem(run, f"run {run} did not end within {RUN_LIMIT} s (killed)")
                return None
            alive = [p for p in soak_processes(self.helpers) if not p.dying]
            # one htar per process group: its own session, with whatever it starts
            groups = {(m.group(1), p.pgid) for p in alive
                      if (m := HTAR_RE.search(p.command))}
            htars = collections.Counter(archive for archive, _ in groups)
            for archive, count in htars.items():
                if count > 1:
                    self.problem(run, f"{count} htar of {archive} at once")
            if not acted:
                acted = self.acted = self.act_during(run, proc, alive, elapsed)
            time.sleep(0.05)  # polling interval, not a synchronisation
        return returncode

    def act_during(self, run: int, proc: subprocess.Popen, alive: list[Proc],
                   elapsed: float) -> bool:
        """Stop a job or kill the cron entry and its Snakemake once a job runs; whether
        it was done."""
        pattern = JOB_RE if self.during == "sigstop_job" else ANY_JOB_RE
        # the job's interpreter, not the shell that started it
        jobs = [p for p in alive if p.run == run and pattern.search(p.command)
                and " -c " not in p.command]
        if not jobs:
            return False
        if self.during == "sigstop_job":
            # the job's worker (its parent is the job's supervisor, scripts/job.py, which
            # ends it at the limit) or the supervisor itself, forked or not yet (the cron
            # entry's watchdog, scripts/job_watchdog.py, ends it)
            pids = {p.pid for p in jobs}
            workers = [p for p in jobs if parent_of(p.pid) in pids]
            job = self.rng.choice(workers) if workers and self.rng.random() < 0.5 else jobs[0]
            step = JOB_RE.search(job.command).group(1)
            limit = self.job_limit(step)
            os.kill(job.pid, signal.SIGSTOP)
            self.stop = {"pid": job.pid, "command": job.command, "limit": limit,
                         "deadline": elapsed + limit + STOP_GRACE}
            self.effective["sigstop_job"] += 1
            self.log(f"run {run:3d}: {'(stopped)':16s} {job} (limit {limit} s)")
            return True
        targets = [proc.pid] + [p.pid for p in alive if "snakemake" in p.command
                                and p.pid != proc.pid and not ANY_JOB_RE.search(p.command)]
        for pid in targets:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                continue
        self.effective["kill_cron"] += 1
        self.log(f"run {run:3d}: {'(killed cron)':16s} pids {targets} while {jobs[0]} ran")
        return True

    def job_limit(self, step: str) -> int:
        """The wall-clock limit of a job of `step` the issue asks for: its configured
        timeouts plus ``runtime_margin`` (the soak's own arithmetic, as README states it)."""
        remote = self.site.config["remote"]
        return {"stage": remote["timeout"] + remote["transfer_timeout"],
                "backup": BACKUP_TIMEOUT}[step] + RUNTIME_MARGIN

    def after_run(self, run: int, pgid: int, killed: bool) -> None:
        """Right after run `run` ended (or its group was killed and the cron entry
        reaped). Anything of an earlier run still alive now, seconds after the next run
        started, outlived its run: a problem. What is alive of this run is remembered
        and judged when the next run starts (see `check_lingering`); a process outside
        the killed group is already worth a note."""
        reap(self.helpers)  # the cron entry is reaped: every other child is an orphan
        alive = soak_processes(self.helpers)
        for proc in alive:
            if not proc.dying and (proc.run is not None and proc.run < run
                                   or (proc.pid, proc.start) in self.deferred):
                self.problem(run, f"still alive after run {run} ended: {proc}")
        self.deferred = set()
        for proc in alive:
            if proc.run == run and not proc.dying and not (killed and proc.pgid == pgid):
                how = "its process group was killed" if killed else "it ended"
                self.note_line(run, f"alive right after {how}: {proc}")
        self.lingering = alive
        self.last_pgid = pgid

    def check_lingering(self, run: int) -> None:
        """Run `run` has just started: nothing of an earlier run may still be alive.

        Once every process of the last run's group is gone, whatever was to die with
        them (PR_SET_PDEATHSIG, say) has been sent its signal: a process that is neither
        exiting nor has SIGKILL pending has outlived its run. While some of the group
        is still on its way out, judgement waits for the end of this run.
        """
        now = soak_processes(self.helpers)
        earlier = {(p.pid, p.start) for p in self.lingering}
        settled = not any(p.pgid == self.last_pgid for p in now)
        for proc in now:
            key = (proc.pid, proc.start)
            if proc.dying or not (key in earlier or (proc.run is not None and proc.run < run)):
                continue
            if settled:
                self.problem(run, f"still alive when run {run} started: {proc}")
            else:
                self.deferred.add(key)
        self.lingering = []

    def note_line(self, run: int, text: str) -> None:
        """Something worth knowing that breaks no invariant by itself."""
        self.notes.append(f"run {run}: {text}")
        self.log(f"run {run:3d}: {'(note)':16s} {text}")
        print(f"note: run {run}: {text}", flush=True)

    # ----------------------------------------------------------------- invariants

    def problem(self, run: int, text: str) -> None:
        self.pending_problems.append(text)

    def check(self, run: int) -> list[str]:
        """Every invariant that must hold between runs; the problems found."""
        self.checks += 1
        start = time.monotonic()
        problems = list(self.pending_problems)
        problems += self.check_archive()
        problems += self.check_records()
        problems += self.check_tape()
        problems += self.check_outside()
        problems += self.check_stopped(run)
        problems += self.check_lock_shown()
        self.check_seconds += time.monotonic() - start
        if self.audit:
            start = time.monotonic()
            problems += self.check_audit()
            self.audit_seconds += time.monotonic() - start
        return problems

    def check_outside(self) -> list[str]:
        """Nothing outside STAGING and the state was written or deleted (planted links)."""
        now = snapshot(self.sentinel)
        if now == self.sentinel_seen:
            return []
        changed = sorted(set(now.items()) ^ set(self.sentinel_seen.items()))
        return [f"written or deleted outside staging and state, through a planted link:"
                f" {self.sentinel.relative_to(self.root)}/{name}" for name, _ in changed]

    def check_stopped(self, run: int) -> list[str]:
        """A stopped job was ended, and recorded as "timed out after N s"."""
        if self.stop is None:
            return []
        stop, self.stop = self.stop, None
        problems = []
        if Path("/proc", str(stop["pid"])).exists() and not kill_pending(
                Path("/proc", str(stop["pid"]))):
            problems.append(f"the job stopped with SIGSTOP is still alive after its run:"
                            f" pid {stop['pid']} {stop['command'][:120]}")
            try:
                os.kill(stop["pid"], signal.SIGKILL)  # so the soak can go on
            except ProcessLookupError:
                pass
        records = [p for p in self.stream_state.rglob("*.failed")
                   if "timed out after" in (read_json(p) or {}).get("reason", "")] \
            if self.stream_state.is_dir() else []
        if not records:
            problems.append("no failure record says \"timed out after N s\" for the job"
                            f" stopped with SIGSTOP ({stop['command'][:120]})")
        return problems

    def check_lock_shown(self) -> list[str]:
        """A stale checksum lock is shown by ``python -m scripts.status --failures``."""
        if self.lock_planted is None:
            return []
        result = subprocess.run(
            [sys.executable, "-m", "scripts.status", "--failures", "--config",
             str(self.site.config_file)],
            cwd=REPO, env=self.base_env(), capture_output=True, text=True, timeout=120)
        text = (result.stdout + result.stderr).lower()
        if "checksum lock" in text or self.site.lock.name in text:
            return []
        return [f"a checksum lock {STALE_LOCK_AGE} s old stands at the mountain;"
                " `python -m scripts.status --failures` does not show it"]

    def check_archive(self) -> list[str]:
        problems = []
        destination = self.site.destination
        if not destination.exists():
            return problems
        for night in sorted(os.scandir(destination), key=lambda e: e.name):
            if night.name.startswith(WORKSPACE):
                continue  # the workflow's own workspace beside the nights (never on tape)
            if not (NIGHT_RE.fullmatch(night.name) and night.is_dir(follow_symlinks=False)):
                problems.append(f"unexpected entry in the destination: {night.path}")
                continue
            mode = stat.S_IMODE(os.lstat(night.path).st_mode)
            if mode not in DIR_MODES:
                problems.append(f"night directory {night.path} has mode {oct(mode)}")
            for entry in sorted(os.scandir(night.path), key=lambda e: e.name):
                if not (NIGHT_RE.fullmatch(entry.name) and entry.is_dir(follow_symlinks=False)):
                    problems.append(f"unexpected entry in a night directory: {entry.path}")
                    continue
                exposure = self.mountain.exposures.get((night.name, entry.name))
                if exposure is None:
                    problems.append(f"{entry.path}: never published by the mountain")
                    continue
                problems += self.check_exposure(Path(entry.path), exposure)
        return problems

    def check_exposure(self, path: Path, exposure: Exposure) -> list[str]:
        problems = []
        mode = stat.S_IMODE(os.lstat(path).st_mode)
        if mode not in DIR_MODES:
            problems.append(f"exposure directory {path} has mode {oct(mode)}")
        files = {}
        for entry in os.scandir(path):
            if not entry.is_file(follow_symlinks=False):
                problems.append(f"{entry.path}: not a regular file in an installed exposure")
                continue
            mode = stat.S_IMODE(entry.stat(follow_symlinks=False).st_mode)
            if mode != FILE_MODE:
                problems.append(f"{entry.path} has mode {oct(mode)}, not 0o440")
            try:
                files[entry.name] = Path(entry.path).read_bytes()
            except OSError as err:
                problems.append(f"{entry.path}: unreadable ({err})")
        text = files.pop(exposure.checksum_name, None)
        if text is None:
            return [*problems, f"{path}: installed without its checksum file"]
        problems += self.check_content(str(path), exposure, text.decode(errors="replace"),
                                       {n: sha256(c) for n, c in files.items()})
        return problems

    def check_content(self, where: str, exposure: Exposure, text: str,
                      digests: dict[str, str]) -> list[str]:
        """`digests` (name -> sha256, checksum file excluded) are exactly the files that
        `text` names, with their bytes, and `text` is a published version."""
        if text not in exposure.versions:
            return [f"{where}: its checksum file is not one the mountain published for"
                    f" {exposure.night}/{exposure.expid}"]
        listed = parse_checksum(text) or {}
        problems = [f"{where}/{name}: listed, missing" for name in sorted(set(listed)
                                                                        - set(digests))]
        problems += [f"{where}/{name}: present, not listed (e.g. an rsync temporary)"
                     for name in sorted(set(digests) - set(listed))]
        problems += [f"{where}/{name}: bytes differ from the checksum file (sha256"
                     f" {digests[name][:12]}..., listed {listed[name][:12]}...)"
                     for name in sorted(set(listed) & set(digests))
                     if listed[name] != digests[name]]
        return problems

    def check_records(self) -> list[str]:
        """Records tell the truth: installed markers, backup records."""
        problems = []
        if not self.stream_state.is_dir():
            return problems
        for marker in sorted(self.stream_state.glob("*/*.installed")):
            night, expid = marker.parent.name, marker.name.split(".")[0]
            if not (self.site.destination / night / expid).is_dir():
                problems.append(f"{marker.relative_to(self.root)} says installed; "
                                f"{night}/{expid} is not in the destination")
        for path in sorted(self.stream_state.glob("*.backedup*")):
            if not re.fullmatch(r"[0-9]{8}\.backedup(\.[0-9]+)?", path.name):
                continue
            record = read_json(path)
            where = path.relative_to(self.root)
            if record is None:
                problems.append(f"{where}: unreadable backup record")
                continue
            night = path.name[:8]
            archived = set()
            for archive in record.get("archives", []):
                name = archive.get("path") or f"{HPSS_DIR}/{archive.get('name')}"
                archived.update(archive.get("exposures", []))
                problems += self.check_archive_file(where, night, name,
                                                    archive.get("exposures", []))
            for expid in record.get("exposures", []):
                if expid not in archived:
                    problems.append(f"{where}: says {night}/{expid} is backed up; none of"
                                    " its archives holds it")
        return problems

    def check_archive_file(self, where: Path, night: str, name: str,
                           expids: list[str]) -> list[str]:
        tar_path = self.tape / name.lstrip("/")
        if not Path(f"{tar_path}.idx").is_file():
            return [f"{where}: {name}.idx is not on tape"]
        try:
            contents = self.tar_contents(tar_path)
        except (OSError, tarfile.TarError) as err:
            return [f"{where}: {name} is unreadable ({err})"]
        problems = []
        for expid in expids:
            exposure = self.mountain.exposures.get((night, expid))
            members = contents.get(f"{night}/{expid}")
            if exposure is None:
                problems.append(f"{where}: names {night}/{expid}, never published")
            elif not members:
                problems.append(f"{where}: says {name} holds {night}/{expid}; it does not")
            else:
                text = members.pop(exposure.checksum_name, None)
                members = dict(members)
                if text is None:
                    problems.append(f"{where}: {name} holds {night}/{expid} without its"
                                    " checksum file")
                else:
                    problems += self.check_content(f"{name}:{night}/{expid}", exposure,
                                                   text, members)
        return problems

    def tar_contents(self, tar_path: Path) -> dict[str, dict[str, str]]:
        """NIGHT/EXPID -> {file: sha256, checksum file: its text}, cached per file."""
        st = tar_path.stat()
        key = (str(tar_path), st.st_ino, st.st_size, st.st_mtime_ns)
        if key not in self.tar_cache:
            contents: dict[str, dict[str, str]] = collections.defaultdict(dict)
            with tarfile.open(tar_path) as tar:
                for info in tar:
                    parts = info.name.split("/")
                    if not info.isfile() or len(parts) != 3:
                        continue
                    data = tar.extractfile(info).read()
                    value = (data.decode(errors="replace")
                             if parts[2].startswith("checksum-") else sha256(data))
                    contents[f"{parts[0]}/{parts[1]}"][parts[2]] = value
            self.tar_cache[key] = dict(contents)
        return {k: dict(v) for k, v in self.tar_cache[key].items()}

    def check_tape(self) -> list[str]:
        """An archive on tape, once complete (its .idx beside it), never changes."""
        problems = []
        directory = self.tape / HPSS_DIR
        if not directory.is_dir():
            return problems
        for tar_path in sorted(directory.glob("*.tar")):
            if not Path(f"{tar_path}.idx").is_file():
                continue
            st = tar_path.stat()
            key = (st.st_ino, st.st_size, st.st_mtime_ns)
            seen = self.tape_seen.get(tar_path.name)
            if seen is not None and seen[0] == key:
                continue
            digest = sha256(tar_path.read_bytes())
            if seen is not None and seen[1] != digest:
                problems.append(f"{HPSS_DIR}/{tar_path.name} was overwritten on tape after it"
                                " was complete")
            self.tape_seen[tar_path.name] = (key, digest)
        return problems

    def check_audit(self) -> list[str]:
        result = subprocess.run(
            [sys.executable, "-m", "scripts.audit", "--config", str(self.site.config_file)],
            cwd=REPO, env=self.base_env(), capture_output=True, text=True, timeout=300)
        if result.returncode == 0:
            return []
        tail = (result.stdout + result.stderr).strip().splitlines()[-8:]
        return [f"audit exited {result.returncode}: " + " | ".join(tail)]

    def held(self) -> list[str]:
        """Exposures held by policy (a person is needed): not an invariant by itself."""
        if not self.stream_state.is_dir():
            return []
        return sorted(f"{p.parent.name}/{p.name.split('.')[0]}"
                      for p in self.stream_state.glob("*/*.checksummed.failed")
                      if (read_json(p) or {}).get("held"))

    def final_checks(self) -> list[str]:
        """After the quiet phase: everything published is installed, every night is
        caught up and backed up, and nobody had to intervene."""
        problems = []
        for night, expid in sorted(self.mountain.exposures):
            if not (self.site.destination / night / expid).is_dir():
                problems.append(f"{night}/{expid} published, never installed")
            elif not (self.stream_state / night / f"{expid}.installed").is_file():
                problems.append(f"{night}/{expid} installed, without its .installed marker")
        for night in self.mountain.nights():
            if not (self.stream_state / f"{night}.caughtup").is_file():
                problems.append(f"night {night} never caught up")
            record = read_json(self.stream_state / f"{night}.backedup")
            if record is None:
                problems.append(f"night {night} never backed up")
                continue
            archived = {e for a in record.get("archives", []) for e in a.get("exposures", [])}
            for n, expid in sorted(self.mountain.exposures):
                if n == night and expid not in archived:
                    problems.append(f"{night}/{expid} is in no archive of its night's record")
        problems += [f"{item} held by policy: a person is needed" for item in self.held()]
        return problems

    # ----------------------------------------------------------------- driver

    def run_once(self, run: int, quiet: bool = False) -> RunResult:
        first_line = len(self.sequence)
        kinds = []
        self.during = None
        self.acted = False
        self.clean_up(run, everything=quiet)
        if not quiet:
            self.new_exposures(run)
            kinds = self.plan()
        calls_before, requests_before = self.calls(), self.status.requests
        env, kill_after, hpss = self.apply(run, kinds)
        self.pending_problems = []
        result = self.cron(run, env, kill_after)
        self.status.set_status("active")
        calls = self.calls() - calls_before
        for kind in hpss:
            took = {"htar_fail": calls["htar"], "htar_hang": calls["htar"],
                    "hsi_fail": calls["hsi"],
                    "hpss_down": self.status.requests > requests_before}[kind]
            self.effective[kind] += bool(took)
            if not took and not self.effective[kind]:
                self.cover.insert(0, kind)  # not covered until it met a backup
        if self.during and not self.acted and not self.effective[self.during]:
            self.cover.insert(0, self.during)  # no job ran: not covered yet
        if kill_after is not None:
            self.effective["kill"] += result.killed
            if result.killed:
                self.killed_runs += 1
            elif not self.effective["kill"]:
                self.cover.insert(0, "kill")
        if result.returncode not in (0, None) and not result.killed:
            self.failed_runs += 1
        self.run_seconds.append(result.seconds)
        status = ("killed" if result.killed else f"exit {result.returncode}")
        if kill_after is not None and not result.killed:
            status += f", ended before the kill at {kill_after} s"
        self.log(f"run {run:3d}: {'(ran)':16s} {status} after {result.seconds:.1f} s")
        for item in self.held():
            if item not in self.problems_seen:
                self.problems_seen.add(item)
                self.note_line(run, f"{item} is held by policy (verification failed"
                               " max_attempts times)")
        problems = self.check(run)
        new = [p for p in problems if p not in self.problems_seen]
        self.problems_seen.update(problems)
        if new:
            self.fail(run, new, result)
        if self.args.verbose:
            print("\n".join(self.sequence[first_line:]), flush=True)
        return result

    def fail(self, run: int, problems: list[str], result: RunResult) -> None:
        self.failures.append({"run": run, "problems": problems})
        self.log(f"run {run:3d}: {'INVARIANT FAILURE':16s} " + " || ".join(problems))
        print(f"\nINVARIANT FAILURE: seed {self.args.seed}, run {run} "
              f"({'killed' if result.killed else f'exit {result.returncode}'})", flush=True)
        for p in problems:
            print(f"  - {p}")
        if not self.args.keep_going:
            print("\nfault sequence so far:")
            for line in self.sequence:
                print(f"  {line}")
            tail = result.stderr.strip().splitlines()[-15:]
            if tail:
                print(f"\nrun {run} stderr (last lines):")
                for line in tail:
                    print(f"  | {line}")
            print(f"\nkept for inspection: {self.root} (runs/{run:03d}.*, logs/, state/)")
            raise InvariantFailure()

    def soak(self) -> int:
        start = time.monotonic()
        print(f"fault soak: seed {self.args.seed}, {self.args.runs} runs + "
              f"{self.args.quiet_runs} quiet, in {self.root}; audit {self.audit_note}",
              flush=True)
        outcome = 0
        try:
            for run in range(1, self.args.runs + 1):
                self.run_once(run)
                if run % 20 == 0:
                    print(f"  ... {run} runs, {time.monotonic() - start:.0f} s", flush=True)
            self.quiet_phase()
        except InvariantFailure:
            outcome = 1
        self.seconds = time.monotonic() - start
        if self.failures:
            outcome = 1
        self.summary(outcome)
        if self.failures and self.args.keep_going:
            print("\nfault sequence:")
            for line in self.sequence:
                print(f"  {line}")
        if outcome == 0 and not self.args.keep:
            remove_tree(self.root)
        elif outcome:
            print(f"kept: {self.root}")
        self.status.close()
        return outcome

    def quiet_phase(self) -> None:
        """No faults; the clock past the last night's backup hour; a few runs."""
        last = max(self.mountain.nights(), default=night_of(self.now))
        ready = (dt.datetime.strptime(last, "%Y%m%d").replace(tzinfo=dt.UTC)
                 + dt.timedelta(days=1, hours=BACKUP_HOUR, minutes=30))
        self.now = max(self.now, ready)
        self.log(f"quiet phase: now {iso(self.now)}, no faults")
        first = self.args.runs + 1
        result = None
        for run in range(first, first + self.args.quiet_runs):
            result = self.run_once(run, quiet=True)
        self.pending_problems = []
        self.check_lingering(first + self.args.quiet_runs)
        problems = self.pending_problems + self.final_checks()
        if result is not None and result.returncode != 0:
            problems.append(f"the last quiet run exited {result.returncode}: "
                            + " | ".join(result.stderr.strip().splitlines()[-5:]))
        if problems:
            self.fail(first + self.args.quiet_runs - 1, problems, result)

    def summary(self, outcome: int) -> None:
        runs = len(self.run_seconds)
        print(f"\nfault soak summary (seed {self.args.seed})")
        print(f"  runs            {runs} ({min(runs, self.args.runs)} with faults + "
              f"{max(0, runs - self.args.runs)} quiet; {self.args.runs} + "
              f"{self.args.quiet_runs} planned), {self.killed_runs} killed, "
              f"{self.failed_runs} exited non-zero")
        if runs:
            print(f"  seconds         {self.seconds:.0f} total, "
                  f"{sum(self.run_seconds) / runs:.1f} per run, slowest "
                  f"{max(self.run_seconds):.1f}")
        print(f"  exposures       {len(self.mountain.exposures)} published in "
              f"{len(self.mountain.nights())} nights; {self.events['new exposures']} on time")
        print(f"  checks          {self.checks} after-run invariant checks "
              f"({self.check_seconds:.1f} s); audit {self.audit_note}"
              + (f" ({self.audit_seconds:.1f} s)" if self.audit else ""))
        print(f"  notes           {len(self.notes)} (alive right after a kill, held"
              " exposures; they break no invariant by themselves)")
        print(f"  {'fault':18s}{'injected':>9s}{'took effect':>13s}")
        for kind in FAULTS:
            print(f"  {kind:18s}{self.injected[kind]:9d}{self.effective[kind]:13d}")
        print(f"  {'total':18s}{sum(self.injected.values()):9d}"
              f"{sum(self.effective.values()):13d}")
        problems = sum(len(f["problems"]) for f in self.failures)
        print(f"  result          {'PASS' if outcome == 0 else 'FAIL'}"
              + (f" ({problems} problem(s) in {len(self.failures)} run(s))" if problems else ""))
        if self.args.summary_json:
            Path(self.args.summary_json).write_text(json.dumps({
                "seed": self.args.seed, "runs": runs, "killed": self.killed_runs,
                "seconds": round(self.seconds, 1), "outcome": outcome,
                "audit": self.audit_note, "failures": self.failures,
                "sequence": self.sequence, "notes": self.notes,
                "faults": {k: {"injected": self.injected[k], "effective": self.effective[k]}
                           for k in FAULTS},
            }, indent=1))


def snapshot(root: Path) -> dict[str, tuple]:
    """Every entry under `root`, without following links: type, mode and content."""
    seen = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            content = (Path(path).read_bytes() if stat.S_ISREG(st.st_mode)
                       else os.readlink(path) if stat.S_ISLNK(st.st_mode) else b"")
            seen[os.path.relpath(path, root)] = (stat.S_IFMT(st.st_mode),
                                                 stat.S_IMODE(st.st_mode), content)
    return seen


def read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def remove_tree(root: Path) -> None:
    """rm -r, read-only archive directories included."""
    for dirpath, dirnames, _ in os.walk(root):
        for name in dirnames:
            path = os.path.join(dirpath, name)
            if not os.path.islink(path):
                os.chmod(path, 0o700)
    shutil.rmtree(root, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=200, help="runs with faults")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--quiet-runs", type=int, default=3,
                        help="runs of the final quiet phase (no faults)")
    parser.add_argument("--faults", default=",".join(FAULTS),
                        help="comma-separated fault kinds to inject (default: all)")
    parser.add_argument("--keep-going", action="store_true",
                        help="report every new problem and carry on")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument("--workdir", help="parent of the temporary directory")
    parser.add_argument("--no-audit", action="store_true", help="skip scripts.audit")
    parser.add_argument("--summary-json", help="write the summary here as JSON")
    parser.add_argument("--verbose", "-v", action="store_true", help="a line per run")
    args = parser.parse_args(argv)
    args.faults = [k for k in args.faults.split(",") if k]
    unknown = set(args.faults) - set(FAULTS)
    if unknown:
        parser.error(f"unknown fault kind(s): {', '.join(sorted(unknown))}")
    if shutil.which("rsync") is None:
        parser.error("rsync is not installed (make system-packages)")
    yaml.safe_dump({})  # the configuration is YAML: fail early if PyYAML is missing
    return Soak(args).soak()


if __name__ == "__main__":
    sys.exit(main())
