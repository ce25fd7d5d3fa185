"""The mountain host: how to reach it, and what its exposure listing says.

Discovery lists the symlinks ``SOURCE/NIGHT/EXPID`` that the mountain publishes when
an exposure is complete, together with the checksum lock, in one remote command. The
parsing (`parse_listing`) and the reading of a failure (`listing_failure`) are pure;
`list_exposures` runs the command, with a timeout and a short-lived cache so that the
re-parses of one run (its Slurm jobs, its second lane) do not list the host again.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import re
import shlex
import socket
import stat
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from scripts.commands import CommandResult, run
from scripts.markers import valid_expid, valid_night, write_json_atomic

log = logging.getLogger(__name__)

#: What a published link must be, relative to SOURCE: NIGHT/EXPID, ASCII digits only.
LINK_RE = re.compile(r"([0-9]{8})/([0-9]{8})")
#: One record of the listing: the link's mtime (epoch seconds), a space, its path.
RECORD_RE = re.compile(r"(-?[0-9]+(?:\.[0-9]*)?) (.*)", re.DOTALL)
#: Records are NUL-terminated: NUL is the one byte a path cannot contain, so no name
#: can split a record in two (a newline can; that would let a name invent an exposure).
SEPARATOR = "\0"
LOCK_LINE = "CHECKSUM-LOCK-PRESENT"
#: The lock record's stamps: the mountain's clock now, and the lock's mtime.
LOCK_RE = re.compile(r"([0-9]+) (-?[0-9]+(?:\.[0-9]*)?)")
#: Bumped when the cached form of a listing changes: an older cache is a cache miss.
CACHE_FORMAT = 4
LOCAL = "local"
#: The control socket of the lane run's shared ssh connection (scripts/ssh_master.py),
#: set by the cron entry for the runs it starts: every ssh of the run goes through it.
ENV_CONTROL = "DESITRANSFER_SSH_CONTROL"
#: Seconds a command cut off by a dying master waits for its replacement.
REPLACEMENT_WAIT = 5.0


class RemoteError(Exception):
    """The mountain could not be listed; the message is one line."""


@dataclass
class Listing:
    """What the mountain publishes for one stream."""

    exposures: list[tuple[str, str]] = field(default_factory=list)  # (night, expid), sorted
    malformed: list[str] = field(default_factory=list)
    locked: bool = False
    #: How long the checksum lock has existed (seconds, by the mountain's clock), when
    #: it exists and its age could be read.
    lock_age: float | None = None
    #: "NIGHT/EXPID" -> when the link appeared at the mountain (epoch seconds, its mtime)
    published: dict[str, float] = field(default_factory=dict)
    #: Every link found, in the window or not, well-formed or not: none at all, after
    #: a listing that found some, is the original's "No links found, check connection."
    links: int = 0

    def nights(self) -> list[str]:
        return sorted({night for night, _ in self.exposures})


def ssh_command(remote: dict, control: str | None = None) -> list[str]:
    """The configured ssh command, with ``BatchMode=yes`` added if it is missing:
    ssh must fail rather than wait for a password that nobody will type.

    With a shared connection (`control`, by default ``DESITRANSFER_SSH_CONTROL``
    from the environment) the command goes through it: ``ControlMaster=no`` never
    makes this command a master, and with no live master at `control` ssh connects
    on its own, so a dead shared connection never fails a command.
    """
    ssh = list(remote["ssh"])
    if not any("batchmode" in option.lower() for option in ssh):
        ssh[1:1] = ["-o", "BatchMode=yes"]
    control = os.environ.get(ENV_CONTROL) if control is None else control
    if control:
        ssh[1:1] = sharing_options(control)
    return ssh


def sharing_options(control: str) -> list[str]:
    """ssh's options that use the shared connection at `control` and never start one."""
    # ssh expands %-tokens in ControlPath: a literal % is written %%.
    return ["-o", "ControlMaster=no", "-o", f"ControlPath={control.replace('%', '%%')}"]


def master_identity(control: str | None) -> tuple[int, int] | None:
    """Which shared connection answers at the socket `control` now: the socket's
    (device, inode) when a master accepts connections there, else None (none, or a
    dead master's socket). A master replaced since has another identity."""
    if not control:
        return None
    try:
        info = os.lstat(control)
        if not stat.S_ISSOCK(info.st_mode):
            return None
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            probe.settimeout(2)
            probe.connect(control)
    except OSError:
        return None
    return info.st_dev, info.st_ino


def broken_under(result: CommandResult, before: tuple[int, int] | None,
                 after: tuple[int, int] | None) -> bool:
    """Whether `result` failed because the shared connection it went through ended
    under it: it failed (not a timeout, not a missing program), a master was
    serving before it started, and that master is no longer the one serving."""
    return (not result.ok and not result.timed_out and not result.missing
            and before is not None and after != before)


def run_remote(command: Sequence[str], timeout: float, **kwargs) -> CommandResult:
    """Run a command that reaches the mountain (`scripts.commands.run`), once more
    when the shared ssh connection it went through died under it (a killed master
    is the connection's failure, not the command's: the command runs again, on a
    replaced master or a connection of its own)."""
    control = os.environ.get(ENV_CONTROL)
    before = master_identity(control)
    result = run(command, timeout=timeout, **kwargs)
    if not result.ok and broken_under(result, before, master_identity(control)):
        log.warning("the shared ssh connection ended under %s (%s); running it again",
                    os.path.basename(command[0]), result.describe())
        # The cron entry opens a new master at once: the command goes through it when
        # it is up soon, on a connection of its own otherwise.
        deadline = time.monotonic() + REPLACEMENT_WAIT
        while master_identity(control) is None and time.monotonic() < deadline:
            time.sleep(0.05)
        result = run(command, timeout=timeout, **kwargs)
    return result


def remote_command(remote: dict, script: str) -> list[str]:
    """The argv that runs shell `script` on the mountain (or here, for host ``local``)."""
    if remote["host"] == LOCAL:
        return ["sh", "-c", script]
    return [*ssh_command(remote), remote["host"], script]


def listing_script(source: str, checksum_lock: str) -> str:
    """The remote shell script: report the checksum lock, then list the links.

    Both go in one ssh call: one round trip, one failure to interpret. Every record
    ends with NUL, never a newline: a name at the mountain may hold a newline (and
    then could end in text that looks like another link), it can never hold NUL. The
    lock record is ``CHECKSUM-LOCK-PRESENT NOW MTIME`` (epoch seconds by the
    mountain's clock, so a skewed clock here does not age it), written by one printf:
    a lock that vanishes in between leaves MTIME empty, never an unterminated record.
    """
    lock = shlex.quote(checksum_lock)
    return (
        f"if test -e {lock}; then printf '%s %s %s\\000' {LOCK_LINE} \"$(date +%s)\" "
        f"\"$(find {lock} -maxdepth 0 -printf %T@ 2>/dev/null)\"; fi; "
        f"find {shlex.quote(source.rstrip('/') or '/')} -type l -printf '%T@ %p\\0'"
    )


def lock_age(record: str) -> float | None:
    """The checksum lock's age from its record (see `listing_script`), or None when the
    record carries no readable stamps (the lock vanished meanwhile, an old script)."""
    stamps = LOCK_RE.fullmatch(record[len(LOCK_LINE):].strip())
    if stamps is None:
        return None
    return max(0.0, float(stamps.group(1)) - float(stamps.group(2)))


def printable_path(name: str) -> str:
    """`name` with everything but printable ASCII escaped, as Python writes it.

    A malformed name goes to logs, alerts and the status files; escaped, a newline or a
    terminal control sequence in it can neither forge a log line nor reach a terminal.
    A byte that was not UTF-8 (kept by ``surrogateescape``) shows as ``\\xNN``.
    """
    out = []
    for char in name:
        code = ord(char)
        if 0xDC80 <= code <= 0xDCFF:
            out.append(f"\\x{code - 0xDC00:02x}")
        elif char == "\\":
            out.append("\\\\")
        elif " " <= char <= "~":
            out.append(char)
        else:
            out.append(char.encode("unicode_escape").decode("ascii"))
    return "".join(out)


def parse_record(record: str, prefix: str) -> tuple[str, str, float] | str:
    """One record of the listing (not the lock record): the exposure it publishes, or
    the path to report as malformed.

    Only ``EPOCH PREFIX/NIGHT/EXPID`` with NIGHT and EXPID in ASCII digits, NIGHT a
    real date (`scripts.markers.valid_night`), is an exposure: a name with a newline,
    a carriage return, any other control character or a byte that is not UTF-8 is
    malformed, whatever it ends with.

    Returns
    -------
    (str, str, float) or str
        ``(night, expid, published)``, `published` being the link's mtime (epoch
        seconds); else the record's path (the whole record without a valid stamp),
        unescaped.
    """
    stamped = RECORD_RE.fullmatch(record)
    path = stamped.group(2) if stamped else record
    match = LINK_RE.fullmatch(path[len(prefix):]) if path.startswith(prefix) else None
    # An impossible date (20261131) is as malformed as any other name.
    if stamped is None or match is None or not valid_night(match.group(1)):
        return path
    night, expid = match.groups()
    return night, expid, float(stamped.group(1))


def parse_listing(text: str | bytes, source: str, first_night: str) -> Listing:
    """Parse the output of `listing_script`.

    Parameters
    ----------
    text : str or bytes
        The command's standard output: NUL-terminated records, each ``EPOCH PATH``
        (the link's own mtime, when the mountain published the exposure), or the lock
        record. Bytes that are not UTF-8 are kept as such (``surrogateescape``); text
        decoded with ``errors="replace"`` and universal newlines (as
        `scripts.commands.run` does) works too: such a byte then shows as ``\\ufffd``
        and a carriage return as ``\\n`` in the malformed list, and is malformed all
        the same, since NUL, digits and ``/`` pass through both decodings unchanged.
    source : str
        The stream's source directory, stripped from the paths.
    first_night : str
        Links of nights before this one are outside the look-back window and ignored.

    Returns
    -------
    Listing
        Exposures within the window, the malformed paths (escaped with `printable_path`
        for people to read; `parse_record` says what is malformed), and the lock state.
    """
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="surrogateescape")
    listing = Listing()
    prefix = source.rstrip("/") + "/"
    exposures = set()
    *records, tail = text.split(SEPARATOR)
    for record in records:
        if not record:
            continue
        if record == LOCK_LINE or record.startswith(LOCK_LINE + " "):
            listing.locked = True
            listing.lock_age = lock_age(record)
            continue
        listing.links += 1
        link = parse_record(record, prefix)
        if isinstance(link, str):
            listing.malformed.append(printable_path(link))
        elif link[0] >= first_night:
            night, expid, published = link
            exposures.add((night, expid))
            listing.published[f"{night}/{expid}"] = published
    if tail:
        # find ends every record with NUL: an unterminated tail is a truncated record
        # or output of the older newline format, and nothing in it is trusted.
        listing.malformed.append(printable_path(tail))
        listing.links += 1
    listing.exposures = sorted(exposures)
    return listing


def first_night(now: dt.datetime, lookback_nights: int) -> str:
    """The oldest night inside the look-back window, as ``YYYYMMDD``."""
    return (now.date() - dt.timedelta(days=lookback_nights)).strftime("%Y%m%d")


def list_exposures(
    remote: dict,
    source: str,
    window_start: str,
    cache_file: Path | None = None,
    cache_seconds: float = 0,
    run_id: str | None = None,
    write_cache: bool = True,
) -> Listing:
    """List the exposures the mountain publishes for one stream.

    A cached listing (`cache_file`, at most `cache_seconds` old) answers only a parse of
    the same run, `run_id` (a Slurm job of that run, the night lane after the exposure lane of
    one cron invocation): a later run never plans from a listing older than its start.

    Raises
    ------
    RemoteError
        ssh failed, timed out or ``find`` could not read `source`: "no links" and
        "no connection" are different answers.
    """
    key = {
        "host": remote["host"],
        "source": source,
        "lock": remote["checksum_lock"],
        "first_night": window_start,
        "run": run_id,
    }
    if cache_file is not None and cache_seconds > 0:
        cached = _read_cache(cache_file, key, cache_seconds)
        if cached is not None:
            return cached
    command = remote_command(remote, listing_script(source, remote["checksum_lock"]))
    result = run_remote(command, timeout=remote["timeout"])
    failure = listing_failure(remote, source, result)
    if failure is not None:
        raise RemoteError(failure)
    listing = parse_listing(result.stdout, source, window_start)
    if cache_file is not None and write_cache:  # a preview reads the cache, never writes it
        _write_cache(cache_file, key, listing)
    return listing


def listing_failure(remote: dict, source: str, result: CommandResult) -> str | None:
    """Why the listing command (`result`) gave no listing, in one line that says what to
    check; None when it succeeded."""
    where = "this machine" if remote["host"] == LOCAL else remote["host"]
    if result.missing:
        return result.describe()
    if result.timed_out:
        return (f"listing {source} on {where} timed out after {remote['timeout']} s;"
                " check the mountain host and the network")
    if result.returncode == 0:
        return None
    detail = (result.stderr.strip().splitlines() or ["no message"])[-1]
    if remote["host"] != LOCAL and result.returncode == 255:
        return (f"cannot reach {where} with {' '.join(remote['ssh'])} (ssh status 255: "
                f"{detail}); check the host, the keys and remote.ssh in the configuration")
    return (f"listing {source} on {where} failed (status {result.returncode}: {detail});"
            " check streams.*.source in the configuration")


def _write_cache(path: Path, key: dict, listing: Listing) -> None:
    """Keep `listing` as JSON; malformed names are already escaped, so it is all ASCII."""
    write_json_atomic(
        path, {"format": CACHE_FORMAT, "key": key, "epoch": time.time(), **asdict(listing)}
    )


def _read_cache(path: Path, key: dict, max_age: float) -> Listing | None:
    """The cached listing, or None: absent, stale, for another key, of another
    format (an older one may hold what today's parser refuses) or unreadable."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("format") != CACHE_FORMAT:
        return None
    epoch = data.get("epoch")
    if data.get("key") != key or not isinstance(epoch, (int, float)):
        return None
    if not 0 <= time.time() - epoch <= max_age:
        return None
    try:
        exposures = [(str(night), str(expid)) for night, expid in data["exposures"]]
        listing = Listing(
            exposures=exposures,
            malformed=[str(link) for link in data["malformed"]],
            locked=bool(data["locked"]),
            lock_age=None if data["lock_age"] is None else float(data["lock_age"]),
            published={str(k): float(v) for k, v in data["published"].items()},
            links=int(data["links"]),
        )
    except (KeyError, TypeError, ValueError, AttributeError):
        return None
    if not all(valid_night(night) and valid_expid(expid) for night, expid in exposures):
        return None
    return listing


def cached_exposures(path: Path) -> set[tuple[str, str]]:
    """The (night, expid) of the last listing kept at `path`, however old; an absent
    or unreadable cache knows none."""
    try:
        data = json.loads(path.read_text())
        return {(str(night), str(expid)) for night, expid in data["exposures"]}
    except (OSError, ValueError, KeyError, TypeError):
        return set()


def source_spec(remote: dict, path: str) -> str:
    """How rsync names a path on the mountain."""
    return path if remote["host"] == LOCAL else f"{remote['host']}:{path}"


def rsync_shell(remote: dict) -> Sequence[str]:
    """rsync's ``-e`` option for the configured ssh, or nothing for a local source."""
    if remote["host"] == LOCAL:
        return []
    return ["-e", shlex.join(ssh_command(remote))]
