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
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import shutil
import sys
from collections.abc import Callable
from functools import cached_property
from types import SimpleNamespace
from typing import Any, NoReturn

from scripts import __version__, joblog
from scripts.markers import read_failure, write_failure

log = logging.getLogger("job")

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
    """Run `work(sm)` as the job of Snakemake object `sm`; exit 0 only on success."""
    marker = sm.output[0]
    try:
        debug = bool(sm.config.get("debug"))
    except (OSError, ValueError):  # no readable configuration: `work` records why
        debug = False
    joblog.setup(sm.log[0], level=logging.DEBUG if debug else logging.INFO, marker=marker)
    log.info("%s %s (desitransfer-workflow %s%s)", sm.rule, "/".join(sm.wildcards),
             __version__, ", debug" if debug else "")
    try:
        ok = work(sm)
    except Exception as error:  # noqa: BLE001 (the one place every failure is recorded)
        _traceback_to_log_file()
        reason = describe_exception(error)
        attempts = (read_failure(marker) or {}).get("attempts", 0) + 1
        write_failure(marker, reason, attempts, exception=type(error).__name__)
        log.error("%s failed: %s", sm.rule, reason)
        ok = False
    logging.shutdown()
    sys.exit(0 if ok else 1)


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
        self.config_file = args.config
        self.wildcards = Wildcards({name: value for name in ("stream", "night", "expid",
                                                             "index")
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
    for name in ("stream", "night", "expid", "index", "published", "exposures", "held"):
        parser.add_argument(f"--{name}")
    return Job(parser.parse_args(argv))

