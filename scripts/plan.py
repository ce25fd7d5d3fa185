"""What a run will do: one pure function of one observation.

`make_plan(config, observation, lane, bounded)` decides everything a run plans from what
scripts/observe.py saw (the listings, the markers, HPSS): the exposures of this run in
their order and how many remain, each night's due stages, the stages deferred and why,
the nights waiting for exposures, what is held. It reads no file and starts no
command, so every decision is tested in milliseconds on hand-made observations
(tests/test_plan.py). The Snakefile turns the `Plan` into targets; the cron entry and
``cron_entry.py --plan`` read the same `Plan`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field

from scripts.markers import valid_expid, valid_night
from scripts.remote import Listing
from scripts.targets import (
    NightState,
    due,
    newest_first,
    night_exposures,
    night_ready,
    not_backed_up,
    pending_exposures,
)

#: Night-level stages, in the order they run.
CATCH_UP = "caughtup"
BACKUP = "backedup"


@dataclass(frozen=True)
class StreamObservation:
    """What was seen of one stream: its listing (None when it could not be listed, with
    the one-line `error`) and the state of the nights that matter."""

    listing: Listing | None
    error: str | None = None
    #: Marker state of every listed night and every night in the window with markers.
    nights: Mapping[str, NightState] = field(default_factory=dict)
    #: Nights in the look-back window that have a marker directory.
    marker_nights: tuple[str, ...] = ()
    #: Nights whose catch-up marker exists.
    caught_up: frozenset[str] = frozenset()
    #: Night -> the archives its backup record names; None: no readable record. Only
    #: nights due for backup are read.
    backups: Mapping[str, list | None] = field(default_factory=dict)


@dataclass(frozen=True)
class Observation:
    """Everything a plan depends on, gathered by scripts/observe.py."""

    now: dt.datetime
    streams: Mapping[str, StreamObservation]
    #: HPSS's availability (ready, why not): None when it was not asked.
    hpss: tuple[bool, str] | None = None
    #: Whether the daily tape recall of `now`'s day is done (None: not looked at, as
    #: when ``backup.recall_per_day`` is 0 or in the exposure lane).
    recalled: bool | None = None

    @property
    def locked(self) -> bool:
        """A checksum lock at the mountain: no transfer is planned this run."""
        return any(s.listing is not None and s.listing.locked for s in self.streams.values())

    def night_state(self, stream: str, night: str) -> NightState:
        return self.streams[stream].nights.get(night) or NightState()

    def night_expids(self, stream: str, night: str) -> list[str]:
        """What a night's stages wait for: its listed, not held, exposures and those the
        state says are installed (their links may have left the mountain)."""
        listing = self.streams[stream].listing
        listed = listing.exposures if listing else []
        return night_exposures(listed, night, self.night_state(stream, night))


class ScopeError(ValueError):
    """``night`` or ``exposure`` in the configuration names no night or exposure; the
    message is one line (``KEY: what is wrong; what to do``)."""


@dataclass(frozen=True)
class Scope:
    """What a run or a drawing is restricted to (``--config night=YYYYMMDD`` or
    ``--config exposure=NIGHT/EXPID``); the empty scope holds everything."""

    night: str | None = None
    expid: str | None = None

    def __bool__(self) -> bool:
        return self.night is not None

    def holds(self, night: str, expid: str | None = None) -> bool:
        """Whether the exposure (or, without `expid`, the night's own stages) is in scope."""
        if self.night is None:
            return True
        if night != self.night:
            return False
        return self.expid is None or expid == self.expid


def get_scope(config: Mapping) -> Scope:
    """The scope the configuration asks for (keys ``night`` and ``exposure``).

    Raises
    ------
    ScopeError
        Not a real night, not ``NIGHT/EXPID``, or both keys given.
    """
    night, exposure = config.get("night"), config.get("exposure")
    if night is not None and exposure is not None:
        raise ScopeError("night, exposure: give one of them, not both")
    if night is not None:
        night = str(night)  # --config night=20261127 arrives as a number
        if not valid_night(night):
            raise ScopeError(f"night: {night!r} is no night; give YYYYMMDD, a real date")
        return Scope(night)
    if exposure is not None:
        night, _, expid = str(exposure).partition("/")
        if not (valid_night(night) and valid_expid(expid)):
            raise ScopeError(f"exposure: {str(exposure)!r} is no exposure; give NIGHT/EXPID"
                             " (YYYYMMDD, a real date, and 8 digits)")
        return Scope(night, expid)
    return Scope()


@dataclass(frozen=True)
class NightStage:
    """A night-level stage to run (`stage`: ``caughtup``, ``backedup``, ``backedup.N``)."""

    stream: str
    night: str
    stage: str
    #: The night's links left the mountain: the stage runs from the state.
    from_state: bool = False


@dataclass(frozen=True)
class Plan:
    """What one run does. Items are (stream, night, expid) or `NightStage`."""

    lane: str | None
    #: This run's exposures, newest night first (bounded in the exposure lane).
    exposures: tuple[tuple[str, str, str], ...] = ()
    #: Every listed exposure still to install (this run's and the rest).
    pending: int = 0
    night_stages: tuple[NightStage, ...] = ()
    #: Stages due but not run this time, with why: (stage, reason).
    deferred: tuple[tuple[NightStage, str], ...] = ()
    #: Nights left for later in the night lane: (stream, night, reason).
    waiting: tuple[tuple[str, str, str], ...] = ()
    #: Exposures held (out of their nights): (stream, night, expid).
    held: tuple[tuple[str, str, str], ...] = ()
    #: Streams that could not be listed: name -> one line.
    unlisted: Mapping[str, str] = field(default_factory=dict)
    locked: bool = False
    #: Streams whose listing the plan is made from.
    listed: tuple[str, ...] = ()
    #: The day (UTC ``YYYYMMDD``) whose tape recall this run makes, if any.
    recall: str | None = None
    #: Why the day's recall waits (HPSS down), if it does.
    recall_deferred: str | None = None

    @property
    def draining(self) -> bool:
        """An exposure-lane run that left listed exposures for the next run."""
        return self.lane == "exposures" and self.pending > len(self.exposures)

    @property
    def backups(self) -> tuple[NightStage, ...]:
        return tuple(s for s in self.night_stages if s.stage != CATCH_UP)

    @property
    def wants_hpss(self) -> bool:
        """Whether backups are planned, so that HPSS's status must be asked."""
        return (bool(self.backups) or any(s.stage != CATCH_UP for s, _ in self.deferred)
                or self.recall is not None or self.recall_deferred is not None)


def recall_day(config: dict, observation: Observation, lane: str | None) -> str | None:
    """The day whose tape recall is due: in the night lane (or a run of all lanes),
    with ``backup.recall_per_day`` set and a backend, once per UTC day."""
    backup = config["backup"]
    if (lane == "exposures" or backup["backend"] == "none"
            or not backup.get("recall_per_day") or observation.recalled is not False):
        return None
    return observation.now.strftime("%Y%m%d")


def due_stages(config: dict, observation: Observation, stream: str, night: str) -> list[str]:
    """The due night-level stages of `night` that lack their marker: the catch-up,
    then the backup (the first archive, or the next supplementary one when exposures
    are installed that no archive holds)."""
    seen = observation.streams[stream]
    now = observation.now
    stages = []
    if due(night, now, config["catchup_hour"]) and night not in seen.caught_up:
        stages.append(CATCH_UP)
    if config["backup"]["backend"] == "none" or not due(night, now, config["backup_hour"]):
        return stages
    history = seen.backups.get(night)
    if history is None:
        return [*stages, BACKUP]
    if not_backed_up(observation.night_expids(stream, night), history):
        return [*stages, f"{BACKUP}.{len(history)}"]
    return stages


def exposure_work(config: dict, observation: Observation, scope: Scope,
                  bounded: bool) -> tuple[tuple, int]:
    """This run's exposures (in `scope`) and how many are pending in all."""
    pending = []
    for name, seen in observation.streams.items():
        if seen.listing is None:
            continue
        # valid_night: an impossible date (20261131) is no night, whoever made the
        # listing; the listing's parser skips it already.
        pending += [(name, night, expid)
                    for night, expid in pending_exposures(seen.listing.exposures, seen.nights)
                    if scope.holds(night, expid) and valid_night(night)]
    limit = config["exposures_per_run"] if bounded else None
    return tuple(newest_first(pending, limit)), len(pending)


def night_work(config: dict, observation: Observation, scope: Scope, ready_only: bool
               ) -> tuple[list[NightStage], list[tuple[str, str, str]]]:
    """Every eligible night's due stages (backlog included; in `scope`), and the nights
    that wait (with `ready_only`, as in the night lane: a night still transferring waits).
    A scope of one exposure holds no night stage."""
    stages, waiting = [], []
    if scope.expid is not None:
        return stages, waiting
    for name, seen in observation.streams.items():
        if seen.listing is None:
            continue
        listed = set(seen.listing.nights())
        from_state = {n for n in seen.marker_nights
                      if n not in listed and observation.night_state(name, n).installed}
        for night in sorted(listed | from_state):
            if not (valid_night(night) and scope.holds(night)):
                continue
            expids = observation.night_expids(name, night)
            state = observation.night_state(name, night)
            due_here = due_stages(config, observation, name, night)
            if not due_here:
                continue
            if ready_only and not night_ready(expids, state):
                missing = len(set(expids) - state.installed)
                waiting.append((name, night, f"waiting for {missing} exposure(s) to be"
                                " installed"))
                continue
            stages += [NightStage(name, night, s, night in from_state) for s in due_here]
    return stages, waiting


def make_plan(config: dict, observation: Observation, lane: str | None,
              bounded: bool | None = None) -> Plan:
    """What a run of `lane` (``exposures``, ``nights`` or None for all) does.

    `bounded` (default: the exposure lane) caps the exposures at ``exposures_per_run``;
    a drawing without a target asks for one bounded run, which also leaves out the
    nights still transferring, as the night lane does. The configuration's scope
    (`get_scope`: ``night``, ``exposure``) restricts everything the plan holds.
    """
    bounded = lane == "exposures" if bounded is None else bounded
    scope = get_scope(config)
    unlisted = {n: s.error or "not listed" for n, s in observation.streams.items()
                if s.listing is None}
    listed = tuple(n for n, s in observation.streams.items() if s.listing is not None)
    held = tuple(sorted((name, night, expid)
                        for name, seen in observation.streams.items()
                        for night, state in seen.nights.items() for expid in state.held
                        if scope.holds(night, expid)))
    if observation.locked:
        return Plan(lane, unlisted=unlisted, held=held, locked=True, listed=listed)
    exposures, pending = ((), 0)
    if lane != "nights":
        exposures, pending = exposure_work(config, observation, scope, bounded)
    stages, waiting = ([], [])
    if lane != "exposures":
        stages, waiting = night_work(config, observation, scope,
                                     ready_only=lane == "nights" or (bounded and lane is None))
    deferred = []
    recall, recall_deferred = recall_day(config, observation, lane), None
    if observation.hpss is not None and not observation.hpss[0]:
        deferred = [(s, observation.hpss[1])
                    for s in stages if s.stage != CATCH_UP]
        stages = [s for s in stages if s.stage == CATCH_UP]
        if recall is not None:
            recall, recall_deferred = None, observation.hpss[1]
    return Plan(lane, exposures, pending, tuple(stages), tuple(deferred), tuple(waiting),
                held, unlisted, recall=recall, recall_deferred=recall_deferred,
                listed=listed)


def _exposures_by_night(exposures: tuple[tuple[str, str, str], ...]) -> list[str]:
    by_night: dict[tuple[str, str], list[str]] = {}
    for stream, night, expid in exposures:
        by_night.setdefault((stream, night), []).append(expid)
    return [f"  {stream} {night}: {len(e)} exposure(s) ({e[0]}" + (f" … {e[-1]})" if len(e) > 1
                                                                 else ")")
            for (stream, night), e in by_night.items()]


def describe(plans: Mapping[str, Plan]) -> list[str]:
    """A few lines per lane saying what the next cron invocation would do, from the
    plans of its lanes (``exposures``, ``nights``)."""
    lines = []
    for lane, plan in plans.items():
        if plan.locked:
            lines.append(f"{lane} lane: nothing: checksums are being computed at the mountain")
            continue
        for stream, error in plan.unlisted.items():
            lines.append(f"{lane} lane: stream {stream} cannot be listed: {error}")
        if lane == "exposures":
            more = plan.pending - len(plan.exposures)
            lines.append(f"exposures lane: {len(plan.exposures)} exposure(s) this run,"
                         f" {more} more pending" + (" (the lane runs again at once)"
                                                    if more else ""))
            lines += _exposures_by_night(plan.exposures)
        else:
            lines.append(f"nights lane: {len(plan.night_stages)} stage(s) this run")
            lines += [f"  {s.stream} {s.night} {s.stage}: due"
                      + (" (from the state: its links left the mountain)" if s.from_state
                         else "") for s in plan.night_stages]
            lines += [f"  {s.stream} {s.night} {s.stage}: deferred: {why}"
                      for s, why in plan.deferred]
            lines += [f"  {stream} {night}: {why}" for stream, night, why in plan.waiting]
            if plan.recall:
                lines.append(f"  tape recall of {plan.recall}: due")
            elif plan.recall_deferred:
                lines.append(f"  tape recall: deferred: {plan.recall_deferred}")
    held = sorted({h for plan in plans.values() for h in plan.held})
    lines.append(f"held: {len(held)} exposure(s)" + (": " + ", ".join(
        f"{s} {n}/{e}" for s, n, e in held) if held else ""))
    return lines
