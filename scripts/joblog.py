"""Logging for the scripts that Snakemake runs: to the rule's log file, errors also to stderr."""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from pathlib import Path

from scripts.commands import kill_running
from scripts.markers import next_attempt, write_failure


def utc_formatter() -> logging.Formatter:
    """The one log line format of the workflow: ``2026-11-29T02:11:46Z LEVEL message``."""
    formatter = logging.Formatter("%(asctime)sZ %(levelname)s %(message)s", "%Y-%m-%dT%H:%M:%S")
    formatter.converter = time.gmtime
    return formatter


def file_handler(path: str | os.PathLike, handler_class: type = logging.FileHandler,
                 **options) -> logging.FileHandler:
    """A log file handler that never fails on a name: a byte that is not UTF-8 (from a
    file name at the mountain) is written escaped, never as "--- Logging error ---"."""
    handler = handler_class(path, encoding="utf-8", errors="backslashreplace", **options)
    handler.setFormatter(utc_formatter())
    return handler


def setup(log_file: str | None, level: int = logging.INFO, marker: str | None = None) -> None:
    """Send log records to `log_file` (UTC timestamps) and errors to stderr too.

    An operator reading the cron log at 3 a.m. sees the error line at once; the
    rule's log file keeps the whole story. With `marker`, a SIGTERM leaves the
    failure record of that marker (see `record_termination`). At ``logging.DEBUG``
    (the ``debug`` configuration key) every command line and its outcome is logged.
    """
    formatter = utc_formatter()
    root = logging.getLogger()
    root.setLevel(level)
    for handler in list(root.handlers):
        root.removeHandler(handler)
    if log_file:
        root.addHandler(file_handler(log_file))
    to_stderr = logging.StreamHandler(sys.stderr)
    to_stderr.setLevel(logging.ERROR if log_file else level)
    to_stderr.setFormatter(formatter)
    root.addHandler(to_stderr)
    if marker:
        record_termination(marker)


def record_termination(marker: str) -> None:
    """On SIGTERM, leave `marker`'s failure record, then exit 143.

    Slurm ends a job over its time limit (and one cancelled, preempted or on a node
    going down) with SIGTERM, then SIGKILL: without this the attempt would end with
    neither marker nor failure record, invisible to the status page and the alerts.
    The next run tries the step again, as after any failure.
    """
    start = time.monotonic()

    def terminated(signum, frame):
        if not Path(marker).exists():  # killed after success: nothing failed
            job = os.environ.get("SLURM_JOB_ID")
            reason = (f"killed by {signal.Signals(signum).name} after "
                      f"{time.monotonic() - start:.0f} s"
                      + (f" (Slurm job {job}: time limit, scancel or node shutdown)"
                         if job else "") + "; the next run tries again")
            attempts = next_attempt(marker)
            write_failure(marker, reason, attempts, killed=True, slurm_job=job)
            logging.getLogger().error("%s: %s", Path(marker).name, reason)
        kill_running()  # rsync or htar in their own process groups
        logging.shutdown()
        # At once: worker threads (hashing) must not hold the exit until SIGKILL.
        os._exit(128 + signum)

    signal.signal(signal.SIGTERM, terminated)
