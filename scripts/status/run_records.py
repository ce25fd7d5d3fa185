"""The run-level records the cron entry keeps in the state, beside the markers.

``STATE/.configuration.failed``
    The configuration was refused (one line); removed by the next run that gets past
    the configuration.
``STATE/.alerts/unreachable.json``
    Consecutive runs that could not list the mountain, and the last reason.
``STATE/.listing/STREAM.empty``
    Whether the stream's listing ever found links, and the consecutive runs since
    that found none at all (the connection, or the mountain's disk, is gone).

They are what `scripts.status.problems` reads for the two problems no marker holds.
"""

from __future__ import annotations

import os

from scripts.markers import read_record, utc_timestamp, write_json_atomic
from scripts.state_layout import (
    configuration_path,
    empty_listing_path,
    listing_cache_path,
    listing_failure_path,
    unreachable_path,
)


def record_configuration(state: str | os.PathLike, config_file: str,
                         error: str | None) -> None:
    """Record the configuration error of this run, or clear it when there was none."""
    path = configuration_path(state)
    if error is None:
        path.unlink(missing_ok=True)
        return
    previous = read_record(path) or {}
    since = previous.get("time") if previous.get("reason") == error else None
    write_json_atomic(path, {"time": since or utc_timestamp(), "reason": error,
                             "file": str(config_file), "attempts": previous.get("attempts", 0) + 1})


def listing_failures(state: str | os.PathLike, streams: list[str], since: float) -> list[str]:
    """Reasons of listing failures recorded by this run (after `since`, epoch seconds)."""
    reasons = []
    for stream in streams:
        path = listing_failure_path(state, stream)
        try:
            if os.stat(path).st_mtime >= since:
                reasons.append((read_record(path) or {}).get("reason", "unknown"))
        except FileNotFoundError:
            continue
    return reasons


def next_empty_count(previous: dict, links: int, now: str) -> dict:
    """The stream's empty-listing record after a listing that found `links` links:
    counting starts only once a listing found some (a new stream may list none)."""
    if links > 0:
        return {"listed": True, "runs": 0, "time": now}
    if not previous.get("listed"):
        return {"listed": False, "runs": 0, "time": now}
    return {"listed": True, "runs": previous.get("runs", 0) + 1,
            "since": previous.get("since") or now, "time": now}


def count_empty_listings(state: str | os.PathLike, streams: list[str], since: float) -> None:
    """Count this run for each stream it listed (the listing cache written after
    `since`, epoch seconds) in the runs that found no link at all."""
    for stream in streams:
        listing = read_record(listing_cache_path(state, stream)) or {}
        epoch, links = listing.get("epoch"), listing.get("links")
        if not (isinstance(epoch, (int, float)) and epoch >= since and isinstance(links, int)):
            continue
        path = empty_listing_path(state, stream)
        record = next_empty_count(read_record(path) or {}, links, utc_timestamp())
        record["source"] = (listing.get("key") or {}).get("source")
        write_json_atomic(path, record)


def count_unreachable(state: str | os.PathLike, reasons: list[str] | None) -> int:
    """Count this run in the consecutive runs that could not reach the mountain.

    `reasons` are this run's listing failures; None when the run never got to list
    (a refused configuration): the count then stays as it was.
    """
    path = unreachable_path(state)
    record = read_record(path) or {}
    if reasons is None:
        return record.get("runs", 0)
    if reasons:
        record = {"runs": record.get("runs", 0) + 1, "reason": reasons[0],
                  "since": record.get("since") or utc_timestamp(), "time": utc_timestamp()}
    else:
        record = {"runs": 0, "time": utc_timestamp()}
    write_json_atomic(path, record)
    return record["runs"]
