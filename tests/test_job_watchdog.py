"""Which jobs the cron entry's watchdog ends (scripts/job_watchdog.py), decided from
what /proc shows: hand-made process tables, milliseconds each. The real stopped job is
in tests/test_job_limits.py."""

from __future__ import annotations

from scripts.job_watchdog import Process, job_of, overdue

JOB = ("/venv/bin/python", "-m", "scripts.stage", "--config", "c.json", "--rule",
       "stage_exposure", "--output", "/state/S/20261127/00000001.staged", "--log", "l",
       "--time-limit", "60")


def test_a_job_past_its_limit_and_the_grace_is_overdue():
    [job] = overdue([Process(10, 1, JOB, 71.0)], grace=10)
    assert (job.pid, job.rule, job.limit) == (10, "stage_exposure", 60.0)
    assert job.marker.endswith("00000001.staged")


def test_a_job_within_its_limit_and_grace_is_left_alone():
    assert overdue([Process(10, 1, JOB, 69.0)], grace=10) == []


def test_the_worker_is_not_a_second_job_and_the_shell_is_none():
    shell = ("/bin/bash", "-c", " ".join(JOB))
    table = [Process(9, 1, shell, 500.0), Process(10, 9, JOB, 500.0),
             Process(11, 10, JOB, 499.0)]
    assert [j.pid for j in overdue(table, grace=10)] == [10]


def test_a_command_line_without_a_limit_or_not_ours_is_no_job():
    assert job_of(JOB[:-2]) is None
    assert job_of(("rsync", "-a", "--time-limit", "5", "--rule", "r", "--output", "o")) is None
    assert job_of(JOB[:-1] + ("sixty",)) is None
    assert job_of(("python", "-m")) is None
