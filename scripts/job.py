"""The one way a rule script runs: whatever happens inside it, the job ends with its
marker or its failure record, one log line, and the right exit status.

Every rule script ends with ``run_job(parse_job(sys.argv[1:]), work)``: a rule runs it as
``python -m scripts.MODULE --config FILE --rule RULE --output MARKER --log LOG ...``
(see ``get_job`` in rules/common.smk), so the job process never imports Snakemake
(about half the cost of a ``script:`` job); `parse_job` gives `work` an object with
the parts of Snakemake's ``snakemake`` object the scripts use. An exception that escapes
`work` (a full or read-only disk, a permission, a bug) still leaves
``<marker>.failed`` with a reason that names the root cause in one line, so that the
status page, ``scripts.status --failures`` and the alerts see it; the traceback goes to
the rule's log only.

Every job has a wall-clock limit (``--time-limit``: scripts/time_limits.py, the same
number as Slurm's runtime). `run_job` is a thin supervisor: it forks the worker that
does the work and waits for it, for the run that started it (the Snakemake process,
``DESITRANSFER_RUN_PID``) and for the limit, whichever comes first. A worker past the
limit, hung or stopped (``kill -STOP``), is ended with SIGKILL (which ends a stopped
process too; its commands die with it, see scripts/commands.py) and the job is recorded
as failed, "timed out after N s": the lane goes on. A run that dies (the cron entry and
its Snakemake killed with SIGKILL) takes its jobs with it: no htar of a killed run keeps
writing while the next run starts another. The worker watches its supervisor too: a
stopped supervisor cannot end it, so past the limit (and a grace) the worker records
the timeout itself and ends both.
"""

from __future__ import annotations

import argparse
import ctypes
import errno
import json
import logging
import os
import select
import shutil
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from functools import cached_property
from types import SimpleNamespace
from typing import Any, NoReturn

from scripts import __version__, joblog
from scripts.markers import read_failure, write_failure

log = logging.getLogger("job")
#: The Snakemake process a job belongs to, as ``HOST:PID`` (set when the Snakefile is
#: parsed, inherited by the jobs it starts).
ENV_RUN_PID = "DESITRANSFER_RUN_PID"
#: Seconds past the limit after which a worker whose supervisor did not end it (a
#: stopped supervisor) ends itself.
WORKER_GRACE = 5.0
_PR_SET_PDEATHSIG = 1
_LIBC = ctypes.CDLL(None, use_errno=True)

_ERRNO_WORDS = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.ENOENT: "no such file or directory",
    errno.EIO: "input/output error",
}


def describe_exception(error: BaseException) -> str:
    """One line naming the root cause of `error`, for a failure record."""
    if isinstance(error, shutil.Error) and error.args and isinstance(error.args[0], list):
        first = error.args[0][0] if error.args[0] else ("", "", str(error))
        return f"copy failed: {first[-1]}"
    if isinstance(error, OSError) and error.errno is not None:
        words = _ERRNO_WORDS.get(error.errno, error.strerror or str(error))
        where = error.filename if error.filename is not None else ""
        return f"{words} ({where})" if where else words
    return f"unexpected {type(error).__name__}: {error} (a bug: the rule log has the traceback)"


def _traceback_to_log_file() -> None:
    """The traceback of the exception being handled, for the rule's log file only."""
    record = log.makeRecord(log.name, logging.ERROR, __file__, 0,
                            "traceback of the failure below:", (), sys.exc_info())
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


def run_job(sm: Any, work: Callable[[Any], bool]) -> NoReturn:
    """Run `work(sm)` as the job of Snakemake object `sm`; exit 0 only on success.

    With a time limit (``sm.time_limit``, seconds) the work runs in a supervised worker
    (see the module's docstring); without one, here.
    """
    marker = sm.output[0]
    try:
        debug = bool(sm.config.get("debug"))
    except (OSError, ValueError):  # no readable configuration: `work` records why
        debug = False
    joblog.setup(sm.log[0], level=logging.DEBUG if debug else logging.INFO, marker=marker)
    log.info("%s %s (desitransfer-workflow %s%s)", sm.rule, "/".join(sm.wildcards),
             __version__, ", debug" if debug else "")
    limit = getattr(sm, "time_limit", None)
    if limit is None:
        ok = _work(sm, work)
    else:
        ok = _supervise(sm, work, limit)
    logging.shutdown()
    sys.exit(0 if ok else 1)


def _work(sm: Any, work: Callable[[Any], bool]) -> bool:
    """`work(sm)`, every exception recorded as the job's failure."""
    marker = sm.output[0]
    try:
        return work(sm)
    except Exception as error:  # noqa: BLE001 (the one place every failure is recorded)
        _traceback_to_log_file()
        reason = describe_exception(error)
        attempts = (read_failure(marker) or {}).get("attempts", 0) + 1
        write_failure(marker, reason, attempts, exception=type(error).__name__)
        log.error("%s failed: %s", sm.rule, reason)
        return False


def record_timeout(marker: str, rule: str, limit: float) -> None:
    """The job's failure record: timed out after `limit` seconds (what the failure
    record held before is kept, one more attempt counted)."""
    previous = read_failure(marker) or {}
    extra = {k: v for k, v in previous.items() if k not in ("time", "reason", "attempts")}
    extra.update(timed_out=True, exhausted=previous.get("exhausted", False))
    reason = f"{rule} timed out after {limit:.0f} s (its wall-clock limit; a hung or" \
             " stopped job)"
    write_failure(marker, reason, previous.get("attempts", 0) + 1, **extra)
    log.error("%s", reason)


def run_process() -> int | None:
    """The pid of the Snakemake process this job belongs to, if it runs on this host."""
    host, _, pid = os.environ.get(ENV_RUN_PID, "").rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return None
    return int(pid)


def _pidfd(pid: int | None) -> int | None:
    if pid is None:
        return None
    try:
        return os.pidfd_open(pid)
    except (ProcessLookupError, OSError):
        return None


def _supervise(sm: Any, work: Callable[[Any], bool], limit: float) -> bool:
    """Fork the worker; end it at the limit or when the run dies (module docstring)."""
    supervisor = os.getpid()
    run_fd = _pidfd(run_process())
    if run_process() is not None and run_fd is None:
        log.error("the run that started %s has already ended: not starting it", sm.rule)
        return False
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        _worker(sm, work, limit, supervisor)
    worker_fd = os.pidfd_open(pid)
    deadline = time.monotonic() + limit
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                os.kill(pid, signal.SIGKILL)  # ends a stopped process too
                os.waitpid(pid, 0)
                record_timeout(sm.output[0], sm.rule, limit)
                return False
            watched = [worker_fd] + ([run_fd] if run_fd is not None else [])
            ready, _, _ = select.select(watched, [], [], left)
            if worker_fd in ready:
                _, status = os.waitpid(pid, 0)
                return os.waitstatus_to_exitcode(status) == 0
            if run_fd is not None and run_fd in ready:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                log.error("the run that started %s ended before it: the job is ended with"
                          " it (the next run does it again)", sm.rule)
                return False
    finally:
        os.close(worker_fd)
        if run_fd is not None:
            os.close(run_fd)


def _worker(sm: Any, work: Callable[[Any], bool], limit: float, supervisor: int) -> NoReturn:
    """The forked worker: dies with its supervisor; past the limit and a grace (its
    supervisor stopped), records the timeout itself and ends both."""
    try:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != supervisor:
            os._exit(1)

        def expire() -> None:
            from scripts.commands import kill_running

            try:
                record_timeout(sm.output[0], sm.rule, limit)
                kill_running()
            finally:
                try:
                    os.kill(supervisor, signal.SIGKILL)
                finally:
                    os._exit(1)

        timer = threading.Timer(limit + WORKER_GRACE, expire)
        timer.daemon = True
        timer.start()
        ok = _work(sm, work)
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        # A stopped supervisor would never reap this worker: the run would hang.
        os.kill(supervisor, signal.SIGCONT)
    except BaseException:  # noqa: BLE001 (a forked child never returns into the caller)
        os._exit(1)
    os._exit(0 if ok else 1)


class Wildcards(list):
    """A job's wildcard values in order, as Snakemake gives them, also read by name
    (``wildcards.night``, ``wildcards.get("index", 0)``)."""

    def __init__(self, named: dict[str, str]):
        super().__init__(named.values())
        self._named = dict(named)

    def __getattr__(self, name: str) -> str:
        try:
            return self.__dict__["_named"][name]
        except KeyError:
            raise AttributeError(name) from None

    def get(self, name: str, default: Any = None) -> Any:
        return self._named.get(name, default)


class Job:
    """What a rule script needs of its job, from the command line the rule gives it."""

    def __init__(self, args: argparse.Namespace):
        self.rule = args.rule
        self.output = [args.output]
        self.log = [args.log]
        self.threads = args.threads
        self.time_limit = args.time_limit
        self.config_file = args.config
        self.wildcards = Wildcards({name: value for name in ("stream", "night", "expid",
                                                             "index", "day")
                                    if (value := getattr(args, name)) is not None})
        self.params = SimpleNamespace(published=args.published or None,
                                      exposures=_names(args.exposures),
                                      held=_names(args.held))

    @cached_property
    def config(self) -> dict:
        """The workflow's configuration, as the run that planned the job had it
        (read inside the job: a missing file leaves the job's failure record)."""
        with open(self.config_file) as f:
            return json.load(f)


def _names(value: str | None) -> list[str]:
    return [name for name in (value or "").split(",") if name]


def parse_job(argv: list[str]) -> Job:
    """The job described by the arguments a rule's command gives its script."""
    parser = argparse.ArgumentParser(prog="python -m scripts.MODULE",
                                     description="One job of the workflow (run by Snakemake).")
    parser.add_argument("--config", required=True, help="the run's configuration (JSON)")
    parser.add_argument("--rule", required=True)
    parser.add_argument("--output", required=True, help="the marker the job writes")
    parser.add_argument("--log", required=True)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--time-limit", type=float, default=None,
                        help="wall-clock limit of the job, seconds (none: unsupervised)")
    for name in ("stream", "night", "expid", "index", "day", "published", "exposures",
                 "held"):
        parser.add_argument(f"--{name}")
    return Job(parser.parse_args(argv))

