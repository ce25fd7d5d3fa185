"""Time limits of jobs and lane runs: one place, the configured timeouts plus the margin."""

import datetime as dt
import json
from pathlib import Path

import pytest

from scripts.configuration import load_yaml, with_defaults
from scripts.lanes import activity_path, stalled_lanes
from scripts.run_lock import try_lock
from scripts.time_limits import (
    job_minutes,
    job_seconds,
    lane_seconds,
    night_work_seconds,
    step_seconds,
)

REPO = Path(__file__).resolve().parents[1]


def bundled() -> dict:
    return with_defaults(load_yaml(REPO / "config.yaml"))


def test_slurm_minutes_of_the_bundled_configuration():
    config = bundled()
    assert [job_minutes(config, s) for s in ("stage", "verify", "catch_up", "backup")] == [
        100, 260, 390, 750]


def test_the_margin_is_configured_in_seconds():
    config = {**bundled(), "runtime_margin": 7}
    assert job_seconds(config, "stage") == step_seconds(config, "stage") + 7
    assert job_seconds(config, "backup") == config["backup"]["timeout"] + 7


def test_a_lane_run_allows_one_item_through_every_step():
    config = {**bundled(), "runtime_margin": 0}
    assert lane_seconds(config, "nights") == (step_seconds(config, "catch_up")
                                              + step_seconds(config, "backup"))
    assert lane_seconds(config, "exposures") == sum(
        step_seconds(config, s) for s in ("stage", "verify", "install"))


def test_the_night_work_a_run_planned_is_each_stage_at_its_job_s_limit():
    config = bundled()
    stages = ["caughtup", "backedup", "caughtup", "backedup.1", "backedup"]
    assert night_work_seconds(config, stages) == (2 * job_seconds(config, "catch_up")
                                                  + 3 * job_seconds(config, "backup"))
    assert night_work_seconds(config, [], recall=True) == job_seconds(config, "recall")
    assert night_work_seconds(config, ["caughtup", "backedup"]) == lane_seconds(config,
                                                                               "nights")


def _stamp(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@pytest.mark.parametrize("locked, hours, extra, stalled_with", [
    (True, 30, {}, None),               # draining 3 nights' work: not stalled
    (True, 60, {}, "planned"),          # past what it planned: stalled, at that limit
    (False, 30, {}, "lane"),            # its lock is free: a killed run, the lane's limit
    (True, 30, {"finished": None}, "lane"),          # a finished run plans nothing now
    (True, 30, {"night_seconds": "1e9"}, "lane"),    # not a number: ignored
    (True, 30, {"night_seconds": True}, "lane"),
    (True, 30, {"night_seconds": 10**9}, "lane"),    # beyond any plan: ignored
])
def test_a_night_run_draining_a_backlog_is_stalled_only_past_what_it_planned(
        tmp_path, locked, hours, extra, stalled_with):
    """A night-lane run with three nights to catch up and back up lasts longer than
    one night's limit (`lane_seconds`): no false "lane run" mail while it is within
    the limit of the work it planned and holds its lock."""
    config = bundled()
    limit = lane_seconds(config, "nights")
    planned = night_work_seconds(config, ["caughtup", "backedup"] * 3)
    assert limit < 30 * 3600 < planned < 60 * 3600  # 19 h, 57 h (bundled timeouts)
    now = 1_800_000_000.0
    record = {"lane": "nights", "run": "r", "started": _stamp(now - hours * 3600),
              "last_finished": _stamp(now - hours * 3600 - 60),
              "night_seconds": planned, **extra}
    if "finished" in record:
        record["finished"] = record["last_finished"]
    path = activity_path(tmp_path, "nights")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record))
    handle = try_lock(tmp_path, "nights") if locked else None
    try:
        stalled = stalled_lanes(tmp_path, {"nights": limit}, now)
    finally:
        if handle is not None:
            handle.close()
    if stalled_with is None:
        assert stalled == []
    else:
        [lane] = stalled
        assert lane["limit"] == (planned if stalled_with == "planned" else limit)
