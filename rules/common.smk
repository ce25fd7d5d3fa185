# Helpers the rules share: the configuration, the remote listing, the target list.
# Everything here runs when the Snakefile is parsed, so `snakemake -n` and
# `snakemake --dag` show the real pending jobs; it must stay cheap (see README,
# "Speed") and must never print to stdout (that would corrupt --dag output).

import datetime as dt
import hashlib
import json
import shlex
import sys
from pathlib import Path

from snakemake.logging import logger
from snakemake.settings.types import DeploymentMethod

from scripts.configuration import (
    ConfigurationError,
    check_configuration,
    get_now,
    get_streams,
)
from scripts.hpss import hpss_status
from scripts.lanes import LaneError, describe_plan, get_lane, get_run_id
from scripts.preview import DRAWINGS, preview_kind
from scripts.markers import (
    failure_path,
    marker_path,
    read_record,
    utc_timestamp,
    write_failure,
    write_json_atomic,
)
from scripts.remote import RemoteError, first_night, list_exposures
from scripts.run_lock import LANES
from scripts.status import listing_cache_path, record_hpss_status
from scripts.targets import (
    due,
    marker_nights,
    newest_first,
    night_exposures,
    night_ready,
    not_backed_up,
    pending_exposures,
    scan_night,
)
from scripts.time_limits import job_minutes

try:
    check_configuration(config)
except ConfigurationError as err:
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
# What this run works on, for its lane's activity record (see the Snakefile's onstart).
PLAN = {"exposures": [], "night_stages": [], "pending": 0, "listed": None}


wildcard_constraints:
    stream="[A-Za-z][A-Za-z0-9_]*",
    night="[0-9]{8}",
    expid="[0-9]{8}",
    index="[1-9][0-9]*",


def get_marker(stage):
    """The marker path pattern of an exposure-level `stage`."""
    return str(marker_path(STATE, "{stream}", "{night}", "{expid}", stage))


def get_night_marker(stage):
    """The marker path pattern of a night-level `stage`."""
    return str(marker_path(STATE, "{stream}", "{night}", None, stage))


def get_log(stage, night_level=False):
    """The log file pattern of `stage`, parallel to its marker."""
    expid = None if night_level else "{expid}"
    return f"{marker_path(f'{STATE}/logs', '{stream}', '{night}', expid, stage)}.log"


def get_listing(stream):
    """The mountain's listing for `stream` (cached for remote.listing_cache seconds),
    or the one-line reason it could not be had.

    A failure is recorded beside the cache: the cron entry counts unreachable runs
    from it.
    """
    cache = listing_cache_path(STATE, stream.name)
    try:
        listing = list_exposures(
            config["remote"],
            stream.source,
            FIRST_NIGHT,
            cache_file=cache,
            cache_seconds=config["remote"]["listing_cache"],
            run_id=RUN_ID,
            write_cache=not PREVIEW,
        )
    except RemoteError as err:
        if not PREVIEW:
            write_failure(cache, str(err), 1)
        return None, f"desitransfer: stream {stream.name}: {err}"
    if not PREVIEW:
        failure_path(cache).unlink(missing_ok=True)
    epoch = (read_record(cache) or {}).get("epoch")
    if isinstance(epoch, (int, float)):
        PLAN["listed"] = min(PLAN["listed"] or epoch, epoch)
    return listing, None


def get_listings():
    """Every stream's listing; malformed links are reported and skipped.

    When no stream can be listed the run stops with one line per stream. When only
    some fail, the others go on and a failing `report_listing_failure` job makes the
    run's status say so.
    """
    listings, errors = {}, {}
    if LINTING:
        return listings, errors
    for name, stream in STREAMS.items():
        listing, error = get_listing(stream)
        if listing is None:
            errors[name] = error
            continue
        for link in listing.malformed:
            logger.warning(
                f"Malformed symlink detected: {link} (stream {name}); expected "
                "SOURCE/NIGHT/EXPID with 8-digit NIGHT and EXPID. Skipping."
            )
        if listing.locked:
            # Said once per cron invocation: by the exposure lane (or a run of all).
            if LANE != "nights":
                logger.info(
                    f"Checksums are being computed at the mountain "
                    f"({config['remote']['checksum_lock']} exists on "
                    f"{config['remote']['host']}): no transfer is planned this run."
                )
            return {}, {}
        listings[name] = listing
    if errors and not listings:
        sys.exit("\n".join(errors.values()))
    for error in errors.values():
        logger.error(error)
    return listings, errors


LISTINGS, LISTING_ERRORS = get_listings()


def get_published(wildcards):
    """When the mountain published the exposure's link (UTC ISO), if listed."""
    listing = LISTINGS.get(wildcards.stream)
    epoch = listing and listing.published.get(f"{wildcards.night}/{wildcards.expid}")
    return utc_timestamp(dt.datetime.fromtimestamp(epoch, dt.UTC)) if epoch else None


def get_listing_failure_targets():
    """One failing job per stream that could not be listed (see get_listings)."""
    return [f"{STATE}/.listing/{name}.unlisted" for name in LISTING_ERRORS]


_NIGHT_STATES = {}


def get_night_state(stream, night):
    """The markers of one night, read once per parse."""
    key = (stream, night)
    if key not in _NIGHT_STATES:
        _NIGHT_STATES[key] = scan_night(STATE, stream, night)
    return _NIGHT_STATES[key]


def get_exposure_targets():
    """Installed-markers of the listed exposures still pending, every stream: in the
    exposure lane at most `exposures_per_run` of them, the newest night first, so that
    a backlog drains over many short runs, each with a fresh listing."""
    pending = []
    for name, listing in LISTINGS.items():
        nights = {n: get_night_state(name, n) for n in listing.nights()}
        pending += [
            (name, night, expid)
            for night, expid in pending_exposures(listing.exposures, nights)
        ]
    # The exposure lane's bound; a drawing without a target draws one such run too
    # (the whole backlog is a picture nobody can read). -n and a hand run show all.
    bounded = LANE == "exposures" or PREVIEW in DRAWINGS
    limit = config["exposures_per_run"] if bounded else None
    planned = newest_first(pending, limit)
    PLAN.update(exposures=planned, pending=len(pending))
    return [str(marker_path(STATE, s, n, e, "installed")) for s, n, e in planned]


def is_draining():
    """Whether this is an exposure-lane run that left listed exposures unplanned (its
    bound, exposures_per_run): the cron entry then starts the next run at once."""
    return LANE == "exposures" and PLAN["pending"] > len(PLAN["exposures"])


def get_activity():
    """What this run works on, for its lanes' activity records (scripts/lanes.py)."""
    listed = PLAN["listed"]
    return {
        "on": describe_plan(PLAN["exposures"], PLAN["night_stages"]),
        "exposures": len(PLAN["exposures"]),
        "pending": PLAN["pending"],
        "night_stages": len(PLAN["night_stages"]),
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
            nights = sorted({night for _, night, _ in PLAN["exposures"]})
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
    path = Path(STATE, ".config", f"config-{digest}.json")
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


def get_job(module, rule, needs, extra=None):
    """Params function: the command line of a job, ``python -m scripts.MODULE`` with
    its arguments (scripts/job.py reads them). `needs` names the configuration
    sections the script reads (see get_job_config); `extra(wildcards)` gives more
    arguments. A `shell:` job never imports Snakemake: about half the cost of a
    `script:` job. The rule adds ``--output``, ``--log`` and ``--threads``."""
    config_file = get_job_config(needs)

    def command(wildcards):
        args = ["--config", config_file, "--rule", rule]
        for name in ("stream", "night", "expid", "index"):
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


def get_backup_history(stream, night):
    """The archives recorded for a night, or None if it has no readable record.

    An unreadable record is moved aside (``.bad``, kept for a person): Snakemake
    would take the file as done, and the night's archives are then adopted again
    from what the tape really holds.
    """
    marker = marker_path(STATE, stream, night, None, "backedup")
    record = read_record(marker)
    if record is None and marker.exists() and not PREVIEW:
        marker.rename(f"{marker}.bad")
        logger.warning(
            f"{marker} is unreadable: moved to {marker}.bad; the night's backup is"
            " taken again from what its archives hold."
        )
    return None if record is None else record.get("archives", [])


def get_night_expids(stream, night):
    """What a night's stages wait for: its listed, not held, exposures and those the
    state says are installed (their links may have left the mountain)."""
    listing = LISTINGS.get(stream)
    listed = listing.exposures if listing else []
    return night_exposures(listed, night, get_night_state(stream, night))


def get_held_expids(stream, night):
    """The night's exposures held by policy: named in its backup record."""
    return sorted(get_night_state(stream, night).held)


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
    history = get_backup_history(wildcards.stream, wildcards.night) or []
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


def get_nights(stream, listing):
    """The nights whose stages are considered: the listed ones, and the nights in the
    look-back window the state holds installed exposures of.

    Returns the sorted nights and the set of those known from the state only (their
    links left the mountain after installation).
    """
    listed = set(listing.nights())
    unlisted = {
        night
        for night in marker_nights(STATE, stream, FIRST_NIGHT)
        if night not in listed and get_night_state(stream, night).installed
    }
    return sorted(listed | unlisted), unlisted


def get_hpss_ready():
    """Whether backups may run now: HPSS status read at most once per run, and
    remembered for the status page's backlog."""
    if BACKUP["backend"] != "htar" or not BACKUP["hpss_status"]:
        return True, ""
    ready, why = hpss_status(BACKUP["hpss_status"], BACKUP["status_timeout"])
    if not PREVIEW:
        record_hpss_status(STATE, ready, why)
    return ready, why


def get_due_stages(stream, night):
    """The due night-level stages of a night that lack their marker, as
    (stage, marker) pairs: the catch-up, then the backup (the first one, or the next
    supplementary archive when exposures are installed that no archive holds)."""
    stages = []
    caughtup = marker_path(STATE, stream, night, None, "caughtup")
    if due(night, NOW, config["catchup_hour"]) and not caughtup.exists():
        stages.append(("caughtup", str(caughtup)))
    if BACKUP["backend"] == "none" or not due(night, NOW, config["backup_hour"]):
        return stages
    history = get_backup_history(stream, night)
    if history is None:
        stage = "backedup"
    elif not_backed_up(get_night_expids(stream, night), history):
        stage = f"backedup.{len(history)}"
    else:
        return stages
    return stages + [(stage, str(marker_path(STATE, stream, night, None, stage)))]


def get_night_targets():
    """Markers of the due night-level stages: every eligible night, backlog included.

    In the night lane, only nights whose exposures are all installed: that lane never
    runs exposure work (a night still transferring waits for the exposure lane).
    """
    targets, backups = [], []
    for name, listing in LISTINGS.items():
        nights, from_state = get_nights(name, listing)
        for night in nights:
            # A drawing without a target shows one cron run: the night lane's part.
            if (LANE == "nights" or PREVIEW in DRAWINGS) and not night_ready(
                get_night_expids(name, night), get_night_state(name, night)
            ):
                continue
            stages = get_due_stages(name, night)
            if stages and night in from_state:
                logger.warning(
                    f"Night {night} of stream {name} has no links at the mountain any "
                    f"more: {', '.join(s for s, _ in stages)} of its "
                    f"{len(get_night_state(name, night).installed)} installed "
                    f"exposure(s) run from the state ({STATE}/{name}/{night})."
                )
            for stage, marker in stages:
                (targets if stage == "caughtup" else backups).append(marker)
                PLAN["night_stages"].append((name, night, stage))
    if backups:
        ready, why = get_hpss_ready()
        if not ready:
            logger.info(f"Backup of {len(backups)} night(s) deferred: {why}.")
            PLAN["night_stages"] = [
                item for item in PLAN["night_stages"] if item[2] == "caughtup"
            ]
            return targets
    return targets + backups
