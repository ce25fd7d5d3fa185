"""What an archive on tape holds of an exposure, against the exposure on disk.

An exposure is on tape only when an archive holds it as it is on disk: every file,
with its size (and, where the backend records or the audit reads it, its SHA-256).
An archive written before a catch-up swapped in a new version of an exposure holds an
older version: the backup that adopts such an archive records the exposure as
``outdated`` there, and it goes into the night's next supplementary archive. The
audit compares the newest archive that lists an exposure with the exposure on disk.

After each write, the archive's own member list must be what was meant to go in: the
regular files below the archived paths, names and sizes (`files_to_archive`,
`member_list_differences`).

Deciding is pure (`by_exposure`, `differences`, `member_list_differences`);
`exposure_on_disk` and `files_to_archive` only read.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from scripts.checksum import parse_checksum_file
from scripts.hpss import Member


@dataclass(frozen=True)
class DiskFile:
    """One regular file of an installed exposure: its size, and the SHA-256 its
    checksum file gives (for the checksum file itself, that of its own bytes; None
    for a file the checksum file does not list)."""

    size: int
    sha256: str | None = None


def by_exposure(members: Iterable[Member], night: str) -> dict[str, dict[str, Member]]:
    """The members of `night`'s exposures: EXPID → {path inside the exposure: member}.

    Member names are relative to the destination (``NIGHT/EXPID/FILE``, a leading
    ``./`` allowed); other nights, other names and bare directories are left out,
    as in `scripts.backup.exposures_in`.
    """
    held: dict[str, dict[str, Member]] = {}
    for member in members:
        name = member.name
        while name.startswith("./"):
            name = name[2:]
        parts = name.split("/", 2)
        if (len(parts) == 3 and parts[0] == night and parts[2].strip("/")
                and len(parts[1]) == 8 and parts[1].isdigit() and parts[1].isascii()):
            held.setdefault(parts[1], {})[parts[2]] = member
    return held


def exposure_on_disk(directory: Path, checksum_name: str) -> dict[str, DiskFile] | None:
    """The regular files of an installed exposure, by path inside it; None when the
    exposure directory does not exist.

    Links are not followed (the audit reports them). The checksum file is parsed for
    the digests, and hashed itself (it is small); no data file is read.
    """
    top = os.fspath(directory)
    if not os.path.isdir(top) or os.path.islink(top):
        return None
    files: dict[str, DiskFile] = {}
    pending = [""]
    while pending:
        relative = pending.pop()
        try:
            with os.scandir(os.path.join(top, relative) if relative else top) as entries:
                for entry in entries:
                    path = f"{relative}/{entry.name}" if relative else entry.name
                    if entry.is_dir(follow_symlinks=False):
                        pending.append(path)
                    elif entry.is_file(follow_symlinks=False):
                        files[path] = DiskFile(entry.stat(follow_symlinks=False).st_size)
        except OSError:
            continue  # the exposure's own audit says what cannot be read
    if checksum_name in files:
        try:
            with open(os.path.join(top, checksum_name), "rb") as f:
                data = f.read()
        except OSError:
            return files
        listing = parse_checksum_file(data.decode("utf-8", errors="surrogateescape"))
        for name, digest in listing.entries.items():
            if name in files:
                files[name] = DiskFile(files[name].size, digest)
        files[checksum_name] = DiskFile(len(data), hashlib.sha256(data).hexdigest())
    return files


def differences(disk: dict[str, DiskFile], held: dict[str, Member], archive: str,
                checksum_name: str) -> list[tuple[str, str]]:
    """How the version of an exposure in `archive` differs from the one on disk.

    Parameters
    ----------
    disk : dict
        `exposure_on_disk`.
    held : dict
        The exposure's members in the archive (`by_exposure`); a member's ``sha256``
        is compared when it is known, from the backend's index or from its bytes.
    archive, checksum_name : str
        For the messages.

    Returns
    -------
    list of (str, str)
        (path inside the exposure, what differs), in path order; empty when the
        archive holds the exposure as it is on disk.
    """
    found = []
    for path in sorted(set(disk) | set(held)):
        on_disk, member = disk.get(path), held.get(path)
        if member is None:
            found.append((path, f"on disk but not in {archive}"))
        elif on_disk is None:
            found.append((path, f"in {archive} but not on disk"))
        elif member.size != on_disk.size:
            found.append((path, f"{member.size} bytes in {archive}, {on_disk.size} on disk"))
        elif member.sha256 and on_disk.sha256 and member.sha256 != on_disk.sha256:
            what = "the file on disk" if path == checksum_name else checksum_name
            found.append((path, f"content in {archive} differs from {what}"))
    return found


def files_to_archive(top: Path, paths: Iterable[str]) -> dict[str, int]:
    """The regular files below `paths` (relative to `top`, as given to htar), by
    their names as archived (relative to `top`), with their sizes.

    Links are followed as ``htar -h`` follows them (there are none in an installed
    night: the audit reports them).

    Raises
    ------
    OSError
        A path cannot be read: the archive cannot be checked.
    """
    files: dict[str, int] = {}
    for path in paths:
        start = os.path.join(os.fspath(top), path)
        if os.path.isfile(start):
            files[path] = os.stat(start).st_size
            continue

        def fail(error: OSError) -> None:
            raise error

        for directory, _, names in os.walk(start, onerror=fail, followlinks=True):
            relative = os.path.relpath(directory, top)
            for name in names:
                info = os.stat(os.path.join(directory, name))
                if stat.S_ISREG(info.st_mode):
                    files[f"{relative}/{name}"] = info.st_size
    return files


def member_list_differences(expected: dict[str, int], members: Iterable[Member]
                            ) -> list[str]:
    """How an archive's member list differs from the files meant to go in.

    Returns
    -------
    list of str
        One line per file missing from the archive, in it but not meant to be, or
        of another size there; empty when the two agree, names and sizes.
    """
    held = {}
    for member in members:
        name = member.name
        while name.startswith("./"):
            name = name[2:]
        held[name] = member.size
    found = []
    for name in sorted(set(expected) | set(held)):
        if name not in held:
            found.append(f"{name}: not in the archive")
        elif name not in expected:
            found.append(f"{name}: in the archive, not meant to be")
        elif held[name] != expected[name]:
            found.append(f"{name}: {held[name]} bytes in the archive, {expected[name]} on disk")
    return found
