"""Run external commands (ssh, rsync, hsi, htar) with a wall-clock limit.

Every subprocess of the workflow goes through `run`: a hung ssh or rsync must end the
step as a failure, not the night. The command runs in its own process group so that
its children (rsync's ssh, for instance) are killed with it, and it is told by the
kernel to die with the job that started it (``PR_SET_PDEATHSIG``): an rsync or htar
must never outlive a run killed with SIGKILL and write into staging while the next
run works on the same exposure.
"""

from __future__ import annotations

import ctypes
import logging
import os
import shlex
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass

log = logging.getLogger(__name__)
#: Commands running now, so that a terminated job can end them too (their own
#: process groups are out of reach of the signal that ends the job).
RUNNING: set[subprocess.Popen] = set()
#: prctl option: the signal a process gets when the thread that forked it exits.
_PR_SET_PDEATHSIG = 1
_LIBC = ctypes.CDLL(None, use_errno=True)


def die_with(parent: int, cwd_fd: int | None = None):
    """A ``preexec_fn``: SIGKILL this child when `parent` dies, even by SIGKILL; and
    start it in the open directory `cwd_fd` (a directory pinned by descriptor, see
    scripts/own_dirs.py: no path is looked up again)."""

    def preexec() -> None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(137)
        if cwd_fd is not None:
            os.fchdir(cwd_fd)

    return preexec


@dataclass(frozen=True)
class CommandResult:
    """What a command did."""

    command: tuple[str, ...]
    returncode: int | None
    stdout: str
    stderr: str
    seconds: float
    timed_out: bool = False
    missing: bool = False

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out

    def describe(self) -> str:
        """One line saying how the command ended."""
        name = os.path.basename(self.command[0])
        if self.missing:
            return f"{name}: command not found ({self.command[0]}); install it or fix the path"
        if self.timed_out:
            return f"{name} timed out after {self.seconds:.0f} s"
        last = (self.stderr.strip().splitlines() or [""])[-1][:300]
        return f"{name} exited with status {self.returncode}" + (f": {last}" if last else "")


def run(
    command: Sequence[str],
    timeout: float,
    cwd: str | os.PathLike | None = None,
    env: dict[str, str] | None = None,
    cwd_fd: int | None = None,
) -> CommandResult:
    """Run `command` (no shell) for at most `timeout` seconds, in `cwd` or in the open
    directory `cwd_fd`.

    Returns
    -------
    CommandResult
        Never raises for a failing, missing or hung command: the caller decides.
    """
    command = tuple(str(c) for c in command)
    log.debug("running: %s", shlex.join(command))
    start = time.monotonic()
    try:
        proc = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            cwd=cwd,
            env=env,
            text=True,
            errors="replace",
            start_new_session=True,
            preexec_fn=die_with(os.getpid(), cwd_fd),
        )
    except FileNotFoundError:
        log.debug("not found: %s", command[0])
        return CommandResult(command, None, "", "", 0.0, missing=True)
    RUNNING.add(proc)
    log.debug("started as pid %d: %s", proc.pid, command[0])
    try:
        out, err = proc.communicate(timeout=timeout)
        timed_out = False
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        out, err = proc.communicate()
        timed_out = True
    finally:
        RUNNING.discard(proc)
    seconds = time.monotonic() - start
    result = CommandResult(command, proc.returncode, out, err, seconds, timed_out)
    log.debug("%s in %.1f s", "exited 0" if result.ok else result.describe(), seconds)
    return result


def kill_running() -> None:
    """End every command still running (rsync, htar...): for a job being terminated."""
    for proc in list(RUNNING):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            continue


def _kill_group(proc: subprocess.Popen) -> None:
    """End the whole process group: TERM, then KILL if it lingers."""
    for sig, grace in ((signal.SIGTERM, 5.0), (signal.SIGKILL, None)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            continue
