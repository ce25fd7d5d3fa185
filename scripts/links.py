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
without ``--copy-dirlinks``: a link inside an exposure is never followed, so nothing
outside it can be copied even if the mountain changes between the check and the copy.
"""

from __future__ import annotations

import posixpath
import shlex

from scripts.commands import run
from scripts.remote import remote_command

#: Printed by the check script when the published link does not lead to a directory.
NOT_A_DIRECTORY = "NOT-A-DIRECTORY"


class UnsafeLinkError(Exception):
    """The exposure may not be copied; the message is one line for its record."""


class LinkCheckError(Exception):
    """The check itself could not run (ssh failed, timed out); try again later."""

    def __init__(self, message: str, timed_out: bool = False):
        super().__init__(message)
        self.timed_out = timed_out


def check_script(link: str, data_root: str | None) -> str:
    """The remote shell script: the link's real target, the data root's real path,
    then each inner link and where it resolves (NUL-separated, so that no name can
    forge a line)."""
    root = shlex.quote(data_root or "")
    return (
        f"real=$(readlink -f -- {shlex.quote(link)}) && test -d \"$real\" "
        f"|| {{ echo {NOT_A_DIRECTORY}; exit 0; }}; "
        f"root={root}; test -z \"$root\" || root=$(readlink -f -- \"$root\"); "
        "printf '%s\\0%s\\0' \"$real\" \"$root\"; "
        "find \"$real\" -type l -exec sh -c "
        "'for l; do printf \"%s\\0\" \"$l\"; "
        "readlink -fz -- \"$l\" || printf \"\\0\"; done' sh {} +"
    )


def _inside(path: str, top: str) -> bool:
    return path == top or path.startswith(top.rstrip("/") + "/")


def judge(output: str, night: str, expid: str, data_root: str | None) -> str:
    """The real directory to copy from, given the check script's `output`.

    Raises
    ------
    UnsafeLinkError
        With the reason, naming the offending link.
    """
    where = f"{night}/{expid}"
    if output.strip() == NOT_A_DIRECTORY or not output:
        raise UnsafeLinkError(f"link {where} points to a missing directory at the mountain"
                              " (dangling link, a loop, or not a directory)")
    fields = output.split("\0")
    real, root, pairs = fields[0], fields[1], fields[2:-1]
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
    return real


def resolve_exposure(remote: dict, source: str, night: str, expid: str,
                     data_root: str | None) -> str:
    """Check the published exposure at the mountain; return its real directory.

    Raises
    ------
    UnsafeLinkError
        The exposure must not be copied (see the module's rules).
    LinkCheckError
        The mountain could not be asked.
    """
    link = f"{source.rstrip('/')}/{night}/{expid}"
    result = run(remote_command(remote, check_script(link, data_root)),
                 timeout=remote["timeout"])
    if not result.ok:
        raise LinkCheckError(f"checking the links of {night}/{expid} failed:"
                             f" {result.describe()}", timed_out=result.timed_out)
    return judge(result.stdout, night, expid, data_root)
