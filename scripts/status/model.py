"""What the state says about an exposure and a night: the status model.

Pure data read from the markers and failure records (`scripts.status.reading` fills
it); the states below are what the page colours and the command prints.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from scripts.markers import valid_expid

# Exposure states, worst first; the page colours them.
HELD = "held"
INSTALLED_WITH_ERRORS = "installed with errors"
RETRYING = "retrying"
TRANSFERRING = "transferring"
PUBLISHED = "published"
INSTALLED = "installed"
# Night states.
NIGHT_ATTENTION = "needs a person"
NIGHT_PROGRESS = "in progress"
NIGHT_DONE = "done"


def parse_time(value: Any) -> dt.datetime | None:
    """A record's UTC time (``2026-11-29T02:11:46Z``), or None when absent or malformed."""
    if not isinstance(value, str):
        return None
    try:
        return dt.datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)
    except ValueError:
        pass
    try:
        when = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)


def milliseconds(value: Any) -> int | None:
    """A record's time as DESI's status files hold it: integer ms since the epoch."""
    when = parse_time(value)
    return None if when is None else int(when.timestamp()) * 1000


@dataclass
class ExposureStatus:
    """The markers and failure records of one exposure.

    Stages are the marker stages (``staged``, ``checksummed``, ``installed``) and
    ``updated``: the catch-up's record of the exposure (``EXPID.updated.failed`` when
    a late file did not verify; the archive kept its verified bytes).
    """

    stream: str
    night: str
    expid: str
    stages: dict[str, dict] = field(default_factory=dict)    # stage -> marker record
    failures: dict[str, dict] = field(default_factory=dict)  # stage -> failure record
    listed: bool = False           # published at the mountain in the last listing
    archive: dict | None = None    # the archive of the night that holds it

    def time(self, stage: str) -> dt.datetime | None:
        return parse_time(self.stages.get(stage, {}).get("time"))

    @property
    def held(self) -> bool:
        """Held by policy (a failure record says so) or by a person (``held``)."""
        return "held" in self.stages or any(
            self.failures.get(s, {}).get("held") for s in ("staged", "checksummed"))

    def hold_text(self) -> str:
        """``held by NAME at TIME`` for a person's hold, else empty."""
        hold = self.stages.get("held")
        if hold is None:
            return ""
        return f"held by {hold.get('by', '?')} at {hold.get('time', '?')}"

    @property
    def verification(self) -> str:
        """``verified``, ``failed`` (installed by policy, or a late file that did not
        verify), ``held``, ``retrying`` or ``""``."""
        record = self.stages.get("checksummed")
        if record is not None:
            failed = record.get("outcome") == "failed" or "updated" in self.failures
            return "failed" if failed else "verified"
        if self.held:
            return HELD
        return RETRYING if "checksummed" in self.failures else ""

    @property
    def state(self) -> str:
        if self.held:
            return HELD
        if "installed" in self.stages:
            return INSTALLED_WITH_ERRORS if self.verification == "failed" else INSTALLED
        if self.failures:
            return RETRYING
        return TRANSFERRING if self.stages else PUBLISHED

    @property
    def bytes(self) -> int:
        for stage in ("installed", "checksummed", "staged"):
            size = self.stages.get(stage, {}).get("bytes")
            if isinstance(size, int):
                return size
        return 0

    def latency(self) -> tuple[float, str] | None:
        """Seconds from the start of the transfer to installed, and what "start" was.

        The start is the mountain link's publication time when the staged record has
        it (``published``); otherwise the start of the rsync (the staged record's time
        minus its duration). None for exposures adopted in place or not installed.
        """
        staged, installed = self.stages.get("staged"), self.time("installed")
        if staged is None or installed is None or staged.get("outcome") == "adopted":
            return None
        start = parse_time(staged.get("published"))
        basis = "published"
        if start is None:
            end_of_rsync = parse_time(staged.get("time"))
            if end_of_rsync is None:
                return None
            start = end_of_rsync - dt.timedelta(seconds=float(staged.get("duration") or 0))
            basis = "rsync start"
        return max(0.0, (installed - start).total_seconds()), basis

    def failure_text(self) -> str:
        """Every failure record in one line: ``stage: reason (attempt N)``, and a
        person's hold."""
        parts = [f"{stage}: {f.get('reason', '?')} (attempt {f.get('attempts', '?')})"
                 for stage, f in self.failures.items()]
        return "; ".join([*([self.hold_text()] if "held" in self.stages else []), *parts])


@dataclass
class NightStatus:
    """The markers and failure records of one night of one stream."""

    stream: str
    night: str
    exposures: dict[str, ExposureStatus] = field(default_factory=dict)
    stages: dict[str, dict] = field(default_factory=dict)    # caughtup, backedup, backedup.N
    failures: dict[str, dict] = field(default_factory=dict)
    state: str = ""                                          # set by `backlog.classify`
    problems: list = field(default_factory=list)             # set by `backlog.classify`

    def sorted_exposures(self) -> list[ExposureStatus]:
        return [self.exposures[e] for e in sorted(self.exposures)]

    def archived(self) -> dict[str, dict]:
        """EXPID → the archive holding it, from the night's backup record."""
        held = {}
        for archive in (self.stages.get("backedup") or {}).get("archives", []):
            for expid in archive.get("exposures", []):
                if valid_expid(expid):  # a record is read back, not trusted
                    held.setdefault(expid, archive)
        return held

    def backup_failure(self) -> dict | None:
        """The newest failure record of the night's backups, main or supplementary."""
        records = [f for s, f in self.failures.items() if s.split(".")[0] == "backedup"]
        return max(records, key=lambda f: f.get("time", ""), default=None)

    def count(self, predicate: Callable[[ExposureStatus], bool]) -> int:
        return sum(1 for e in self.exposures.values() if predicate(e))

    @property
    def bytes(self) -> int:
        return sum(e.bytes for e in self.exposures.values() if "installed" in e.stages)

    def failure_count(self) -> int:
        return len(self.failures) + sum(len(e.failures) for e in self.exposures.values())


@dataclass
class BacklogItem:
    """A night-level stage that is due and not done, and why it waits."""

    stream: str
    night: str
    stage: str
    due: dt.datetime
    why: str
    needs_person: bool = False
