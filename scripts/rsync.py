"""The one place the rsync command line is built, and what rsync's output means."""

from __future__ import annotations

import re
from collections.abc import Sequence

from scripts.remote import rsync_shell, source_spec

#: The original daemon's flags, less ``--copy-dirlinks``: a link inside an exposure is
#: never followed when copying (see scripts/links.py); only the catch-up's dry run,
#: which copies nothing, follows the night's published links.
BASE_FLAGS = ("--recursive", "--times", "--omit-dir-times")
_EXPID = re.compile(r"[0-9]{8}")
_EXPOSURE_LINE = re.compile(r"^([0-9]{8})/")
#: ``rsync: [receiver] write failed on "/x/y": No space left on device (28)``
_MESSAGE = re.compile(r"^rsync:\s*\[(?P<role>\w+)\]\s.*?: (?P<text>[^:]+) \((?P<errno>[0-9]+)\)$")
_PATH = re.compile(r'"([^"]*)"')
_IO_TIMEOUT = re.compile(r"io timeout after ([0-9]+) seconds")
#: The errors a person can act on, as rsync writes them (strerror) and in our words.
ERRORS = {
    "No space left on device": "no space left on device",
    "Disk quota exceeded": "disk quota exceeded",
    "Read-only file system": "read-only file system",
    "Permission denied": "permission denied",
    "Operation not permitted": "operation not permitted",
    "No such file or directory": "no such file or directory",
}
#: Those that, on the receiving side (this machine), are the environment's (a whole
#: disk), not one exposure's: they hold nothing, the next run tries again.
ENVIRONMENT_ERRORS = {"No space left on device", "Disk quota exceeded", "Read-only file system",
                      "Permission denied"}


def rsync_command(
    remote: dict,
    source: str,
    destination: str,
    *,
    dry_run: bool = False,
    itemize: bool = False,
    delete: bool = False,
    exposures: Sequence[str] | None = None,
    follow_dirlinks: bool = False,
    copy_dest: str | None = None,
) -> list[str]:
    """The rsync command copying the contents of `source` into `destination`.

    Longer than 50 lines on purpose: this is the one place the rsync command line is
    built (staging and the catch-up both call it), the code is one short line per
    option, and the length is the documentation of each option below.

    Parameters
    ----------
    remote : dict
        The ``remote`` section of the configuration (host, ssh, timeout).
    source, destination : str
        Directories; both get a trailing ``/`` so that contents are copied.
    dry_run, itemize : bool
        For the catch-up: report what would change, one itemized line a file.
    delete : bool
        Remove files in `destination` that are not in `source`, including the
        temporary files an rsync killed with SIGKILL leaves behind. Only for staging.
    exposures : sequence of str, optional
        For a whole night: only these exposure directories (8-digit names; others
        are dropped), so that neither a stray link in the night (one pointing at
        ``.``, say) nor a held exposure's links are ever followed.
    follow_dirlinks : bool
        ``--copy-dirlinks``: for the catch-up's dry run over a night of published
        links only; it copies nothing.
    copy_dest : str, optional
        A local directory (an installed exposure) whose unchanged files rsync copies
        locally instead of fetching; it is only read.

    Returns
    -------
    list of str
        The argv; names are never interpolated into a shell.
    """
    # --timeout ends a transfer whose connection stalls (rsync's own I/O limit);
    # the caller bounds the whole command with remote.transfer_timeout.
    command = ["rsync", *BASE_FLAGS, f"--timeout={int(max(1, remote['timeout']))}"]
    if follow_dirlinks:
        command.append("--copy-dirlinks")
    if copy_dest:
        command.append(f"--copy-dest={copy_dest}")
    if dry_run:
        command.append("--dry-run")
    if itemize:
        command.append("--itemize-changes")
    else:
        command.append("--verbose")
    if delete:
        command.append("--delete")
    if exposures is not None:
        for expid in exposures:
            if _EXPID.fullmatch(expid):
                command += [f"--include=/{expid}/", f"--include=/{expid}/**"]
        command.append("--exclude=*")
    command += rsync_shell(remote)
    command += [source_spec(remote, source.rstrip("/") + "/"), destination.rstrip("/") + "/"]
    return command


def root_cause(stderr: str, where: str = "staging") -> tuple[str, bool] | None:
    """The root cause of a failed rsync, in one line, from its stderr; and whether it
    is the environment's (a full, read-only or forbidden disk here; a stalled
    connection) rather than the exposure's.

    rsync reports a full disk at the receiver first and then, from the sender, the
    broken pipe it caused (``[sender] write error: Broken pipe (32)``): the receiver's
    error is the cause. An error of the sender is at the mountain (an unreadable
    file there).

    Returns
    -------
    (str, bool) or None
        ``("no space left on device (staging, /path)", True)``; None when rsync's
        messages name nothing better than its exit status.
    """
    found = []
    for line in stderr.splitlines():
        timeout = _IO_TIMEOUT.search(line)
        if timeout:
            return f"timed out after {timeout.group(1)} s without data (rsync --timeout)", True
        message = _MESSAGE.match(line.strip())
        if message is None or message["text"] not in ERRORS:
            continue
        here = message["role"].lower() in ("receiver", "generator")
        path = _PATH.search(line)
        place = where if here else "at the mountain"
        words = ERRORS[message["text"]]
        found.append((not here, f"{words} ({place}, {path[1]})" if path else f"{words} ({place})",
                      here and message["text"] in ENVIRONMENT_ERRORS))
    if not found:
        return None
    _, reason, environment = min(found, key=lambda item: item[0])  # this machine's first
    return reason, environment


def changed_files(itemized: str) -> list[str]:
    """Files an ``--itemize-changes`` run would transfer or update.

    Lines look like ``>f+++++++++ 00001234/desi-00001234.fits.fz``; directory
    attribute-only lines (``cd``, ``.d``) and messages are not changes to data.
    """
    changed = []
    for line in itemized.splitlines():
        if len(line) < 13 or line[11] != " ":
            continue
        flags, name = line[:11], line[12:]
        if flags[1] == "f" and flags[0] in "<>ch":
            changed.append(name)
    return changed


def changed_exposures(files: Sequence[str]) -> list[str]:
    """The exposure ids (8-digit top-level directories) among `files`."""
    return sorted({m.group(1) for f in files if (m := _EXPOSURE_LINE.match(f))})
