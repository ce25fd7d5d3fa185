"""HPSS: the status endpoint, and the hsi and htar command lines and their output.

The production code calls ``BIN/hsi`` and ``BIN/htar`` exactly as at NERSC; the tests
point ``backup.hpss_bin`` at the emulator in ``tests/hpss_emulator``.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

from scripts.commands import run

log = logging.getLogger(__name__)


class BackupError(Exception):
    """A backup step failed; the message is one line for the failure record."""


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
