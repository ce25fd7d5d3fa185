# desitransfer: bring each night's raw exposures from the mountain to the archive.
# Marker files under `state` are the state; each run builds only what is missing.
# README.md explains the stages, the configuration and how to run it.

import os
import sys

from snakemake.exceptions import WorkflowError
from snakemake.utils import min_version, validate

min_version("9.0")

sys.path.insert(0, workflow.basedir)
from scripts.configuration import (
    ConfigurationError,
    announce_configuration,
    describe_validation_error,
    find_configuration,
    load_yaml,
)
from scripts.lanes import start_activity
from scripts.run_lock import RunLockBusy, hold

# The configuration: --configfile, else $DESITRANSFER_CONFIG, else the bundled
# config.yaml (the demo), as every tool chooses (scripts/configuration.py). A file
# given replaces the bundled one rather than being merged into it (a production file
# must not inherit demo streams). The file read is said on stderr, never stdout.
if workflow.overwrite_configfiles:
    CONFIG_ORIGIN = "--configfile"
else:
    CONFIG_FILE, CONFIG_ORIGIN = find_configuration()
    try:  # a file Snakemake's reader would refuse with a traceback: one line instead
        load_yaml(CONFIG_FILE)
    except ConfigurationError as err:
        sys.exit(f"desitransfer: {err}")

    configfile: CONFIG_FILE


announce_configuration(workflow.configfiles, CONFIG_ORIGIN)


try:
    validate(config, "schemas/config.schema.yaml")
except WorkflowError:
    sys.exit(f"desitransfer: {describe_validation_error(config, workflow.configfiles)}")


include: "rules/common.smk"


# A lane's run knows only its own rules (the lane comes from DESITRANSFER_LANE, see
# rules/common.smk). The night lane's DAG has the exposures' markers as inputs: with
# no rule to make them, it can never plan an exposure job, nor redo one that the
# exposure lane is running (or was killed in) as incomplete. A run without a lane
# (-n, --dag, a run by hand) has every rule.
if LANE != "nights":

    include: "rules/exposure.smk"


if LANE != "exposures":

    include: "rules/night.smk"


include: "rules/status.smk"


# One run per lane at a time, whoever starts it (see scripts/run_lock.py); a run
# without a lane takes every lane's lock. onstart fires for real runs only: -n, --dag
# and --lint take no lock. The lane's activity record says what the run works on.
onstart:
    try:
        hold(STATE, RUN_LANES)
    except RunLockBusy as err:
        sys.exit(f"desitransfer: {err}")
    start_activity(STATE, RUN_LANES, RUN_ID, get_activity())


# Only pending work: done exposures and nights never enter the DAG. A lane plans its
# own work only.
TARGETS = []
if LANE != "nights":
    TARGETS += get_exposure_targets() + get_listing_failure_targets()
if LANE != "exposures":
    TARGETS += get_night_targets() + get_recall_targets()


# Run in the main process even with a cluster executor: the target rule, the
# listing-failure report, and install (chmod and a rename on the same file system:
# bookkeeping, not worth a batch job). See profiles/slurm/README.md.
localrules:
    all,


if LANE != "nights":

    localrules:
        report_listing_failure,
        install_exposure,


rule all:
    default_target: True
    input:
        TARGETS,
