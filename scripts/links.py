"""Links stay inside: where a published exposure really is, and that nothing in it
leads out.

The mountain publishes ``SOURCE/NIGHT/EXPID`` as a symbolic link to the exposure's
data directory. Before anything is copied, one remote command resolves that link and
every symbolic link below its target. The exposure is refused, with one line saying
why, when

* the published link does not resolve to a directory (dangling, a loop, a file);
* its target is not where the stream's data lives: inside ``streams.NAME.data_root``
  when that is configured, else a directory named ``.../NIGHT/EXPID`` like the link;
* a link inside the exposure leads outside the exposure's directory.

rsync then copies from the resolved directory, never through the published link, and
without ``--copy-dirlinks``: a link inside an exposure is never followed. The check
also reports the directory's identity (``st_dev:st_ino``) and is run again after the
copy (`same_exposure`): if the mountain swapped the directory, or a directory above it,
for a link between the check and the copy, what was copied is not what was checked,
and it is thrown away and the exposure held.

A directory the check cannot read (``find`` fails: permission denied at the mountain)
is the exposure's own problem, not the network's (`UnreadableExposureError`): staging
counts it like an unreadable file and holds the exposure after ``verify.max_attempts``.
"""

from __future__ import annotations

import posixpath
import shlex
from typing import NamedTuple

from scripts.remote import remote_command, run_remote

#: Printed by the check script when the published link does not lead to a directory.
NOT_A_DIRECTORY = "NOT-A-DIRECTORY"
#: Precedes the exit status of the check's walk (never a link's name: those are absolute).
STATUS = "STATUS"


class UnsafeLinkError(Exception):
    """The exposure may not be copied; the message is one line for its record."""


class UnreadableExposureError(Exception):
    """The exposure's directory at the mountain cannot be read: its own fault; one line."""


class Resolved(NamedTuple):
    """Where a published exposure really is, and which directory that is."""

    real: str
    identity: str  # "st_dev:st_ino" at the mountain


class LinkCheckError(Exception):
    """The check itself could not run (ssh failed, timed out); try again later."""

    def __init__(self, message: str, timed_out: bool = False):
        super().__init__(message)
        self.timed_out = timed_out


def check_script(link: str, data_root: str | None) -> str:
    """The remote shell script: the link's real target, the data root's real path,
    the target's ``st_dev:st_ino``, each inner link and where it resolves, and the
    walk's exit status (NUL-separated, so that no name can forge a line)."""
    root = shlex.quote(data_root or "")
    return (
        f"real=$(readlink -f -- {shlex.quote(link)}) && test -d \"$real\" "
        f"|| {{ echo {NOT_A_DIRECTORY}; exit 0; }}; "
        f"root={root}; test -z \"$root\" || root=$(readlink -f -- \"$root\"); "
        "printf '%s\\0%s\\0%s\\0' \"$real\" \"$root\" \"$(stat -L -c %d:%i -- \"$real\")\"; "
        "find \"$real\" -type l -exec sh -c "
        "'for l; do printf \"%s\\0\" \"$l\"; "
        "readlink -fz -- \"$l\" || printf \"\\0\"; done' sh {} + 2>/dev/null; "
        f"printf '{STATUS}\\0%s\\0' $?"
    )


def _inside(path: str, top: str) -> bool:
    return path == top or path.startswith(top.rstrip("/") + "/")


def judge(output: str, night: str, expid: str, data_root: str | None) -> Resolved:
    """The real directory to copy from, given the check script's `output`.

    Raises
    ------
    UnsafeLinkError
        With the reason, naming the offending link.
    UnreadableExposureError
        The exposure's directory could not be walked at the mountain.
    """
    where = f"{night}/{expid}"
    if output.strip() == NOT_A_DIRECTORY or not output:
        raise UnsafeLinkError(f"link {where} points to a missing directory at the mountain"
                              " (dangling link, a loop, or not a directory)")
    fields = output.split("\0")
    if len(fields) < 6 or fields[-3] != STATUS:
        raise UnsafeLinkError(f"the link check of {where} gave output that cannot be read;"
                              " refused")
    real, root, ident, pairs, status = fields[0], fields[1], fields[2], fields[3:-3], fields[-2]
    if status != "0":
        raise UnreadableExposureError(f"the directory of {where} at the mountain ({real!r})"
                                      f" cannot be read (its walk exited {status}): fix its"
                                      " permissions at the mountain")
    if data_root:
        root = root or posixpath.normpath(data_root)
        if not _inside(real, root) or real == root:
            raise UnsafeLinkError(f"link {where} points outside the stream's data_root"
                                  f" ({real!r} is not inside {root}); refused")
    elif posixpath.basename(real) != expid or \
            posixpath.basename(posixpath.dirname(real)) != night:
        raise UnsafeLinkError(f"link {where} points to {real!r}, not to a {where} data"
                              " directory; set streams.*.data_root if that is intended")
    for link, target in zip(pairs[0::2], pairs[1::2], strict=False):
        if not target or not _inside(target, real) or _inside(real, target):
            shown = posixpath.relpath(link, real)
            raise UnsafeLinkError(f"{where}: link {shown!r} inside the exposure leads"
                                  f" outside it ({target or 'nowhere'!r}); refused")
    return Resolved(real, ident)


def resolve_exposure(remote: dict, source: str, night: str, expid: str,
                     data_root: str | None) -> Resolved:
    """Check the published exposure at the mountain; return its real directory.

    Raises
    ------
    UnsafeLinkError
        The exposure must not be copied (see the module's rules).
    UnreadableExposureError
        Its directory cannot be read at the mountain.
    LinkCheckError
        The mountain could not be asked.
    """
    link = f"{source.rstrip('/')}/{night}/{expid}"
    result = run_remote(remote_command(remote, check_script(link, data_root)),
                        timeout=remote["timeout"])
    if not result.ok:
        raise LinkCheckError(f"checking the links of {night}/{expid} failed:"
                             f" {result.describe()}", timed_out=result.timed_out)
    return judge(result.stdout, night, expid, data_root)


def same_exposure(before: Resolved, after: Resolved, night: str, expid: str) -> None:
    """The check after a copy must find what the check before it found.

    Raises
    ------
    UnsafeLinkError
        The directory moved or was swapped while it was copied: the copy may hold
        anything and must not be used.
    """
    if before != after:
        raise UnsafeLinkError(f"{night}/{expid} changed at the mountain while it was copied"
                              f" ({before.real!r} {before.identity} became {after.real!r}"
                              f" {after.identity}): the copy is thrown away; refused")
