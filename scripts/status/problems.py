"""What needs a person: the one definition, used by the alerts, the page and
``python -m scripts.status --failures``.

A failure needs a person when the workflow will not fix it alone. Per kind:

staging (``EXPID.staged.failed``)
    held (its links lead outside the exposure, or its attempts ran out on a failure of
    the exposure itself), or failed ``verify.max_attempts`` times in a row for any
    other reason (a full disk, the network: it is retried, but someone must look).
verification (``EXPID.checksummed.failed``)
    held, exhausted, or installed although it failed (``on_failure: install``).
install (``EXPID.installed.failed``)
    any failure: install is local bookkeeping, it fails only for a reason a person
    must remove.
catch-up (``EXPID.updated.failed``, ``NIGHT.caughtup.failed``)
    a late file that failed re-verification, at once; a catch-up that could not run
    at all, after ``verify.max_attempts`` failed attempts.
backup (``NIGHT.backedup[.N].failed``)
    after ``verify.max_attempts`` failed attempts (HPSS has short outages the retries
    ride out), and a night that left the look-back window without a backup.
listing
    the mountain unreachable for ``alerts.unreachable_runs`` consecutive runs, and
    each malformed link.
lane run
    a lane no run of which has ended for longer than its time limit (a hung run, or
    its lock held by something else).
late data (`scripts.status.late`)
    an exposure published more than ``alerts.late_after`` seconds ago and not
    installed; a night whose backup has been due for more than
    ``alerts.backup_late_after`` seconds and that has no backup.
checksum lock
    the mountain's checksum lock older than ``remote.checksum_lock_max_age``: nothing
    is transferred while it exists, so an abandoned one stops every stream.
configuration
    a refused configuration (nothing runs until it is fixed).
held by a person (``EXPID.held``, ``python -m scripts.control hold``)
    shown with who and since when until it is released: the night went on without it.
tape recall (``STATE/.recall/mismatches.json``)
    each member a recall found bad (its content differs from its checksum file, or it
    could not be recalled), until a later recall finds it good (every recall checks
    such members again first); the daily recall's own failure
    (``STATE/.recall/DAY.recalled.failed``) after ``verify.max_attempts`` attempts.
any record with ``exception``
    an unexpected error in a rule script (a bug or the environment), at once.
"""

from __future__ import annotations

import datetime as dt
import os
import pwd
import time
from dataclasses import dataclass
from pathlib import Path

from scripts.escaping import printable
from scripts.lanes import stalled_lanes
from scripts.markers import FAILED, failure_path, marker_path, read_record, valid_expid
from scripts.remote import first_night
from scripts.run_lock import LANES
from scripts.state_layout import (
    HOLD,
    configuration_path,
    empty_listing_path,
    hold_path,
    night_directory,
    recall_marker_path,
    recall_mismatches_path,
    unreachable_path,
)
from scripts.status.formatting import duration
from scripts.status.late import LateExposure, LateNight, read_late
from scripts.status.model import NightStatus
from scripts.status.reading import (
    NightFiles,
    directory_names,
    listing_cache_path,
    read_night,
    scan_stream,
)
from scripts.time_limits import lane_seconds

#: The words a person reads for each stage.
LABELS = {"staged": "staging", "checksummed": "verification", "installed": "install",
          "updated": "catch-up", "caughtup": "catch-up", "backedup": "backup",
          "listing": "listing", "configuration": "configuration",
          "checksum_lock": "checksum lock", "lane": "lane run", HOLD: "held by a person",
          "late": "late data", "recall": "tape recall"}
#: Stages whose label says the state itself ("late data"), not a failed step.
STATE_STAGES = ("late",)
ALL_STREAMS = "all streams"
STALE_ACTION = "back it up by hand or raise lookback_nights"


@dataclass(frozen=True)
class Problem:
    """A failure that needs a person, with what to do about it. Every text field is
    printable (`scripts.escaping.printable`): it goes to mail headers and the page."""

    stream: str
    night: str          # NIGHT, or "" for a problem of the whole run
    expid: str | None
    stage: str          # the marker stage (checksummed, backedup.1…), listing, configuration
    reason: str
    attempts: int | str
    time: str
    action: str
    record: str         # the file that holds it: remove or fix it to clear the problem
    subject_item: str = ""  # what the problem is about when not a night (host, file, link)

    @property
    def item(self) -> str:
        if self.subject_item:
            return self.subject_item
        return self.night if self.expid is None else f"{self.night}/{self.expid}"

    @property
    def label(self) -> str:
        return LABELS.get(self.stage.split(".")[0], self.stage)

    @property
    def key(self) -> str:
        """What makes it the same problem from run to run (the alert ledger's key)."""
        return "|".join((self.stream, self.item, self.stage))


def _exhausted(record: dict, max_attempts: int) -> bool:
    attempts = record.get("attempts")
    return bool(record.get("exhausted")) or (isinstance(attempts, int)
                                             and attempts >= max_attempts)


def _record_file(night: NightStatus, expid: str | None, stage: str, state: str) -> str:
    return str(failure_path(marker_path(state, night.stream, night.night, expid, stage)))


def exposure_action(stage: str, record: dict, max_attempts: int, record_file: str) -> str | None:
    """What a person should do about an exposure's failure record, or None if nothing."""
    if record.get("exception"):
        return ("an unexpected error (the rule log under STATE/logs has the traceback); fix"
                " its cause: the next run tries again")
    if stage == "staged" and record.get("held"):
        why = "attempts exhausted" if record.get("exhausted") else "held"
        return (f"it cannot be staged ({why});"
                f" the night goes on without it. Fix it at the mountain, then remove"
                f" {record_file} to stage it again")
    if stage == "checksummed" and record.get("held"):
        return f"fix the data (it stays in staging), then remove {record_file} to verify again"
    if stage == "checksummed" and (record.get("policy") == "install" or record.get("exhausted")):
        return ("installed although verification failed (on_failure: install): compare the"
                " files with the mountain and fix the archive copy")
    if stage == "installed":
        return "it cannot be installed: remove the cause the reason names; the next run retries"
    if stage == "updated":
        return ("a late file did not verify; the archive keeps the verified copy. Compare"
                f" with the mountain, then remove {record_file}")
    if stage == "staged" and _exhausted(record, max_attempts):
        return (f"staging failed {record.get('attempts')} times and is retried every run:"
                " remove the cause the reason names (disk, network, mountain)")
    return None


def night_action(stage: str, record: dict, max_attempts: int, done: bool) -> str | None:
    """What a person should do about a night's failure record, or None if nothing."""
    if record.get("exception"):
        return ("an unexpected error (the rule log under STATE/logs has the traceback); fix"
                " its cause: the next run tries again")
    if done and stage == "caughtup":
        return None  # the catch-up ran; its failed exposures carry their own records
    if not _exhausted(record, max_attempts):
        return None
    return (f"{LABELS.get(stage.split('.')[0], stage)} failed {record.get('attempts')} times"
            " and is retried every run: check the rule's log"
            + (" and HPSS" if stage.startswith("backedup") else ""))


def _problem(night: NightStatus, expid: str | None, stage: str, record: dict, action: str,
             record_file: str) -> Problem:
    return Problem(night.stream, night.night, expid, stage,
                   printable(record.get("reason", "?")), record.get("attempts", "?"),
                   printable(record.get("time", "")), printable(action), printable(record_file))


def find_problems(night: NightStatus, state: str | os.PathLike,
                  max_attempts: int) -> list[Problem]:
    """The failures of one night (its exposures' and its own) that need a person."""
    state = str(state)
    out = []
    for expid, exposure in sorted(night.exposures.items()):
        for stage, record in sorted(exposure.failures.items()):
            path = _record_file(night, expid, stage, state)
            action = exposure_action(stage, record, max_attempts, path)
            if action is not None:
                out.append(_problem(night, expid, stage, record, action, path))
    for stage, record in sorted(night.failures.items()):
        action = night_action(stage, record, max_attempts, done=stage in night.stages)
        if action is not None:
            out.append(_problem(night, None, stage, record, action,
                                _record_file(night, None, stage, state)))
    return out


def stale_backup_reason(config: dict) -> str:
    """Why an old night without a backup needs a person: the workflow stopped looking."""
    return (f"not backed up and older than lookback_nights ({config['lookback_nights']}):"
            " the workflow no longer schedules it")


def _stale_backup(config: dict, stream: str, night: str, files: NightFiles,
                  names: list[str], oldest: str) -> Problem | None:
    if (night >= oldest or config["backup"]["backend"] == "none"
            or f"{night}.backedup" in files.files
            or not any(n.endswith(".installed") for n in names)):
        return None
    record = marker_path(config["state"], stream, night, None, "backedup")
    return Problem(stream, night, None, "backedup", stale_backup_reason(config), "", "",
                   STALE_ACTION, str(record))


def stream_problems(config: dict, stream: str, now: dt.datetime,
                    index: dict[str, NightFiles] | None = None) -> list[Problem]:
    """What needs a person in the whole state of a stream, malformed links included.

    Lists the night directories but reads only the failure records (and, for nights
    older than the look-back window, nothing but names): fast on a large archive.
    """
    state = config["state"]
    index = scan_stream(state, stream) if index is None else index
    oldest = first_night(now, config["lookback_nights"])
    out = []
    for night, files in sorted(index.items(), reverse=True):
        names = directory_names(night_directory(state, stream, night)) if files.directory else []
        if any(n.endswith(FAILED) for n in [*names, *files.files]):
            status = read_night(state, stream, night, files, only_failures=True)
            # Which night-level markers exist is all `night_action` needs of them.
            status.stages = {n[9:]: {} for n in files.files if not n.endswith(FAILED)}
            out += find_problems(status, state, config["verify"]["max_attempts"])
        out += person_holds(state, stream, night, names)
        stale = _stale_backup(config, stream, night, files, names, oldest)
        if stale is not None:
            out.append(stale)
    return out + malformed_links(state, stream) + late_problems(config, stream, now, index)


def _utc(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def late_exposure_problem(config: dict, late: LateExposure) -> Problem:
    """An exposure not installed `alerts.late_after` seconds after its publication."""
    marker = marker_path(config["state"], late.stream, late.night, late.expid, "installed")
    return Problem(
        late.stream, late.night, late.expid, "late",
        f"published at the mountain {duration(late.seconds)} ago ({_utc(late.published)})"
        f" and not installed (alerts.late_after: {config['alerts']['late_after']} s)",
        "", _utc(late.published),
        "find why it is not installed: its other problems here, the backlog, its rule"
        " logs under STATE/logs; this clears when it is installed", str(marker))


def late_night_problem(config: dict, late: LateNight) -> Problem:
    """A night not on tape `alerts.backup_late_after` seconds after its backup was due."""
    marker = marker_path(config["state"], late.stream, late.night, None, "backedup")
    return Problem(
        late.stream, late.night, None, "late",
        f"backup due since {_utc(late.due)} ({duration(late.seconds)} ago, more than"
        f" alerts.backup_late_after: {config['alerts']['backup_late_after']} s) and the"
        " night is not on tape", "", _utc(late.due),
        "see the backlog for why it waits (HPSS, a failing backup, exposures not"
        " installed); this clears when the night is backed up", str(marker))


def late_problems(config: dict, stream: str, now: dt.datetime, index: dict[str, NightFiles],
                  **known) -> list[Problem]:
    """Late exposures and late nights of a stream (`scripts.status.late.read_late`,
    which takes what the caller has read already as `known`)."""
    exposures, nights = read_late(config, stream, now, index, **known)
    return ([late_exposure_problem(config, e) for e in exposures]
            + [late_night_problem(config, n) for n in nights])


def person_holds(state: str | os.PathLike, stream: str, night: str,
                 names: list[str]) -> list[Problem]:
    """The exposures of a night a person holds (``EXPID.held``), with who and when."""
    out = []
    for name in sorted(names):
        expid, _, rest = name.partition(".")
        if rest != HOLD or not valid_expid(expid):
            continue
        path = hold_path(state, stream, night, expid)
        record = read_record(path) or {}
        who, when = str(record.get("by", "?")), str(record.get("time", ""))
        out.append(Problem(
            stream, night, expid, HOLD, printable(f"held by {who} at {when}"
                                                  + (f": {record['why']}" if record.get("why")
                                                     else "")),
            "", printable(when),
            printable(f"its night goes on without it; give it back with: python -m"
                      f" scripts.control release {night}/{expid} --stream {stream}"),
            printable(str(path))))
    return out


def malformed_links(state: str | os.PathLike, stream: str,
                    listing: dict | None = None) -> list[Problem]:
    """One problem per malformed link in the stream's last listing (its cache, or
    `listing` when the caller has read it)."""
    path = listing_cache_path(state, stream)
    listing = read_record(path) or {} if listing is None else listing
    return [Problem(stream, "", None, "listing", "malformed symlink", "", "",
                    "a link on the mountain is not SOURCE/NIGHT/EXPID; it is skipped. Fix or"
                    " remove it at the mountain", str(path), subject_item=printable(link))
            for link in listing.get("malformed", [])]


def run_problems(config: dict, config_file: str | os.PathLike | None = None,
                 listings: dict | None = None) -> list[Problem]:
    """The problems of the whole run: a refused configuration, an unreachable mountain.
    `listings`: see `checksum_lock_problem`."""
    state = config["state"]
    out = []
    refused = read_record(configuration_path(state))
    if refused is not None:
        out.append(Problem(ALL_STREAMS, "", None, "configuration", printable(refused["reason"]),
                           refused.get("attempts", ""), refused.get("time", ""),
                           "nothing is transferred until the configuration is fixed",
                           str(configuration_path(state)),
                           subject_item=printable(refused.get("file") or config_file)))
    unreachable = read_record(unreachable_path(state)) or {}
    runs = unreachable.get("runs", 0)
    if runs >= config["alerts"]["unreachable_runs"]:
        host = str(config.get("remote", {}).get("host", "?"))
        out.append(Problem(
            ALL_STREAMS, "", None, "listing",
            printable(f"mountain unreachable for {runs} consecutive runs:"
                      f" {unreachable.get('reason', '?')}"),
            runs, unreachable.get("since", ""),
            "check the host, the network and the ssh keys; transfers resume by themselves",
            str(unreachable_path(state)), subject_item=printable(host)))
    lock = checksum_lock_problem(config, listings)
    return [*out, *empty_listings(config), *([] if lock is None else [lock]),
            *lane_problems(config), *recall_problems(config)]


RECALL_ACTION = ("the member on tape differs from its checksum file or cannot be read:"
                 " recall it by hand (python -m scripts.audit --recall 1 checks it again"
                 " first), compare with the archive on disk, and write the night's archive"
                 " again; the problem clears when a recall finds the member good")


def recall_problems(config: dict) -> list[Problem]:
    """The members tape recalls found bad and no later recall found good, one
    problem each, and a daily recall that failed ``verify.max_attempts`` times."""
    state = config["state"]
    path = recall_mismatches_path(state)
    members = (read_record(path) or {}).get("members")
    out = []
    for entry in (members.values() if isinstance(members, dict) else []):
        if not isinstance(entry, dict):
            continue
        member = str(entry.get("member", "?"))
        parts = member.split("/", 2)
        night, expid = (parts[0], parts[1]) if len(parts) == 3 else ("", None)
        out.append(Problem(
            printable(str(entry.get("stream", "?"))), printable(night), printable(expid)
            if expid else None, "recall",
            printable(f"{entry.get('archive', '?')}: {entry.get('reason', '?')}"),
            "", printable(str(entry.get("since", ""))), RECALL_ACTION, str(path),
            subject_item=printable(f"{entry.get('archive', '?')} {member}")))
    directory = recall_marker_path(state, "00000000").parent
    max_attempts = (config.get("verify") or {}).get("max_attempts", 3)
    for failed in sorted(directory.glob(f"*.recalled{FAILED}")):
        record = read_record(failed) or {}
        if record.get("exception") or _exhausted(record, max_attempts):
            out.append(Problem(
                ALL_STREAMS, "", None, "recall", printable(record.get("reason", "?")),
                record.get("attempts", "?"), printable(record.get("time", "")),
                "the daily tape recall could not run: check its log (STATE/logs/recall);"
                " the next run tries again", str(failed),
                subject_item=f"daily recall {failed.name[:8]}"))
    return out


def empty_listings(config: dict) -> list[Problem]:
    """The streams that listed exposures before and found no link at all for
    ``alerts.unreachable_runs`` runs in a row (the original's "No links found, check
    connection.")."""
    streams, alerts = config.get("streams"), config.get("alerts")
    if not (isinstance(streams, dict) and isinstance(alerts, dict)):
        return []
    out = []
    for stream in streams:
        path = empty_listing_path(config["state"], stream)
        record = read_record(path) or {}
        runs = record.get("runs", 0)
        if not (isinstance(runs, int) and runs >= alerts.get("unreachable_runs", 3)):
            continue
        source = str(record.get("source") or (streams[stream] or {}).get("source", "?"))
        host = str(config.get("remote", {}).get("host", "?"))
        out.append(Problem(
            stream, "", None, "listing",
            printable(f"no links found at {source}, check the connection ({runs}"
                      " consecutive runs, after listings that found some)"),
            runs, printable(str(record.get("since", ""))),
            "check the mountain host, its disk and the stream's source; transfers resume"
            " by themselves", printable(str(path)), subject_item=printable(f"{host}:{source}")))
    return out


def checksum_lock_problem(config: dict, listings: dict | None = None) -> Problem | None:
    """The mountain's checksum lock, when the last listing of any stream found it older
    than ``remote.checksum_lock_max_age``; the work stays held back while it exists.
    `listings` (stream -> ``{"locked", "lock_age"}``) are the caller's own listings,
    the cache's content: the cache of the streams it lacks is read."""
    remote, state, streams = config.get("remote"), config["state"], config.get("streams")
    # Also read after a refused configuration: whatever it holds, no exception here.
    if not (isinstance(remote, dict) and isinstance(streams, dict)):
        return None
    limit = remote.get("checksum_lock_max_age")
    if type(limit) is not int:
        return None
    oldest, where = None, None
    for stream in streams:
        path = listing_cache_path(state, stream)
        listing = (listings or {}).get(stream) or read_record(path) or {}
        age = listing.get("lock_age")
        if (listing.get("locked") and isinstance(age, (int, float)) and age > limit
                and (oldest is None or age > oldest)):
            oldest, where = age, path
    if oldest is None:
        return None
    host, lock = str(remote.get("host", "?")), str(remote.get("checksum_lock", "?"))
    return Problem(
        ALL_STREAMS, "", None, "checksum_lock",
        printable(f"the checksum lock {lock} has existed on {host} for {oldest / 3600:.1f} h"
                  f" ({oldest:.0f} s, more than remote.checksum_lock_max_age, {limit} s):"
                  " nothing is transferred while it exists"),
        "", "", "check the checksum job at the mountain; if it died, remove its lock there:"
        " transfers resume by themselves", str(where), subject_item=printable(f"{host}:{lock}"))


def lane_problems(config: dict, now: float | None = None) -> list[Problem]:
    """The lanes that have not ended a run for longer than their time limit
    (`scripts.lanes.stalled_lanes`); `now` is the real clock's epoch seconds (the
    activity records are written by it, whatever the configuration's ``now``)."""
    try:
        limits = {lane: lane_seconds(config, lane) for lane in LANES}
    except (KeyError, TypeError):  # a refused configuration: the refusal is the problem
        return []
    out = []
    for lane in stalled_lanes(config["state"], limits, time.time() if now is None else now):
        holder = lane["holder"]
        who = (f"its lock {lane['lock']} is held by process {holder}"
               f"{_process_owner(holder)}" if holder is not None
               else f"its lock {lane['lock']} is free (is cron running? the kill file?)")
        out.append(Problem(
            ALL_STREAMS, "", None, "lane",
            printable(f"no run of the {lane['lane']} lane has ended for"
                      f" {lane['seconds'] / 3600:.1f} h ({lane['seconds']:.0f} s, more than"
                      f" its limit of {lane['limit']} s); {who}"),
            "", printable(lane["since"]),
            "find what holds the lane: a hung run (its rule logs under STATE/logs) or a"
            " process of someone else's holding the lock; end it, the next run goes on",
            printable(lane["lock"]), subject_item=f"{lane['lane']} lane"))
    return out


def _process_owner(pid: int) -> str:
    """`` (user NAME, COMMAND)`` of process `pid`, as far as /proc tells."""
    try:
        info = os.stat(f"/proc/{pid}")
        command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").strip()
    except OSError:
        return ""
    try:
        user = pwd.getpwuid(info.st_uid).pw_name
    except KeyError:
        user = f"uid {info.st_uid}"
    return f" (user {user}: {command[:120].decode(errors='replace')})"


def all_problems(config: dict, now: dt.datetime) -> list[Problem]:
    """Everything that needs a person, every stream and the run: the one list the
    alerts mail, the page shows and ``--failures`` prints."""
    out = run_problems(config)
    for stream in config["streams"]:
        out += stream_problems(config, stream, now)
    return out
