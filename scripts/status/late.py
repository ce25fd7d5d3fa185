"""Late data: what the mountain published and the archive does not hold in time.

An exposure is *late* when its link was published at the mountain (the link's own
mtime, as the listing reports it) more than ``alerts.late_after`` seconds before now
(the configuration's ``now``, else the clock) and it is not installed, whatever the
reason: held, failing, or waiting behind a backlog. A night is late when its backup
has been due (``backup_hour`` of the day after it) for more than
``alerts.backup_late_after`` seconds and the night has no backup. Both are problems
that need a person (`scripts.status.problems`): counted in the metrics, on the page
and in ``--failures``, mailed once each.

`late_exposures` and `late_backups` decide from what they are given; `read_late`
reads it: the last listing and the marker directories of the nights in the window,
so it costs a few ``scandir`` calls however large the archive.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from scripts.markers import read_record, valid_expid, valid_night
from scripts.remote import first_night
from scripts.state_layout import listing_cache_path, night_directory
from scripts.status.reading import NightFiles, directory_names
from scripts.targets import due_time, scan_night


@dataclass(frozen=True)
class LateExposure:
    """A published exposure not installed `seconds` after its publication."""

    stream: str
    night: str
    expid: str
    published: float   # epoch seconds: the link's mtime at the mountain
    seconds: float     # since then


@dataclass(frozen=True)
class LateNight:
    """A night not on tape `seconds` after its backup became due."""

    stream: str
    night: str
    due: float         # epoch seconds
    seconds: float     # since then


def late_exposures(stream: str, published: Mapping[tuple[str, str], float],
                   installed: Mapping[str, set[str]], now: float,
                   late_after: float) -> list[LateExposure]:
    """The exposures of `published` ((night, expid) → publication, epoch seconds) that
    are not in `installed` (night → installed EXPIDs) more than `late_after` seconds
    after their publication at `now`, oldest publication first."""
    out = [LateExposure(stream, night, expid, when, now - when)
           for (night, expid), when in published.items()
           if now - when > late_after and expid not in installed.get(night, ())]
    return sorted(out, key=lambda e: (e.published, e.night, e.expid))


def late_backups(stream: str, unbacked: Iterable[str], now: float, backup_hour: int,
                 late_after: float) -> list[LateNight]:
    """The nights of `unbacked` (nights with installed exposures and no backup) whose
    backup has been due for more than `late_after` seconds at `now`, oldest first."""
    out = []
    for night in sorted(unbacked):
        due = due_time(night, backup_hour).timestamp()
        if now - due > late_after:
            out.append(LateNight(stream, night, due, now - due))
    return out


def published_times(state: str | os.PathLike, stream: str, oldest: str,
                    record: dict | None = None,
                    listed: Mapping[str, set[str]] | None = None
                    ) -> dict[tuple[str, str], float]:
    """(night, expid) → publication time (epoch seconds) of every exposure in the last
    listing of `stream` (its cache, or `record` when the caller has read it), from
    night `oldest` on. Read back, not trusted: a key that is no NIGHT/EXPID (or, given
    `listed`, the record's exposures checked by `scripts.status.reading.listing_of`,
    none of them) or a time that is no number is skipped."""
    if record is None:
        record = read_record(listing_cache_path(state, stream)) or {}
    published = record.get("published")
    out = {}
    for key, when in (published.items() if isinstance(published, dict) else ()):
        night, _, expid = str(key).partition("/")
        known = (expid in listed.get(night, ()) if listed is not None
                 else valid_night(night) and valid_expid(expid))
        if (known and night >= oldest
                and isinstance(when, (int, float)) and not isinstance(when, bool)):
            out[night, expid] = float(when)
    return out


def read_late(config: dict, stream: str, now: dt.datetime, index: Mapping[str, NightFiles],
              installed: Mapping[str, set[str]] | None = None,
              published: Mapping[tuple[str, str], float] | None = None
              ) -> tuple[list[LateExposure], list[LateNight]]:
    """The late exposures and nights of `stream` at `now`.

    `index` is the stream's `scripts.status.reading.scan_stream`. Only nights in the
    look-back window count: an older night without a backup is already a problem of its
    own (`scripts.status.problems`, "older than lookback_nights"). A caller that has
    read them already passes `installed` (night -> installed EXPIDs of the listed
    nights) and `published` (`published_times`).
    """
    state, alerts = config["state"], config["alerts"]
    oldest = first_night(now, config["lookback_nights"])
    if published is None:
        published = published_times(state, stream, oldest)
    if installed is None:
        installed = {night: scan_night(state, stream, night).installed
                     for night in {n for n, _ in published}}
    exposures = late_exposures(stream, published, installed, now.timestamp(),
                               alerts["late_after"])
    nights: list[LateNight] = []
    if config["backup"]["backend"] != "none":
        # Cheap tests first: only a night due long enough without a backup is read.
        limit = now.timestamp() - alerts["backup_late_after"]
        candidates = [n for n, files in index.items()
                      if n >= oldest and files.directory and f"{n}.backedup" not in files.files
                      and due_time(n, config["backup_hour"]).timestamp() < limit]
        unbacked = [n for n in candidates
                    if any(name.endswith(".installed")
                           for name in directory_names(night_directory(state, stream, n)))]
        nights = late_backups(stream, unbacked, now.timestamp(), config["backup_hour"],
                              alerts["backup_late_after"])
    return exposures, nights
