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

A refetch that finds the exposure's links leading outside it holds the exposure
whatever ``on_failure`` says: a policy never installs what may come from outside.
The copy verified is opened by descriptor (scripts/own_dirs.py); its ``st_dev/st_ino``
goes into the marker, and install moves only that very directory.
"""

import logging
import os
import shutil
import sys
import time
from contextlib import ExitStack
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scripts.job import run_job
from scripts.checksum import VerificationResult
from scripts.configuration import Stream, get_streams
from scripts.copies import Copy, shown, staging_role, verify_with_retries
from scripts.links import UnsafeLinkError
from scripts.markers import (
    failure_path,
    marker_path,
    read_failure,
    read_record,
    write_failure,
    write_json_atomic,
    write_marker,
)
from scripts.own_dirs import Pinned, UnsafeDirectoryError, pinned, remove, remove_pinned

log = logging.getLogger("verify")


def copy_good_files(archive: Path, staging: Path, bad: set[str]) -> int:
    """Seed the empty `staging` with the archive's files except `bad` (times kept, so
    rsync's quick check skips them); return how many. The archive is only read."""
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


def staged_copy_gone(config: dict, stream: Stream, night: str, expid: str, why: str,
                     location: str, attempt: int) -> bool:
    """The staged copy was removed (or replaced) after its marker: record it and stage
    again."""
    marker = marker_path(config["state"], stream.name, night, expid, "checksummed")
    reason = f"{night}/{expid}: {why}; the next run stages it again"
    log.error(reason)
    write_failure(marker, reason, attempt, location=location)
    marker_path(config["state"], stream.name, night, expid, "staged").unlink(missing_ok=True)
    return False


def link_check_failed(config: dict, stream: Stream, night: str, expid: str,
                      error: UnsafeLinkError, copy: Copy, attempt: int) -> bool:
    """A refetch found links leading outside the exposure: it is held whatever
    ``verify.on_failure`` says (a policy never installs what may come from outside),
    and its staging copy goes."""
    marker = marker_path(config["state"], stream.name, night, expid, "checksummed")
    log.error("%s; held: fix the links at the mountain, then remove %s to try again.",
              error, failure_path(marker))
    write_failure(marker, str(error), attempt, held=True, policy="hold", links=True)
    if isinstance(copy, Pinned):
        remove_pinned(copy)
    return False


def open_copy(config: dict, stream: Stream, night: str, expid: str,
              stack: ExitStack) -> tuple[Copy | None, str, str]:
    """The copy to verify per the staged marker, opened: (copy or None, location,
    why it is not there)."""
    staged = read_record(marker_path(config["state"], stream.name, night, expid, "staged"))
    location = (staged or {}).get("location", "staging")
    if location == "destination":
        archive = stream.destination_exposure(night, expid)
        return (archive if archive.is_dir() else None), location, \
            f"the adopted copy {archive} is gone"
    try:
        copy = stack.enter_context(pinned(stream.staging, [night, expid], create=False,
                                          role=staging_role(stream)))
    except FileNotFoundError:
        return None, location, \
            f"the staged copy {stream.staging_exposure(night, expid)} is gone"
    except UnsafeDirectoryError as err:
        return None, location, str(err)
    return copy, location, ""


def verify(config: dict, stream: Stream, night: str, expid: str, threads: int) -> bool:
    """Verify `night`/`expid`, retrying and applying the policy.

    Returns
    -------
    bool
        True when the marker was written (verified, or accepted by policy).
    """
    marker = marker_path(config["state"], stream.name, night, expid, "checksummed")
    max_attempts = config["verify"]["max_attempts"]
    done = (read_failure(marker) or {}).get("attempts", 0)
    with ExitStack() as stack:
        copy, location, why = open_copy(config, stream, night, expid, stack)
        if copy is None:
            return staged_copy_gone(config, stream, night, expid, why, location, done + 1)
        # A run killed mid-verification goes on counting; an exhausted record (released
        # by a person, or from a run with another policy) starts afresh.
        first = done + 1 if 0 < done < max_attempts else 1
        start = time.monotonic()
        attempts = [first]

        def record_failure(result: VerificationResult, attempt: int) -> None:
            attempts.append(attempt)
            write_failure(marker, result.reason(), attempt, **result.to_record(),
                          location=location, exhausted=attempt >= max_attempts)

        def to_staging(result: VerificationResult) -> Pinned:
            """The adopted archive copy failed: rebuild it in staging, and say so in the
            staged marker so that a run killed now goes on there."""
            nonlocal location
            location = "staging"
            return rebuild_in_staging(config, stream, night, expid, copy, result, stack)

        try:
            result, attempt, copy = verify_with_retries(
                config, stream, night, expid, copy, threads, first, record_failure,
                to_staging)
        except UnsafeLinkError as err:
            return link_check_failed(config, stream, night, expid, err, copy,
                                     attempts[-1] + 1)
        if not result.ok:
            return apply_policy(config, marker, result, location, shown(copy),
                                time.monotonic() - start)
        log.info("%s/%s verified: %d files, %d bytes (attempt %d)", night, expid,
                 result.files, result.bytes, attempt)
        write_marker(marker, {
            "outcome": "verified", "attempt": attempt, "files": result.files,
            "bytes": result.bytes, "location": location,
            "duration": round(time.monotonic() - start, 3),
            # What was verified, as the file system knows it: install checks that it
            # moves this very directory.
            "identity": list(copy.identity()) if isinstance(copy, Pinned) else None,
        })
        return True


def rebuild_in_staging(config: dict, stream: Stream, night: str, expid: str, archive: Path,
                       result: VerificationResult, stack: ExitStack) -> Pinned:
    """Seed staging with the archive copy's good files (the archive is only read) and
    point the staged marker there; return the staging copy, pinned for `stack`."""
    remove(stream.staging, [night, expid], staging_role(stream))
    staging = stack.enter_context(pinned(stream.staging, [night, expid], create=True,
                                         role=staging_role(stream)))
    copied = copy_good_files(archive, staging.path, set(result.mismatched))
    log.warning("%s/%s in the archive failed verification: building a copy in %s from"
                " its %d good files and the mountain; the archive is not touched",
                night, expid, staging.shown, copied)
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
