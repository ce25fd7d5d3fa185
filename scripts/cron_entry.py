#!/usr/bin/env python3
"""The cron entry: run the workflow's lanes once, safely, from cron.

    scripts/cron_entry.py [--debug] [CONFIG] [--lane exposures|nights] [SNAKEMAKE ARGS...]
    scripts/cron_entry.py [CONFIG] --plan [--lane exposures|nights]
    scripts/cron_entry.py --version

CONFIG defaults to ``$DESITRANSFER_CONFIG``, else the ``config.yaml`` beside the
Snakefile (scripts/configuration.py `find_configuration`, as every tool); the file read
is the log's first line (``--plan``: stderr's). Further arguments go to Snakemake.
Fresh data first: each lane (scripts/lanes.py) is a Snakemake run of its own behind
its own lock, and one invocation runs every lane whose lock is free, the exposure lane
first, so tonight's exposures never wait behind a backup or a
catch-up. The exposure lane plans a bounded number of exposures per run
(``exposures_per_run``) and runs again at once while more are pending, each run with a
fresh listing, so a backlog drains over many short runs. ``--lane`` restricts an
invocation to one lane (scrontab: one entry per lane).

The entry exits 0 at once when the kill file exists or when every lane is busy, runs
Snakemake with the default profile, logs to a rotating file, and exits non-zero with
a short summary on stderr only for news: a problem that needs a person and that the
last invocation did not know, or a run that failed leaving no record. A problem
already told, or a job failure still within its retries, leaves stderr empty, so
cron's own mail carries news only.
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from logging.handlers import RotatingFileHandler
from pathlib import Path
from typing import NoReturn

#: When this invocation started (cron started it a moment before): the watch's clock.
STARTED = time.monotonic()
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from scripts import __version__
from scripts.alerts import send_alerts
from scripts.configuration import (
    ANNOUNCEMENT,
    ConfigurationError,
    announce_configuration,
    find_configuration,
    get_now,
    read_configuration,
)
from scripts.joblog import file_handler
from scripts.status.problems import all_problems, lane_problems, run_problems
from scripts.status.report import page_shows, rebuild_after_run
from scripts.status.run_records import (
    count_empty_listings,
    count_unreachable,
    listing_failures,
    record_configuration,
)
from scripts.job_watchdog import Watchdog
from scripts.lanes import ENV_LANE, ENV_RUN, finish_activity, new_run_id, note_busy
from scripts.markers import read_record, write_json_atomic
from scripts.metrics import metrics_after_run
from scripts.plan import Plan
from scripts.preview import preview_kind
from scripts.run_lock import ENV_FD, LANES, RunLockRefused, lock_path, try_lock
from scripts.ssh_master import shared_connection
from scripts.state_layout import logs_directory, reported_path
from scripts.watch import last_listed, tonight_lister, watch, watch_settings

log = logging.getLogger("desitransfer.cron")
#: Snakemake's own run logs kept in .snakemake/log.
KEEP_SNAKEMAKE_LOGS = 50
LOG_BYTES = 10 * 2**20
LOG_BACKUPS = 10
#: Exposure-lane runs one invocation makes at most while a backlog drains (a guard: the
#: next cron invocation goes on).
MAX_ROUNDS = 100


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
                 if line.startswith("desitransfer:") and str(config_file) in line
                 and not line.startswith(ANNOUNCEMENT)), None)


def alert(config: dict, config_file: Path, state: Path, run_start: float,
          stderr: str) -> list | None:
    """Record the run's own problems, then mail what needs a person (the problems the
    status page and ``scripts.status --failures`` show); never fail the transfer for it.

    Returns the problems, or None when they could not be read.
    """
    refused = configuration_error(stderr, config_file)
    try:
        record_configuration(state, str(config_file), refused)
        streams = list(config.get("streams") or {})
        # A refused configuration lists nothing: the unreachable count stays as it was.
        count_unreachable(state, None if refused else
                          listing_failures(state, streams, since=run_start))
        if not refused:
            count_empty_listings(state, streams, since=run_start)
        if refused:  # Snakemake stopped before it could rebuild the page: show it there
            log.info(rebuild_after_run(config))
            log.info(metrics_after_run(config))
        problems = current_problems(config, refused)
        if not refused and not page_shows(config, problems):
            # a problem no run's records changed (a stale checksum lock, a stalled
            # lane) or one that cleared: the page must say what the mail says
            log.info(rebuild_after_run(config))
        sent = send_alerts(state, config["alerts"], problems)
    except OSError as err:  # the state's disk: log, never fail the transfer for it
        log.error("alerts not processed: %s", err)
        return None
    except Exception as err:  # noqa: BLE001 (the failure path itself must never raise)
        log.exception("alerts not processed: %s: %s", type(err).__name__, err)
        return None
    if sent["new"] or sent["resolved"]:
        log.info("alerts: %d new, %d resolved", sent["new"], sent["resolved"])
    return problems


def current_problems(config: dict, refused: str | None) -> list:
    """Everything that needs a person; with a refused configuration that the status
    code cannot read either, at least the run's own problems (the refusal itself)."""
    try:
        return all_problems(config, get_now(config))
    except Exception:  # a refused value (lookback_nights: 10000000) may break any reader
        if refused is None:
            raise
        return run_problems(config)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise ValueError(message)  # main() says it in one line


def parse_arguments(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """The cron entry's own options, and the arguments for Snakemake.

    Returns the options (``config``: CONFIG, the first argument that is not an option,
    else ``$DESITRANSFER_CONFIG``, else the ``config.yaml`` beside the Snakefile, and
    ``origin``, which of them; ``lane``; ``debug``) and, in their
    order, the arguments that are not the entry's own: they go to Snakemake.
    ``--version`` prints the version and exits.

    Raises
    ------
    ValueError
        An option of the entry's with a wrong value (``--lane x``); the message is
        one line.
    """
    parser = _Parser(prog="scripts/cron_entry.py", allow_abbrev=False,
                     description="Run the workflow's lanes once, as cron does; further "
                                 "arguments go to Snakemake.")
    parser.add_argument("-V", "--version", action="version",
                        version=f"desitransfer-workflow {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help="log every command line and its outcome, in the cron log and"
                             " in every rule log (sets the configuration's debug key)")
    parser.add_argument("--lane", choices=LANES,
                        help="run this lane only (scrontab: one entry per lane)")
    parser.add_argument("--plan", action="store_true",
                        help="print what the next invocation would do, lane by lane, and"
                             " change nothing")
    options, rest = parser.parse_known_args(argv)
    # -d stays Snakemake's --directory; CONFIG is the first argument, if not an option.
    given = rest.pop(0) if rest and not rest[0].startswith("-") else None
    options.config, options.origin = find_configuration(given)
    return options, rest


def relayed_level(line: str, previous: int) -> int:
    """The cron log's level of a line of Snakemake's output: ERROR for a job's error
    (``Error in rule`` and the indented lines that follow it), a refusal or a traceback;
    INFO for the rest."""
    if line.startswith(("Error in rule", "Exiting because", "Traceback", "MissingOutput")) \
            or " ERROR " in line \
            or (line.startswith("desitransfer:") and not line.startswith(ANNOUNCEMENT)):
        return logging.ERROR
    return previous if line.startswith((" ", "\t")) else logging.INFO


def with_overrides(config: dict, extra: list[str]) -> dict:
    """`config` with the ``--config KEY=VALUE ...`` among Snakemake's arguments applied
    as Snakemake applies them: the entry plans from the configuration its runs use.

    Raises
    ------
    ValueError
        An entry Snakemake refuses too (one line).
    """
    entries, taking = [], False
    for arg in extra:
        if arg in ("--config", "-C"):
            taking = True
        elif arg.startswith("--config="):
            entries.append(arg.split("=", 1)[1])
            taking = True
        elif taking and not arg.startswith("-"):
            entries.append(arg)
        else:
            taking = False
    if not entries:
        return config
    from snakemake.cli import parse_config
    from snakemake.utils import update_config

    update_config(config, parse_config(entries))
    return config


def run_lane(state: Path, lane: str, lock, run_id: str,
             command: list[str]) -> subprocess.CompletedProcess:
    """One Snakemake run (`command`) of `lane`, holding its lock (handed down as `lock`),
    its end recorded in the lane's activity record."""
    log.info("starting (desitransfer-workflow %s) the %s lane, run %s: %s", __version__, lane,
             run_id, " ".join(command))
    start = time.monotonic()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL, pass_fds=(lock.fileno(),),
                            env={**os.environ, ENV_FD: str(lock.fileno()), ENV_LANE: lane,
                                 ENV_RUN: run_id})
    with Watchdog(proc.pid):  # a job that cannot end itself is ended from here
        out, err = proc.communicate()
    result = subprocess.CompletedProcess(command, proc.returncode, out, err)
    level = logging.INFO
    for line in (result.stdout + result.stderr).splitlines():
        if line.strip():
            level = relayed_level(line, level)
            log.log(level, "| %s", line)
    log.info("the %s lane's run %s ended with status %d after %.1f s", lane, run_id,
             result.returncode, time.monotonic() - start)
    finish_activity(state, [lane], run_id, result.returncode)
    return result


def lane_plan(config: dict, config_file: Path, lane: str, run_id: str,
              preview: bool) -> Plan | None:
    """What the run `run_id` of `lane` does: the same observation (scripts/observe.py)
    and the same pure plan (scripts/plan.py) the run's own parse makes.

    The observation is the run's: its listing is cached for `run_id`, so the run's
    parse plans from that very listing (one listing a run, ``remote.listing_cache``
    permitting), and its lock is held, so no other run changes the exposure markers
    in between. A preview (``-n`` handed to Snakemake) plans as a preview: nothing
    written, not even the listing cache. None when the configuration cannot be planned
    from: the run itself then says why, in one line.
    """
    from scripts.next_run import plan_run

    try:
        return plan_run(config, config_file, lane, run_id, preview=preview)
    except ConfigurationError:
        return None


def unlisted_run(state: Path, lane: str, run_id: str, plan: Plan) -> subprocess.CompletedProcess:
    """A run whose plan could list no stream: it does not start Snakemake (whose parse
    would list again and stop with the same lines); it ends as a failed run."""
    lines = list(plan.unlisted.values())
    for line in lines:
        log.info("| %s", line)
    log.info("the %s lane's run %s does not start: no stream could be listed", lane, run_id)
    finish_activity(state, [lane], run_id, 1)
    return subprocess.CompletedProcess([], 1, "", "".join(f"{line}\n" for line in lines))


def nothing_listed(plan: Plan | None) -> bool:
    """Whether `plan` could list none of its streams (and has streams to list)."""
    return plan is not None and bool(plan.unlisted) and not plan.listed


def snakemake_command(config_file: Path, extra: list[str], debug: bool) -> list[str]:
    """The Snakemake command line every lane runs (the lane comes from the environment)."""
    # --nolock: the lane locks held here (and handed down) are the ones that count.
    return [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--nolock",
            *extra, *(["--config", "debug=True"] if debug else []),
            "--configfile", str(config_file)]


def drain_exposures(state: Path, config: dict, config_file: Path, lock, command: list[str],
                    kill_file: Path, given: str | None, invocation: str
                    ) -> tuple[list[subprocess.CompletedProcess], Plan | None]:
    """Run the exposure lane while its plan leaves listed exposures for the next run
    (`Plan.draining`; at most `MAX_ROUNDS` runs), each run with its own run id, and so
    its own listing, unless the caller handed one id down (`given`).

    Returns the runs' results and the last run's plan (None: not planned here).
    """
    results = []
    for round_ in range(1, MAX_ROUNDS + 1):
        run_id = given or f"{invocation}.{round_}"
        plan = lane_plan(config, config_file, "exposures", run_id,
                         preview=bool(preview_kind(command)))
        if nothing_listed(plan):
            results.append(unlisted_run(state, "exposures", run_id, plan))
            break
        result = run_lane(state, "exposures", lock, run_id, command)
        results.append(result)
        if result.returncode != 0 or plan is None or not plan.draining:
            break
        if kill_file.exists():
            log.info("%s detected, no further run.", kill_file)
            break
        log.info("more exposures are pending: the exposures lane runs again.")
    return results, plan


def watch_tonight(config: dict, config_file: Path, lock, command: list[str], kill_file: Path,
                  invocation: str, results: list[subprocess.CompletedProcess]
                  ) -> tuple[str, Plan | None] | None:
    """After the exposure lane's work, watch tonight until shortly before the next
    cron start (scripts/watch.py), running the lane for what appears; the runs go
    into `results`. Not in a preview, nor after a failed run.

    Returns the last run's id and plan, when the watch started a run.
    """
    settings = watch_settings(config)
    if settings is None or preview_kind(command) or not results or results[-1].returncode:
        return None
    state = Path(config["state"])
    last: list[tuple[str, Plan | None]] = []

    def run() -> bool:
        tag = f"{invocation}.w{len(last) + 1}"
        runs, plan = drain_exposures(state, config, config_file, lock, command, kill_file,
                                     None, tag)
        results.extend(runs)
        last.append((f"{tag}.{len(runs)}", plan))
        return all(result.returncode == 0 for result in runs)

    cron_interval, poll_interval = settings
    log.info("watching tonight every %g s until the next cron start", poll_interval)
    watched = watch(started=STARTED, cron_interval=cron_interval,
                    poll_interval=poll_interval, kill_file=kill_file,
                    list_tonight=tonight_lister(config), known=last_listed(config), run=run)
    log.info("stopped watching (%s) after %d run(s)", watched.reason, watched.runs)
    return last[-1] if last else None


def run_lanes(state: Path, config: dict, config_file: Path, lanes: Sequence[str],
              command: list[str], kill_file: Path, invocation: str
              ) -> list[subprocess.CompletedProcess]:
    """Run each of `lanes` whose lock is free, in order; the results of its Snakemake runs.

    A run id per Snakemake run: a run plans from a listing made after it started. The
    night lane shares the last exposure run's id (and so its listing, if recent), and
    waits when that run's plan could list no stream. A caller may hand one id down for
    all (a wrapper, a test): then they share it.
    """
    given = os.environ.get(ENV_RUN)
    run_id = given or f"{invocation}.0"
    results: list[subprocess.CompletedProcess] = []
    exposure_plan = None  # the plan of this invocation's last exposure-lane run
    for lane in lanes:
        if results and kill_file.exists():
            log.info("%s detected, the %s lane does not run.", kill_file, lane)
            break
        try:
            lock = try_lock(state, lane)
        except RunLockRefused as err:  # cron mails it; the lane's stall is alerted too
            log.error("the %s lane does not run: %s", lane, err)
            results.append(subprocess.CompletedProcess([], 1, "", f"desitransfer: {err}\n"))
            continue
        if lock is None:
            log.info("another run holds %s; the %s lane is busy, skipping it.",
                     lock_path(state, lane), lane)
            note_busy(state, lane)
            continue
        # A preview (-n handed to Snakemake) writes nothing, not even a socket.
        with lock, shared_connection({} if preview_kind(command) else config, lane):
            if lane == "exposures":
                runs, exposure_plan = drain_exposures(state, config, config_file, lock,
                                                      command, kill_file, given, invocation)
                run_id = given or f"{invocation}.{len(runs)}"
                results += runs
                if given is None:
                    last = watch_tonight(config, config_file, lock, command, kill_file,
                                         invocation, results)
                    run_id, exposure_plan = last or (run_id, exposure_plan)
            elif nothing_listed(exposure_plan):
                log.info("no stream could be listed: the nights lane waits for the next run.")
            else:
                results.append(run_lane(state, lane, lock, run_id, command))
    return results


def failure_summary(failed: list[subprocess.CompletedProcess]) -> str:
    """What cron mails for failed runs: their error lines, or the end of the first
    one's stderr when none is recognisable."""
    errors = list(dict.fromkeys(
        line for result in failed for line in result.stderr.splitlines()
        if line.startswith(("desitransfer:", "Error in rule")) or " ERROR " in line))
    return "\n".join(errors[:20]) or "\n".join(failed[0].stderr.splitlines()[-20:])


def unexplained_failures(failed: list[subprocess.CompletedProcess], config_file: Path,
                         listing_failed: bool) -> list[str]:
    """The summaries of failed runs that left no record a problem is read from: not a
    job's failure (each leaves its failure record), not a refused configuration, not
    a listing failure (recorded, mailed after ``alerts.unreachable_runs``)."""
    return [failure_summary([result]) for result in failed
            if "Error in rule" not in result.stderr and not listing_failed
            and configuration_error(result.stderr, config_file) is None]


def news(state: Path, items: dict[str, str]) -> list[str]:
    """The lines of `items` (key: line) that the last invocation did not know; the
    ledger then holds `items`. A problem that clears and comes back is news again."""
    path = reported_path(state)
    known = (read_record(path) or {}).get("keys") or []
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, {"keys": sorted(items)})
    return [line for key, line in items.items() if key not in known]


def report_outcome(results: list[subprocess.CompletedProcess], seconds: float,
                   state: Path, problems: list | None, unexplained: list[str]) -> int:
    """Log how the invocation ended; tell cron (stderr, exit 1) only what is news: a
    problem that needs a person and that the last invocation did not know, or a run
    that failed without any record to read a problem from. Problems already told,
    and job failures still within their retries, leave stderr empty: cron mails
    nothing. The exit status."""
    failed = [result for result in results if result.returncode != 0]
    if failed:
        log.error("run failed (status %d) after %.0f s", failed[0].returncode, seconds)
    else:
        log.info("run finished in %.1f s", seconds)
    if problems is None:  # they could not be read: every failure is news
        lines = [failure_summary(failed)] if failed else []
    else:
        items = {p.key: f"{p.stream} {p.item}: {p.label}: {p.reason}" for p in problems}
        items.update((f"run|{text.splitlines()[0]}", text) for text in unexplained if text)
        try:
            lines = news(state, items)
        except OSError as err:  # the state's disk: the news cannot be told apart
            log.error("cannot record what was reported: %s", err)
            lines = list(items.values())
    if not lines:
        return 0
    log_file = logging.getLogger("desitransfer").handlers[0].baseFilename
    print(f"desitransfer: {len(lines)} new problem(s); see {log_file} and"
          " `python -m scripts.status --failures`\n" + "\n".join(lines), file=sys.stderr)
    return 1


def print_plan(config: dict, config_file: Path, lanes: Sequence[str]) -> int:
    """``--plan``: what the next invocation would do (scripts/next_run.py); nothing is
    written, no log either. The plan goes to stdout (the configuration file to stderr,
    said by the caller)."""
    from scripts.next_run import show_plan

    try:
        status, lines = show_plan(config, config_file, lanes)
    except ConfigurationError as err:
        print(f"desitransfer: {err}", file=sys.stderr)
        return 2
    print("\n".join(lines))
    return status


def main(argv: list[str]) -> int:
    """Run the lanes once, as cron does; the exit status (see the module's docstring)."""
    try:
        options, extra = parse_arguments(argv)
    except ValueError as err:
        print(f"desitransfer: {err}", file=sys.stderr)
        return 2
    config_file, only_lane, debug = options.config, options.lane, options.debug
    os.umask(0o027)  # lock, log and state files: never writable by other users
    if options.plan:
        announce_configuration([config_file], options.origin)
    try:
        config = read_configuration(config_file, lambda loaded: with_overrides(loaded, extra))
    except (ConfigurationError, ValueError) as err:
        print(f"desitransfer: {err}", file=sys.stderr)
        return 2
    if options.plan:
        return print_plan(config, config_file, [only_lane] if only_lane else LANES)
    state = Path(config.get("state") or "state")
    debug = debug or config.get("debug") is True
    setup_logging(logs_directory(config), debug)
    log.info("configuration %s (%s)", config_file.absolute(), options.origin)
    kill_file = Path(os.path.expanduser(config["kill_file"]))
    if kill_file.exists():
        log.info("%s detected, not running (remove it to resume transfers).", kill_file)
        return 0
    command = snakemake_command(config_file, extra, debug)
    invocation = new_run_id()
    run_start = time.time()
    start = time.monotonic()
    results = run_lanes(state, config, config_file, [only_lane] if only_lane else LANES,
                        command, kill_file, invocation)
    if not results:
        # Every lane busy: nothing new, unless a lane has been busy for too long (a
        # hung run, a lock held by someone else): that must not go unnoticed.
        if not lane_problems(config):
            return 0
        problems = alert(config, config_file, state, run_start, "")
        return report_outcome([], time.monotonic() - start, state, problems, [])
    prune_snakemake_logs(Path.cwd())
    stderr = "\n".join(r.stderr for r in results)
    problems = alert(config, config_file, state, run_start, stderr)
    unexplained = unexplained_failures(
        [r for r in results if r.returncode != 0], config_file,
        bool(listing_failures(state, list(config.get("streams") or {}), since=run_start)))
    return report_outcome(results, time.monotonic() - start, state, problems, unexplained)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
