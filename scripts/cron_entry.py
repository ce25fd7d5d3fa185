#!/usr/bin/env python3
"""The cron entry: run the workflow once, safely, from cron.

    scripts/cron_entry.py [CONFIG] [SNAKEMAKE ARGS...]

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

from scripts.alerts import (
    Problem,
    count_unreachable,
    listing_failures,
    send_alerts,
    state_problems,
)
from scripts.configuration import ConfigurationError, load_yaml, with_defaults
from scripts.run_lock import ENV_FD, lock_path, try_lock

log = logging.getLogger("desitransfer.cron")
#: Snakemake's own run logs kept in .snakemake/log.
KEEP_SNAKEMAKE_LOGS = 50
LOG_BYTES = 10 * 2**20
LOG_BACKUPS = 10


def setup_logging(directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    handler = RotatingFileHandler(directory / "desi_transfer.log", maxBytes=LOG_BYTES,
                                  backupCount=LOG_BACKUPS)
    formatter = logging.Formatter("%(asctime)sZ %(levelname)s %(message)s", "%Y-%m-%dT%H:%M:%S")
    formatter.converter = time.gmtime
    handler.setFormatter(formatter)
    # The parent logger: the alerts module's records go to the same file.
    parent = logging.getLogger("desitransfer")
    parent.addHandler(handler)
    parent.setLevel(logging.INFO)


def prune_snakemake_logs(workdir: Path, keep: int = KEEP_SNAKEMAKE_LOGS) -> None:
    """Snakemake adds a log file on every run; keep the newest `keep`."""
    logs = sorted((workdir / ".snakemake" / "log").glob("*.snakemake.log"))
    for path in logs[:-keep] if keep else logs:
        path.unlink(missing_ok=True)


def alert(config: dict, config_file: Path, state: Path, run_start: float,
          stderr: str) -> None:
    """Mail what needs a person; never let a mail problem fail the transfer."""
    streams = list(config.get("streams") or {})
    problems = state_problems(state, streams)
    unreachable = listing_failures(state, streams, since=run_start)
    runs = count_unreachable(state, bool(unreachable))
    if runs >= config["alerts"]["unreachable_runs"]:
        host = config.get("remote", {}).get("host", "?")
        problems.append(Problem(
            "all streams", host, "listing", "mountain unreachable",
            f"{runs} consecutive runs could not list the mountain ({unreachable[0]}). Check the"
            " host, the network and the ssh keys; transfers resume by themselves."))
    config_errors = [line for line in stderr.splitlines()
                     if line.startswith("desitransfer:") and str(config_file) in line]
    if config_errors:
        problems.append(Problem("all streams", str(config_file), "configuration",
                                "invalid configuration",
                                f"{config_errors[0]}. Nothing is transferred until it is fixed."))
    try:
        sent = send_alerts(state, config["alerts"], problems)
    except OSError as err:  # the ledger's disk: log, never fail the transfer for it
        log.error("alerts not processed: %s", err)
        return
    if sent["new"] or sent["resolved"]:
        log.info("alerts: %d new, %d resolved", sent["new"], sent["resolved"])


def main(argv: list[str]) -> int:
    os.umask(0o027)  # lock, log and state files: never writable by other users
    config_file = Path(argv[0]) if argv and not argv[0].startswith("-") else REPO / "config.yaml"
    extra = argv[1:] if argv and not argv[0].startswith("-") else argv
    try:
        config = with_defaults(load_yaml(config_file))
    except ConfigurationError as err:
        print(f"desitransfer: {err}", file=sys.stderr)
        return 2
    state = Path(config.get("state") or "state")
    setup_logging(Path(config.get("logs") or state / "logs"))
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
               *extra, "--configfile", str(config_file)]
    log.info("starting: %s", " ".join(command))
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
