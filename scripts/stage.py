"""Stage an exposure: rsync it from the mountain into the staging area.

Run by rule ``stage_exposure``. Completeness is the marker, never the directory: a
killed rsync leaves a partial staging directory and no marker, and the next run's rsync
(with ``--delete``, so a killed rsync's temporary files go too) completes it.
An exposure that is already in the destination without a marker (state lost, or
installed by the original daemon) is not copied again: it is marked for verification
in place and adoption.

Every fetch first checks the exposure's links at the mountain (scripts/links.py) and
copies from the directory the published link resolves to. An exposure whose links
lead outside it is held: its failure record says why, and a person decides.

Staging has a policy like verification: an exposure whose rsync fails
``verify.max_attempts`` times for a reason of its own (an unreadable file at the
mountain, say) is held (``"held": true, "exhausted": true``) so that its night goes on
without it; a full disk or the network is retried every run and holds nothing. Reasons
name the root cause ("no space left on device (staging, /path)"), not rsync's echo.
"""

import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scripts.job import run_job
from scripts.archive import recover
from scripts.commands import CommandResult
from scripts.configuration import Stream, get_streams
from scripts.copies import fetch, staging_role, tree_size
from scripts.links import (
    LinkCheckError,
    UnreadableExposureError,
    UnsafeLinkError,
)
from scripts.own_dirs import Pinned, UnsafeDirectoryError, pinned, remove_pinned
from scripts.markers import (
    attempt_text,
    failure_path,
    marker_path,
    next_attempt,
    read_failure,
    write_failure,
    write_marker,
)
from scripts.rsync import root_cause

log = logging.getLogger("stage")
#: rsync's exit statuses that are not the exposure's fault: a connection that failed or
#: stalled, and files that vanished while the mountain was changing them (24).
TRANSIENT_STATUSES = {5, 10, 12, 14, 24, 30, 35, 255}


def rsync_failure_reason(result: CommandResult, what: str) -> tuple[str, bool]:
    """The one-line reason of a failed rsync of `what` (NIGHT/EXPID), root cause first,
    and whether the cause is the environment's (disk, network) rather than the exposure's.
    """
    if result.timed_out or result.missing:
        return f"{result.describe()} for {what}", True
    cause = root_cause(result.stderr)
    environment = result.returncode in TRANSIENT_STATUSES or bool(cause and cause[1])
    if cause is None:
        return f"rsync problem ({result.describe()}) detected for {what}", environment
    return f"{cause[0]}; rsync of {what} exited with status {result.returncode}", environment


def record_rsync_failure(marker: Path, what: str, result: CommandResult, attempt: int,
                         max_attempts: int) -> None:
    """Write the failure record of a failed rsync, applying the staging policy.

    After `max_attempts` failures of the exposure's own the exposure is held: no later
    run stages it, its night is caught up and backed up without it, and a person is
    mailed; removing the record releases it. A full disk, the network or files changing
    at the mountain hold nothing: they are retried every run, and past `max_attempts`
    attempts a person is told.
    """
    reason, environment = rsync_failure_reason(result, what)
    log.error("rsync stdout: %s", result.stdout.strip()[-2000:])
    record_own_failure(marker, reason, attempt, max_attempts, environment=environment,
                       command=list(result.command), timed_out=result.timed_out,
                       stderr=result.stderr[-2000:])


def record_own_failure(marker: Path, reason: str, attempt: int, max_attempts: int,
                       environment: bool = False, **details) -> None:
    """Write a staging failure record; a failure of the exposure's own (not the
    environment's) counts towards holding it after `max_attempts` of them."""
    own = (read_failure(marker) or {}).get("own_failures", 0) + (not environment)
    exhausted = attempt >= max_attempts
    held = own >= max_attempts
    log.error("%s, check logs! (%s)%s", reason, attempt_text(attempt, max_attempts),
              f"; held: fix it, then remove {failure_path(marker)} to stage it again"
              if held else "")
    extra = {"held": True, "policy": "hold"} if held else {}
    write_failure(marker, reason, attempt, environment=environment, own_failures=own,
                  exhausted=exhausted, **details, **extra)


def adopt(marker: Path, destination: Path, published: str | None) -> None:
    """Mark an exposure found in the destination without a marker (state lost, or
    installed by the original daemon) for verification in place, not a second copy."""
    start = time.monotonic()
    size, files = tree_size(destination)
    log.info("%s is already in the destination without a marker: it will be verified in"
             " place and adopted, not copied again.", destination)
    write_marker(marker, {
        "location": "destination", "outcome": "adopted", "bytes": size, "files": files,
        "duration": round(time.monotonic() - start, 3), "attempt": 1, "published": published,
    })


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
    recover(stream.destination, night, expid)
    if destination.is_dir() and not staging.exists():
        adopt(marker, destination, published)
        return True
    attempt = next_attempt(marker)
    try:
        with pinned(stream.staging, [night, expid], create=True,
                    role=staging_role(stream)) as into:
            return stage_into(config, stream, night, expid, into, marker, attempt, start,
                              published)
    except UnsafeDirectoryError as err:
        log.error("%s", err)
        write_failure(marker, str(err), attempt, environment=True,
                      exhausted=attempt >= config["verify"]["max_attempts"])
        return False


def stage_into(config: dict, stream: Stream, night: str, expid: str, into: Pinned,
               marker: Path, attempt: int, start: float, published: str | None) -> bool:
    """rsync the exposure into the pinned staging directory `into`; write the marker
    or the failure record."""
    try:
        result = fetch(config["remote"], stream, night, expid, into, delete=True)
    except UnsafeLinkError as err:
        log.error("%s; held: nothing of it is kept. Fix the links at the mountain, then"
                  " remove %s to try again.", err, f"{marker}.failed")
        write_failure(marker, str(err), attempt, held=True, policy="hold")
        remove_pinned(into)
        return False
    except UnreadableExposureError as err:
        record_own_failure(marker, str(err), attempt, config["verify"]["max_attempts"])
        return False
    except LinkCheckError as err:
        log.error("%s (attempt %d)", err, attempt)
        write_failure(marker, str(err), attempt, timed_out=err.timed_out, environment=True,
                      exhausted=attempt >= config["verify"]["max_attempts"])
        return False
    if not result.ok:
        record_rsync_failure(marker, f"{night}/{expid}", result, attempt,
                             config["verify"]["max_attempts"])
        return False
    size, files = tree_size(into.path)
    log.info("staged %s/%s: %d files, %d bytes in %.1f s", night, expid, files, size,
             result.seconds)
    write_marker(marker, {
        "location": "staging", "outcome": "staged", "bytes": size, "files": files,
        "duration": round(time.monotonic() - start, 3), "attempt": attempt,
        "published": published,
    })
    return True


if __name__ == "__main__":
    from scripts.job import parse_job

    run_job(parse_job(sys.argv[1:]), lambda sm: stage_exposure(
        sm.config, get_streams(sm.config)[sm.wildcards.stream], sm.wildcards.night,
        sm.wildcards.expid, sm.params.published))
