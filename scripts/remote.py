"""The mountain host: how to reach it, and what its exposure listing says.

Discovery lists the symlinks ``SOURCE/NIGHT/EXPID`` that the mountain publishes when
an exposure is complete, together with the checksum lock, in one remote command. The
parsing is pure (`parse_listing`); `list_exposures` runs the command, with a timeout
and a short-lived cache so that repeated ``snakemake -n`` calls do not hammer the host.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import shlex
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from scripts.commands import run
from scripts.markers import write_json_atomic

log = logging.getLogger(__name__)

LINK_RE = re.compile(r"(?:^|/)([0-9]{8})/([0-9]{8})$")
LOCK_LINE = "CHECKSUM-LOCK-PRESENT"
LOCAL = "local"


class RemoteError(Exception):
    """The mountain could not be listed; the message is one line."""


@dataclass
class Listing:
    """What the mountain publishes for one stream."""

    exposures: list[tuple[str, str]] = field(default_factory=list)  # (night, expid), sorted
    malformed: list[str] = field(default_factory=list)
    locked: bool = False
    #: "NIGHT/EXPID" -> when the link appeared at the mountain (epoch seconds, its mtime)
    published: dict[str, float] = field(default_factory=dict)

    def nights(self) -> list[str]:
        return sorted({night for night, _ in self.exposures})


def ssh_command(remote: dict) -> list[str]:
    """The configured ssh command, with ``BatchMode=yes`` added if it is missing:
    ssh must fail rather than wait for a password that nobody will type."""
    ssh = list(remote["ssh"])
    if not any("batchmode" in option.lower() for option in ssh):
        ssh[1:1] = ["-o", "BatchMode=yes"]
    return ssh


def remote_command(remote: dict, script: str) -> list[str]:
    """The argv that runs shell `script` on the mountain (or here, for host ``local``)."""
    if remote["host"] == LOCAL:
        return ["sh", "-c", script]
    return [*ssh_command(remote), remote["host"], script]


def listing_script(source: str, checksum_lock: str) -> str:
    """The remote shell script: report the checksum lock, then list the links.

    Both go in one ssh call: one round trip, one failure to interpret.
    """
    return (
        f"if test -e {shlex.quote(checksum_lock)}; then echo {LOCK_LINE}; fi; "
        f"find {shlex.quote(source.rstrip('/') or '/')} -type l -printf '%T@ %p\\n'"
    )


def parse_listing(text: str, source: str, first_night: str) -> Listing:
    """Parse the output of `listing_script`.

    Parameters
    ----------
    text : str
        The command's standard output: ``EPOCH PATH`` lines (the link's own mtime, when
        the mountain published the exposure), or bare ``PATH`` lines.
    source : str
        The stream's source directory, stripped from the paths.
    first_night : str
        Links of nights before this one are outside the look-back window and ignored.

    Returns
    -------
    Listing
        Exposures within the window, the malformed link paths, and the lock state.
    """
    listing = Listing()
    prefix = source.rstrip("/") + "/"
    exposures = set()
    for line in text.splitlines():
        line = line.rstrip("\r")
        if not line:
            continue
        if line == LOCK_LINE:
            listing.locked = True
            continue
        published = None
        stamp, _, rest = line.partition(" ")
        if rest and stamp.replace(".", "", 1).isdigit():
            published, line = float(stamp), rest
        relative = line[len(prefix):] if line.startswith(prefix) else line
        match = LINK_RE.fullmatch(relative) if "/" in relative else None
        if match is None or relative.count("/") != 1:
            listing.malformed.append(line)
            continue
        night, expid = match.groups()
        if night >= first_night:
            exposures.add((night, expid))
            if published is not None:
                listing.published[f"{night}/{expid}"] = published
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
) -> Listing:
    """List the exposures the mountain publishes for one stream.

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
    }
    if cache_file is not None and cache_seconds > 0:
        cached = _read_cache(cache_file, key, cache_seconds)
        if cached is not None:
            return cached
    command = remote_command(remote, listing_script(source, remote["checksum_lock"]))
    result = run(command, timeout=remote["timeout"])
    where = "this machine" if remote["host"] == LOCAL else remote["host"]
    if result.missing:
        raise RemoteError(result.describe())
    if result.timed_out:
        raise RemoteError(
            f"listing {source} on {where} timed out after {remote['timeout']} s;"
            " check the mountain host and the network"
        )
    if result.returncode != 0:
        detail = (result.stderr.strip().splitlines() or ["no message"])[-1]
        if remote["host"] != LOCAL and result.returncode == 255:
            raise RemoteError(
                f"cannot reach {where} with {' '.join(remote['ssh'])} (ssh status 255: "
                f"{detail}); check the host, the keys and remote.ssh in the configuration"
            )
        raise RemoteError(
            f"listing {source} on {where} failed (status {result.returncode}: {detail});"
            " check streams.*.source in the configuration"
        )
    listing = parse_listing(result.stdout, source, window_start)
    if cache_file is not None:
        write_json_atomic(cache_file, {"key": key, "epoch": time.time(), **asdict(listing)})
    return listing


def _read_cache(path: Path, key: dict, max_age: float) -> Listing | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if data.get("key") != key or not 0 <= time.time() - data.get("epoch", 0) <= max_age:
        return None
    return Listing(
        exposures=[tuple(e) for e in data["exposures"]],
        malformed=data["malformed"],
        locked=data["locked"],
        published=data.get("published", {}),
    )


def source_spec(remote: dict, path: str) -> str:
    """How rsync names a path on the mountain."""
    return path if remote["host"] == LOCAL else f"{remote['host']}:{path}"


def rsync_shell(remote: dict) -> Sequence[str]:
    """rsync's ``-e`` option for the configured ssh, or nothing for a local source."""
    if remote["host"] == LOCAL:
        return []
    return ["-e", shlex.join(ssh_command(remote))]
