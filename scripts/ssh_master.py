"""One ssh connection per lane run: the shared connection's lifetime.

Every ssh of a run (the listing at parse time, the link checks and the rsyncs of its
jobs, the exposure lane's watch between runs) goes through one OpenSSH master
connection (``ControlMaster``/``ControlPath``): one authentication, one TCP
handshake, instead of one per command (several round trips across the WAN to the
mountain, and 0.3 s of CPU on loopback).

The master is a child of the cron entry (``ssh -M -N``, ``ControlPersist=no``), told
by the kernel to die with it (``PR_SET_PDEATHSIG``): an ssh master dies with its run,
even one killed with SIGKILL. It is closed (``ssh -O exit``) when the lane's run
ends. A supervising thread replaces a master that dies; meanwhile a command finds no
master and connects on its own (``ControlMaster=no``), and a command the dying
master was serving runs again (`scripts.remote.run_remote`): a dead master is never
an exposure's failure.

Its control socket lives in ``STATE/.ssh`` (scripts/state_layout.py), a directory
private to the workflow's user (0700): whoever can open the socket can run commands
at the mountain as that user. The socket's name is a short digest, since a unix
socket's path is limited to 107 bytes (and ssh first binds a name 17 bytes longer).
A state directory too deep for that (a site's project paths, or pytest's) puts the
socket in a fresh private directory of the temporary directory instead
(``tempfile.mkdtemp``: made 0700 by this run, never an existing one), removed when the
run ends. An unsafe ``.ssh`` directory, or no short enough place at all, runs without
sharing, as before, with one line in the log saying why.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import stat
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from scripts.commands import die_with, run
from scripts.remote import ENV_CONTROL, LOCAL, master_identity, ssh_command
from scripts.state_layout import ssh_control_path, ssh_directory

log = logging.getLogger("desitransfer.ssh")
#: sun_path holds 108 bytes with the final NUL; ssh binds PATH + "." + 16 characters
#: first, then links it to PATH.
SOCKET_PATH_MAX = 107 - 17
#: Characters a control path may hold: it goes into ssh's -o and rsync's -e unquoted.
_PLAIN = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789/._-+,")
#: Longest wait between two attempts to open a master to a host that refuses it.
MAX_BACKOFF = 30.0


def control_key(remote: dict, lane: str) -> str:
    """The socket's short name: a digest of the host, the ssh command and the lane
    (each lane's run has its own connection; closing one never cuts the other's)."""
    text = json.dumps([remote["host"], list(remote["ssh"]), lane])
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()[:12]


def too_long(control: Path) -> bool:
    """Whether a unix socket cannot be bound at `control`."""
    return len(os.fsencode(control)) > SOCKET_PATH_MAX


def sharing_refused(control: Path) -> str | None:
    """Why ssh cannot share a connection through `control` (one line), or None."""
    text = os.fsencode(control)
    if too_long(control):
        return (f"{control} is {len(text)} bytes, longer than a unix socket's path may"
                f" be ({SOCKET_PATH_MAX}); use a shorter state directory")
    if not set(str(control)) <= _PLAIN:
        return f"{control!r} holds characters ssh's options cannot carry"
    return None


def private_directory(state: str | os.PathLike) -> str | None:
    """Make ``STATE/.ssh`` (0700) if needed; why it cannot be used (one line), or None.

    It must be a real directory of this user's, open to nobody else: one planted by
    another user of the group (a symbolic link, a directory of theirs) is refused.
    """
    where = ssh_directory(state)
    try:
        where.mkdir(mode=0o700, exist_ok=True)
        info = os.lstat(where)
    except OSError as err:
        return f"{where}: {err.strerror}"
    if not stat.S_ISDIR(info.st_mode):
        return f"{where} is not a directory (a symbolic link?): remove it"
    if info.st_uid != os.geteuid():
        return f"{where} belongs to user {info.st_uid}, not to this one: remove it"
    if stat.S_IMODE(info.st_mode) & 0o077:
        os.chmod(where, 0o700)  # our own: made private again
    return None


#: The private directories of sockets that cannot live in STATE/.ssh.
SCRATCH_PREFIX = "desitransfer-ssh-"
#: A run's private socket directory left behind (the run was SIGKILLed) is removed
#: by a later run once it is this old and serves no master.
SCRATCH_STALE = 86400


def sweep_scratch(now: float) -> None:
    """Remove this user's socket directories that killed runs left in TMPDIR."""
    base = Path(tempfile.gettempdir())
    try:
        names = [n for n in os.listdir(base) if n.startswith(SCRATCH_PREFIX)]
    except OSError:
        return
    for name in names:
        where = base / name
        try:
            info = os.lstat(where)
            if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid() or \
                    now - info.st_mtime < SCRATCH_STALE or \
                    any(master_identity(str(s)) is not None for s in where.iterdir()):
                continue
        except OSError:
            continue
        shutil.rmtree(where, ignore_errors=True)


def short_control_path(key: str) -> tuple[Path, Path] | None:
    """A control socket in a fresh private directory of the temporary directory, for a
    state directory too deep to hold one: (socket, its directory), or None."""
    sweep_scratch(time.time())
    try:
        where = Path(tempfile.mkdtemp(prefix=SCRATCH_PREFIX))  # 0700, new
    except OSError:
        return None
    control = where / key
    if sharing_refused(control):
        where.rmdir()
        return None
    return control, where


class SharedConnection:
    """The master connection of one lane's run, and the thread that replaces it."""

    def __init__(self, remote: dict, control: Path, ready_timeout: float,
                 scratch: Path | None = None):
        self.remote = remote
        self.control = str(control)
        self.scratch = scratch  # a private directory of this run's own, removed at close
        self.ready_timeout = ready_timeout
        self.opened = 0  # masters started, for the log
        self._stop = threading.Event()
        self._started = threading.Event()
        self._process: subprocess.Popen | None = None
        self._thread = threading.Thread(target=self._supervise, name="ssh-master",
                                        daemon=True)

    def master_command(self) -> list[str]:
        """``ssh -M -N``: a master and nothing else, in the foreground (no
        ControlPersist: it must stay this process's child to die with it)."""
        ssh = ssh_command(self.remote, control="")
        # ssh takes the first value of an option: ours first, but for the keep-alive
        # (a dead link ends the master, and the supervisor opens a new one), which
        # the configured command may set.
        return [ssh[0], "-M", "-N", "-o", "ControlMaster=yes", "-o", "ControlPersist=no",
                "-o", f"ControlPath={self.control}", *ssh[1:],
                "-o", "ServerAliveInterval=30", self.remote["host"]]

    def start(self) -> None:
        """Open the master and wait (at most `ready_timeout` s) until it serves; a run
        that starts before then connects on its own, as without sharing."""
        self._thread.start()
        deadline = time.monotonic() + self.ready_timeout
        self._started.wait(self.ready_timeout)
        while time.monotonic() < deadline:
            process = self._process
            if master_identity(self.control) is not None:
                return
            if process is not None and process.poll() is not None:
                return  # it failed: the supervisor tries again, commands go alone
            time.sleep(0.02)

    def _supervise(self) -> None:
        """Run masters one after another until `stop`. Started from this thread, a
        master is killed by the kernel when this thread (or the whole run) ends."""
        backoff = 1.0
        while not self._stop.is_set():
            self._remove_stale()
            opened = time.monotonic()
            try:
                self._process = subprocess.Popen(
                    self.master_command(), stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                    errors="replace", start_new_session=True,
                    preexec_fn=die_with(os.getpid()))
            except OSError as err:
                log.error("cannot start ssh for a shared connection: %s", err)
                self._started.set()
                return
            self.opened += 1
            self._started.set()
            _, err = self._process.communicate()
            if self._stop.is_set():
                return
            lived = time.monotonic() - opened
            detail = (err.strip().splitlines() or ["no message"])[-1][:300]
            log.warning("the shared ssh connection to %s ended after %.0f s (status %s: %s);"
                        " opening a new one", self.remote["host"], lived,
                        self._process.returncode, detail)
            # A master that keeps failing at once (the host refuses): do not hammer it.
            backoff = 1.0 if lived > MAX_BACKOFF else min(MAX_BACKOFF, backoff * 2)
            self._stop.wait(0 if lived > MAX_BACKOFF else backoff / 2)

    def _remove_stale(self) -> None:
        """A killed master leaves its socket behind; ssh will not bind over it."""
        try:
            if stat.S_ISSOCK(os.lstat(self.control).st_mode) and \
                    master_identity(self.control) is None:
                os.unlink(self.control)
        except FileNotFoundError:
            pass
        except OSError as err:
            log.warning("cannot remove the stale ssh socket %s: %s", self.control, err)

    def close(self) -> None:
        """End the master (``ssh -O exit``, then the process itself) and its thread."""
        self._stop.set()
        process = self._process
        if process is not None and process.poll() is None:
            run([*ssh_command(self.remote, control=""), "-o",
                 f"ControlPath={self.control}", "-O", "exit", self.remote["host"]],
                timeout=10)
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
        self._thread.join(timeout=15)
        self._remove_stale()
        if self.scratch is not None:
            shutil.rmtree(self.scratch, ignore_errors=True)


class shared_connection:  # noqa: N801 (used as a context manager, like open)
    """``with shared_connection(config, lane):`` the lane's runs share one ssh
    connection; the runs it starts find it through ``DESITRANSFER_SSH_CONTROL``.

    Nothing is shared for a local mountain, or when the socket cannot be made safely
    (the reason is logged once); the runs then work exactly as without it.
    """

    def __init__(self, config: dict, lane: str):
        self.config, self.lane = config, lane
        self.connection: SharedConnection | None = None

    def __enter__(self) -> SharedConnection | None:
        remote, state = self.config.get("remote") or {}, self.config.get("state")
        if remote.get("host") in (None, LOCAL) or not state:
            return None
        try:
            control = ssh_control_path(state, control_key(remote, self.lane))
            ready = min(30.0, float(remote["timeout"]))
        except (KeyError, TypeError, ValueError):  # refused by the run itself, in one line
            return None
        scratch = None
        if sharing_refused(control):
            control, scratch = short_control_path(control.name) or (control, None)
        refused = sharing_refused(control) or (scratch is None and private_directory(state))
        if refused:
            log.error("ssh connections are not shared: %s", refused)
            return None
        self.connection = SharedConnection(remote, control, ready_timeout=ready,
                                           scratch=scratch)
        self.connection.start()
        os.environ[ENV_CONTROL] = self.connection.control
        return self.connection

    def __exit__(self, *exc) -> None:
        if self.connection is not None:
            os.environ.pop(ENV_CONTROL, None)
            self.connection.close()
            log.info("the %s lane's shared ssh connection is closed (%d opened)",
                     self.lane, self.connection.opened)
