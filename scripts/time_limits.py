"""Wall-clock limits, in seconds: of one job, and of one run of a lane.

Nothing stalls in silence: every job has a limit, computed here from the configured
timeouts of what the job does plus ``runtime_margin`` (Slurm's ``runtime`` resource is
the same number in minutes), and a lane that has not finished a run for longer than
its own limit is a problem that needs a person. One place for these numbers, so the
job wrapper, the Slurm profile and the status agree.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

#: Hashing has no timeout of its own: this allows some GB at a slow shared file
#: system's pace.
HASHING_SECONDS = 1800
#: The steps of each lane, in the order an item goes through them.
LANE_STEPS = {"exposures": ("stage", "verify", "install"),
              "nights": ("catch_up", "backup")}
#: Installing is a chmod and a rename (or a copy across file systems).
INSTALL_SECONDS = 1800


def step_seconds(config: dict, step: str) -> int:
    """The configured time limits of what one job of `step` does, without the margin.

    `step` is one of stage, verify, install, catch_up, backup, recall.
    """
    remote, attempts = config["remote"], config["verify"]["max_attempts"]
    fetch = remote["timeout"] + remote["transfer_timeout"]  # link check, then rsync
    return {
        "stage": fetch,
        # every attempt hashes; each failed one fetches the wrong files again
        "verify": attempts * HASHING_SECONDS + (attempts - 1) * fetch,
        "install": INSTALL_SECONDS,
        # the night's dry run, then (for one changed exposure) a copy and its checks
        "catch_up": remote["transfer_timeout"] + attempts * (fetch + HASHING_SECONDS),
        "backup": config["backup"]["timeout"],
        # at most one htar per member recalled, each within backup.timeout
        "recall": config["backup"]["timeout"] * max(1, config["backup"].get("recall_per_day",
                                                                           0)),
    }[step]


def job_seconds(config: dict, step: str) -> int:
    """The wall-clock limit of one job of `step`: its steps' limits plus
    ``runtime_margin``, so that a hung command normally ends itself first with a
    failure record saying "timed out", and this limit is the backstop."""
    return step_seconds(config, step) + config.get("runtime_margin", 1800)


def job_minutes(config: dict, step: str) -> int:
    """`job_seconds` in whole minutes, rounded up: Slurm's ``runtime`` resource."""
    return math.ceil(job_seconds(config, step) / 60)


def lane_seconds(config: dict, lane: str) -> int:
    """The limit of one run of `lane`: one item through every step of the lane, each
    at its job's limit. A lane whose last finished run is older than this (while a run
    should have ended) is stalled."""
    return sum(job_seconds(config, step) for step in LANE_STEPS[lane])


def night_work_seconds(config: dict, stages: Iterable[str], recall: bool = False) -> int:
    """The limit of the night work one run planned: each of its night `stages` (marker
    suffixes: ``caughtup``, ``backedup``, ``backedup.N``) at its job's limit, one
    after the other, and the day's recall when planned. A run draining a backlog of
    nights can last longer than `lane_seconds` (one night) and not be stalled: its
    lane is stalled past this (`scripts.lanes.stalled_lanes`)."""
    total = sum(job_seconds(config, "catch_up" if stage == "caughtup" else "backup")
                for stage in stages)
    return total + (job_seconds(config, "recall") if recall else 0)
