"""Logging for the scripts that Snakemake runs: to the rule's log file, errors also to stderr."""

from __future__ import annotations

import logging
import sys
import time


def setup(log_file: str | None, level: int = logging.INFO) -> None:
    """Send log records to `log_file` (UTC timestamps) and errors to stderr too.

    An operator reading the cron log at 3 a.m. sees the error line at once; the
    rule's log file keeps the whole story.
    """
    formatter = logging.Formatter("%(asctime)sZ %(levelname)s %(message)s", "%Y-%m-%dT%H:%M:%S")
    formatter.converter = time.gmtime
    root = logging.getLogger()
    root.setLevel(level)
    for handler in list(root.handlers):
        root.removeHandler(handler)
    if log_file:
        to_file = logging.FileHandler(log_file)
        to_file.setFormatter(formatter)
        root.addHandler(to_file)
    to_stderr = logging.StreamHandler(sys.stderr)
    to_stderr.setLevel(logging.ERROR if log_file else level)
    to_stderr.setFormatter(formatter)
    root.addHandler(to_stderr)
