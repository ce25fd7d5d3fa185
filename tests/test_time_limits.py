"""Time limits of jobs and lane runs: one place, the configured timeouts plus the margin."""

from pathlib import Path

from scripts.configuration import load_yaml, with_defaults
from scripts.time_limits import job_minutes, job_seconds, lane_seconds, step_seconds

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
