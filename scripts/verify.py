"""Verify an exposure against its SHA-256 checksum file, fetching again what is wrong.

Run by rule ``verify_exposure``. Each attempt verifies every file; after a failed
attempt the mismatched files are removed *from the staging copy* and the exposure is
fetched again (rsync then copies only what is missing), up to ``verify.max_attempts``.

Verification never writes into the archive. An exposure adopted in place (found in
the destination without a marker) is only read there; if it fails, a staging copy is
built from the archive's files that did verify, completed from the mountain, and
verified; install then swaps it in whole. If the mountain has purged its copy, the
archive keeps the bytes it has and the failure stays recorded.

When the attempts are exhausted ``verify.on_failure`` decides:

``install``
    DESI's choice, the data must flow: the marker is written with outcome
    ``failed`` and the failure record stays, visible to status and alerts.
``hold``
    No marker; the failure record says ``held`` and the exposure stays in staging.
    Later runs leave it alone until a person removes the failure record.
"""

import logging
import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scripts.job import run_job
from scripts.archive import discard
from scripts.checksum import VerificationResult, verify_exposure
from scripts.configuration import Stream, get_streams
from scripts.links import LinkCheckError, UnsafeLinkError
from scripts.markers import (
    failure_path,
    marker_path,
    read_failure,
    read_record,
    write_failure,
    write_json_atomic,
    write_marker,
)
from scripts.stage import fetch

log = logging.getLogger("verify")


def exposure_directory(config: dict, stream: Stream, night: str, expid: str) -> tuple[Path, str]:
    """Where the exposure to verify is, per its staged marker: (path, location)."""
    staged = read_record(marker_path(config["state"], stream.name, night, expid, "staged"))
    location = (staged or {}).get("location", "staging")
    if location == "destination":
        return stream.destination_exposure(night, expid), location
    return stream.staging_exposure(night, expid), location


def refetch(config: dict, stream: Stream, night: str, expid: str, directory: Path,
            mismatched: list[str]) -> None:
    """Remove the mismatched files from the copy `directory` and fetch it again.

    rsync's quick check (size and time) would keep a corrupted file of the right
    size, so the bad copies are deleted first; rsync then fetches only those and the
    missing ones. `directory` is staging or a side copy: `fetch` refuses the archive.
    """
    for name in mismatched:
        (directory / name).unlink(missing_ok=True)
    try:
        result = fetch(config["remote"], stream, night, expid, directory, delete=True)
    except (UnsafeLinkError, LinkCheckError) as err:
        log.error("fetching %s/%s again failed: %s", night, expid, err)
        return
    if not result.ok:
        log.error("fetching %s/%s again failed: %s", night, expid, result.describe())


def copy_good_files(archive: Path, staging: Path, bad: set[str]) -> int:
    """Seed `staging` with the archive's files except `bad` (times kept, so rsync's
    quick check skips them); return how many. The archive is only read."""
    discard(staging)
    copied = 0
    for dirpath, dirnames, filenames in os.walk(archive):
        relative = Path(dirpath).relative_to(archive)
        (staging / relative).mkdir(parents=True, exist_ok=True)
        os.chmod(staging / relative, 0o750)
        dirnames[:] = [d for d in dirnames if not os.path.islink(os.path.join(dirpath, d))]
        for name in filenames:
            path = os.path.join(dirpath, name)
            if os.path.islink(path) or str(relative / name).removeprefix("./") in bad:
                continue
            shutil.copy2(path, staging / relative / name)
            os.chmod(staging / relative / name, 0o640)
            copied += 1
    return copied


def verify_with_retries(config: dict, stream: Stream, night: str, expid: str,
                        directory: Path, threads: int, first: int = 1,
                        record_failure: Callable | None = None,
                        to_staging: Callable | None = None,
                        ) -> tuple[VerificationResult, int, Path]:
    """Verify, fetching again what is wrong, until it passes or attempts run out.

    `record_failure(result, attempt)` is called after each failed attempt, so that a
    run killed in between leaves the count behind. When `directory` is in the
    archive, `to_staging(result)` must give the staging copy to fetch into instead.

    Returns
    -------
    (VerificationResult, int, Path)
        The last result, the attempt number it came from, and the directory it
        verified (staging, once an archive copy failed).
    """
    max_attempts = config["verify"]["max_attempts"]
    checksum_name = stream.checksum_name(night, expid)
    attempt = first
    while True:
        result = verify_exposure(directory, checksum_name, threads=threads)
        if result.ok:
            return result, attempt, directory
        log.error("checksum error(s) detected for %s/%s (attempt %d of %d): %s",
                  night, expid, attempt, max_attempts, result.reason())
        if record_failure is not None:
            record_failure(result, attempt)
        if attempt >= max_attempts:
            return result, attempt, directory
        if stream.destination in directory.parents:
            directory = to_staging(result)
        refetch(config, stream, night, expid, directory, result.mismatched)
        attempt += 1


def apply_policy(config: dict, marker: Path, result: VerificationResult, location: str,
                 directory: Path, seconds: float) -> bool:
    """Verification failed `verify.max_attempts` times: ``install`` writes the marker
    with outcome "failed" (the failure record stays), ``hold`` marks the record held.

    Returns
    -------
    bool
        True when the marker was written.
    """
    max_attempts = config["verify"]["max_attempts"]
    failure = read_failure(marker)
    exposure = "/".join(Path(marker).parts[-2:]).split(".", 1)[0]
    if config["verify"]["on_failure"] == "install":
        log.error("%s failed verification %d times; installing anyway (on_failure: install);"
                  " the failure stays recorded in %s", exposure, max_attempts,
                  failure_path(marker))
        # The marker lets the data flow; the failure record stays beside it.
        write_json_atomic(failure_path(marker), {**failure, "policy": "install"})
        write_json_atomic(marker, {
            "time": failure["time"], "outcome": "failed", "accepted_by_policy": "install",
            "attempt": max_attempts, "files": result.files, "bytes": result.bytes,
            "location": location, "reason": result.reason(), "duration": round(seconds, 3),
        })
        return True
    log.error("%s failed verification %d times; held in %s (on_failure: hold). Fix the"
              " data, then remove %s to try again.", exposure, max_attempts, directory,
              failure_path(marker))
    write_json_atomic(failure_path(marker), {**failure, "policy": "hold", "held": True})
    return False


def staged_copy_gone(config: dict, stream: Stream, night: str, expid: str, directory: Path,
                     location: str, attempt: int) -> bool:
    """The staged copy was removed after its marker: record it and stage again."""
    marker = marker_path(config["state"], stream.name, night, expid, "checksummed")
    reason = f"{night}/{expid}: the staged copy {directory} is gone; the next run stages it again"
    log.error(reason)
    write_failure(marker, reason, attempt, location=location)
    marker_path(config["state"], stream.name, night, expid, "staged").unlink(missing_ok=True)
    return False


def verify(config: dict, stream: Stream, night: str, expid: str, threads: int) -> bool:
    """Verify `night`/`expid`, retrying and applying the policy.

    Returns
    -------
    bool
        True when the marker was written (verified, or accepted by policy).
    """
    marker = marker_path(config["state"], stream.name, night, expid, "checksummed")
    max_attempts = config["verify"]["max_attempts"]
    directory, location = exposure_directory(config, stream, night, expid)
    done = (read_failure(marker) or {}).get("attempts", 0)
    if not directory.is_dir():
        return staged_copy_gone(config, stream, night, expid, directory, location, done + 1)
    # A run killed mid-verification goes on counting; an exhausted record (released by
    # a person, or from a run with another policy) starts afresh.
    first = done + 1 if 0 < done < max_attempts else 1
    start = time.monotonic()

    def record_failure(result: VerificationResult, attempt: int) -> None:
        write_failure(marker, result.reason(), attempt, **result.to_record(),
                      location=location, exhausted=attempt >= max_attempts)

    def to_staging(result: VerificationResult) -> Path:
        """The adopted archive copy failed: rebuild it in staging, and say so in the
        staged marker so that a run killed now goes on there."""
        nonlocal location
        location = "staging"
        return rebuild_in_staging(config, stream, night, expid, directory, result)

    result, attempt, directory = verify_with_retries(
        config, stream, night, expid, directory, threads, first, record_failure, to_staging)
    if not result.ok:
        return apply_policy(config, marker, result, location, directory,
                            time.monotonic() - start)
    log.info("%s/%s verified: %d files, %d bytes (attempt %d)", night, expid,
             result.files, result.bytes, attempt)
    write_marker(marker, {
        "outcome": "verified", "attempt": attempt, "files": result.files,
        "bytes": result.bytes, "location": location,
        "duration": round(time.monotonic() - start, 3),
    })
    return True


def rebuild_in_staging(config: dict, stream: Stream, night: str, expid: str, archive: Path,
                       result: VerificationResult) -> Path:
    """Seed staging with the archive copy's good files (the archive is only read) and
    point the staged marker there; return the staging copy."""
    staging = stream.staging_exposure(night, expid)
    copied = copy_good_files(archive, staging, set(result.mismatched))
    log.warning("%s/%s in the archive failed verification: building a copy in %s from"
                " its %d good files and the mountain; the archive is not touched",
                night, expid, staging, copied)
    staged = marker_path(config["state"], stream.name, night, expid, "staged")
    write_marker(staged, {**(read_record(staged) or {}), "location": "staging",
                          "outcome": "refetched to replace the archive's copy",
                          "seeded_from_archive": copied})
    return staging


if __name__ == "__main__":
    from scripts.job import parse_job

    run_job(parse_job(sys.argv[1:]), lambda sm: verify(
        sm.config, get_streams(sm.config)[sm.wildcards.stream], sm.wildcards.night,
        sm.wildcards.expid, threads=sm.threads))
