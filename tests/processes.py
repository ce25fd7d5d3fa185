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


def children(pid: int) -> list[int]:
    """The children of process `pid`, those of every one of its threads (a process
    forks from any thread); [] once it has ended.

    Read from ``/proc/PID/task/TID/children``: the process's own entry only.
    """
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []  # ended (or not ours to read)
    found = []
    for tid in tasks:
        try:
            found += [int(child) for child in
                      Path(f"/proc/{pid}/task/{tid}/children").read_text().split()]
        except FileNotFoundError:
            if Path(f"/proc/{pid}/task/{tid}").exists():
                raise RuntimeError("/proc/PID/task/TID/children is missing: the tests"
                                   " need a kernel built with CONFIG_PROC_CHILDREN") from None
        except OSError:
            continue  # the thread ended, or the process is not dumpable
    return found


def descendants(pid: int) -> list[int]:
    """`pid` and every process below it, found by walking down from `pid` (so that a
    test can wait for them all): no other process is looked at."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo += children(current)
    return found
