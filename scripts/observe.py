"""Everything a plan depends on, gathered in one place: the only planning code that
does I/O (scripts/plan.py decides from what is gathered here).

It lists the mountain (each stream once per run, through the listing cache), reads the
markers of the nights that matter, the backup records of the nights due for backup, and
HPSS's status when backups are planned. A run records what it saw (the listing cache and
its failure, the HPSS status for the status page, an unreadable backup record moved
aside as ``.bad``); a preview records nothing.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging

from scripts.configuration import Stream
from scripts.hpss import hpss_status
from scripts.markers import failure_path, marker_path, read_record, write_failure
from scripts.plan import Observation, Plan, StreamObservation
from scripts.remote import Listing, RemoteError, list_exposures
from scripts.state_layout import listing_cache_path, recall_marker_path
from scripts.status import record_hpss_status
from scripts.targets import due, marker_nights, scan_night

log = logging.getLogger("observe")


def observe_listing(config: dict, stream: Stream, first_night: str, run_id: str | None,
                    preview: bool) -> tuple[Listing | None, str | None]:
    """The mountain's listing for `stream`, or the one-line reason it could not be had.

    A failure is recorded beside the cache (not in a preview): the cron entry counts
    unreachable runs from it.
    """
    state = config["state"]
    cache = listing_cache_path(state, stream.name)
    try:
        listing = list_exposures(config["remote"], stream.source, first_night,
                                 cache_file=cache,
                                 cache_seconds=config["remote"]["listing_cache"],
                                 run_id=run_id, write_cache=not preview)
    except RemoteError as err:
        if not preview:
            write_failure(cache, str(err), 1)
        return None, f"desitransfer: stream {stream.name}: {err}"
    if not preview:
        failure_path(cache).unlink(missing_ok=True)
    return listing, None


def backup_history(state: str, stream: str, night: str, preview: bool) -> list | None:
    """The archives recorded for a night, or None if it has no readable record.

    An unreadable record is moved aside (``.bad``, kept for a person; not in a
    preview): Snakemake would take the file as done, and the night's archives are then
    adopted again from what the tape really holds.
    """
    marker = marker_path(state, stream, night, None, "backedup")
    record = read_record(marker)
    if record is None and marker.exists() and not preview:
        marker.rename(f"{marker}.bad")
        log.warning("%s is unreadable: moved to %s.bad; the night's backup is taken again"
                    " from what its archives hold.", marker, marker)
    return None if record is None else record.get("archives", [])


def observe_stream(config: dict, stream: Stream, listing: Listing, now: dt.datetime,
                   first_night: str, lane: str | None, preview: bool) -> StreamObservation:
    """The markers of the nights one stream's plan reads."""
    state = config["state"]
    # The nights known from the state only matter to night-level stages.
    known = marker_nights(state, stream.name, first_night) if lane != "exposures" else []
    nights = set(listing.nights()) | set(known)
    caught_up, backups = set(), {}
    if lane != "exposures":
        for night in nights:
            if due(night, now, config["catchup_hour"]) and marker_path(
                    state, stream.name, night, None, "caughtup").exists():
                caught_up.add(night)
            if config["backup"]["backend"] != "none" and due(night, now,
                                                              config["backup_hour"]):
                backups[night] = backup_history(state, stream.name, night, preview)
    return StreamObservation(
        listing=listing,
        nights={n: scan_night(state, stream.name, n) for n in sorted(nights)},
        marker_nights=tuple(known),
        caught_up=frozenset(caught_up),
        backups=backups,
    )


def observe(config: dict, streams: dict[str, Stream], now: dt.datetime, first_night: str,
            lane: str | None, run_id: str | None, preview: bool) -> Observation:
    """Everything but HPSS's status (see `with_hpss`)."""
    seen = {}
    for name, stream in streams.items():
        listing, error = observe_listing(config, stream, first_night, run_id, preview)
        if listing is None:
            seen[name] = StreamObservation(None, error)
            continue
        seen[name] = observe_stream(config, stream, listing, now, first_night, lane, preview)
    return Observation(now, seen, recalled=observe_recall(config, now, lane))


def observe_recall(config: dict, now: dt.datetime, lane: str | None) -> bool | None:
    """Whether the daily tape recall of `now`'s day is done (None: not asked for)."""
    backup = config["backup"]
    if lane == "exposures" or backup["backend"] == "none" or not backup.get("recall_per_day"):
        return None
    return recall_marker_path(config["state"], now.strftime("%Y%m%d")).exists()


def with_hpss(config: dict, observation: Observation, plan: Plan,
              preview: bool) -> Observation:
    """`observation` with HPSS's status, asked only when `plan` has backups (once per
    run) and remembered for the status page's backlog (not in a preview)."""
    backup = config["backup"]
    if not plan.wants_hpss or backup["backend"] != "htar" or not backup["hpss_status"]:
        return observation
    ready, why = hpss_status(backup["hpss_status"], backup["status_timeout"])
    if not preview:
        record_hpss_status(config["state"], ready, why)
    return dataclasses.replace(observation, hpss=(ready, why))


def listing_epoch(config: dict, stream: str) -> float | None:
    """When the listing this run planned from was made (epoch seconds), if cached."""
    epoch = (read_record(listing_cache_path(config["state"], stream)) or {}).get("epoch")
    return epoch if isinstance(epoch, (int, float)) else None

