"""The lanes, and what each is doing now.

Fresh data first: exposure work (stage, verify, install) and night work (catch-up,
backup) run in separate Snakemake runs, each lane behind its own lock
(`scripts.run_lock`), so tonight's exposures never wait behind a backup. A run learns
its lane from ``DESITRANSFER_LANE`` (the cron entry sets it); without it a run does all
the work, as a ``snakemake`` started by hand does.

Every run of a lane leaves a small activity record, ``STATE/.lanes/LANE.json``: when
it started, on what (the exposures and night stages it planned), how old its listing
was, and when it ended. `lane_activity` reads them for the status page and command;
a run killed with SIGKILL never records its end, and is recognisable because its
lane's lock is free. ``last_finished`` says when a run of the lane last ended, whoever
ran it and however it ended; a lane with no run ended for longer than its time limit
(`scripts.time_limits.lane_seconds`) is stalled (`stalled_lanes`): a hung run, or a
lock held by something else, is a problem that needs a person.
"""

from __future__ import annotations

import atexit
import datetime as dt
import os
import socket
from collections import Counter
from collections.abc import Iterable
from typing import Any

from scripts.markers import read_record, utc_timestamp, write_json_atomic
from scripts.run_lock import LANES, is_locked, lock_holder, lock_path

ENV_LANE = "DESITRANSFER_LANE"
#: The run a parse belongs to: the listing cache serves only parses of the same run.
ENV_RUN = "DESITRANSFER_RUN"
#: How many planned items an activity record names (the counts are always complete).
SHOWN = 5


class LaneError(Exception):
    """An unknown lane was asked for; the message is one line."""


def get_lane(environ: dict[str, str] | None = None) -> str | None:
    """The lane of this run from ``DESITRANSFER_LANE``, or None (all lanes)."""
    lane = (os.environ if environ is None else environ).get(ENV_LANE, "").strip()
    if not lane:
        return None
    if lane not in LANES:
        raise LaneError(f"{ENV_LANE}={lane!r} is not a lane; use one of {', '.join(LANES)}"
                        " (or leave it unset for all lanes)")
    return lane


def new_run_id() -> str:
    """A run id unique on this host: UTC time to the microsecond and the process id."""
    return f"{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S.%fZ}-{os.getpid()}"


def get_run_id() -> str:
    """This run's id: the one handed down (cron entry, or the run a Slurm job belongs
    to), else a new one, put into the environment for the jobs this run starts."""
    return os.environ.setdefault(ENV_RUN, new_run_id())


from scripts.state_layout import activity_path  # noqa: E402,F401 (the cron entry's too)


def describe_plan(exposures: Iterable[tuple[str, str, str]],
                  night_stages: Iterable[tuple[str, str, str]]) -> str:
    """One line saying what a run works on: exposures per night (newest first), then
    the night stages. Items are (stream, night, expid or stage)."""
    exposures, night_stages = list(exposures), list(night_stages)
    parts = []
    if exposures:
        per_night = Counter(night for _, night, _ in exposures)
        nights = sorted(per_night, reverse=True)
        shown = ", ".join(f"{n}: {per_night[n]}" for n in nights[:SHOWN])
        more = f", {len(nights) - SHOWN} more night(s)" if len(nights) > SHOWN else ""
        parts.append(f"{len(exposures)} exposure(s) ({shown}{more})")
    words = {"caughtup": "catch-up", "backedup": "backup"}
    for stream, night, stage in night_stages[:SHOWN]:
        parts.append(f"{words.get(stage.split('.')[0], stage)} of {stream} {night}")
    if len(night_stages) > SHOWN:
        parts.append(f"{len(night_stages) - SHOWN} more night stage(s)")
    return "; ".join(parts) or "nothing pending"


def start_activity(state: str | os.PathLike, lanes: Iterable[str], run: str,
                   plan: dict[str, Any]) -> None:
    """Record that this process now runs `lanes` (at Snakemake's onstart), and that it
    ended when it exits normally. `plan` holds what the run works on (see
    rules/common.smk): ``on``, counts, ``listed`` (when its listing was made)."""
    record = {"run": run, "pid": os.getpid(), "host": socket.gethostname(),
              "started": utc_timestamp(), **plan}
    lanes = list(lanes)
    for lane in lanes:
        ended = last_end(read_record(activity_path(state, lane)) or {})
        write_json_atomic(activity_path(state, lane), {
            "lane": lane, **record, **({"last_finished": ended} if ended else {})})
    atexit.register(finish_activity, state, lanes, run)


def finish_activity(state: str | os.PathLike, lanes: Iterable[str], run: str,
                    returncode: int | None = None) -> None:
    """Record the end of run `run` in the activity record of each of `lanes` (and its
    exit status when known: the cron entry adds it). Of a record of another run (a
    run that stopped before it started its jobs: a refused configuration, no
    listing) only ``last_finished`` changes: the lane is not stuck. Errors are ignored
    (this is a note, never a reason to fail a transfer)."""
    for lane in lanes:
        path = activity_path(state, lane)
        record = read_record(path) or {"lane": lane}
        now = utc_timestamp()
        record["last_finished"] = now
        if record.get("run") == run:
            record.setdefault("finished", now)
            if returncode is not None:
                record["returncode"] = returncode
        try:
            write_json_atomic(path, record)
        except OSError:
            pass


def last_end(record: dict) -> str | None:
    """When a run of the lane last ended, from its activity record (UTC ISO), or None."""
    ends = [t for t in (record.get("last_finished"), record.get("finished"))
            if isinstance(t, str)]
    return max(ends, default=None)


def note_busy(state: str | os.PathLike, lane: str) -> None:
    """Remember when the cron entry first found `lane` busy before any run of it left
    a record: a lock held from the start must not go unnoticed."""
    path = activity_path(state, lane)
    if read_record(path) is None:
        try:
            write_json_atomic(path, {"lane": lane, "busy_since": utc_timestamp()})
        except OSError:
            pass


def _epoch(text: object) -> float | None:
    if text is None:
        return None
    try:
        return dt.datetime.strptime(str(text), "%Y-%m-%dT%H:%M:%SZ").replace(
            tzinfo=dt.UTC).timestamp()
    except ValueError:
        return None


def stalled_lanes(state: str | os.PathLike, limits: dict[str, float],
                  now: float) -> list[dict]:
    """The lanes no run of which has ended for longer than their limit (or, for a run
    in progress that planned more night work, longer than that work's limit since it
    started: ``night_seconds`` in its activity record).

    Parameters
    ----------
    limits : dict
        Lane → its time limit in seconds (`scripts.time_limits.lane_seconds`).
    now : float
        Epoch seconds (the real clock: the records are written by it).

    Returns
    -------
    list of dict
        One per stalled lane: ``lane``, ``since`` (the last end, else the first start
        or the first time the lane was found busy), ``seconds`` (since then),
        ``limit``, ``lock`` (its path) and ``holder`` (the pid holding the lock, or
        None when it is free).
    """
    out = []
    for lane, limit in limits.items():
        record = read_record(activity_path(state, lane)) or {}
        since = last_end(record) or record.get("started") or record.get("busy_since")
        then = _epoch(since) if since else None
        if then is None or now - then <= limit:
            continue
        # A run in progress (its lock held) that planned more night work than one
        # night's (a backlog to drain) has the limit of that work, from its start.
        planned, started = _planned_seconds(record), _epoch(record.get("started"))
        if planned > limit and started is not None and is_locked(state, lane):
            if now - started <= planned:
                continue
            limit = planned
        out.append({"lane": lane, "since": since, "seconds": now - then, "limit": limit,
                    "lock": str(lock_path(state, lane)), "holder": lock_holder(state, lane)})
    return out


def _planned_seconds(record: dict) -> float:
    """The limit of the night work the lane's last run planned (``night_seconds``,
    `scripts.time_limits.night_work_seconds`), 0 once that run has finished or when the
    record has no usable number (the lane's own limit then applies)."""
    value = record.get("night_seconds")
    if ("finished" in record or isinstance(value, bool)
            or not isinstance(value, (int, float)) or not 0 <= value < 10**8):
        return 0.0
    return float(value)


def lane_activity(state: str | os.PathLike, ending_run: str | None = None) -> list[dict]:
    """What each lane is doing now, for the status page and command.

    `ending_run` is a run that asks as it ends (its onsuccess/onerror rebuilds the
    page while it still holds its lanes' locks): its lanes are shown ``idle`` since
    now, as they are once it has exited.

    Returns
    -------
    list of dict
        One per lane, in `LANES` order: ``lane``; ``state``, one of ``running`` (since
        ``started``, on ``on``), ``starting`` (its lock is held, the run is still
        listing and planning), ``idle`` (the last run ended at ``finished``, with
        ``returncode`` when the cron entry ran it), ``killed`` (the last run never
        recorded its end and its lock is free: SIGKILL or a crash; the next run
        recovers its work) or ``never`` (no run yet); and the rest of the last run's
        record: ``run``, ``pid``, ``host``, ``started``, ``listed``, ``exposures``,
        ``pending``, ``night_stages``, ``on``.
    """
    lanes = []
    for lane in LANES:
        record = read_record(activity_path(state, lane)) or {}
        locked = is_locked(state, lane)
        if ending_run is not None and record.get("run") == ending_run:
            record.setdefault("finished", utc_timestamp())
            status = "idle"
        elif locked:
            status = "running" if record and "finished" not in record else "starting"
        elif not record.get("run"):  # only a note of when runs ended, or none
            status = "never"
        else:
            status = "idle" if "finished" in record else "killed"
        lanes.append({**record, "lane": lane, "state": status})
    return lanes
