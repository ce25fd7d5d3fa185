"""Install a verified exposure into the archive, read-only, under its final name last.

Run by rule ``install_exposure``. The archive is written only by scripts/archive.py:
the staged copy is made read-only (directories 0o2750, files 0o440) in the
destination's workspace and renamed to ``DESTINATION/NIGHT/EXPID`` — the final name
appears only when everything is there — or, when an exposure is already installed
there, swapped with it atomically, and only if the staged copy verified completely.

Every state a killed run can leave is resolved here without a person: a staged copy
beside an installed one (a cross-file-system install killed before it removed the
staging copy, or an adopted exposure being replaced) is swapped in if it verified; an
installed copy whose staging copy is gone is checked again, read-only, before it is
recorded.
"""

import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scripts.job import run_job
from scripts.archive import place, recover, replace
from scripts.checksum import verify_exposure
from scripts.configuration import Stream, get_streams
from scripts.markers import marker_path, next_attempt, read_record, write_failure, write_marker
from scripts.own_dirs import Pinned, UnsafeDirectoryError, pinned, remove_pinned
from scripts.permissions import DIR_MODE, lock_tree, locked_dir_mode
from scripts.copies import staging_role, tree_size

log = logging.getLogger("install")


class InstallError(Exception):
    """The exposure cannot be installed this run; the message is one line."""


def night_directory(stream: Stream, night: str) -> Path:
    """Create the night's directory in the destination (0o2750) if needed."""
    path = stream.destination / night
    if not path.is_dir():
        path.mkdir(parents=True, exist_ok=True)
        path.chmod(DIR_MODE)
    return path


def staged_copy_is_verified(stream: Stream, night: str, expid: str, staged: Pinned,
                           checksummed: dict) -> bool:
    """Whether `staged` is the very directory that verified: same ``st_dev/st_ino``
    as the checksummed record says, or (a record without one) verified again now."""
    if checksummed.get("outcome") != "verified":
        return False
    if checksummed.get("identity") is not None:
        return list(staged.identity()) == list(checksummed["identity"])
    return verify_exposure(staged.path, stream.checksum_name(night, expid)).ok


def put_in_place(stream: Stream, night: str, expid: str, checksummed: dict) -> str:
    """Move the staged or adopted exposure into the archive; say how, in a few words.

    Raises
    ------
    InstallError
        When neither copy can be installed; the staged markers are removed then, so
        that the next run stages the exposure again.
    """
    destination = stream.destination_exposure(night, expid)
    recover(stream.destination, night, expid)
    try:
        with pinned(stream.staging, [night, expid], create=False,
                    role=staging_role(stream)) as staged:
            verified = staged_copy_is_verified(stream, night, expid, staged, checksummed)
            if not destination.exists():
                if not verified and checksummed.get("outcome") == "verified":
                    remove_pinned(staged)
                    raise InstallError(f"{night}/{expid} in staging is not the copy that was"
                                       " verified (moved or replaced since); the next run"
                                       " stages it again")
                place(staged, stream.destination, night, expid)
                return "moved from staging"
            if verified:
                replace(staged, stream.destination, night, expid)
                return "replaced the archive's copy with the verified staged copy"
            remove_pinned(staged)
            return "kept the archive's copy: the staged copy did not verify"
    except FileNotFoundError:
        pass
    except UnsafeDirectoryError as err:
        raise InstallError(f"{err}; the next run stages it again") from None
    if not destination.is_dir():
        raise InstallError(f"{night}/{expid} is neither in staging"
                           f" ({stream.staging_exposure(night, expid)}) nor in the"
                           " destination; the next run stages it again")
    if checksummed.get("location") != "destination":
        # The staged copy went in but the run died before recording it, or it is an
        # older copy: only a read-only check tells.
        result = verify_exposure(destination, stream.checksum_name(night, expid))
        if not result.ok:
            raise InstallError(f"{night}/{expid} in the archive is not the verified staged"
                               f" copy ({result.reason()}); the next run stages it again")
    lock_tree(destination, locked_dir_mode(destination))
    return "already in place"


def install(config: dict, stream: Stream, night: str, expid: str) -> bool:
    """Install `night`/`expid`; write its marker or its failure record."""
    marker = marker_path(config["state"], stream.name, night, expid, "installed")
    checksummed = read_record(marker_path(config["state"], stream.name, night, expid,
                                          "checksummed")) or {}
    destination = stream.destination_exposure(night, expid)
    start = time.monotonic()
    attempt = next_attempt(marker)
    night_directory(stream, night)
    try:
        how = put_in_place(stream, night, expid, checksummed)
    except InstallError as err:
        log.error("%s", err)
        write_failure(marker, str(err), attempt)
        for stage in ("staged", "checksummed"):
            marker_path(config["state"], stream.name, night, expid, stage).unlink(missing_ok=True)
        return False
    size, files = tree_size(destination)
    log.info("installed %s/%s in %s (%s): %d files, %d bytes", night, expid, destination,
             how, files, size)
    write_marker(marker, {
        "outcome": "installed", "path": str(destination), "bytes": size, "files": files,
        "verification": checksummed.get("outcome", "unknown"), "attempt": attempt,
        "how": how, "duration": round(time.monotonic() - start, 3),
    })
    return True


if __name__ == "__main__":
    from scripts.job import parse_job

    run_job(parse_job(sys.argv[1:]), lambda sm: install(
        sm.config, get_streams(sm.config)[sm.wildcards.stream], sm.wildcards.night,
        sm.wildcards.expid))
