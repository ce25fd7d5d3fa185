"""What the state says: DESI's status files, the status page, and the status command.

The markers and failure records are the truth. Everything written here is a view of
them that can be rebuilt at any time, never patched:

``STATUS/desi_transfer_status_YYYY.json``
    The original daemon's layout, which DESI's tools read:
    ``{"NIGHT": {"EXPID": [[stage, success, ms], ...]}}`` with EXPID without leading
    zeros, stage 0 rsync (our ``staged``), 1 checksum (``checksummed``), 2 backup (a
    row for every exposure an archive of the night holds), success 0/1, time in ms
    since the epoch (the record's ``time``), newest row first, compact separators.
    A night goes in the file of its own year.
``STATUS/index.html``
    The status page (`scripts.status_page`).

STATUS is the ``status`` key of the configuration (default ``STATE/status``); with
several streams each stream's year files go to ``STATUS/STREAM/``.

The command reads the state only::

    python -m scripts.status [--config FILE] [--nights N]   # the last nights
    python -m scripts.status --night NIGHT                   # one night's exposures
    python -m scripts.status --failures                      # what needs a person
    python -m scripts.status --json ...                      # the same for machines
    python -m scripts.status --write                         # rebuild files and page

Its default path reads the directories of the nights it shows and nothing else, and
imports neither pandas nor the page code, so it stays fast however large the archive.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scripts.configuration import SCHEMA, ConfigurationError, get_now, load_yaml
from scripts.markers import (
    EXPOSURE_STAGES,
    FAILED,
    NIGHT_STAGES,
    failure_path,
    marker_path,
    read_record,
    utc_timestamp,
    write_json_atomic,
)
from scripts.remote import first_night
from scripts.targets import due

log = logging.getLogger("status")

#: DESI's stage numbers in the status files, by our marker stage.
STATUS_STAGES = {"staged": 0, "checksummed": 1, "backedup": 2}
YEAR_FILE = "desi_transfer_status_{year}.json"
PAGE = "index.html"
#: What this module last wrote (hashes) and the state it was built from, per directory.
MANIFEST = ".desitransfer-status.json"
#: Bumped when `night_rows` changes, so rows cached in a year file are recomputed.
ROWS_VERSION = 1
#: A night changed this recently may still be changing: its rows are not reused.
SETTLE_SECONDS = 2.0
PAGE_NIGHTS = 30
STALE_ACTION = "back it up by hand or raise lookback_nights"

# Exposure states, worst first; the page colours them.
HELD = "held"
INSTALLED_WITH_ERRORS = "installed with errors"
RETRYING = "retrying"
TRANSFERRING = "transferring"
PUBLISHED = "published"
INSTALLED = "installed"
# Night states.
NIGHT_ATTENTION = "needs a person"
NIGHT_PROGRESS = "in progress"
NIGHT_DONE = "done"


# --------------------------------------------------------------------------- time


def parse_time(value: Any) -> dt.datetime | None:
    """A record's UTC time (``2026-11-29T02:11:46Z``), or None when absent or malformed."""
    if not isinstance(value, str):
        return None
    try:
        return dt.datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)
    except ValueError:
        pass
    try:
        when = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)


def milliseconds(value: Any) -> int | None:
    """A record's time as DESI's status files hold it: integer ms since the epoch."""
    when = parse_time(value)
    return None if when is None else int(when.timestamp()) * 1000


# --------------------------------------------------------------------------- model


@dataclass
class ExposureStatus:
    """The markers and failure records of one exposure."""

    stream: str
    night: str
    expid: str
    stages: dict[str, dict] = field(default_factory=dict)    # stage -> marker record
    failures: dict[str, dict] = field(default_factory=dict)  # stage -> failure record
    listed: bool = False           # published at the mountain in the last listing
    archive: dict | None = None    # the archive of the night that holds it

    def time(self, stage: str) -> dt.datetime | None:
        return parse_time(self.stages.get(stage, {}).get("time"))

    @property
    def held(self) -> bool:
        return bool(self.failures.get("checksummed", {}).get("held"))

    @property
    def verification(self) -> str:
        """``verified``, ``failed`` (installed by policy), ``held``, ``retrying`` or ``""``."""
        record = self.stages.get("checksummed")
        if record is not None:
            return "failed" if record.get("outcome") == "failed" else "verified"
        if self.held:
            return HELD
        return RETRYING if "checksummed" in self.failures else ""

    @property
    def state(self) -> str:
        if self.held:
            return HELD
        if "installed" in self.stages:
            return INSTALLED_WITH_ERRORS if self.verification == "failed" else INSTALLED
        if self.failures:
            return RETRYING
        return TRANSFERRING if self.stages else PUBLISHED

    @property
    def bytes(self) -> int:
        for stage in ("installed", "checksummed", "staged"):
            size = self.stages.get(stage, {}).get("bytes")
            if isinstance(size, int):
                return size
        return 0

    def latency(self) -> tuple[float, str] | None:
        """Seconds from the start of the transfer to installed, and what "start" was.

        The start is the mountain link's publication time when the staged record has
        it (``published``); otherwise the start of the rsync (the staged record's time
        minus its duration). None for exposures adopted in place or not installed.
        """
        staged, installed = self.stages.get("staged"), self.time("installed")
        if staged is None or installed is None or staged.get("outcome") == "adopted":
            return None
        start = parse_time(staged.get("published"))
        basis = "published"
        if start is None:
            end_of_rsync = parse_time(staged.get("time"))
            if end_of_rsync is None:
                return None
            start = end_of_rsync - dt.timedelta(seconds=float(staged.get("duration") or 0))
            basis = "rsync start"
        return max(0.0, (installed - start).total_seconds()), basis

    def failure_text(self) -> str:
        """Every failure record in one line: ``stage: reason (attempt N)``."""
        return "; ".join(f"{stage}: {f.get('reason', '?')} (attempt {f.get('attempts', '?')})"
                         for stage, f in self.failures.items())


@dataclass
class NightStatus:
    """The markers and failure records of one night of one stream."""

    stream: str
    night: str
    exposures: dict[str, ExposureStatus] = field(default_factory=dict)
    stages: dict[str, dict] = field(default_factory=dict)    # caughtup, backedup, backedup.N
    failures: dict[str, dict] = field(default_factory=dict)
    state: str = ""                                          # set by `classify`
    problems: list[Problem] = field(default_factory=list)    # set by `classify`

    def sorted_exposures(self) -> list[ExposureStatus]:
        return [self.exposures[e] for e in sorted(self.exposures)]

    def archived(self) -> dict[str, dict]:
        """EXPID → the archive holding it, from the night's backup record."""
        held = {}
        for archive in (self.stages.get("backedup") or {}).get("archives", []):
            for expid in archive.get("exposures", []):
                held.setdefault(expid, archive)
        return held

    def backup_failure(self) -> dict | None:
        """The newest failure record of the night's backups, main or supplementary."""
        records = [f for s, f in self.failures.items() if s.split(".")[0] == "backedup"]
        return max(records, key=lambda f: f.get("time", ""), default=None)

    def count(self, predicate) -> int:
        return sum(1 for e in self.exposures.values() if predicate(e))

    @property
    def bytes(self) -> int:
        return sum(e.bytes for e in self.exposures.values() if "installed" in e.stages)

    def failure_count(self) -> int:
        return len(self.failures) + sum(len(e.failures) for e in self.exposures.values())


@dataclass
class Problem:
    """A failure that needs a person, with what to do about it."""

    stream: str
    night: str
    expid: str | None
    stage: str
    reason: str
    attempts: int | str
    time: str
    action: str
    record: str

    @property
    def item(self) -> str:
        return self.night if self.expid is None else f"{self.night}/{self.expid}"


@dataclass
class BacklogItem:
    """A night-level stage that is due and not done, and why it waits."""

    stream: str
    night: str
    stage: str
    due: dt.datetime
    why: str
    needs_person: bool = False


# --------------------------------------------------------------------------- reading


@dataclass
class NightFiles:
    """What one listing of ``STATE/STREAM`` says about a night."""

    directory: bool = False
    directory_mtime: int = 0
    files: dict[str, tuple[int, int]] = field(default_factory=dict)  # name -> (mtime, size)


def scan_stream(state: str | os.PathLike, stream: str, stat: bool = False) -> dict[str, NightFiles]:
    """The nights of a stream from one ``scandir`` of ``STATE/STREAM``.

    With `stat`, the modification times that fingerprint each night are read too
    (one ``stat`` per night directory and per night-level marker).
    """
    nights: dict[str, NightFiles] = {}
    try:
        entries = os.scandir(Path(state, stream))
    except (FileNotFoundError, NotADirectoryError):
        return nights
    with entries:
        for entry in entries:
            name = entry.name
            night = name[:8]
            if not night.isdigit() or len(night) != 8:
                continue
            if len(name) == 8:
                if not entry.is_dir():
                    continue
                info = nights.setdefault(night, NightFiles())
                info.directory = True
                info.directory_mtime = entry.stat().st_mtime_ns if stat else 0
            elif name[8] == ".":
                info = nights.setdefault(night, NightFiles())
                if stat:
                    st = entry.stat()
                    info.files[name] = (st.st_mtime_ns, st.st_size)
                else:
                    info.files[name] = (0, 0)
    return nights


def list_nights(state: str | os.PathLike, stream: str) -> list[str]:
    """Nights with any marker or failure record for `stream`, newest first."""
    return sorted(scan_stream(state, stream), reverse=True)


def _read(path: str | os.PathLike) -> dict:
    """A marker's record; an unreadable one still counts (it exists), dated by its mtime."""
    record = read_record(path)
    if record is not None:
        return record
    try:
        mtime = os.stat(path).st_mtime
    except OSError:
        return {"unreadable": True}
    return {"unreadable": True, "time": utc_timestamp(dt.datetime.fromtimestamp(mtime, dt.UTC))}


def _split_stage(rest: str) -> tuple[str, bool]:
    """``checksummed.failed`` → (``checksummed``, True); ``backedup.2`` → (``backedup.2``, False).
    """
    if rest.endswith(FAILED):
        return rest[: -len(FAILED)], True
    return rest, False


def _night_stage(stage: str) -> bool:
    base, _, index = stage.partition(".")
    return base in NIGHT_STAGES and (not index or (base == "backedup" and index.isdigit()))


def read_night(state: str | os.PathLike, stream: str, night: str,
               files: NightFiles | None = None, listed: Iterable[str] = (),
               only_failures: bool = False) -> NightStatus:
    """Collect the markers and failure records of one night.

    Parameters
    ----------
    files : NightFiles, optional
        The night's entry from `scan_stream`, when the caller has listed the stream.
    listed : iterable of str
        EXPIDs the mountain published for this night in the last listing.
    only_failures : bool
        Read the failure records only (finding what needs a person).
    """
    status = NightStatus(stream, night)
    if files is None:
        files = scan_stream(state, stream).get(night, NightFiles(directory=True))
    for name in files.files:
        stage, failed = _split_stage(name[9:])
        if not _night_stage(stage) or (only_failures and not failed):
            continue
        record = _read(Path(state, stream, name))
        (status.failures if failed else status.stages)[stage] = record
    if files.directory:
        try:
            entries = list(os.scandir(Path(state, stream, night)))
        except FileNotFoundError:
            entries = []
        for entry in entries:
            expid, _, rest = entry.name.partition(".")
            stage, failed = _split_stage(rest)
            if len(expid) != 8 or not expid.isdigit() or stage not in EXPOSURE_STAGES:
                continue
            if only_failures and not failed:
                continue
            exposure = status.exposures.get(expid)
            if exposure is None:
                exposure = status.exposures[expid] = ExposureStatus(stream, night, expid)
            (exposure.failures if failed else exposure.stages)[stage] = _read(entry.path)
    for expid in listed:
        exposure = status.exposures.setdefault(expid, ExposureStatus(stream, night, expid))
        exposure.listed = True
    for expid, archive in status.archived().items():
        if expid in status.exposures:
            status.exposures[expid].archive = archive
    return status


def listing_cache_path(state: str | os.PathLike, stream: str) -> Path:
    """Where the workflow keeps a stream's last mountain listing (see rules/common.smk)."""
    return Path(state, ".listing", f"{stream}.json")


def read_listing(state: str | os.PathLike, stream: str) -> tuple[dict[str, set[str]],
                                                                 dt.datetime | None]:
    """The last listing of the mountain: NIGHT → published EXPIDs, and when it was made."""
    record = read_record(listing_cache_path(state, stream)) or {}
    nights: dict[str, set[str]] = {}
    for item in record.get("exposures", []):
        if isinstance(item, list) and len(item) == 2:
            nights.setdefault(str(item[0]), set()).add(str(item[1]))
    epoch = record.get("epoch")
    when = dt.datetime.fromtimestamp(epoch, dt.UTC) if isinstance(epoch, (int, float)) else None
    return nights, when


def hpss_status_path(state: str | os.PathLike) -> Path:
    """Where the workflow records the last answer of the HPSS status endpoint."""
    return Path(state, ".hpss_status.json")


def record_hpss_status(state: str | os.PathLike, ready: bool, why: str) -> None:
    """Remember HPSS's last answer so that the page can say why backups wait."""
    write_json_atomic(hpss_status_path(state),
                      {"time": utc_timestamp(), "ready": bool(ready), "why": why})


# --------------------------------------------------------------------------- judging


def _problem(night: NightStatus, expid: str | None, stage: str, record: dict, state: str,
             action: str) -> Problem:
    marker = marker_path(state, night.stream, night.night, expid, stage)
    return Problem(night.stream, night.night, expid, stage, str(record.get("reason", "?")),
                   record.get("attempts", "?"), str(record.get("time", "")), action,
                   str(failure_path(marker)))


def find_problems(night: NightStatus, state: str | os.PathLike,
                  max_attempts: int) -> list[Problem]:
    """The failures of a night that need a person.

    A failure needs a person when the workflow will not fix it alone: verification
    held by policy, data installed although verification failed, or a step that
    failed `max_attempts` times (rsync and backups are retried every run; past that
    the retries are not going to help without someone looking).
    """
    state = str(state)
    out = []
    for expid, exposure in sorted(night.exposures.items()):
        for stage, record in exposure.failures.items():
            attempts = record.get("attempts", 0)
            exhausted = isinstance(attempts, int) and attempts >= max_attempts
            if stage == "checksummed" and record.get("held"):
                marker = marker_path(state, night.stream, night.night, expid, stage)
                action = (f"fix the data (it stays in staging), then remove"
                          f" {failure_path(marker)} to verify again")
            elif stage == "checksummed" and (record.get("policy") == "install"
                                             or record.get("exhausted")):
                action = ("installed although verification failed (on_failure: install):"
                          " compare the files with the mountain and fix the archive copy")
            elif exhausted:
                action = (f"{stage} failed {attempts} times and is retried every run: check"
                          " the mountain host, the network and the rule's log")
            else:
                continue
            out.append(_problem(night, expid, stage, record, state, action))
    for stage, record in sorted(night.failures.items()):
        attempts = record.get("attempts", 0)
        if stage == "caughtup" and record.get("policy") == "install":
            action = ("late files failed re-verification after the catch-up: compare them"
                      " with the mountain")
        elif isinstance(attempts, int) and attempts >= max_attempts:
            action = (f"{stage} failed {attempts} times and is retried every run: check"
                      " the rule's log" + (" and HPSS" if stage.startswith("backedup") else ""))
        else:
            continue
        out.append(_problem(night, None, stage, record, state, action))
    return out


def night_backlog(night: NightStatus, now: dt.datetime, config: dict,
                  hpss: dict | None) -> list[BacklogItem]:
    """The night's due and undone catch-up or backup, and why each waits.

    Pure: it judges the night from its records, the clock and the configuration.
    """
    items = []
    waiting = [e for e in night.sorted_exposures()
               if "installed" not in e.stages and not e.held]
    backend = config["backup"]["backend"]
    if night.night < first_night(now, config["lookback_nights"]):
        installed = any("installed" in e.stages for e in night.exposures.values())
        if backend != "none" and installed and "backedup" not in night.stages:
            items.append(BacklogItem(
                night.stream, night.night, "backup", due_time(night.night, config["backup_hour"]),
                f"{_stale_backup(config)}; {STALE_ACTION}", needs_person=True))
        return items

    def why(stage: str, extra: list[str]) -> str:
        failure = night.failures.get(stage)
        if failure is not None:
            return (f"failed {failure.get('attempts', '?')}×, retried next run:"
                    f" {failure.get('reason', '?')}")
        if waiting:
            names = ", ".join(e.expid for e in waiting[:4]) + (" …" if len(waiting) > 4 else "")
            return f"waiting for {len(waiting)} exposure(s) to be installed: {names}"
        return "; ".join(extra) or "due: the next run does it"

    if due(night.night, now, config["catchup_hour"]) and "caughtup" not in night.stages:
        items.append(BacklogItem(night.stream, night.night, "catch-up",
                                 due_time(night.night, config["catchup_hour"]),
                                 why("caughtup", [])))
    if backend == "none" or not due(night.night, now, config["backup_hour"]):
        return items
    extra = []
    if "caughtup" not in night.stages:
        extra.append("waiting for the catch-up")
    if hpss is not None and not hpss.get("ready", True) and backend == "htar":
        extra.append(f"HPSS inactive: {hpss.get('why', '?')} (checked {hpss.get('time', '?')})")
    when = due_time(night.night, config["backup_hour"])
    if "backedup" not in night.stages:
        items.append(BacklogItem(night.stream, night.night, "backup", when,
                                 why("backedup", extra)))
        return items
    archived = night.archived()
    late = [e for e in night.sorted_exposures()
            if "installed" in e.stages and e.expid not in archived]
    if late:
        failure = night.backup_failure()
        text = (f"{len(late)} exposure(s) installed after the night went to tape: "
                + ", ".join(e.expid for e in late[:4]))
        if failure is not None:
            text += f"; failed {failure.get('attempts', '?')}×: {failure.get('reason', '?')}"
        elif extra:
            text += "; " + "; ".join(extra)
        items.append(BacklogItem(night.stream, night.night, "backup of late exposures", when,
                                 text))
    return items


def _stale_backup(config: dict) -> str:
    """Why an old night without a backup needs a person: the workflow stopped looking."""
    return (f"not backed up and older than lookback_nights ({config['lookback_nights']}):"
            " the workflow no longer schedules it")


def due_time(night: str, hour: int) -> dt.datetime:
    """When a night-level stage of `night` becomes due: `hour` UTC of the next day."""
    start = dt.datetime.strptime(night, "%Y%m%d").replace(tzinfo=dt.UTC)
    return start + dt.timedelta(days=1, hours=hour)


def classify(night: NightStatus, problems: list[Problem], backlog: list[BacklogItem],
             config: dict) -> str:
    """The night's colour: needs a person, done, or in progress."""
    night.problems = problems
    if problems or any(item.needs_person for item in backlog):
        night.state = NIGHT_ATTENTION
        return night.state
    exposures = night.exposures.values()
    complete = bool(night.exposures) and all(e.state == INSTALLED for e in exposures)
    archived = night.archived()
    backed_up = config["backup"]["backend"] == "none" or (
        "backedup" in night.stages and all(e.expid in archived for e in exposures))
    done = complete and "caughtup" in night.stages and backed_up and not night.failures
    night.state = NIGHT_DONE if done else NIGHT_PROGRESS
    return night.state


# --------------------------------------------------------------------------- year files


def night_rows(night: NightStatus) -> dict[str, list[list[int]]]:
    """DESI's rows for every exposure of a night: EXPID (no leading zeros) → rows.

    One row per stage, the newer of the marker (success 1, or 0 for a verification
    accepted by policy) and the failure record (success 0); backup rows for every
    exposure an archive holds, at that archive's time, and failed backup rows for the
    installed exposures no archive holds while a backup of the night is failing.
    """
    archived = night.archived()
    backup_failure = night.backup_failure()
    out = {}
    for expid in sorted(set(night.exposures) | set(archived)):
        exposure = night.exposures.get(expid) or ExposureStatus(night.stream, night.night, expid)
        rows = []
        for stage in ("staged", "checksummed"):
            row = _stage_row(stage, exposure.stages.get(stage), exposure.failures.get(stage))
            if row is not None:
                rows.append(row)
        if expid in archived:
            ms = milliseconds(archived[expid].get("time")) or milliseconds(
                night.stages["backedup"].get("time"))
            if ms is not None:
                rows.append([STATUS_STAGES["backedup"], 1, ms])
        elif backup_failure is not None and "installed" in exposure.stages:
            ms = milliseconds(backup_failure.get("time"))
            if ms is not None:
                rows.append([STATUS_STAGES["backedup"], 0, ms])
        if rows:
            rows.sort(key=lambda r: (r[2], r[0]), reverse=True)
            out[str(int(expid))] = rows
    return out


def _stage_row(stage: str, marker: dict | None, failure: dict | None) -> list[int] | None:
    code = STATUS_STAGES[stage]
    marker_ms = milliseconds(marker.get("time")) if marker is not None else None
    failure_ms = milliseconds(failure.get("time")) if failure is not None else None
    if marker_ms is not None and (failure_ms is None or marker_ms >= failure_ms):
        return [code, 0 if marker.get("outcome") == "failed" else 1, marker_ms]
    if failure_ms is not None:
        return [code, 0, failure_ms]
    return None


def valid_year_data(data: Any) -> bool:
    """Whether `data` has the status file layout (what DESI's page can read)."""
    if not isinstance(data, dict):
        return False
    for night, exposures in data.items():
        if not (len(night) == 8 and night.isdigit() and isinstance(exposures, dict)):
            return False
        for expid, rows in exposures.items():
            if not (expid.isdigit() and isinstance(rows, list)):
                return False
            for row in rows:
                if not (isinstance(row, list) and len(row) == 3
                        and all(type(x) is int for x in row)
                        and row[0] in (0, 1, 2) and row[1] in (0, 1)):
                    return False
    return True


def encode_year(data: dict[str, dict]) -> bytes:
    """The file's bytes: nights and exposures in order, compact, as the original wrote."""
    ordered = {n: dict(sorted(data[n].items(), key=lambda kv: int(kv[0]))) for n in sorted(data)}
    return json.dumps(ordered, separators=(",", ":")).encode()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _fingerprint(info: NightFiles, newest_allowed: int) -> str | None:
    """What a night's rows depend on, or None while the night may still be changing.

    Markers are written by rename, which changes the night directory's mtime; the
    night-level markers are fingerprinted one by one.
    """
    stamps = [info.directory_mtime, *(m for m, _ in info.files.values())]
    if max(stamps) >= newest_allowed:
        return None
    text = f"{info.directory_mtime}|" + "|".join(
        f"{name}:{m}:{s}" for name, (m, s) in sorted(info.files.items()))
    return hashlib.sha1(text.encode()).hexdigest()


def _keep_copy(path: Path, suffix: str, why: str) -> None:
    copy = path.with_name(path.name + suffix)
    shutil.copy2(path, copy)
    log.warning("%s %s: kept as %s and rebuilt from the state.", path, why, copy)


def write_year_files(state: str | os.PathLike, stream: str, directory: str | os.PathLike,
                     settle: float = SETTLE_SECONDS) -> list[Path]:
    """Rebuild the year files of `stream` in `directory` from the state.

    Every year with a night in the state is rebuilt. A file that is not valid JSON in
    the layout, or that differs from what was last written here (edited by hand), is
    kept as ``.bad`` and replaced. A valid file written by someone else (the original
    daemon, before this workflow took over) is kept once as ``.orig``; its nights the
    state does not know are carried over, so DESI's history survives the change.

    A night's rows are reused from the file when neither its markers nor the file
    changed since it was written (the manifest holds the fingerprints), so a rebuild
    after a run reads only the nights that run touched.

    Returns
    -------
    list of Path
        The year files, written or already up to date.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    newest_allowed = time.time_ns() - int(settle * 1e9)
    index = scan_stream(state, stream, stat=True)
    fingerprints = {n: _fingerprint(info, newest_allowed) for n, info in index.items()}
    manifest_file = directory / MANIFEST
    manifest = read_record(manifest_file) or {}
    if manifest.get("version") != ROWS_VERSION or manifest.get("stream") != stream:
        manifest = {"files": manifest.get("files", {}), "nights": {}}
    written: dict[str, str] = dict(manifest.get("files", {}))
    cached_nights: dict[str, str] = manifest.get("nights", {})
    paths = []
    for year in sorted({night[:4] for night in index}):
        path = directory / YEAR_FILE.format(year=year)
        existing = None
        raw = path.read_bytes() if path.exists() else None
        if raw is not None and written.get(path.name) == _sha256(raw):
            existing = json.loads(raw)  # exactly what was written here: valid as written
        elif raw is not None:
            try:
                data = json.loads(raw)
            except ValueError:
                data = None
            if not valid_year_data(data):
                _keep_copy(path, ".bad", "is not a valid status file")
            elif path.name in written:
                _keep_copy(path, ".bad", "was changed since this workflow wrote it")
            elif not path.with_name(path.name + ".orig").exists():
                _keep_copy(path, ".orig", "was written by another program (the original"
                           " daemon?); its nights the state does not know are carried over;")
            else:
                _keep_copy(path, ".bad", "was written by another program")
        legacy = _legacy_nights(path)
        rows = {n: r for n, r in legacy.items() if n not in index}
        for night in sorted(n for n in index if n.startswith(year)):
            fingerprint = fingerprints[night]
            if (existing is not None and fingerprint is not None and night in existing
                    and cached_nights.get(night) == fingerprint):
                night_data = existing[night]
            else:
                night_data = night_rows(read_night(state, stream, night, index[night]))
            if night_data:
                rows[night] = night_data
        content = encode_year(rows)
        digest = _sha256(content)
        if existing is None or written.get(path.name) != digest:
            write_bytes_atomic(path, content)
        written[path.name] = digest
        paths.append(path)
    write_json_atomic(manifest_file, {
        "version": ROWS_VERSION, "stream": stream, "files": written,
        "nights": {n: f for n, f in fingerprints.items() if f is not None},
        "note": "written by scripts/status.py: what it last wrote, to tell hand edits apart",
    })
    return paths


def _legacy_nights(path: Path) -> dict[str, dict]:
    raw = read_record(path.with_name(path.name + ".orig"))
    return raw if valid_year_data(raw) else {}


def write_bytes_atomic(path: Path, content: bytes) -> None:
    """Temporary file + rename: a reader sees the old file or the new one, never half."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(content)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # the web server and DESI's tools read it
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# --------------------------------------------------------------------------- config


def with_defaults(config: dict) -> dict:
    """`config` with the schema's defaults filled in, as Snakemake's validation does.

    The command reads the YAML file without Snakemake; the schema stays the one
    place where defaults are written.
    """
    import yaml

    schema = yaml.safe_load(SCHEMA.read_text())

    def fill(value: Any, node: dict) -> Any:
        if not isinstance(value, dict):
            return value
        out = dict(value)
        for key, sub in node.get("properties", {}).items():
            if key not in out and "default" in sub:
                out[key] = json.loads(json.dumps(sub["default"]))
            if key in out:
                out[key] = fill(out[key], sub)
        return out

    return fill(config, schema)


def status_directory(config: dict) -> Path:
    """STATUS: the ``status`` key, by default ``STATE/status``."""
    return Path(config.get("status") or Path(config["state"], "status"))


def year_file_directory(config: dict, stream: str) -> Path:
    """Where a stream's year files go: STATUS itself, or STATUS/STREAM with several streams."""
    base = status_directory(config)
    return base if len(config["streams"]) == 1 else base / stream


# --------------------------------------------------------------------------- the report


@dataclass
class Report:
    """Everything the status page shows, read from the state."""

    generated: dt.datetime
    now: dt.datetime
    config: dict
    nights: list[NightStatus]                 # newest first, every stream
    problems: list[Problem]                   # everything that needs a person
    backlog: list[BacklogItem]
    hpss: dict | None
    listings: dict[str, dt.datetime | None]   # stream -> time of the last listing
    year_files: list[str] = field(default_factory=list)  # relative to the page


def recent_nights(config: dict, stream: str, count: int, now: dt.datetime,
                  index: dict[str, NightFiles] | None = None) -> list[NightStatus]:
    """The `count` newest nights of a stream (state and last listing), read in full."""
    state = config["state"]
    index = scan_stream(state, stream) if index is None else index
    listing, _ = read_listing(state, stream)
    names = sorted(set(index) | set(listing), reverse=True)[:count]
    return [read_night(state, stream, n, index.get(n, NightFiles()), listing.get(n, ()))
            for n in names]


def all_problems(config: dict, stream: str, now: dt.datetime,
                 index: dict[str, NightFiles] | None = None) -> list[Problem]:
    """What needs a person in the whole state of a stream.

    Lists the night directories but reads only the failure records (and, for nights
    older than the look-back window, nothing but names): fast on a large archive.
    """
    state = config["state"]
    index = scan_stream(state, stream) if index is None else index
    oldest = first_night(now, config["lookback_nights"])
    out = []
    for night, files in sorted(index.items(), reverse=True):
        names = _directory_names(Path(state, stream, night)) if files.directory else []
        if any(n.endswith(FAILED) for n in names) or any(f.endswith(FAILED) for f in files.files):
            status = read_night(state, stream, night, files, only_failures=True)
            out += find_problems(status, state, config["verify"]["max_attempts"])
        if (night < oldest and config["backup"]["backend"] != "none"
                and f"{night}.backedup" not in files.files
                and any(n.endswith(".installed") for n in names)):
            out.append(Problem(stream, night, None, "backedup", _stale_backup(config), "", "",
                               STALE_ACTION,
                               str(marker_path(state, stream, night, None, "backedup"))))
    return out


def _directory_names(path: Path) -> list[str]:
    try:
        with os.scandir(path) as entries:
            return [e.name for e in entries]
    except FileNotFoundError:
        return []


def build_report(config: dict, now: dt.datetime | None = None,
                 nights: int = PAGE_NIGHTS) -> Report:
    """Read the state into what the page shows: recent nights, problems, backlog."""
    config = with_defaults(config)
    now = now or get_now(config)
    state = config["state"]
    hpss = read_record(hpss_status_path(state))
    shown, problems, backlog, listings = [], [], [], {}
    for stream in config["streams"]:
        index = scan_stream(state, stream)
        problems += all_problems(config, stream, now, index)
        listings[stream] = read_listing(state, stream)[1]
        for night in recent_nights(config, stream, nights, now, index):
            items = night_backlog(night, now, config, hpss)
            backlog += items
            mine = [p for p in problems if p.stream == stream and p.night == night.night]
            classify(night, mine, items, config)
            shown.append(night)
    shown.sort(key=lambda n: (n.night, n.stream), reverse=True)
    return Report(dt.datetime.now(dt.UTC), now, config, shown, problems, backlog, hpss,
                  listings)


def write_status(config: dict, now: dt.datetime | None = None, page: bool = True,
                 settle: float = SETTLE_SECONDS) -> list[Path]:
    """Rebuild every status file from the state: the year files, then the page.

    Returns
    -------
    list of Path
        The files written (the page last).
    """
    config = with_defaults(config)
    directory = status_directory(config)
    files = []
    for stream in config["streams"]:
        files += write_year_files(config["state"], stream,
                                  year_file_directory(config, stream), settle)
    if page:
        from scripts.status_page import write_page

        report = build_report(config, now)
        report.year_files = [str(f.relative_to(directory)) for f in files]
        files.append(write_page(report, directory / PAGE))
    return files


def rebuild_after_run(config: dict) -> str:
    """Snakemake's onsuccess/onerror: rebuild the status files; one line for the log.

    Writing the status files must not turn a good transfer into a failed run: an
    error (a full disk, a permission) is logged to ``STATE/logs/status.log`` and
    reported in the returned line.
    """
    config = with_defaults(config)
    handler: logging.Handler = logging.NullHandler()
    start = time.monotonic()
    try:
        logs = Path(config["state"], "logs")
        logs.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(logs / "status.log")
        formatter = logging.Formatter("%(asctime)sZ %(levelname)s %(message)s",
                                      "%Y-%m-%dT%H:%M:%S")
        formatter.converter = time.gmtime
        handler.setFormatter(formatter)
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        files = write_status(config)
        line = (f"Status files rebuilt from the state in {time.monotonic() - start:.1f} s;"
                f" status page: {files[-1].absolute()}")
        log.info(line)
        return line
    except OSError as err:
        line = (f"Status files NOT rebuilt ({err}); the transfers are not affected."
                " Fix it, then run: python -m scripts.status --write")
        log.error(line)
        return line
    finally:
        log.removeHandler(handler)
        handler.close()


# --------------------------------------------------------------------------- command


def human_bytes(size: int) -> str:
    value = float(size)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} TB"


def short_time(value: Any) -> str:
    """``11-29 02:11:46``: a night spans two UTC dates, so the date stays."""
    when = value if isinstance(value, dt.datetime) else parse_time(value)
    return "" if when is None else when.strftime("%m-%d %H:%M:%S")


def summary_row(night: NightStatus) -> dict:
    archived = night.archived()
    return {
        "stream": night.stream, "night": night.night, "state": night.state,
        "exposures": len(night.exposures), "bytes": night.bytes,
        "verified": night.count(lambda e: e.verification == "verified"),
        "installed": night.count(lambda e: "installed" in e.stages),
        "backed_up": sum(1 for e in night.exposures if e in archived),
        "caught_up": "caughtup" in night.stages,
        "failures": night.failure_count(),
    }


def exposure_row(exposure: ExposureStatus) -> dict:
    latency = exposure.latency()
    archive = exposure.archive or {}
    return {
        "stream": exposure.stream, "night": exposure.night, "expid": exposure.expid,
        "state": exposure.state, "bytes": exposure.bytes,
        "staged": exposure.stages.get("staged", {}).get("time"),
        "verified": exposure.stages.get("checksummed", {}).get("time"),
        "verification": exposure.verification,
        "installed": exposure.stages.get("installed", {}).get("time"),
        "backed_up": archive.get("time"), "archive": archive.get("name"),
        "latency_seconds": None if latency is None else round(latency[0], 1),
        "latency_from": None if latency is None else latency[1],
        "failures": {s: {"reason": f.get("reason"), "attempts": f.get("attempts"),
                         "time": f.get("time"), "held": bool(f.get("held"))}
                     for s, f in exposure.failures.items()},
    }


def format_table(rows: list[dict]) -> str:
    """Rows as aligned text columns (the first row's keys are the header)."""
    if not rows:
        return "(nothing recorded yet)"
    headers = list(rows[0])
    cells = [[str(r[h]) for h in headers] for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
              for row in cells]
    return "\n".join(lines)


def _summary_text(row: dict) -> dict:
    return {"stream": row["stream"], "night": row["night"], "state": row["state"],
            "exposures": row["exposures"], "size": human_bytes(row["bytes"]),
            "verified": row["verified"], "installed": row["installed"],
            "backed up": row["backed_up"], "caught up": "yes" if row["caught_up"] else "no",
            "failures": row["failures"]}


def _exposure_text(row: dict) -> dict:
    latency = row["latency_seconds"]
    return {"expid": row["expid"], "state": row["state"], "size": human_bytes(row["bytes"]),
            "staged": short_time(row["staged"]), "verified": short_time(row["verified"]),
            "installed": short_time(row["installed"]),
            "backed up": short_time(row["backed_up"]),
            "latency": "" if latency is None else f"{latency:.0f} s",
            "failure": "; ".join(f"{s}: {f['reason']} (attempt {f['attempts']})"
                                 for s, f in row["failures"].items())}


def _problem_dict(problem: Problem) -> dict:
    return {"stream": problem.stream, "item": problem.item, "stage": problem.stage,
            "attempts": problem.attempts, "since": problem.time, "reason": problem.reason,
            "action": problem.action, "record": problem.record}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Show the transfer status, read from the state (markers and failure"
                    " records); --write rebuilds the status files and page.")
    parser.add_argument("--config", default="config.yaml", help="configuration file")
    parser.add_argument("--nights", type=int, default=10, help="how many recent nights")
    parser.add_argument("--night", help="the exposures of one night (YYYYMMDD)")
    parser.add_argument("--failures", action="store_true", help="what needs a person")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--write", action="store_true",
                        help="rebuild STATUS/desi_transfer_status_YYYY.json and index.html")
    args = parser.parse_args(argv)
    if args.night is not None and not (len(args.night) == 8 and args.night.isdigit()):
        parser.error(f"--night {args.night}: expected YYYYMMDD")
    try:
        config = with_defaults(load_yaml(args.config))
        now = get_now(config)
        state = config["state"]
        streams = list(config["streams"])
    except ConfigurationError as err:
        print(f"status: {err}", file=sys.stderr)
        return 2
    except KeyError as err:
        print(f"status: {args.config}: {err.args[0]} is required; see README.md, section"
              " Configuration", file=sys.stderr)
        return 2
    written = []
    if args.write:
        try:
            written = write_status(config, now)
        except OSError as err:
            print(f"status: cannot write the status files: {err}", file=sys.stderr)
            return 1
    hpss = read_record(hpss_status_path(state))
    if args.failures:
        problems = [p for s in streams for p in all_problems(config, s, now)]
        rows = [_problem_dict(p) for p in problems]
        if args.json:
            output = rows
        elif rows:
            output = format_table([{k: v for k, v in r.items() if k != "record"} for r in rows])
        else:
            output = "Nothing needs a person."
    else:
        nights, backlog = [], []
        for stream in streams:
            if args.night:
                listing, _ = read_listing(state, stream)
                chosen = [read_night(state, stream, args.night,
                                     listed=listing.get(args.night, ()))]
            else:
                chosen = recent_nights(config, stream, args.nights, now)
            for night in chosen:
                items = night_backlog(night, now, config, hpss)
                backlog += items
                problems = find_problems(night, state, config["verify"]["max_attempts"])
                classify(night, problems, items, config)
                nights.append(night)
        nights.sort(key=lambda n: (n.night, n.stream), reverse=True)
        if args.night:
            rows = [exposure_row(e) for n in nights for e in n.sorted_exposures()]
            text = format_table([_exposure_text(r) for r in rows]) if rows else (
                f"Nothing recorded for night {args.night}.")
        else:
            rows = [summary_row(n) for n in nights]
            text = format_table([_summary_text(r) for r in rows])
        if backlog:
            text += "\n\nBacklog (due, not done):\n" + "\n".join(
                f"  {b.stream} {b.night} {b.stage}: {b.why}" for b in backlog)
        output = rows if args.json else text
    if args.json:
        json.dump(output, sys.stdout, indent=1, default=str)
        print()
    else:
        print(output)
        if written:
            print(f"\nStatus page: {written[-1].absolute().as_uri()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
