"""One run at a time, whoever starts it: the cron entry or a ``snakemake`` by hand.

The lock is a ``flock`` on ``STATE/.run.lock``, held for the whole run and released by
the kernel when the last process holding it ends, however it ends: there is nothing
stale to clean after a SIGKILL. The cron entry takes it before Snakemake starts and
hands the open descriptor down (``DESITRANSFER_LOCK_FD``); the Snakefile's ``onstart``
(real runs only: not ``-n``, ``--dag``, ``--lint``) checks that it holds the lock
through that descriptor or takes it itself, and ends the run with one line when
another run has it. Snakemake's own directory lock is off (``nolock`` in the profile):
this lock covers every run, and a lock left by a killed run can never stop the next.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import IO

LOCK_FILE = ".run.lock"
ENV_FD = "DESITRANSFER_LOCK_FD"
#: The lock of the running process, kept open (and so held) until it exits.
_HELD: list[IO] = []


class RunLockBusy(Exception):
    """Another run holds the lock; the message is one line."""


def lock_path(state: str | os.PathLike) -> Path:
    return Path(state) / LOCK_FILE


def try_lock(state: str | os.PathLike) -> IO | None:
    """Take the run lock without waiting; return the open file holding it, or None."""
    path = lock_path(state)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    return handle


def _inherited(state: str | os.PathLike) -> bool:
    """Whether this process was handed the lock of `state` by the run that started it."""
    try:
        fd = int(os.environ[ENV_FD])
        same = os.path.samestat(os.fstat(fd), os.stat(lock_path(state)))
        # On the same open file description flock succeeds only for its holder.
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except (KeyError, ValueError, OSError):
        return False
    return same


def hold(state: str | os.PathLike) -> None:
    """Make sure this run holds the lock until it exits.

    Raises
    ------
    RunLockBusy
        Another run (cron's or one started by hand) holds it.
    """
    if _HELD or _inherited(state):
        return
    handle = try_lock(state)
    if handle is None:
        raise RunLockBusy(f"another run holds {lock_path(state)}; not starting (this one"
                          " ends here, the next cron run goes on)")
    _HELD.append(handle)
