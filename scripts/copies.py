"""Copies of an exposure outside the archive: fetched from the mountain into a
directory pinned by descriptor (a staging copy, or the catch-up's side copy), verified,
and fetched again where wrong. Shared by the stage, verify and catch-up jobs and by
install, none of which imports another.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

from scripts.checksum import VerificationResult, verify_exposure
from scripts.commands import CommandResult
from scripts.configuration import Stream
from scripts.links import (
    LinkCheckError,
    UnreadableExposureError,
    resolve_exposure,
    same_exposure,
)
from scripts.markers import attempt_text
from scripts.own_dirs import Pinned
from scripts.remote import run_remote
from scripts.rsync import rsync_command

log = logging.getLogger("copies")


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


def staging_role(stream: Stream) -> str:
    """How messages name the stream's staging area."""
    return f"streams.{stream.name}.staging"


def fetch(remote: dict, stream: Stream, night: str, expid: str, into: Pinned, delete: bool,
          copy_dest: Path | None = None) -> CommandResult:
    """rsync one exposure from the mountain into `into`, after checking its links.

    `into` is a staging copy or a side copy pinned by descriptor (scripts/own_dirs.py):
    rsync starts in that very directory and writes relative to it, so no link planted
    in staging can send it elsewhere. `copy_dest` (an installed exposure) is only read,
    for the files that did not change.

    Raises
    ------
    UnsafeLinkError
        The exposure's links lead outside it (nothing is copied), or it changed while
        it was copied (the copy in `into` must be thrown away).
    UnreadableExposureError
        Its directory cannot be read at the mountain.
    LinkCheckError
        The mountain could not be asked.
    """
    checked = resolve_exposure(remote, stream.source, night, expid, stream.data_root)
    command = rsync_command(remote, checked.real, ".", delete=delete,
                            copy_dest=str(copy_dest) if copy_dest else None)
    result = run_remote(command, timeout=remote["transfer_timeout"], cwd_fd=into.fd)
    if result.ok:
        # What was copied must be what was checked: asked again, the mountain must
        # name the same directory, still with no link leading out.
        same_exposure(checked, resolve_exposure(remote, stream.source, night, expid,
                                                stream.data_root), night, expid)
    return result


#: The copy being verified: the archive's (a path, only read) or a staging or side copy
#: pinned by descriptor (fetched into, rebuilt).
Copy = Path | Pinned


def readable(copy: Copy) -> Path:
    """A path that reads `copy` itself."""
    return copy.path if isinstance(copy, Pinned) else copy


def shown(copy: Copy) -> Path:
    """`copy`'s path, for messages."""
    return copy.shown if isinstance(copy, Pinned) else copy


def refetch(config: dict, stream: Stream, night: str, expid: str, into: Pinned,
            mismatched: list[str]) -> None:
    """Remove the mismatched files from the copy `into` and fetch it again.

    rsync's quick check (size and time) would keep a corrupted file of the right
    size, so the bad copies are deleted first; rsync then fetches only those and the
    missing ones. `into` is a staging or side copy, never the archive.

    Raises
    ------
    UnsafeLinkError
        The exposure's links now lead outside it: it must be held, never installed
        by policy.
    """
    for name in mismatched:
        (into.path / name).unlink(missing_ok=True)
    try:
        result = fetch(config["remote"], stream, night, expid, into, delete=True)
    except (LinkCheckError, UnreadableExposureError) as err:
        log.error("fetching %s/%s again failed: %s", night, expid, err)
        return
    if not result.ok:
        log.error("fetching %s/%s again failed: %s", night, expid, result.describe())


def verify_with_retries(config: dict, stream: Stream, night: str, expid: str,
                        copy: Copy, threads: int, first: int = 1,
                        record_failure: Callable | None = None,
                        to_staging: Callable | None = None,
                        ) -> tuple[VerificationResult, int, Copy]:
    """Verify, fetching again what is wrong, until it passes or attempts run out.

    `record_failure(result, attempt)` is called after each failed attempt, so that a
    run killed in between leaves the count behind. When `copy` is the archive's,
    `to_staging(result)` must give the pinned staging copy to fetch into instead.

    Returns
    -------
    (VerificationResult, int, Copy)
        The last result, the attempt number it came from, and the copy it verified
        (staging, once an archive copy failed).

    Raises
    ------
    UnsafeLinkError
        From a refetch: the exposure's links lead outside it now.
    """
    max_attempts = config["verify"]["max_attempts"]
    checksum_name = stream.checksum_name(night, expid)
    attempt = first
    while True:
        result = verify_exposure(readable(copy), checksum_name, threads=threads)
        if result.ok:
            return result, attempt, copy
        log.error("checksum error(s) detected for %s/%s (%s): %s",
                  night, expid, attempt_text(attempt, max_attempts), result.reason())
        if record_failure is not None:
            record_failure(result, attempt)
        if attempt >= max_attempts:
            return result, attempt, copy
        if not isinstance(copy, Pinned):
            copy = to_staging(result)
        refetch(config, stream, night, expid, copy, result.mismatched)
        attempt += 1
