"""The tape, as the workflow reads and writes it: the archive directory's listing, an
archive's members, its bytes, and writing one archive — through ``hsi``/``htar`` exactly
as at NERSC, or a tar archive directory (the ``tar`` backend). Shared by the backup
(scripts/backup.py) and the audit (scripts/audit.py).
"""

from __future__ import annotations

import contextlib
import logging
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from scripts.commands import run
from scripts.configuration import Stream
from scripts.hpss import (
    SUCCESS_LINE,
    BackupError,
    Member,
    hsi_list,
    hsi_stream_command,
    htar_command,
    htar_members,
    parse_htar_created,
)
from scripts.tar_archive import archive_members, list_archives, write_archive

log = logging.getLogger("backup")
#: htar's exit status when it wrote the archive but left members out ("HTAR
#: SUCCESSFUL" is printed all the same): a failed backup.
SKIPPED_STATUS = 70


class Tape:
    """The configured backend: list the archive directory, list an archive's members,
    write one archive."""

    def __init__(self, config: dict, stream: Stream):
        self.backup = config["backup"]
        self.stream = stream
        if self.backup["backend"] == "tar":
            self.directory = Path(self.backup["archive"]).absolute() / stream.hpss

    def listing(self) -> dict[str, int]:
        """The files of the archive directory (HPSSDIR): name → size."""
        if self.backup["backend"] == "tar":
            return list_archives(self.directory)
        return hsi_list(self.backup["hpss_bin"], self.stream.hpss, self.backup["timeout"])

    @property
    def location(self) -> str:
        """The archive directory, for messages: HPSSDIR, or the tar backend's directory."""
        return str(self.directory) if self.backup["backend"] == "tar" else self.stream.hpss

    def members(self, name: str) -> list[str]:
        """The paths of the regular files archive `name` holds (`member_list`)."""
        return [member.name for member in self.member_list(name)]

    def member_list(self, name: str) -> list[Member]:
        """The regular files archive `name` holds, as stored in it, with their sizes.

        Paths are relative to the stream's destination, as archived from there
        (``20261127/00001234/desi-00001234.fits.fz``). Directories are *not* included,
        nor htar's own consistency member. Read from the archive's own index: ``htar
        -tvf HPSSDIR/NAME`` on HPSS, or the tar backend's index ``NAME.idx`` (which
        holds each file's SHA-256 too).

        Raises
        ------
        BackupError
            The archive cannot be listed (no index, htar failed or timed out).
        """
        if self.backup["backend"] == "tar":
            return archive_members(self.directory, name)
        return htar_members(self.backup["hpss_bin"], f"{self.stream.hpss}/{name}",
                            self.backup["timeout"])

    @contextlib.contextmanager
    def read(self, name: str) -> Iterator[BinaryIO]:
        """The bytes of archive `name`, front to back.

        The tar backend's tarball; on HPSS, ``hsi -q get - : HPSSDIR/NAME`` (a recall
        from tape unless HPSS still has the file on disk), within ``backup.timeout``.

        Raises
        ------
        BackupError
            The archive cannot be opened, or hsi failed or timed out.
        """
        if self.backup["backend"] == "tar":
            try:
                stream = open(self.directory / name, "rb", buffering=0)  # noqa: SIM115
            except OSError as err:
                raise BackupError(f"cannot open {self.directory / name}: {err.strerror}"
                                  ) from None
            with stream:
                yield stream
            return
        command = hsi_stream_command(self.backup["hpss_bin"], f"{self.stream.hpss}/{name}")
        with tempfile.TemporaryFile() as errors:
            try:
                proc = subprocess.Popen(command, stdin=subprocess.DEVNULL,
                                        stdout=subprocess.PIPE, stderr=errors)
            except OSError as err:
                raise BackupError(f"cannot run {command[0]}: {err.strerror}") from None
            expired = threading.Event()

            def expire() -> None:
                expired.set()
                proc.kill()

            timer = threading.Timer(self.backup["timeout"], expire)
            timer.daemon = True
            timer.start()
            try:
                try:
                    yield proc.stdout
                except BackupError as failure:
                    # An archive cut short may be hsi failing: its own word is better.
                    try:
                        returncode = proc.wait(timeout=2)
                    except subprocess.TimeoutExpired:
                        returncode = 0  # still sending: the archive itself is bad
                    if not returncode:
                        raise failure
                else:
                    while proc.stdout.read(1 << 20):  # what tar leaves after its end
                        pass
                    returncode = proc.wait()
            finally:
                timer.cancel()
                if proc.poll() is None:
                    proc.kill()
                proc.wait()
                proc.stdout.close()
            if returncode:
                errors.seek(0)
                said = errors.read().decode(errors="replace").strip().splitlines()
                why = (f"timed out after {self.backup['timeout']} s" if expired.is_set()
                       else f"status {returncode}: {said[-1] if said else 'no message'}")
                raise BackupError(f"{' '.join(command)} failed ({why})")

    def write(self, name: str, members: list[str]) -> list[str]:
        """Write archive `name` from `members` (paths relative to the destination).

        Returns
        -------
        list of str
            The regular files archived, as `members` would list them: htar's own
            report of what it added (``-v``), or the verified tar index.
        """
        cwd = self.stream.destination
        if self.backup["backend"] == "tar":
            return write_archive(self.directory, name, cwd, members)["members"]
        command = htar_command(self.backup["hpss_bin"], f"{self.stream.hpss}/{name}", members)
        result = run(command, timeout=self.backup["timeout"], cwd=cwd)
        if result.returncode == SKIPPED_STATUS and SUCCESS_LINE in result.stdout.splitlines():
            skipped = [line.strip() for line in result.stderr.splitlines()
                       if "skipped" in line.lower()]
            raise BackupError(f"HTAR backup failed: htar exited with status {SKIPPED_STATUS}"
                              " after 'HTAR SUCCESSFUL': members were skipped"
                              + (f" ({skipped[0][:300]})" if skipped else "")
                              + f"; command was: {' '.join(command)}")
        if not result.ok:
            raise BackupError(f"HTAR backup failed ({result.describe()}); command was:"
                              f" {' '.join(command)}")
        if result.stderr.strip():
            log.warning("htar exited 0 but wrote to stderr: %s", result.stderr.strip()[-500:])
        return parse_htar_created(result.stdout)
