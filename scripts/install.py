"""Install a verified exposure into the archive, read-only, under its final name last.

Run by rule ``install_exposure``. The exposure is locked (directories 0o2750, files
0o440) while still in staging, then renamed into ``DESTINATION/NIGHT/EXPID``: the
final name appears only when everything is there. Across file systems it is copied
to a hidden temporary name beside its final place and renamed from there.
"""

import errno
import logging
import os
import shutil
import stat
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scripts import joblog
from scripts.configuration import Stream, get_streams
from scripts.markers import marker_path, read_failure, read_record, write_failure, write_marker
from scripts.permissions import DIR_MODE, lock_tree
from scripts.stage import tree_size

log = logging.getLogger("install")


def night_directory(stream: Stream, night: str) -> Path:
    """Create the night's directory in the destination (0o2750) if needed."""
    path = stream.destination / night
    if not path.is_dir():
        path.mkdir(parents=True, exist_ok=True)
        os.chmod(path, DIR_MODE)
    return path


def move_into_place(staging: Path, destination: Path) -> None:
    """Rename `staging` to `destination`; copy then rename across file systems."""
    parent = destination.parent
    mode = parent.stat().st_mode
    # A night already backed up has lost user-write; a late exposure still goes in.
    writable = mode & stat.S_IWUSR
    if not writable:
        os.chmod(parent, stat.S_IMODE(mode) | stat.S_IWUSR)
    try:
        try:
            os.rename(staging, destination)
        except OSError as err:
            if err.errno != errno.EXDEV:
                raise
            temporary = parent / f".{destination.name}.installing"
            if temporary.exists():
                shutil.rmtree(temporary)  # left by a killed run: start over
            shutil.copytree(staging, temporary, symlinks=True)
            lock_tree(temporary)
            os.rename(temporary, destination)
            shutil.rmtree(staging)
    finally:
        if not writable:
            os.chmod(parent, stat.S_IMODE(mode))


def install(config: dict, stream: Stream, night: str, expid: str) -> bool:
    """Install `night`/`expid`; write its marker or its failure record."""
    marker = marker_path(config["state"], stream.name, night, expid, "installed")
    checksummed = read_record(marker_path(config["state"], stream.name, night, expid,
                                          "checksummed")) or {}
    staging = stream.staging_exposure(night, expid)
    destination = stream.destination_exposure(night, expid)
    start = time.monotonic()
    attempt = (read_failure(marker) or {}).get("attempts", 0) + 1
    night_directory(stream, night)
    if staging.is_dir():
        if destination.exists():
            reason = (f"{night}/{expid} is both in staging ({staging}) and in the destination"
                      f" ({destination}); compare them, keep one, and remove the other")
            log.error(reason)
            write_failure(marker, reason, attempt)
            return False
        lock_tree(staging)
        move_into_place(staging, destination)
        how = "moved from staging"
    elif destination.is_dir():
        # Adopted in place, or moved by a run killed before it wrote the marker.
        lock_tree(destination)
        how = "already in place"
    else:
        reason = (f"{night}/{expid} is neither in staging ({staging}) nor in the destination;"
                  " the next run stages it again")
        log.error(reason)
        write_failure(marker, reason, attempt)
        for stage in ("staged", "checksummed"):
            marker_path(config["state"], stream.name, night, expid, stage).unlink(missing_ok=True)
        return False
    size, files = tree_size(destination)
    log.info("installed %s/%s in %s (%s): %d files, %d bytes", night, expid, destination,
             how, files, size)
    write_marker(marker, {
        "outcome": "installed", "path": str(destination), "bytes": size, "files": files,
        "verification": checksummed.get("outcome", "unknown"), "attempt": attempt,
        "duration": round(time.monotonic() - start, 3),
    })
    return True


if __name__ == "__main__" and "snakemake" in globals():
    sm = snakemake  # noqa: F821 (defined by Snakemake's script preamble)
    joblog.setup(sm.log[0], marker=sm.output[0])
    ok = install(sm.config, get_streams(sm.config)[sm.wildcards.stream], sm.wildcards.night,
                 sm.wildcards.expid)
    sys.exit(0 if ok else 1)
