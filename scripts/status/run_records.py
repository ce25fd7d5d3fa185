"""The run-level records the cron entry keeps in the state, beside the markers.

``STATE/.configuration.failed``
    The configuration was refused (one line); removed by the next run that gets past
    the configuration.
``STATE/.alerts/unreachable.json``
    Consecutive runs that could not list the mountain, and the last reason.

They are what `scripts.status.problems` reads for the two problems no marker holds.
"""

from __future__ import annotations

import os

from scripts.markers import read_record, utc_timestamp, write_json_atomic
from scripts.state_layout import configuration_path, listing_failure_path, unreachable_path


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
