"""Stage an exposure: rsync it from the mountain into the staging area.

Run by rule ``stage_exposure``. Completeness is the marker, never the directory: a
killed rsync leaves a partial staging directory and no marker, and the next run's rsync
(with ``--delete``, so a killed rsync's temporary files go too) completes it.
An exposure that is already in the destination without a marker (state lost, or
installed by the original daemon) is not copied again: it is marked for verification
in place and adoption.
"""

import logging
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scripts import joblog
from scripts.commands import run
from scripts.configuration import Stream, get_streams
from scripts.markers import marker_path, read_failure, write_failure, write_marker
from scripts.rsync import rsync_command

log = logging.getLogger("stage")


def tree_size(top: str | os.PathLike) -> tuple[int, int]:
    """Bytes and number of regular files below `top` (links followed to files)."""
    total = files = 0
    for dirpath, _, filenames in os.walk(top):
        for name in filenames:
            try:
                total += os.stat(os.path.join(dirpath, name)).st_size
                files += 1
            except OSError:
                continue
    return total, files


def fetch(remote: dict, stream: Stream, night: str, expid: str, into: Path, delete: bool):
    """rsync one exposure from the mountain into `into`; return the CommandResult."""
    command = rsync_command(
        remote, f"{stream.source.rstrip('/')}/{night}/{expid}", str(into), delete=delete
    )
    return run(command, timeout=remote["transfer_timeout"])


def stage_exposure(config: dict, stream: Stream, night: str, expid: str,
                   published: str | None = None) -> bool:
    """Stage `night`/`expid` of `stream`; write its marker or its failure record.

    `published` (UTC ISO time the mountain published the link) goes into the record:
    the status page measures latency from it.

    Returns
    -------
    bool
        True when the exposure is staged (or found installed and to be adopted).
    """
    marker = marker_path(config["state"], stream.name, night, expid, "staged")
    staging = stream.staging_exposure(night, expid)
    destination = stream.destination_exposure(night, expid)
    start = time.monotonic()
    if destination.is_dir() and not staging.exists():
        size, files = tree_size(destination)
        log.info(
            "%s/%s is already in %s without a marker: it will be verified in place"
            " and adopted, not copied again.", night, expid, destination,
        )
        write_marker(marker, {
            "location": "destination", "outcome": "adopted", "bytes": size, "files": files,
            "duration": round(time.monotonic() - start, 3), "attempt": 1,
            "published": published,
        })
        return True
    staging.mkdir(parents=True, exist_ok=True)
    result = fetch(config["remote"], stream, night, expid, staging, delete=True)
    previous = read_failure(marker) or {}
    attempt = previous.get("attempts", 0) + 1
    if not result.ok:
        reason = f"rsync problem ({result.describe()}) detected for {night}/{expid}"
        log.error("%s, check logs! (attempt %d)", reason, attempt)
        log.error("rsync stdout: %s", result.stdout.strip()[-2000:])
        write_failure(marker, reason, attempt, command=list(result.command),
                      timed_out=result.timed_out, stderr=result.stderr[-2000:])
        return False
    size, files = tree_size(staging)
    log.info("staged %s/%s: %d files, %d bytes in %.1f s", night, expid, files, size,
             result.seconds)
    write_marker(marker, {
        "location": "staging", "outcome": "staged", "bytes": size, "files": files,
        "duration": round(time.monotonic() - start, 3), "attempt": attempt,
        "published": published,
    })
    return True


if __name__ == "__main__" and "snakemake" in globals():
    sm = snakemake  # noqa: F821 (defined by Snakemake's script preamble)
    joblog.setup(sm.log[0], marker=sm.output[0])
    ok = stage_exposure(
        sm.config, get_streams(sm.config)[sm.wildcards.stream], sm.wildcards.night,
        sm.wildcards.expid, sm.params.published,
    )
    sys.exit(0 if ok else 1)
