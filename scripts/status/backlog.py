"""Judging a night: what is due and not done (and why it waits), and its colour.

Pure: a night is judged from its records, the clock and the configuration.
"""

from __future__ import annotations

import datetime as dt

from scripts.remote import first_night
from scripts.status.model import (
    INSTALLED,
    NIGHT_ATTENTION,
    NIGHT_DONE,
    NIGHT_PROGRESS,
    BacklogItem,
    NightStatus,
)
from scripts.status.problems import STALE_ACTION, Problem, stale_backup_reason
from scripts.targets import due, due_time


def _why(night: NightStatus, stage: str, extra: list[str]) -> str:
    failure = night.failures.get(stage)
    if failure is not None:
        return (f"failed {failure.get('attempts', '?')}×, retried next run:"
                f" {failure.get('reason', '?')}")
    waiting = [e for e in night.sorted_exposures() if "installed" not in e.stages and not e.held]
    if waiting:
        names = ", ".join(e.expid for e in waiting[:4]) + (" …" if len(waiting) > 4 else "")
        return f"waiting for {len(waiting)} exposure(s) to be installed: {names}"
    return "; ".join(extra) or "due: the next run does it"


def _late_backup(night: NightStatus, when: dt.datetime, extra: list[str]) -> list[BacklogItem]:
    archived = night.archived()
    late = [e for e in night.sorted_exposures()
            if "installed" in e.stages and e.expid not in archived]
    if not late:
        return []
    failure = night.backup_failure()
    text = (f"{len(late)} exposure(s) installed after the night went to tape: "
            + ", ".join(e.expid for e in late[:4]))
    if failure is not None:
        text += f"; failed {failure.get('attempts', '?')}×: {failure.get('reason', '?')}"
    elif extra:
        text += "; " + "; ".join(extra)
    return [BacklogItem(night.stream, night.night, "backup of late exposures", when, text)]


def night_backlog(night: NightStatus, now: dt.datetime, config: dict,
                  hpss: dict | None) -> list[BacklogItem]:
    """The night's due and undone catch-up or backup, and why each waits."""
    backend = config["backup"]["backend"]
    if night.night < first_night(now, config["lookback_nights"]):
        installed = any("installed" in e.stages for e in night.exposures.values())
        if backend != "none" and installed and "backedup" not in night.stages:
            return [BacklogItem(night.stream, night.night, "backup",
                                due_time(night.night, config["backup_hour"]),
                                f"{stale_backup_reason(config)}; {STALE_ACTION}",
                                needs_person=True)]
        return []
    items = []
    if due(night.night, now, config["catchup_hour"]) and "caughtup" not in night.stages:
        items.append(BacklogItem(night.stream, night.night, "catch-up",
                                 due_time(night.night, config["catchup_hour"]),
                                 _why(night, "caughtup", [])))
    if backend == "none" or not due(night.night, now, config["backup_hour"]):
        return items
    extra = [] if "caughtup" in night.stages else ["waiting for the catch-up"]
    if hpss is not None and not hpss.get("ready", True) and backend == "htar":
        extra.append(f"HPSS inactive: {hpss.get('why', '?')} (checked {hpss.get('time', '?')})")
    when = due_time(night.night, config["backup_hour"])
    if "backedup" not in night.stages:
        return items + [BacklogItem(night.stream, night.night, "backup", when,
                                    _why(night, "backedup", extra))]
    return items + _late_backup(night, when, extra)


def classify(night: NightStatus, problems: list[Problem], backlog: list[BacklogItem],
             config: dict) -> str:
    """The night's colour: needs a person, done, or in progress."""
    night.problems = problems
    if problems or any(item.needs_person for item in backlog):
        night.state = NIGHT_ATTENTION
        return night.state
    exposures = night.exposures.values()
    complete = bool(night.exposures) and all(e.state == INSTALLED for e in exposures)
    archived = night.archived()
    backed_up = config["backup"]["backend"] == "none" or (
        "backedup" in night.stages and all(e.expid in archived for e in exposures))
    done = complete and "caughtup" in night.stages and backed_up and not night.failures
    night.state = NIGHT_DONE if done else NIGHT_PROGRESS
    return night.state
