"""A person's three verbs on one exposure: retry, hold, release.

    python -m scripts.control {retry,hold,release} NIGHT/EXPID [--stream S] [--config F]
                              [--wait SECONDS]

``hold``
    Take the exposure out of its night: no run fetches it, and its night is caught up
    and goes to tape without it (the backup record names it under ``held``). The hold
    is a record, ``STATE/STREAM/NIGHT/EXPID.held``, saying who and when; the page and
    ``python -m scripts.status --failures`` show it until it is released. Only an
    exposure that is not installed can be held: an installed one is in its night's
    directory, which goes to tape as a whole (retry it instead).
``release``
    Give it back to the next run: the person's hold and a hold by policy (its links
    led outside, its attempts ran out, ``on_failure: hold``) are removed.
``retry``
    An installed exposure is fetched again, verified whole against the mountain's
    checksum file and swapped in by the catch-up's path (scripts/updates.py,
    scripts/archive.py): only a copy that verified replaces the installed one; its
    failure records clear when it verifies; the night's backup record then says its
    archive holds an outdated version, so the next backup puts it in a supplementary
    archive. An exposure not installed yet has its failure and hold records cleared:
    the next run fetches it from the start.

An exposure is known when the state or the last listing names it, or when its link is at
the mountain now (one link check, for an exposure published since the last run); any
other is refused. Each verb prints one line saying what it did and exits 0, or one line
saying why not and exits 1 (2 for a bad argument or configuration). It takes the locks
of the lanes whose work it touches (scripts/run_lock.py), waiting at most ``--wait``
seconds for a cron run to end, and never runs beside one. Every action is also logged,
with who did it, in ``LOGS/control.log``.

The configuration is ``--config``, else ``$DESITRANSFER_CONFIG``, else the bundled
``config.yaml``; the file read is named on stderr. What a verb does is decided by
`decide` from what `look` saw (pure); `main` only acts.
"""

from __future__ import annotations

import argparse
import getpass
import logging
import os
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import NoReturn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from scripts.configuration import (  # noqa: E402
    ENV_CONFIG,
    ConfigurationError,
    Stream,
    announce_configuration,
    check_configuration,
    find_configuration,
    get_streams,
    read_configuration,
    require_state,
)
from scripts.joblog import file_handler  # noqa: E402
from scripts.markers import (  # noqa: E402
    EXPOSURE_STAGES,
    read_failure,
    read_record,
    utc_timestamp,
    valid_expid,
    valid_night,
    write_json_atomic,
)
from scripts.run_lock import RunLockRefused, lock_path, try_lock  # noqa: E402
from scripts.state_layout import (  # noqa: E402
    control_log_path,
    failure_path,
    hold_path,
    listing_cache_path,
    marker_path,
    night_directory,
)

log = logging.getLogger("desitransfer.control")
VERBS = ("retry", "hold", "release")
#: The exposure's failure records a retry clears (the next run starts afresh).
RECORDS = (*EXPOSURE_STAGES, "updated")
#: Seconds between two tries of a busy lane's lock while waiting for it.
POLL = 0.5


class Refused(Exception):
    """What a person asked cannot be done; the message is one line."""


@dataclass(frozen=True)
class Exposure:
    """What the state and the last listing say about one exposure (`look`)."""

    stream: str
    night: str
    expid: str
    listed: bool = False        # in the stream's last listing of the mountain
    records: tuple[str, ...] = ()   # its marker and record names (``staged``, ``held``…)
    installed: bool = False     # its ``.installed`` marker exists
    person_hold: dict | None = None  # the ``.held`` record
    policy_holds: tuple[str, ...] = ()  # failure records saying ``held`` (their stages)
    failures: tuple[str, ...] = ()      # stages with a failure record

    @property
    def known(self) -> bool:
        return self.listed or bool(self.records)

    @property
    def item(self) -> str:
        return f"{self.night}/{self.expid}"


@dataclass(frozen=True)
class Action:
    """What a verb will do: the lanes whose locks it needs, and what it changes."""

    verb: str
    lanes: tuple[str, ...]
    #: hold: write the hold; release: remove these; retry: clear these, or replace
    remove: tuple[str, ...] = ()
    write_hold: bool = False
    replace: bool = False


def decide(verb: str, exposure: Exposure) -> Action:
    """What `verb` does to `exposure`: pure, from what `look` saw.

    Raises
    ------
    Refused
        An unknown exposure (neither listed at the mountain nor in the state), a hold
        of an installed exposure, a hold or release with nothing to do.
    """
    if not exposure.known:
        raise Refused(f"{exposure.item} is unknown in stream {exposure.stream}: not in the"
                      " last listing of the mountain nor in the state; check NIGHT/EXPID"
                      " and --stream")
    holds = tuple(f"{stage}.failed" for stage in exposure.policy_holds)
    if verb == "hold":
        if exposure.installed:
            raise Refused(f"{exposure.item} is installed: its night's directory goes to tape"
                          " as a whole, so it cannot be held out of it; use retry to"
                          " fetch and verify it again")
        if exposure.person_hold is not None:
            raise Refused(f"{exposure.item} is already held by"
                          f" {exposure.person_hold.get('by', '?')} since"
                          f" {exposure.person_hold.get('time', '?')}")
        return Action(verb, ("exposures",), write_hold=True)
    if verb == "release":
        remove = (("held",) if exposure.person_hold is not None else ()) + holds
        if not remove:
            raise Refused(f"{exposure.item} is not held; nothing to release")
        return Action(verb, ("exposures",), remove=remove)
    if exposure.installed:
        return Action(verb, ("exposures", "nights"), replace=True)
    remove = (("held",) if exposure.person_hold is not None else ()) + tuple(
        f"{stage}.failed" for stage in exposure.failures)
    return Action(verb, ("exposures",), remove=remove)


def look(config: dict, stream: str, night: str, expid: str) -> Exposure:
    """What the state and the stream's last listing say about the exposure."""
    state = config["state"]
    try:
        names = [n for n in os.listdir(night_directory(state, stream, night))
                 if n.partition(".")[0] == expid]
    except (FileNotFoundError, NotADirectoryError):
        names = []
    records = tuple(sorted(n.partition(".")[2] for n in names))
    listing = read_record(listing_cache_path(state, stream)) or {}
    listed = [night, expid] in listing.get("exposures", [])
    failures, policy = [], []
    for stage in RECORDS:
        record = read_failure(marker_path(state, stream, night, expid, stage))
        if record is not None:
            failures.append(stage)
            if record.get("held"):
                policy.append(stage)
    hold = hold_path(state, stream, night, expid)
    return Exposure(stream, night, expid, listed, records,
                    marker_path(state, stream, night, expid, "installed").exists(),
                    (read_record(hold) or {"by": "?"}) if hold.exists() else None,
                    tuple(policy), tuple(failures))


def at_mountain(config: dict, exposure: Exposure) -> Exposure:
    """`exposure`, asked about at the mountain when neither the state nor the last
    listing knows it (published since the last run): one link check over ssh.

    Raises
    ------
    Refused
        The mountain could not be asked.
    """
    if exposure.known:
        return exposure
    from scripts.links import (
        LinkCheckError,
        UnreadableExposureError,
        UnsafeLinkError,
        resolve_exposure,
    )

    stream = get_streams(config)[exposure.stream]
    try:
        resolve_exposure(config["remote"], stream.source, exposure.night, exposure.expid,
                         stream.data_root)
    except LinkCheckError as err:
        raise Refused(f"{exposure.item} is not in the state nor in the last listing, and"
                      f" the mountain cannot be asked: {err}") from None
    except UnreadableExposureError:
        pass  # published, if unreadable: a person may hold it
    except UnsafeLinkError as err:
        if "missing directory" in str(err):
            return exposure  # no such link (or a dangling one): unknown
    return replace(exposure, listed=True)


def find_stream(config: dict, night: str, expid: str, given: str | None) -> str:
    """The stream of the exposure: `given`, else the one stream that knows it.

    Raises
    ------
    Refused
        An unknown stream, or several streams that know the exposure.
    """
    streams = list(config["streams"])
    if given is not None:
        if given not in streams:
            raise Refused(f"--stream {given}: not a stream of the configuration (streams:"
                          f" {', '.join(streams)})")
        return given
    if len(streams) == 1:
        return streams[0]
    knowing = [s for s in streams if look(config, s, night, expid).known]
    if len(knowing) > 1:
        raise Refused(f"{night}/{expid} is known in streams {', '.join(knowing)}: say which"
                      " with --stream")
    return knowing[0] if knowing else streams[0]


@contextmanager
def lanes_held(state: str, lanes: Sequence[str], wait: float) -> Iterator[None]:
    """Hold the locks of `lanes` for the block, all of them or none, waiting at most
    `wait` seconds for a run that holds one to end.

    Raises
    ------
    Refused
        A lane stayed busy for `wait` seconds, or its lock file cannot be trusted.
    """
    deadline = time.monotonic() + wait
    while True:
        taken, busy = [], None
        try:
            for lane in lanes:
                handle = try_lock(state, lane)
                if handle is None:
                    busy = lane
                    break
                taken.append(handle)
        except RunLockRefused as err:
            for handle in taken:
                handle.close()
            raise Refused(str(err)) from None
        if busy is None:
            break
        for handle in taken:
            handle.close()
        if time.monotonic() >= deadline:
            raise Refused(f"another run holds {lock_path(state, busy)} (the {busy} lane)"
                          f" after waiting {wait:g} s; nothing done, try again when it has"
                          " ended (or with a longer --wait)")
        time.sleep(POLL)
    try:
        yield
    finally:
        for handle in taken:
            handle.close()


def person() -> str:
    """Who runs the command (login name)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid {os.getuid()}"


def hold(config: dict, exposure: Exposure, why: str | None) -> str:
    record = {"held": True, "by": person(), "time": utc_timestamp(),
              "how": "python -m scripts.control hold"}
    if why:
        record["why"] = why
    write_json_atomic(hold_path(config["state"], exposure.stream, exposure.night,
                                exposure.expid), record)
    return (f"held {exposure.item} ({exposure.stream}) for {record['by']}: no run fetches it"
            " and its night goes on without it; release gives it back")


def remove_records(config: dict, exposure: Exposure, names: Sequence[str]) -> None:
    state = config["state"]
    for name in names:
        if name == "held":
            hold_path(state, exposure.stream, exposure.night, exposure.expid).unlink(
                missing_ok=True)
        else:
            stage = name.removesuffix(".failed")
            failure_path(marker_path(state, exposure.stream, exposure.night, exposure.expid,
                                     stage)).unlink(missing_ok=True)


def mark_outdated_on_tape(config: dict, stream: str, night: str, expid: str) -> str | None:
    """After a retry swapped in a new copy: the archives of the night that held the old
    one now hold an outdated version (as an adopted archive written before a catch-up
    does), so the next backup puts the exposure in a supplementary archive. Returns
    the archives' names, or None when none held it."""
    marker = marker_path(config["state"], stream, night, None, "backedup")
    record = read_record(marker)
    if record is None:
        return None
    names = []
    for archive in record.get("archives", []):
        if expid in archive.get("exposures", []):
            archive["exposures"] = [e for e in archive["exposures"] if e != expid]
            archive["outdated"] = sorted({*archive.get("outdated", []), expid})
            names.append(str(archive.get("name")))
    if not names:
        return None
    record["exposures"] = sorted({e for a in record.get("archives", [])
                                  for e in a.get("exposures", [])})
    write_json_atomic(marker, record)
    return ", ".join(names)


def retry_installed(config: dict, stream: Stream, exposure: Exposure) -> tuple[int, str]:
    """Fetch, verify and swap in the installed exposure (the catch-up's path)."""
    from scripts.updates import CatchUpError, update_exposure

    try:
        result = update_exposure(config, stream, exposure.night, exposure.expid, [],
                                 config["verify"]["threads"],
                                 how=f"replaced by a retry of {person()}")
    except CatchUpError as err:
        return 1, f"retry of {exposure.item} failed: {err}; nothing changed"
    if result["outcome"] != "verified":
        return 1, (f"retry of {exposure.item}: the mountain's copy does not verify"
                   f" ({result.get('reason', '?')}); the archive keeps its copy")
    archives = mark_outdated_on_tape(config, stream.name, exposure.night, exposure.expid)
    tape = (f"; {archives} hold(s) the old copy: the next backup writes a supplementary"
            " archive" if archives else "")
    return 0, (f"retried {exposure.item} ({stream.name}): fetched, verified whole and swapped"
               f" in; its failure records are cleared{tape}")


def act(config: dict, action: Action, exposure: Exposure, why: str | None) -> tuple[int, str]:
    """Do what `decide` said; the exit status and the line to print."""
    if action.write_hold:
        return 0, hold(config, exposure, why)
    if action.replace:
        return retry_installed(config, get_streams(config)[exposure.stream], exposure)
    remove_records(config, exposure, action.remove)
    removed = ", ".join(f"{exposure.expid}.{n}" for n in action.remove) or "nothing to clear"
    if action.verb == "release":
        return 0, (f"released {exposure.item} ({exposure.stream}; removed {removed}):"
                   " the next run takes it up again")
    return 0, (f"retry of {exposure.item} ({exposure.stream}): not installed yet; removed"
               f" {removed}: the next run fetches, verifies and installs it")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        print(f"control: {message}", file=sys.stderr)
        sys.exit(2)


def parse_arguments(argv: list[str]) -> argparse.Namespace:
    parser = _Parser(prog="python -m scripts.control",
                     description="Retry, hold or release one exposure (see README, 'Retry,"
                                 " hold, release').")
    parser.add_argument("verb", choices=VERBS)
    parser.add_argument("exposure", metavar="NIGHT/EXPID")
    parser.add_argument("--stream", help="the stream (default: the one that knows it)")
    parser.add_argument("--config", help=f"configuration file (default: ${ENV_CONFIG}, else"
                                         " the bundled config.yaml)")
    parser.add_argument("--wait", type=float, default=60.0,
                        help="seconds to wait for a run holding the lane (default 60)")
    parser.add_argument("--why", help="hold: a note shown with the hold")
    args = parser.parse_args(argv)
    night, _, expid = args.exposure.partition("/")
    if not (valid_night(night) and valid_expid(expid)):
        parser.error(f"{args.exposure!r}: expected NIGHT/EXPID (YYYYMMDD/8 digits)")
    if args.wait < 0:
        parser.error("--wait: seconds, 0 or more")
    args.night, args.expid = night, expid
    return args


def load(path: Path) -> dict:
    """The configuration, checked as a run checks it.

    Raises
    ------
    ConfigurationError
        One line naming the file.
    """
    config = read_configuration(path)
    try:
        check_configuration(config)
    except ConfigurationError as err:
        raise ConfigurationError(f"{path}: {err}") from None
    require_state(config, path)
    return config


def main(argv: list[str] | None = None) -> int:
    args = parse_arguments(sys.argv[1:] if argv is None else argv)
    path, origin = find_configuration(args.config)
    announce_configuration([path], origin)
    try:
        config = load(path)
    except (ConfigurationError, KeyError) as err:
        print(f"control: {err}", file=sys.stderr)
        return 2
    os.umask(0o027)  # as the cron entry: state files never writable by others
    try:
        stream = find_stream(config, args.night, args.expid, args.stream)
        first = decide(args.verb, at_mountain(config, look(config, stream, args.night,
                                                           args.expid)))
        with lanes_held(config["state"], first.lanes, args.wait):
            # Looked at again under the locks: a run may have changed it meanwhile.
            exposure = look(config, stream, args.night, args.expid)
            if not exposure.known:  # still only at the mountain, as found above
                exposure = replace(exposure, listed=True)
            status, line = act(config, decide(args.verb, exposure), exposure, args.why)
    except Refused as err:
        status, line = 1, f"control {args.verb}: {err}"
    print(line)
    record_action(config, args.verb, line)
    return status


def record_action(config: dict, verb: str, line: str) -> None:
    """One line in ``LOGS/control.log``: who did what, and how it ended."""
    try:
        control_log_path(config).parent.mkdir(parents=True, exist_ok=True)
        handler = file_handler(control_log_path(config))
    except OSError:
        return
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        log.info("%s: %s %s", person(), verb, line)
    finally:
        log.removeHandler(handler)
        handler.close()


if __name__ == "__main__":
    sys.exit(main())
