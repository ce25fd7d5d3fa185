#!/usr/bin/env python3
"""The cron entry: run the workflow once, safely, from cron.

    scripts/cron_entry.py [--debug] [CONFIG] [SNAKEMAKE ARGS...]
    scripts/cron_entry.py --version

CONFIG defaults to the ``config.yaml`` beside the Snakefile; further arguments go to
Snakemake. The entry exits 0 at once when the kill file exists or when another run
holds the lock, clears what a run killed with SIGKILL left behind, runs Snakemake with
the default profile, logs to a rotating file, and exits non-zero with a short summary
on stderr only when something failed, so that cron's own mail carries real problems.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from logging.handlers import RotatingFileHandler
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from scripts import __version__
from scripts.alerts import send_alerts
from scripts.configuration import ConfigurationError, get_now, load_yaml, with_defaults
from scripts.joblog import file_handler
from scripts.status.problems import all_problems, run_problems
from scripts.status.report import rebuild_after_run
from scripts.status.run_records import count_unreachable, listing_failures, record_configuration
from scripts.run_lock import ENV_FD, lock_path, try_lock

log = logging.getLogger("desitransfer.cron")
#: Snakemake's own run logs kept in .snakemake/log.
KEEP_SNAKEMAKE_LOGS = 50
LOG_BYTES = 10 * 2**20
LOG_BACKUPS = 10


def setup_logging(directory: Path, debug: bool = False) -> None:
    """The cron log, rotated; a name with any bytes is written escaped, never lost."""
    directory.mkdir(parents=True, exist_ok=True)
    handler = file_handler(directory / "desi_transfer.log", RotatingFileHandler,
                           maxBytes=LOG_BYTES, backupCount=LOG_BACKUPS)
    # The parent logger: the alerts module's records go to the same file.
    parent = logging.getLogger("desitransfer")
    parent.addHandler(handler)
    parent.setLevel(logging.DEBUG if debug else logging.INFO)


def prune_snakemake_logs(workdir: Path, keep: int = KEEP_SNAKEMAKE_LOGS) -> None:
    """Snakemake adds a log file on every run; keep the newest `keep`."""
    logs = sorted((workdir / ".snakemake" / "log").glob("*.snakemake.log"))
    for path in logs[:-keep] if keep else logs:
        path.unlink(missing_ok=True)


def configuration_error(stderr: str, config_file: Path) -> str | None:
    """The line in which the workflow refused the configuration, if it did."""
    return next((line for line in stderr.splitlines()
                 if line.startswith("desitransfer:") and str(config_file) in line), None)


def alert(config: dict, config_file: Path, state: Path, run_start: float,
          stderr: str) -> None:
    """Record the run's own problems, then mail what needs a person (the problems the
    status page and ``scripts.status --failures`` show); never fail the transfer for it.
    """
    refused = configuration_error(stderr, config_file)
    try:
        record_configuration(state, str(config_file), refused)
        streams = list(config.get("streams") or {})
        # A refused configuration lists nothing: the unreachable count stays as it was.
        count_unreachable(state, None if refused else
                          listing_failures(state, streams, since=run_start))
        if refused:  # Snakemake stopped before it could rebuild the page: show it there
            log.info(rebuild_after_run(config))
        problems = current_problems(config, refused)
        sent = send_alerts(state, config["alerts"], problems)
    except OSError as err:  # the state's disk: log, never fail the transfer for it
        log.error("alerts not processed: %s", err)
        return
    if sent["new"] or sent["resolved"]:
        log.info("alerts: %d new, %d resolved", sent["new"], sent["resolved"])


def current_problems(config: dict, refused: str | None) -> list:
    """Everything that needs a person; with a refused configuration that the status
    code cannot read either, at least the run's own problems (the refusal itself)."""
    try:
        return all_problems(config, get_now(config))
    except (ConfigurationError, KeyError, TypeError, ValueError):
        if refused is None:
            raise
        return run_problems(config)


def own_options(argv: list[str]) -> tuple[list[str], bool, bool]:
    """The cron entry's own switches, taken out of `argv`: (rest, --version, --debug).

    ``--debug`` logs every command line and its outcome, in the cron log and in every
    rule log (it sets the ``debug`` key); ``-d`` stays Snakemake's ``--directory``.
    """
    rest = [a for a in argv if a not in ("-V", "--version", "--debug")]
    return rest, any(a in ("-V", "--version") for a in argv), "--debug" in argv


def main(argv: list[str]) -> int:
    argv, version, debug = own_options(argv)
    if version:
        print(f"desitransfer-workflow {__version__}")
        return 0
    os.umask(0o027)  # lock, log and state files: never writable by other users
    config_file = Path(argv[0]) if argv and not argv[0].startswith("-") else REPO / "config.yaml"
    extra = argv[1:] if argv and not argv[0].startswith("-") else argv
    try:
        config = with_defaults(load_yaml(config_file))
    except ConfigurationError as err:
        print(f"desitransfer: {err}", file=sys.stderr)
        return 2
    state = Path(config.get("state") or "state")
    debug = debug or config.get("debug") is True
    setup_logging(Path(config.get("logs") or state / "logs"), debug)
    kill_file = Path(os.path.expanduser(config["kill_file"]))
    if kill_file.exists():
        log.info("%s detected, not running (remove it to resume transfers).", kill_file)
        return 0
    lock = try_lock(state)
    if lock is None:
        log.info("another run holds %s; exiting.", lock_path(state))
        return 0
    workdir = Path.cwd()
    # --nolock: the run lock held here (and handed down) is the one that counts.
    command = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--nolock",
               *extra, *(["--config", "debug=True"] if debug else []),
               "--configfile", str(config_file)]
    log.info("starting (desitransfer-workflow %s): %s", __version__, " ".join(command))
    run_start = time.time()
    start = time.monotonic()
    result = subprocess.run(command, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                            pass_fds=(lock.fileno(),),
                            env={**os.environ, ENV_FD: str(lock.fileno())})
    for line in (result.stdout + result.stderr).splitlines():
        if line.strip():
            log.info("| %s", line)
    prune_snakemake_logs(workdir)
    alert(config, config_file, state, run_start, result.stderr)
    seconds = time.monotonic() - start
    if result.returncode != 0:
        errors = [line for line in result.stderr.splitlines()
                  if line.startswith(("desitransfer:", "Error in rule"))
                  or " ERROR " in line]
        summary = "\n".join(errors[:20]) or "\n".join(result.stderr.splitlines()[-20:])
        log.error("run failed (status %d) after %.0f s", result.returncode, seconds)
        log_file = logging.getLogger("desitransfer").handlers[0].baseFilename
        print(f"desitransfer run failed (status {result.returncode}); see {log_file}\n{summary}",
              file=sys.stderr)
        return 1
    log.info("run finished in %.1f s", seconds)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
