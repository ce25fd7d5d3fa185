"""Where everything lives under STATE: the one module that builds those paths.

::

    STATE/STREAM/NIGHT/EXPID.STAGE        an exposure's marker (staged, checksummed,
                                          installed, updated; .updating: a journal)
    STATE/STREAM/NIGHT/EXPID.held         a person's hold (python -m scripts.control)
    STATE/STREAM/NIGHT.STAGE              a night's marker (caughtup, backedup[.N])
    MARKER.failed                         the failure record beside a marker
    STATE/logs/STREAM/NIGHT/EXPID.STAGE.log, STATE/logs/STREAM/NIGHT.STAGE.log
                                          the rules' logs (default of ``logs``)
    STATE/status/                         DESI's status files (default of ``status``)
    STATE/.listing/STREAM.json[.failed]   the listing cache, and why listing failed
    STATE/.listing/STREAM.unlisted        the target of a stream's listing failure
    STATE/.listing/STREAM.empty           runs in a row that found no link at all
    STATE/.lanes/LANE.lock, LANE.json     a lane's lock and its activity record
    STATE/.ssh/KEY                        a lane run's shared ssh connection (the control
                                          socket; the directory is private, 0700)
    STATE/.alerts/sent.json, unreachable.json, reported.json
                                          what was mailed; unreachable runs counted;
                                          what the cron entry last told cron
    STATE/.config/config-DIGEST.json      the configuration a job reads
    STATE/.hpss_status.json               HPSS's last answer, for the status page
    STATE/.configuration.failed           this run's configuration error
    STATE/.recall/DAY.recalled[.failed]   the night lane's daily tape recall (its marker)
    STATE/.recall/last.json               the last tape recall's result, for the page
    STATE/.recall/mismatches.json         members a recall found bad, not yet found good
    STATE/.recall/scratch/                recalled members, while they are verified
                                          (default of ``backup.recall_scratch``)
    STATE/logs/recall/DAY.recalled.log    the daily recall's log
    STATE/.metrics/STREAM.json            the figures behind the metrics file: the
                                          window's nights, the older ones summed
    STATE/.metrics/STREAM.nights.json     each older night's figures
    STATUS/desitransfer.prom              the metrics (default of ``metrics``)

No other module joins a path under STATE by hand: they call these.
"""

from __future__ import annotations

import os
from pathlib import Path

#: Suffix of a failure record, beside the marker it would be.
FAILED = ".failed"
#: The lanes' locks and activity records.
LANE_DIRECTORY = ".lanes"


def stream_directory(state: str | os.PathLike, stream: str) -> Path:
    """The markers of a stream: one directory per night, one file per night stage."""
    return Path(state, stream)


def night_directory(state: str | os.PathLike, stream: str, night: str) -> Path:
    """The markers of a night's exposures."""
    return Path(state, stream, night)


def marker_path(state: str | os.PathLike, stream: str, night: str, expid: str | None,
                stage: str) -> Path:
    """The marker of `stage` for an exposure, or for a night when `expid` is None."""
    if expid is None:
        return Path(state, stream, f"{night}.{stage}")
    return Path(state, stream, night, f"{expid}.{stage}")


#: The record of a person's hold on an exposure, beside its markers.
HOLD = "held"


def hold_path(state: str | os.PathLike, stream: str, night: str, expid: str) -> Path:
    """The record of a person's hold on an exposure (``scripts.control hold``): while it
    exists no run fetches the exposure and its night goes on without it."""
    return marker_path(state, stream, night, expid, HOLD)


def failure_path(marker: str | os.PathLike) -> Path:
    """Where the failure record of `marker` lives."""
    return Path(f"{marker}{FAILED}")


def control_log_path(config: dict) -> Path:
    """What people did with ``python -m scripts.control``: one line per action."""
    return logs_directory(config) / "control.log"


def logs_directory(config: dict) -> Path:
    """LOGS: the ``logs`` key, by default ``STATE/logs``."""
    return Path(config.get("logs") or Path(config["state"], "logs"))


def rule_log_path(state: str | os.PathLike, stream: str, night: str, expid: str | None,
                  stage: str) -> str:
    """The log of a rule's job, parallel to its marker under ``STATE/logs``."""
    return f"{marker_path(Path(state, 'logs'), stream, night, expid, stage)}.log"


def status_directory(config: dict) -> Path:
    """STATUS: the ``status`` key, by default ``STATE/status``."""
    return Path(config.get("status") or Path(config["state"], "status"))


def listing_cache_path(state: str | os.PathLike, stream: str) -> Path:
    """Where the workflow keeps a stream's last mountain listing."""
    return Path(state, ".listing", f"{stream}.json")


def listing_failure_path(state: str | os.PathLike, stream: str) -> Path:
    """Why the last listing of a stream failed, if it did."""
    return failure_path(listing_cache_path(state, stream))


def unlisted_target(state: str | os.PathLike, stream: str) -> str:
    """The target a run gives a stream it could not list (a job that fails, saying why)."""
    return str(Path(state, ".listing", f"{stream}.unlisted"))


def empty_listing_path(state: str | os.PathLike, stream: str) -> Path:
    """Whether a stream listed links before, and the runs since that found none."""
    return Path(state, ".listing", f"{stream}.empty")


def listing_log_path(state: str | os.PathLike, stream: str) -> str:
    """The log of a stream's listing-failure job."""
    return str(Path(state, "logs", f"{stream}.listing.log"))


def lock_path(state: str | os.PathLike, lane: str) -> Path:
    """The lock file of `lane`."""
    return Path(state) / LANE_DIRECTORY / f"{lane}.lock"


#: The shared ssh connections' control sockets.
SSH_DIRECTORY = ".ssh"


def ssh_directory(state: str | os.PathLike) -> Path:
    """The private directory (0700) of the lanes' shared ssh connections."""
    return Path(state) / SSH_DIRECTORY


def ssh_control_path(state: str | os.PathLike, key: str) -> Path:
    """The control socket of a shared ssh connection; `key` is a short name (a unix
    socket's path is limited to 107 bytes, and ssh binds a longer temporary one first)."""
    return ssh_directory(state) / key


def activity_path(state: str | os.PathLike, lane: str) -> Path:
    """The activity record of `lane`."""
    return Path(state) / LANE_DIRECTORY / f"{lane}.json"


def ledger_path(state: str | os.PathLike) -> Path:
    """What was mailed, so that each problem is mailed once."""
    return Path(state, ".alerts", "sent.json")


def reported_path(state: str | os.PathLike) -> Path:
    """The problems the cron entry's last invocation knew, so that cron mails news only."""
    return Path(state, ".alerts", "reported.json")


def unreachable_path(state: str | os.PathLike) -> Path:
    """Consecutive runs that could not reach the mountain."""
    return Path(state, ".alerts", "unreachable.json")


def job_config_path(state: str | os.PathLike, digest: str) -> Path:
    """The configuration a job reads, named by its content."""
    return Path(state, ".config", f"config-{digest}.json")


def hpss_status_path(state: str | os.PathLike) -> Path:
    """HPSS's last answer, for the status page's backlog."""
    return Path(state, ".hpss_status.json")


def configuration_path(state: str | os.PathLike) -> Path:
    """This run's configuration error, if any."""
    return Path(state, ".configuration.failed")


#: The tape recalls' records.
RECALL_DIRECTORY = ".recall"


def recall_marker_path(state: str | os.PathLike, day: str) -> Path:
    """The marker of the night lane's tape recall of `day` (UTC ``YYYYMMDD``)."""
    return Path(state, RECALL_DIRECTORY, f"{day}.recalled")


def recall_log_path(state: str | os.PathLike, day: str) -> str:
    """The log of the daily tape recall of `day`."""
    return str(Path(state, "logs", "recall", f"{day}.recalled.log"))


def recall_record_path(state: str | os.PathLike) -> Path:
    """The last tape recall's result (by hand or daily), for the status page."""
    return Path(state, RECALL_DIRECTORY, "last.json")


def recall_mismatches_path(state: str | os.PathLike) -> Path:
    """The members a tape recall found bad and no later recall found good."""
    return Path(state, RECALL_DIRECTORY, "mismatches.json")


def recall_scratch_directory(config: dict) -> Path:
    """Where recalled members are verified: ``backup.recall_scratch``, by default
    ``STATE/.recall/scratch``."""
    scratch = (config.get("backup") or {}).get("recall_scratch")
    return Path(scratch or Path(config["state"], RECALL_DIRECTORY, "scratch"))


#: The metrics file's name in STATUS when the ``metrics`` key is not set.
METRICS_FILE = "desitransfer.prom"


def metrics_path(config: dict) -> Path:
    """The metrics file (Prometheus text, for node_exporter's textfile collector): the
    ``metrics`` key, by default ``STATUS/desitransfer.prom``."""
    return Path(config.get("metrics") or status_directory(config) / METRICS_FILE)


def metrics_cache_path(state: str | os.PathLike, stream: str) -> Path:
    """The figures behind the metrics that a run reads: the look-back window's nights,
    each with the fingerprint it was read at, and the older nights' sum."""
    return Path(state, ".metrics", f"{stream}.json")


def metrics_nights_path(state: str | os.PathLike, stream: str) -> Path:
    """Each older night's figures, with its fingerprint: read when their sum is redone."""
    return Path(state, ".metrics", f"{stream}.nights.json")
