# Helpers the rules share: the configuration, the remote listing, the target list.
# Everything here runs when the Snakefile is parsed, so `snakemake -n` and
# `snakemake --dag` show the real pending jobs; it must stay cheap (see README,
# "Speed") and must never print to stdout (that would corrupt --dag output).

import datetime as dt
import hashlib
import json
import os
import shlex
import socket
import sys
from pathlib import Path

from snakemake.logging import logger
from snakemake.settings.types import DeploymentMethod

from scripts.configuration import (
    ConfigurationError,
    check_configuration,
    expand_paths,
    get_now,
    get_streams,
)
from scripts.lanes import LaneError, describe_plan, get_lane, get_run_id
from scripts.preview import DRAWINGS, preview_kind
from scripts.markers import utc_timestamp, write_json_atomic
from scripts.observe import listing_epoch, observe, with_hpss
from scripts.plan import Observation, Plan, ScopeError, get_scope, make_plan
from scripts.remote import first_night
from scripts.run_lock import LANES
from scripts.state_layout import (
    job_config_path,
    listing_log_path,
    marker_path,
    night_directory,
    recall_log_path,
    recall_marker_path,
    rule_log_path,
    unlisted_target,
)
from scripts.targets import not_backed_up
from scripts.job import ENV_RUN_PID
from scripts.time_limits import job_minutes, job_seconds, night_work_seconds

try:
    config.update(expand_paths(config))  # ${VAR}, $VAR and ~: no `$` reaches a path
    check_configuration(config)
except ConfigurationError as err:
    sys.exit(f"desitransfer: {', '.join(map(str, workflow.configfiles))}: {err}")

try:
    # A run or a drawing of one night or one exposure (--config night=, exposure=).
    SCOPE = get_scope(config)
except ScopeError as err:
    sys.exit(f"desitransfer: {', '.join(map(str, workflow.configfiles))}: {err}")

STATE = config["state"]
BACKUP = config["backup"]
STREAMS = get_streams(config)
NOW = get_now(config)
FIRST_NIGHT = first_night(NOW, config["lookback_nights"])
# A preview (-n, --dag, --rulegraph, --lint...) changes nothing: it reads the mountain,
# the state and HPSS like a run, and writes none of it back (scripts/preview.py).
PREVIEW = preview_kind(sys.argv)
# `snakemake --lint` parses the workflow to read its rules and runs nothing:
# it must not need the mountain.
LINTING = PREVIEW == "lint"
# The lane of this run (scripts/lanes.py): exposures, nights, or None for all the work.
try:
    LANE = get_lane()
except LaneError as err:
    sys.exit(f"desitransfer: {err}")
RUN_LANES = (LANE,) if LANE else LANES
# The run this parse belongs to: the listing cache answers only parses of this run.
RUN_ID = get_run_id()


wildcard_constraints:
    stream="[A-Za-z][A-Za-z0-9_]*",
    night="[0-9]{8}",
    expid="[0-9]{8}",
    index="[1-9][0-9]*",
    day="[0-9]{8}",


def get_marker(stage):
    """The marker path pattern of an exposure-level `stage`."""
    return str(marker_path(STATE, "{stream}", "{night}", "{expid}", stage))


def get_night_marker(stage):
    """The marker path pattern of a night-level `stage`."""
    return str(marker_path(STATE, "{stream}", "{night}", None, stage))


def get_log(stage, night_level=False):
    """The log file pattern of `stage`, parallel to its marker."""
    expid = None if night_level else "{expid}"
    return rule_log_path(STATE, "{stream}", "{night}", expid, stage)


def log_observation(observation):
    """Say what the listings held that a person should know (stderr, never stdout)."""
    for name, seen in observation.streams.items():
        if seen.listing is None:
            continue
        for link in seen.listing.malformed:
            logger.warning(
                f"Malformed symlink detected: {link} (stream {name}); expected "
                "SOURCE/NIGHT/EXPID with 8-digit NIGHT and EXPID. Skipping."
            )
    if observation.locked and LANE != "nights":
        # Said once per cron invocation: by the exposure lane (or a run of all).
        logger.info(
            f"Checksums are being computed at the mountain "
            f"({config['remote']['checksum_lock']} exists on "
            f"{config['remote']['host']}): no transfer is planned this run."
        )


def get_plan():
    """Observe once (scripts/observe.py), decide once (scripts/plan.py)."""
    if LINTING:
        return Observation(NOW, {}), Plan(LANE)
    observation = observe(
        config, STREAMS, NOW, FIRST_NIGHT, LANE, RUN_ID, bool(PREVIEW)
    )
    log_observation(observation)
    # The exposure lane's bound; a drawing without a target draws one such run too
    # (the whole backlog is a picture nobody can read); a drawing of one night or one
    # exposure (SCOPE) draws all of it. -n and a hand run show all.
    bounded = LANE == "exposures" or (PREVIEW in DRAWINGS and not SCOPE)
    plan = make_plan(config, observation, LANE, bounded)
    if plan.wants_hpss:
        observation = with_hpss(config, observation, plan, bool(PREVIEW))
        plan = make_plan(config, observation, LANE, bounded)
    if plan.unlisted and len(plan.unlisted) == len(STREAMS):
        sys.exit("\n".join(plan.unlisted.values()))
    for error in plan.unlisted.values():
        logger.error(error)
    for stage in plan.night_stages:
        if stage.from_state:
            installed = observation.night_state(stage.stream, stage.night).installed
            logger.warning(
                f"Night {stage.night} of stream {stage.stream} has no links at the "
                f"mountain any more: its {stage.stage} of {len(installed)} installed "
                f"exposure(s) runs from the state ({night_directory(STATE, stage.stream, stage.night)})."
            )
    deferred = {(s.stream, s.night) for s, _ in plan.deferred}
    if deferred:
        logger.info(
            f"Backup of {len(deferred)} night(s) deferred: {plan.deferred[0][1]}."
        )
    return observation, plan


OBSERVATION, PLAN = get_plan()


def get_published(wildcards):
    """When the mountain published the exposure's link (UTC ISO), if listed."""
    seen = OBSERVATION.streams.get(wildcards.stream)
    listing = seen and seen.listing
    epoch = listing and listing.published.get(f"{wildcards.night}/{wildcards.expid}")
    return utc_timestamp(dt.datetime.fromtimestamp(epoch, dt.UTC)) if epoch else None


def get_listings():
    """The listings this run planned from, by stream (None: not listed), for the
    metrics (scripts/metrics.py), which would otherwise read them back from the cache.
    """
    return {name: seen.listing for name, seen in OBSERVATION.streams.items()}


def get_listing_failure_targets():
    """One failing job per stream that could not be listed (see get_plan)."""
    return [unlisted_target(STATE, name) for name in PLAN.unlisted]


def get_exposure_targets():
    """Installed-markers of this run's exposures (PLAN: in the exposure lane at most
    `exposures_per_run` of them, the newest night first)."""
    return [str(marker_path(STATE, s, n, e, "installed")) for s, n, e in PLAN.exposures]


def is_draining():
    """Whether this is an exposure-lane run that left listed exposures unplanned (its
    bound, exposures_per_run): the cron entry then starts the next run at once."""
    return PLAN.draining


def get_activity():
    """What this run works on, for its lanes' activity records (scripts/lanes.py)."""
    epochs = [
        listing_epoch(config, name)
        for name, seen in OBSERVATION.streams.items()
        if seen.listing is not None
    ]
    listed = min((e for e in epochs if e is not None), default=None)
    stages = [(s.stream, s.night, s.stage) for s in PLAN.night_stages]
    return {
        "on": describe_plan(list(PLAN.exposures), stages),
        "exposures": len(PLAN.exposures),
        "pending": PLAN.pending,
        "night_stages": len(stages),
        "night_seconds": night_work_seconds(
            config, [s.stage for s in PLAN.night_stages], PLAN.recall is not None
        ),
        "listed": listed and utc_timestamp(dt.datetime.fromtimestamp(listed, dt.UTC)),
        "listed_epoch": listed,
    }


def get_priority(stage):
    """Priority function of an exposure stage (0 stage, 1 verify, 2 install): the
    newest night's jobs first, and within a night the later stages first, so that
    tonight's exposures are installed before the backlog planned with them."""
    ranks = {}

    def priority(wildcards):
        if not ranks:
            nights = sorted({night for _, night, _ in PLAN.exposures})
            ranks.update({night: rank for rank, night in enumerate(nights)})
        return 3 * ranks.get(wildcards.night, 0) + stage

    return priority


def get_job_config(needs):
    """The configuration a job reads, as a JSON file named by its content under
    STATE/.config: ``state``, ``debug`` and the sections in `needs`, nothing else. A job
    process reads it instead of importing Snakemake, and a script that reads a section
    its rule does not name fails, so a rule's `needs` is all its job depends on."""
    sections = {key: config[key] for key in ("state", "debug", *needs)}
    text = json.dumps(sections, sort_keys=True, default=str)
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    path = job_config_path(STATE, digest)
    if not PREVIEW and not path.exists():
        write_json_atomic(path, json.loads(text))
    return str(path)


def get_job_python():
    """The interpreter of the jobs: the conda environment's with --sdm conda, else
    Snakemake's own."""
    deployment = getattr(workflow, "deployment_settings", None)
    methods = getattr(deployment, "deployment_method", None) or ()
    return "python" if DeploymentMethod.CONDA in methods else sys.executable


JOB_PREFIX = (
    f"PYTHONPATH={shlex.quote(workflow.basedir)} "
    f"{shlex.quote(get_job_python())} -m scripts."
)


# The jobs this Snakemake process starts watch it (scripts/job.py): when the run dies,
# they end with it. Each Snakemake process (a Slurm job step's too) sets its own.
os.environ[ENV_RUN_PID] = f"{socket.gethostname()}:{os.getpid()}"


def get_job(module, rule, needs, extra=None):
    """Params function: the command line of a job, ``python -m scripts.MODULE`` with
    its arguments (scripts/job.py reads them). `needs` names the configuration
    sections the script reads (see get_job_config); `extra(wildcards)` gives more
    arguments. A `shell:` job never imports Snakemake: about half the cost of a
    `script:` job. The rule adds ``--output``, ``--log`` and ``--threads``."""
    config_file = get_job_config(needs)
    # Every job's wall-clock limit (scripts/time_limits.py): the module is the step.
    limit = job_seconds(config, module)

    def command(wildcards):
        args = ["--config", config_file, "--rule", rule, "--time-limit", str(limit)]
        for name in ("stream", "night", "expid", "index", "day"):
            if wildcards.get(name) is not None:
                args += [f"--{name}", wildcards.get(name)]
        args += extra(wildcards) if extra else []
        return JOB_PREFIX + shlex.join([module, *args])

    return command


# Slurm time limits (the `runtime` resource, in minutes; no effect on a local run)
# follow from the workflow's own time limits for what a job does, plus
# `runtime_margin` (scripts/time_limits.py, the one place for these numbers).
def get_runtime(step):
    """Slurm time limit (minutes) of a job of `step` (stage, verify, catch_up, backup)."""
    return job_minutes(config, step)


def get_night_expids(stream, night):
    """What a night's stages wait for (see Observation.night_expids)."""
    return OBSERVATION.night_expids(stream, night)


def get_held_expids(stream, night):
    """The night's exposures held by policy: named in its backup record."""
    return sorted(OBSERVATION.night_state(stream, night).held)


def get_backup_arguments(wildcards):
    """A backup job's arguments: the night's exposures, and those held by policy."""
    return [
        "--exposures",
        ",".join(get_night_expids(wildcards.stream, wildcards.night)),
        "--held",
        ",".join(get_held_expids(wildcards.stream, wildcards.night)),
    ]


def get_late_inputs(wildcards):
    """Input function: the installed-markers of exposures no archive holds yet."""
    seen = OBSERVATION.streams.get(wildcards.stream)
    history = (seen.backups.get(wildcards.night) if seen else None) or []
    expids = get_night_expids(wildcards.stream, wildcards.night)
    return [
        str(marker_path(STATE, wildcards.stream, wildcards.night, e, "installed"))
        for e in not_backed_up(expids, history)
    ]


def get_night_inputs(wildcards):
    """Input function: the installed-markers of the night's exposures."""
    return [
        str(marker_path(STATE, wildcards.stream, wildcards.night, e, "installed"))
        for e in get_night_expids(wildcards.stream, wildcards.night)
    ]


def get_night_targets():
    """Markers of this run's night-level stages (PLAN: every eligible night, backlog
    included; in the night lane only nights whose exposures are all installed)."""
    catch_ups = [s for s in PLAN.night_stages if s.stage == "caughtup"]
    backups = [s for s in PLAN.night_stages if s.stage != "caughtup"]
    return [
        str(marker_path(STATE, s.stream, s.night, None, s.stage))
        for s in catch_ups + backups
    ]


def get_recall_marker():
    """The marker path pattern of the daily tape recall (STATE/.recall/DAY.recalled)."""
    return str(recall_marker_path(STATE, "{day}"))


def get_recall_log():
    """The log file pattern of the daily tape recall."""
    return recall_log_path(STATE, "{day}")


def get_recall_targets():
    """The day's tape recall when it is due (PLAN: night lane, backup.recall_per_day
    set, not yet done today, HPSS up)."""
    return [str(recall_marker_path(STATE, PLAN.recall))] if PLAN.recall else []


def get_recall_inputs(wildcards):
    """Input function: this run's backups come first, so that a night put on tape
    today can be drawn by today's recall."""
    return [
        str(marker_path(STATE, s.stream, s.night, None, s.stage)) for s in PLAN.backups
    ]
