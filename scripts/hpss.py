"""HPSS: the status endpoint, and the hsi and htar command lines and their output.

The production code calls ``BIN/hsi`` and ``BIN/htar`` exactly as at NERSC; the tests
point ``backup.hpss_bin`` at the emulator in ``tests/hpss_emulator``.
"""

from __future__ import annotations

import logging
import os
import posixpath
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from scripts.commands import run

log = logging.getLogger(__name__)


class BackupError(Exception):
    """A backup step failed; the message is one line for the failure record."""


@dataclass(frozen=True)
class Member:
    """One regular file of an archive, as the archive's own index describes it.

    Attributes
    ----------
    name : str
        As stored, relative to the destination (``20261127/00001234/x.fits.fz``).
    size : int
        Bytes.
    sha256 : str or None
        Hex digest where the backend records one (the ``tar`` backend's index); htar's
        index holds a CRC only, which nothing outside htar can check, so None.
    """

    name: str
    size: int
    sha256: str | None = None


def hpss_status(url: str, timeout: float) -> tuple[bool, str]:
    """Is HPSS up? Read the JSON status endpoint once.

    Returns
    -------
    (bool, str)
        Whether backups may run, and why not when they may not.
    """
    import requests

    try:
        response = requests.get(url, timeout=timeout)
        response.raise_for_status()
    except requests.RequestException as err:
        return False, f"HPSS status endpoint {url} unreachable ({type(err).__name__})"
    try:
        status = response.json().get("status")
    except (ValueError, AttributeError):
        return False, f"HPSS status endpoint {url} did not return JSON"
    if status != "active":
        return False, f"HPSS status is {status!r}, not 'active'"
    return True, "HPSS active"


def parse_hsi_listing(text: str) -> dict[str, int]:
    """Entries of an ``hsi ls -l`` listing: name (last field) → size.

    Raises
    ------
    BackupError
        For error lines (they start with ``**``), except a missing directory, which
        is an empty listing: nothing has been backed up there yet.
    """
    entries: dict[str, int] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        if line.startswith("**"):
            if "No such file or directory" in line:
                continue
            raise BackupError(f"hsi reported: {line}")
        if line.endswith(":") and len(line.split()) == 1:
            continue  # the "/DIR:" header
        fields = line.split()
        size = int(fields[4]) if len(fields) >= 9 and fields[4].isdigit() else 0
        entries[fields[-1]] = size
    return entries


def hsi_list(hpss_bin: str, directory: str, timeout: float) -> dict[str, int]:
    """``hsi -O FILE ls -l DIRECTORY``, parsed from FILE (hsi writes noise on stderr)."""
    with tempfile.TemporaryDirectory(prefix="desitransfer-hsi-") as tmp:
        out = Path(tmp, "ls.txt")
        result = run([os.path.join(hpss_bin, "hsi"), "-O", str(out), "ls", "-l", directory],
                     timeout=timeout)
        if result.missing or result.timed_out:
            raise BackupError(result.describe())
        text = out.read_text(errors="replace") if out.exists() else ""
    if result.returncode != 0 and not text.strip():
        raise BackupError(result.describe())
    return parse_hsi_listing(text)


def htar_command(hpss_bin: str, archive: str, members: list[str]) -> list[str]:
    """The original's htar command line: create, verbose, follow links, verify CRCs."""
    return [os.path.join(hpss_bin, "htar"), "-cvhf", archive, "-H", "crc:verify=all", *members]


def htar_list_command(hpss_bin: str, archive: str) -> list[str]:
    """``htar -tvf ARCHIVE``: the members, read from the archive's index on tape."""
    return [os.path.join(hpss_bin, "htar"), "-tvf", archive]


#: htar's own consistency member, written last into every archive it creates
#: (``/tmp/HTAR_CF_CHK_<pid>_<epoch>``, or under the scratch directory of the host).
CONSISTENCY_PREFIX = "HTAR_CF_CHK_"
SUCCESS_LINE = "HTAR: HTAR SUCCESSFUL"
#: One member of an ``htar -tv`` listing, as real htar prints it::
#:
#:     HTAR: -rw-r--r--  desi/desi       3000 2026-11-28 01:02  20261127/00001234/x.fits.fz
#:     HTAR: drwxr-s---  desi/desi          0 2026-11-28 01:02  20261127/00001234/
#:
#: mode, owner/group, size, date, time, name (the rest of the line: it may hold spaces).
_MEMBER_LINE = re.compile(
    r"HTAR: (?P<mode>[-dlbcps][-rwxsStT]{9})[.+@]?\s+\S+\s+(?P<size>\d+)"
    r"\s+\d{4}-\d{2}-\d{2}\s+\d{2}:\d{2}(?::\d{2})?\s+(?P<name>.+)"
)
#: What a member line starts with; such a line that `_MEMBER_LINE` cannot read is an
#: error, never skipped: a record must not silently miss a member.
_MEMBER_START = re.compile(r"HTAR: [-dlbcps][-r][-w]")


def is_consistency_member(name: str) -> bool:
    """Whether `name` is htar's consistency member rather than data."""
    return posixpath.basename(name.rstrip("/")).startswith(CONSISTENCY_PREFIX)


def parse_htar_listing(text: str) -> list[str]:
    """The names of the regular files an ``htar -tv`` listing shows (`parse_htar_members`)."""
    return [member.name for member in parse_htar_members(text)]


def parse_htar_members(text: str) -> list[Member]:
    """The regular files an ``htar -tv`` listing shows, with their sizes, in archive order.

    Directories (mode ``d``, name ending in ``/``) and htar's consistency member are
    left out; other lines (``HTAR: Listing complete for …``, ``HTAR: HTAR
    SUCCESSFUL``) are not members.

    Raises
    ------
    BackupError
        For a line that looks like a member but cannot be read.
    """
    files = []
    for line in text.splitlines():
        line = line.rstrip("\r\n")
        if not _MEMBER_START.match(line):
            continue
        match = _MEMBER_LINE.fullmatch(line)
        if match is None:
            raise BackupError(f"cannot read this line of an htar listing: {line[:200]}")
        name, mode = match["name"], match["mode"]
        if mode[0] == "l":
            name = name.split(" -> ", 1)[0]
        if mode[0] == "-" and not is_consistency_member(name):
            files.append(Member(name, int(match["size"])))
    return files


def parse_htar_created(text: str) -> list[str]:
    """The regular files an ``htar -cv`` run reports it added (``HTAR: a   NAME``).

    Directories (their names end in ``/``) and the consistency member are left out.
    """
    files = []
    for line in text.splitlines():
        if line.startswith("HTAR: a "):
            name = line[len("HTAR: a "):].strip()
            if name and not name.endswith("/") and not is_consistency_member(name):
                files.append(name)
    return files


def htar_members(hpss_bin: str, archive: str, timeout: float) -> list[Member]:
    """The regular files of `archive` on tape (``htar -tvf``), as its index lists them.

    Raises
    ------
    BackupError
        htar failed, timed out, or did not end its listing with ``HTAR SUCCESSFUL``.
    """
    command = htar_list_command(hpss_bin, archive)
    result = run(command, timeout=timeout)
    if not result.ok:
        raise BackupError(f"cannot list {archive} ({result.describe()}); command was:"
                          f" {' '.join(command)}")
    if SUCCESS_LINE not in result.stdout.splitlines():
        raise BackupError(f"htar listed {archive} without {SUCCESS_LINE!r}: the listing may"
                          " be incomplete")
    return parse_htar_members(result.stdout)


def hsi_stream_command(hpss_bin: str, path: str) -> list[str]:
    """``hsi -q get - : PATH``: the file's bytes on stdout, read from HPSS (a recall from
    tape when it is no longer in the disk cache)."""
    return [os.path.join(hpss_bin, "hsi"), "-q", "get", "-", ":", path]


def minimal_tar_size(members: list[Member]) -> int:
    """The fewest bytes a tar file holding `members` can have: a 512-byte header and
    the data padded to 512 bytes per member. A file on tape shorter than this is
    truncated, whatever else its index says."""
    return sum(512 + -(-member.size // 512) * 512 for member in members)
