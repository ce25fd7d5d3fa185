"""Verify an exposure against its SHA-256 checksum file, fetching again what is wrong.

Run by rule ``verify_exposure``. Each attempt verifies every file; after a failed
attempt the mismatched files are removed and the exposure is fetched again (rsync
then copies only what is missing), up to ``verify.max_attempts``. When the attempts
are exhausted ``verify.on_failure`` decides:

``install``
    DESI's choice, the data must flow: the marker is written with outcome
    ``failed`` and the failure record stays, visible to status and alerts.
``hold``
    No marker; the failure record says ``held`` and the exposure stays in staging.
    Later runs leave it alone until a person removes the failure record.
"""

import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scripts import joblog
from scripts.checksum import VerificationResult, verify_exposure
from scripts.configuration import Stream, get_streams
from scripts.markers import (
    failure_path,
    marker_path,
    read_failure,
    read_record,
    write_failure,
    write_json_atomic,
    write_marker,
)
from scripts.permissions import lock_tree, unlock_tree
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
            location: str, mismatched: list[str]) -> None:
    """Remove the mismatched files and fetch the exposure again.

    rsync's quick check (size and time) would keep a corrupted file of the right
    size, so the bad copies are deleted first; rsync then fetches only those and the
    missing ones.
    """
    in_destination = location == "destination"
    if in_destination:
        unlock_tree(directory)
    for name in mismatched:
        (directory / name).unlink(missing_ok=True)
    result = fetch(config["remote"], stream, night, expid, directory, delete=not in_destination)
    if in_destination:
        lock_tree(directory)
    if not result.ok:
        log.error("fetching %s/%s again failed: %s", night, expid, result.describe())


def verify_with_retries(config: dict, stream: Stream, night: str, expid: str,
                        directory: Path, location: str, threads: int, first: int = 1,
                        record_failure=None) -> tuple[VerificationResult, int]:
    """Verify, fetching again what is wrong, until it passes or attempts run out.

    `record_failure(result, attempt)` is called after each failed attempt, so that a
    run killed in between leaves the count behind.

    Returns
    -------
    (VerificationResult, int)
        The last result and the attempt number it came from.
    """
    max_attempts = config["verify"]["max_attempts"]
    checksum_name = stream.checksum_name(night, expid)
    attempt = first
    while True:
        result = verify_exposure(directory, checksum_name, threads=threads)
        if result.ok:
            return result, attempt
        log.error("checksum error(s) detected for %s/%s (attempt %d of %d): %s",
                  night, expid, attempt, max_attempts, result.reason())
        if record_failure is not None:
            record_failure(result, attempt)
        if attempt >= max_attempts:
            return result, attempt
        refetch(config, stream, night, expid, directory, location, result.mismatched)
        attempt += 1


def verify(config: dict, stream: Stream, night: str, expid: str, threads: int) -> bool:
    """Verify `night`/`expid`, retrying and applying the policy.

    Returns
    -------
    bool
        True when the marker was written (verified, or accepted by policy).
    """
    marker = marker_path(config["state"], stream.name, night, expid, "checksummed")
    max_attempts = config["verify"]["max_attempts"]
    policy = config["verify"]["on_failure"]
    directory, location = exposure_directory(config, stream, night, expid)
    previous = read_failure(marker) or {}
    done = previous.get("attempts", 0)
    # A run killed mid-verification goes on counting; an exhausted record (released by
    # a person, or from a run with another policy) starts afresh.
    first = done + 1 if 0 < done < max_attempts else 1
    start = time.monotonic()

    def record_failure(result: VerificationResult, attempt: int) -> None:
        write_failure(marker, result.reason(), attempt, **result.to_record(),
                      location=location, exhausted=attempt >= max_attempts)

    result, attempt = verify_with_retries(config, stream, night, expid, directory, location,
                                          threads, first, record_failure)
    if result.ok:
        log.info("%s/%s verified: %d files, %d bytes (attempt %d)", night, expid,
                 result.files, result.bytes, attempt)
        write_marker(marker, {
            "outcome": "verified", "attempt": attempt, "files": result.files,
            "bytes": result.bytes, "location": location,
            "duration": round(time.monotonic() - start, 3),
        })
        return True
    failure = read_failure(marker)
    if policy == "install":
        log.error("%s/%s failed verification %d times; installing anyway (on_failure: install);"
                  " the failure stays recorded in %s", night, expid, max_attempts,
                  failure_path(marker))
        # The marker lets the data flow; the failure record stays beside it.
        write_json_atomic(failure_path(marker), {**failure, "policy": "install"})
        record = {
            "time": failure["time"], "outcome": "failed", "accepted_by_policy": "install",
            "attempt": max_attempts, "files": result.files, "bytes": result.bytes,
            "location": location, "reason": result.reason(),
            "duration": round(time.monotonic() - start, 3),
        }
        write_json_atomic(marker, record)
        return True
    log.error("%s/%s failed verification %d times; held in %s (on_failure: hold). Fix the"
              " data, then remove %s to try again.", night, expid, max_attempts, directory,
              failure_path(marker))
    write_json_atomic(failure_path(marker), {**failure, "policy": "hold", "held": True})
    return False


if __name__ == "__main__" and "snakemake" in globals():
    sm = snakemake  # noqa: F821 (defined by Snakemake's script preamble)
    joblog.setup(sm.log[0], marker=sm.output[0])
    ok = verify(sm.config, get_streams(sm.config)[sm.wildcards.stream], sm.wildcards.night,
                sm.wildcards.expid, threads=sm.threads)
    sys.exit(0 if ok else 1)
