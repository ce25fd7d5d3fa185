"""Marker files: the workflow's state.

A marker ``STATE/STREAM/NIGHT/EXPID.STAGE`` (or ``STATE/STREAM/NIGHT.STAGE`` for
night-level stages) exists only when its stage succeeded and holds a small JSON
record. A failed step writes ``<marker>.failed`` instead; the next success removes it.
Every path under STATE comes from scripts/state_layout.py.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from scripts.state_layout import FAILED, failure_path, marker_path  # noqa: F401 (the markers' paths)

#: Exposure-level stages, in order.
EXPOSURE_STAGES = ("staged", "checksummed", "installed")
#: Night-level stages, in order.
NIGHT_STAGES = ("caughtup", "backedup")
#: The years a night may have: a night outside them is a typo or a forgery.
NIGHT_YEARS = (1970, 2999)


def valid_night(night: object) -> bool:
    """Whether `night` is a night: ``YYYYMMDD`` in ASCII digits, a real calendar date
    (not ``20261131`` nor ``20260230``) in `NIGHT_YEARS`.

    The one check for every night that enters the workflow: from the mountain's
    listing, from the state's directories and records, from the status files. A name
    that fails it is malformed, skipped and reported, and can never break a date
    computation downstream.
    """
    if not (isinstance(night, str) and len(night) == 8 and night.isascii() and night.isdigit()):
        return False
    return _real_date(night)


@functools.lru_cache(maxsize=8192)
def _real_date(night: str) -> bool:
    """Whether 8 ASCII digits are a date in `NIGHT_YEARS`: asked for the same few
    thousand nights on every read of a listing or a state, so remembered."""
    year, month, day = int(night[:4]), int(night[4:6]), int(night[6:])
    if not NIGHT_YEARS[0] <= year <= NIGHT_YEARS[1]:
        return False
    try:
        dt.date(year, month, day)
    except ValueError:
        return False
    return True


def valid_expid(expid: object) -> bool:
    """Whether `expid` is an exposure id: 8 ASCII digits."""
    return isinstance(expid, str) and len(expid) == 8 and expid.isascii() and expid.isdigit()


def utc_timestamp(when: dt.datetime | None = None) -> str:
    """ISO-8601 UTC time with a ``Z`` suffix, to the second."""
    when = when or dt.datetime.now(dt.UTC)
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def write_bytes_atomic(path: str | os.PathLike, content: bytes, mode: int | None = None) -> None:
    """Write `content` to `path` so that a reader sees the old or the new file, never half.

    A temporary file beside `path`, flushed to disk, then renamed over it; with `mode`
    the file gets those permissions (the status files are read by a web server).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(content)
            f.flush()
            os.fsync(f.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: str | os.PathLike, record: dict[str, Any]) -> None:
    """Write `record` as JSON to `path` atomically (`write_bytes_atomic`)."""
    text = json.dumps(record, indent=1, sort_keys=True) + "\n"
    write_bytes_atomic(path, text.encode())


def read_record(path: str | os.PathLike) -> dict[str, Any] | None:
    """The JSON record at `path`, or None if absent or unreadable."""
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_marker(marker: str | os.PathLike, record: dict[str, Any]) -> None:
    """Record success: write the marker and remove a stale failure record."""
    record = {"time": utc_timestamp(), **record}
    write_json_atomic(marker, record)
    failure_path(marker).unlink(missing_ok=True)


def write_failure(marker: str | os.PathLike, reason: str, attempts: int, **extra: Any) -> dict:
    """Record a failed attempt beside where `marker` would be; return the record."""
    record = {"time": utc_timestamp(), "reason": reason, "attempts": attempts, **extra}
    write_json_atomic(failure_path(marker), record)
    return record


def read_failure(marker: str | os.PathLike) -> dict[str, Any] | None:
    """The failure record of `marker`, if any."""
    return read_record(failure_path(marker))


def attempt_text(attempt: int, max_attempts: int) -> str:
    """How a log line counts an attempt: ``attempt 2 of 3``, and past the bound (a
    failure of the environment's is retried every run) ``attempt 5, past the 3 of
    verify.max_attempts``, never "attempt 5 of 3"."""
    if attempt <= max_attempts:
        return f"attempt {attempt} of {max_attempts}"
    return f"attempt {attempt}, past the {max_attempts} of verify.max_attempts"


def next_attempt(marker: str | os.PathLike) -> int:
    """The number of the attempt starting now: one more than its failure record counts."""
    return (read_failure(marker) or {}).get("attempts", 0) + 1
