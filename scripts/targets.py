"""What is pending: the bounded target list the Snakefile hands to Snakemake.

Only listed exposures that are not installed (and not held by policy) become
targets, so done work never enters the DAG and a no-op run over any archive costs
about as much as an empty Snakemake run.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Iterable
from dataclasses import dataclass, field

from scripts.markers import FAILED, read_record, valid_expid, valid_night
from scripts.state_layout import HOLD, night_directory, stream_directory


@dataclass
class NightState:
    """The markers found for one night of one stream."""

    installed: set[str] = field(default_factory=set)
    #: Held by policy (a failure record says ``held``) or by a person (``EXPID.held``).
    held: set[str] = field(default_factory=set)


def scan_night(state: str | os.PathLike, stream: str, night: str) -> NightState:
    """Read the marker directory of one night: one ``scandir``, no per-file ``stat``."""
    found = NightState()
    try:
        entries = os.scandir(night_directory(state, stream, night))
    except FileNotFoundError:
        return found
    with entries:
        for entry in entries:
            name = entry.name
            expid = name.split(".", 1)[0]
            if not valid_expid(expid):  # a stray name is no exposure (nor a job argument)
                continue
            if name.endswith(".installed"):
                found.installed.add(expid)
            elif name == f"{expid}.{HOLD}":  # a person's hold (scripts/control.py)
                found.held.add(expid)
            elif name.endswith((".checksummed" + FAILED, ".staged" + FAILED)):
                record = read_record(entry.path) or {}
                if record.get("held"):
                    found.held.add(expid)
    return found


def pending_exposures(
    exposures: Iterable[tuple[str, str]], nights: dict[str, NightState]
) -> list[tuple[str, str]]:
    """The listed exposures still to install: not installed, not held by policy."""
    empty = NightState()
    pending = []
    for night, expid in exposures:
        seen = nights.get(night, empty)
        if expid not in seen.installed and expid not in seen.held:
            pending.append((night, expid))
    return pending


def due_time(night: str, hour: int) -> dt.datetime:
    """When a night-level stage of `night` becomes due: `hour` UTC of the day after
    (a night ends in the morning)."""
    start = dt.datetime.strptime(night, "%Y%m%d").replace(tzinfo=dt.UTC)
    return start + dt.timedelta(days=1, hours=hour)


def due(night: str, now: dt.datetime, hour: int) -> bool:
    """Whether a night-level stage of `night` is due at `now` (see `due_time`)."""
    return now >= due_time(night, hour)


def night_exposures(exposures: Iterable[tuple[str, str]], night: str,
                    seen: NightState) -> list[str]:
    """The exposures of `night` its night-level stages wait for, sorted.

    The listed ones (held ones excluded), and those the state says are installed,
    listed or not: links removed at the mountain after installation must not hide an
    exposure from its night's catch-up and backup.
    """
    listed = {e for n, e in exposures if n == night and e not in seen.held}
    return sorted(listed | seen.installed)


def marker_nights(state: str | os.PathLike, stream: str, first_night: str) -> list[str]:
    """The nights from `first_night` on that have a marker directory, sorted.

    One ``scandir`` of ``STATE/STREAM``, no per-entry ``stat``: cheap at any archive
    size. Whether a night holds installed exposures is `scan_night`'s to say.
    """
    try:
        entries = os.scandir(stream_directory(state, stream))
    except FileNotFoundError:
        return []
    with entries:
        return sorted(
            e.name for e in entries
            if valid_night(e.name) and e.name >= first_night and e.is_dir()
        )


def not_backed_up(expids: Iterable[str], history: list[dict]) -> list[str]:
    """The exposures no archive in `history` holds yet."""
    archived = {e for archive in history for e in archive.get("exposures", [])}
    return [e for e in expids if e not in archived]


def newest_first(exposures: Iterable[tuple[str, str, str]], limit: int | None = None
                 ) -> list[tuple[str, str, str]]:
    """The exposures one run of the exposure lane plans: the newest night first (tonight,
    then the backlog from its newest night back), in the order they were taken within
    a night, at most `limit` of them (all with None).

    Items are (stream, night, expid). Bounded runs re-list the mountain often, so a
    backlog drains over many short runs and tonight's data never waits behind it.
    """
    ordered = sorted(exposures, key=lambda item: (-int(item[1]), item[2], item[0]))
    return ordered if limit is None else ordered[:limit]


def night_ready(expids: Iterable[str], seen: NightState) -> bool:
    """Whether every exposure a night's stages wait for is installed (see
    `night_exposures`): only then may the night lane plan its catch-up and backup."""
    return set(expids) <= seen.installed
