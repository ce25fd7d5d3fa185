"""Catch up a night: pick up files that reached the mountain after their exposure.

Run by rule ``catch_up_night`` from ``catchup_hour`` UTC of the day after the night; the
work itself (shared with the backup's final catch-up) is in scripts/updates.py. The
night's marker records what changed; a night whose re-verification failed still goes on
to tape, its failures recorded on the exposures and beside the marker.
"""

import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scripts.configuration import Stream, get_streams
from scripts.job import run_job
from scripts.markers import (
    failure_path,
    marker_path,
    next_attempt,
    utc_timestamp,
    write_failure,
    write_json_atomic,
    write_marker,
)
from scripts.updates import CatchUpError, catch_up_night

log = logging.getLogger("catch_up")


def run_catch_up(config: dict, stream: Stream, night: str, threads: int) -> bool:
    """Catch up `night` and write its marker (or failure record)."""
    marker = marker_path(config["state"], stream.name, night, None, "caughtup")
    start = time.monotonic()
    try:
        record = catch_up_night(config, stream, night, threads)
    except CatchUpError as err:
        log.error("%s, check logs!", err)
        write_failure(marker, str(err), next_attempt(marker))
        return False
    record["duration"] = round(time.monotonic() - start, 3)
    if record["outcome"] == "failed":
        # The archive kept its verified copies: the night goes on to backup, and the
        # failures stay recorded on the exposures and beside the marker for a person.
        reason = f"re-verification failed after catch-up for {night}: " + ", ".join(
            f"{e}: {record['exposures'][e]['reason']}" for e in record["failed_exposures"])
        log.error(reason)
        write_marker(marker, record)
        write_json_atomic(failure_path(marker), {"time": utc_timestamp(), "reason": reason,
                                                 "attempts": 1, "policy": "install"})
        return True
    write_marker(marker, record)
    return True


if __name__ == "__main__":
    from scripts.job import parse_job

    run_job(parse_job(sys.argv[1:]), lambda sm: run_catch_up(
        sm.config, get_streams(sm.config)[sm.wildcards.stream], sm.wildcards.night,
        threads=sm.threads))
