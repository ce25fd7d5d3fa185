"""The processes a test started, and what is below them.

A test looks only at processes it started and at their descendants, never at the
machine's other processes: every function here reads the /proc entry of a process it
is given (or of the caller itself), or a rule log the test's own run wrote.
"""

from __future__ import annotations

import os
import re
import select
import time
from pathlib import Path


def started_commands(log: Path, name: str) -> list[int]:
    """The pids of the `name` commands a job started, from its rule log (with
    ``debug: true`` every command logs its pid): never from other processes."""
    return [int(m.group(1)) for m in
            re.finditer(rf"started as pid (\d+): {re.escape(name)}\b", log.read_text())]


def wait_for_exit(pids: list[int], timeout: float) -> None:
    """Block until every process in `pids` has ended (pidfd + poll: no sleeping);
    fail the test if one is still alive after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    for pid in pids:
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            continue
        try:
            poller = select.poll()
            poller.register(fd, select.POLLIN)
            left = max(0.0, deadline - time.monotonic())
            assert poller.poll(left * 1000), f"process {pid} outlived its run"
        finally:
            os.close(fd)

