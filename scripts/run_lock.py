"""One run per lane at a time, whoever starts it: the cron entry or a ``snakemake`` by hand.

The work is split into lanes (`LANES`): the exposure lane (stage, verify, install) and
the night lane (catch-up, backup). Each lane has its own lock, a ``flock`` on
``STATE/.lanes/LANE.lock``, held for the whole run and released by the kernel when the
last process holding it ends, however it ends: there is nothing stale to clean after a
SIGKILL. Runs of different lanes go on at the same time (their outputs never overlap);
two runs of the same lane never do, so tonight's exposures never wait behind a backup.

The cron entry takes a lane's lock before Snakemake starts and hands the open
descriptor down (``DESITRANSFER_LOCK_FD``); the Snakefile's ``onstart`` (real runs only:
not ``-n``, ``--dag``, ``--lint``) checks that it holds the lock of its lane through
that descriptor or takes it itself, and ends the run with one line when another run
has it. A run started without a lane does all the work and takes every lane's lock.
Snakemake's own directory lock is off (``nolock`` in the profile): these locks cover
every run, and a lock left by a killed run can never stop the next.

The site is shared: a lock file is private to the workflow's user (``0600``: a flock
needs only an open descriptor, and another member of the group who could read the
file could hold the lane's lock for ever). A lock file that is a symbolic link or
belongs to someone else is refused with one line, never used; a lane held anyway (a
hung run) is caught by `scripts.lanes.stalled_lanes`.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
from collections.abc import Iterable
from pathlib import Path
from typing import IO

#: The lanes, in the order the cron entry runs them: fresh data first.
LANES = ("exposures", "nights")
ENV_FD = "DESITRANSFER_LOCK_FD"
#: The locks of the running process, kept open (and so held) until it exits.
_HELD: dict[str, IO] = {}


class RunLockBusy(Exception):
    """Another run holds a lane's lock; the message is one line."""


class RunLockRefused(RunLockBusy):
    """A lane's lock file cannot be trusted (a link, another user's file); one line."""


#: A lock file: private to the workflow's user.
LOCK_MODE = 0o600


def _open_private(path: Path, lane: str) -> int:
    """Open (create) the lock file `path` of `lane` as a file of this user's only.

    Raises
    ------
    RunLockRefused
        `path` (or its directory) is a symbolic link, not a regular file, or belongs
        to another user: whoever made it could hold the lock.
    """
    fix = "remove it (the next run creates its own)"
    try:
        directory = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError as err:
        raise RunLockRefused(f"{path.parent}: cannot open the lanes' lock directory"
                             f" ({err.strerror}; a symbolic link?); {fix}") from None
    try:
        owner = os.fstat(directory).st_uid
        if owner != os.geteuid():
            raise RunLockRefused(f"{path.parent} belongs to uid {owner}, not to this"
                                 f" workflow's user (uid {os.geteuid()}); {fix}")
        try:
            fd = os.open(path.name, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                         LOCK_MODE, dir_fd=directory)
        except OSError as err:
            if err.errno == errno.ELOOP:
                raise RunLockRefused(f"{path} is a symbolic link, not the {lane} lane's lock"
                                     f" file; {fix}") from None
            raise RunLockRefused(f"{path}: cannot open the {lane} lane's lock file"
                                 f" ({err.strerror}); {fix}") from None
    finally:
        os.close(directory)
    info = os.fstat(fd)
    problem = None
    if not stat.S_ISREG(info.st_mode):
        problem = f"{path} is not a regular file; {fix}"
    elif info.st_uid != os.geteuid():
        problem = (f"{path} belongs to uid {info.st_uid}, not to this workflow's user"
                   f" (uid {os.geteuid()}): its owner could hold the {lane} lane; {fix}")
    if problem is not None:
        os.close(fd)
        raise RunLockRefused(problem)
    if stat.S_IMODE(info.st_mode) != LOCK_MODE:
        os.fchmod(fd, LOCK_MODE)  # a lock file of an older version: make it private
    return fd


from scripts.state_layout import lock_path  # noqa: E402,F401 (the lanes' too)


def try_lock(state: str | os.PathLike, lane: str) -> IO | None:
    """Take the lock of `lane` without waiting; return the open file holding it, or None.

    Raises
    ------
    RunLockRefused
        The lock file cannot be trusted (see `_open_private`).
    """
    path = lock_path(state, lane)
    path.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
    handle = os.fdopen(_open_private(path, lane), "rb+", buffering=0)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    return handle


def _inherited(state: str | os.PathLike, lane: str) -> bool:
    """Whether this process was handed the lock of `lane` by the run that started it."""
    try:
        fd = int(os.environ[ENV_FD])
        same = os.path.samestat(os.fstat(fd), os.stat(lock_path(state, lane)))
        # On the same open file description flock succeeds only for its holder.
        if same:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except (KeyError, ValueError, OSError):
        return False
    return same


def hold(state: str | os.PathLike, lanes: Iterable[str] = LANES) -> None:
    """Make sure this run holds the lock of every lane in `lanes` until it exits.

    All or nothing: when one of them is busy, the locks taken here are released again.

    Raises
    ------
    RunLockBusy
        Another run (cron's or one started by hand) holds one of them.
    """
    taken = []
    for lane in lanes:
        if lane in _HELD or _inherited(state, lane):
            continue
        handle = try_lock(state, lane)
        if handle is None:
            for other in taken:
                _HELD.pop(other).close()
            raise RunLockBusy(f"another run holds {lock_path(state, lane)} (the {lane} lane);"
                              " not starting (this one ends here, the next cron run goes on)")
        _HELD[lane] = handle
        taken.append(lane)


def is_locked(state: str | os.PathLike, lane: str) -> bool:
    """Whether a run of `lane` holds its lock now, without taking it even for an instant
    (a cron run starting at that moment must not find it busy): the kernel's table of
    file locks (``/proc/locks``) says. Where that table cannot be read, a shared lock
    is tried and released at once."""
    path = lock_path(state, lane)
    try:
        info = os.stat(path)
    except OSError:
        return False
    try:
        table = Path("/proc/locks").read_text()
    except OSError:
        table = None
    if table is not None:
        wanted = (os.major(info.st_dev), os.minor(info.st_dev), info.st_ino)
        for line in table.splitlines():
            fields = line.split()
            if len(fields) > 5 and fields[1] == "FLOCK" and _device_inode(fields[5]) == wanted:
                return True
        return False
    try:
        handle = os.fdopen(os.open(path, os.O_RDONLY | os.O_NOFOLLOW), "rb")
    except OSError:
        return False
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
    return False


def lock_holder(state: str | os.PathLike, lane: str) -> int | None:
    """The process id holding the lock of `lane` (``/proc/locks``), or None when it is
    free or that cannot be told: for a person looking for who stops a lane."""
    try:
        info = os.stat(lock_path(state, lane))
        table = Path("/proc/locks").read_text()
    except OSError:
        return None
    wanted = (os.major(info.st_dev), os.minor(info.st_dev), info.st_ino)
    for line in table.splitlines():
        fields = line.split()
        if (len(fields) > 5 and fields[1] == "FLOCK" and fields[4].isdigit()
                and _device_inode(fields[5]) == wanted):
            return int(fields[4])
    return None


def _device_inode(field: str) -> tuple[int, int, int] | None:
    """``MAJOR:MINOR:INODE`` of a ``/proc/locks`` line (device numbers in hex)."""
    try:
        major, minor, inode = field.split(":")
        return int(major, 16), int(minor, 16), int(inode)
    except ValueError:
        return None
