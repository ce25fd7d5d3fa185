"""Reading the state: markers, failure records, the last listing, HPSS's last answer.

Every reader here lists directories with one ``scandir`` and reads only the files it
needs, so the status command stays fast however large the archive.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from scripts.markers import (
    EXPOSURE_STAGES,
    FAILED,
    NIGHT_STAGES,
    read_record,
    utc_timestamp,
    valid_expid,
    valid_night,
    write_json_atomic,
)
from scripts.state_layout import (
    HOLD,
    hpss_status_path,
    listing_cache_path,
    night_directory,
    stream_directory,
)
from scripts.status.model import ExposureStatus, NightStatus

#: Exposure records the status reads: the stages, the catch-up's ``updated``, and a
#: person's hold (``held``).
EXPOSURE_RECORDS = (*EXPOSURE_STAGES, "updated", HOLD)


@dataclass
class NightFiles:
    """What one listing of ``STATE/STREAM`` says about a night."""

    directory: bool = False
    directory_mtime: int = 0
    files: dict[str, tuple[int, int]] = field(default_factory=dict)  # name -> (mtime, size)


def scan_stream(state: str | os.PathLike, stream: str, stat: bool = False,
                since: str = "", before: list[str] | None = None) -> dict[str, NightFiles]:
    """The nights of a stream from one ``scandir`` of ``STATE/STREAM``.

    With `stat`, the modification times that fingerprint each night are read too
    (one ``stat`` per night directory and per night-level marker). With `since`
    (``YYYYMMDD``), only the nights from that one on (the others cost a comparison;
    their names are appended to `before` when it is given).
    """
    nights: dict[str, NightFiles] = {}
    try:
        entries = os.scandir(stream_directory(state, stream))
    except (FileNotFoundError, NotADirectoryError):
        return nights
    with entries:
        for entry in entries:
            name, night = entry.name, entry.name[:8]
            if night < since:
                if before is not None:
                    before.append(name)
                continue
            if not valid_night(night):
                continue
            if len(name) == 8 and entry.is_dir():
                info = nights.setdefault(night, NightFiles())
                info.directory = True
                info.directory_mtime = entry.stat().st_mtime_ns if stat else 0
            elif len(name) > 8 and name[8] == ".":
                info = nights.setdefault(night, NightFiles())
                st = entry.stat() if stat else None
                info.files[name] = (st.st_mtime_ns, st.st_size) if st else (0, 0)
    return nights


def read_marker(path: str | os.PathLike) -> dict:
    """A marker's record; an unreadable one still counts (it exists), dated by its mtime."""
    record = read_record(path)
    if record is not None:
        return record
    try:
        mtime = os.stat(path).st_mtime
    except OSError:
        return {"unreadable": True}
    return {"unreadable": True, "time": utc_timestamp(dt.datetime.fromtimestamp(mtime, dt.UTC))}


def split_stage(rest: str) -> tuple[str, bool]:
    """``checksummed.failed`` → (``checksummed``, True); ``backedup.2`` → (``backedup.2``, False).
    """
    if rest.endswith(FAILED):
        return rest[: -len(FAILED)], True
    return rest, False


def is_night_stage(stage: str) -> bool:
    base, _, index = stage.partition(".")
    return base in NIGHT_STAGES and (not index or (base == "backedup" and index.isdigit()))


def directory_names(path: str | os.PathLike) -> list[str]:
    """The names in a directory, or none when it is missing."""
    try:
        with os.scandir(path) as entries:
            return [e.name for e in entries]
    except (FileNotFoundError, NotADirectoryError):
        return []


def _read_exposures(status: NightStatus, directory: Path, only_failures: bool) -> None:
    for name in directory_names(directory):
        expid, _, rest = name.partition(".")
        stage, failed = split_stage(rest)
        if not valid_expid(expid) or stage not in EXPOSURE_RECORDS:
            continue
        if only_failures and not failed:
            continue
        exposure = status.exposures.get(expid)
        if exposure is None:
            exposure = status.exposures[expid] = ExposureStatus(status.stream, status.night, expid)
        (exposure.failures if failed else exposure.stages)[stage] = read_marker(directory / name)


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
        stage, failed = split_stage(name[9:])
        if not is_night_stage(stage) or (only_failures and not failed):
            continue
        record = read_marker(stream_directory(state, stream) / name)
        (status.failures if failed else status.stages)[stage] = record
    if files.directory:
        _read_exposures(status, night_directory(state, stream, night), only_failures)
    for expid in listed:
        exposure = status.exposures.setdefault(expid, ExposureStatus(stream, night, expid))
        exposure.listed = True
    for expid, archive in status.archived().items():
        if expid in status.exposures:
            status.exposures[expid].archive = archive
    return status




def read_listing(state: str | os.PathLike, stream: str) -> tuple[dict[str, set[str]],
                                                                 dt.datetime | None]:
    """The last listing of the mountain: NIGHT → published EXPIDs, and when it was made."""
    return listing_of(read_record(listing_cache_path(state, stream)) or {})


def listing_of(record: dict) -> tuple[dict[str, set[str]], dt.datetime | None]:
    """`read_listing` of a listing cache's record already read."""
    nights: dict[str, set[str]] = {}
    for item in record.get("exposures", []):
        # A cache written before a check existed may hold an impossible date.
        if (isinstance(item, list) and len(item) == 2 and valid_night(item[0])
                and valid_expid(item[1])):
            nights.setdefault(str(item[0]), set()).add(str(item[1]))
    epoch = record.get("epoch")
    when = dt.datetime.fromtimestamp(epoch, dt.UTC) if isinstance(epoch, (int, float)) else None
    return nights, when




def record_hpss_status(state: str | os.PathLike, ready: bool, why: str) -> None:
    """Remember HPSS's last answer so that the page can say why backups wait."""
    write_json_atomic(hpss_status_path(state),
                      {"time": utc_timestamp(), "ready": bool(ready), "why": why})
