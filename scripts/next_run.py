"""What the next cron invocation would do, without doing any of it.

    scripts/cron_entry.py CONFIG --plan [--lane exposures|nights]

The same observation (scripts/observe.py, as a preview: nothing is written) and the
same pure plan (scripts/plan.py) a run of each lane makes, described in a few lines per
lane (scripts/plan.py `describe`): the exposure lane's exposures of this run per night
and how many remain, each night's stage and why (due, deferred, waiting), and what is
held. The configuration file read goes to stderr, so that stdout is only the plan.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from scripts.configuration import (
    ConfigurationError,
    check_configuration,
    describe_validation_error,
    get_now,
    get_streams,
    require_state,
)
from scripts.observe import observe, with_hpss
from scripts.plan import Plan, ScopeError, describe, get_scope, make_plan
from scripts.remote import first_night


def checked(config: dict, config_file: Path) -> dict:
    """`config` if a run can plan from it.

    Raises
    ------
    ConfigurationError
        It cannot (one line, naming the file).
    """
    problem = describe_validation_error(config, [str(config_file)])
    if problem is not None:
        raise ConfigurationError(problem)
    try:
        check_configuration(config)
        get_scope(config)
    except (ConfigurationError, ScopeError) as err:
        raise ConfigurationError(f"{config_file}: {err}") from None
    return config


def plan_lanes(config: dict, lanes: Sequence[str]) -> dict[str, Plan]:
    """The plan of each of `lanes` for a run starting now (nothing is written).

    Raises
    ------
    ConfigurationError
        The configuration cannot be planned from (one line).
    """
    check_configuration(config)
    now = get_now(config)
    streams = get_streams(config)
    start = first_night(now, config["lookback_nights"])
    observation = observe(config, streams, now, start, None, None, preview=True)
    plans = {}
    for lane in lanes:
        plan = make_plan(config, observation, lane)
        if plan.wants_hpss and observation.hpss is None:
            observation = with_hpss(config, observation, plan, preview=True)
            plan = make_plan(config, observation, lane)
        plans[lane] = plan
    return plans


def plan_run(config: dict, config_file: Path, lane: str, run_id: str,
             preview: bool = False) -> Plan:
    """The plan of the run `run_id` of `lane`, observed as that run's parse observes
    (its listing is cached for `run_id`, and the parse reuses it), or, for a run that
    is a preview, as a preview observes: nothing written.

    Raises
    ------
    ConfigurationError
        The configuration cannot be planned from (one line).
    """
    checked(config, config_file)
    now = get_now(config)
    start = first_night(now, config["lookback_nights"])
    observation = observe(config, get_streams(config), now, start, lane, run_id,
                          preview=preview)
    plan = make_plan(config, observation, lane)
    if plan.wants_hpss:
        observation = with_hpss(config, observation, plan, preview=preview)
        plan = make_plan(config, observation, lane)
    return plan


def show_plan(config: dict, config_file: Path, lanes: Sequence[str]) -> tuple[int, list[str]]:
    """The exit status and the lines to print (stdout) for ``--plan``."""
    checked(config, config_file)
    require_state(config, config_file)
    return 0, describe(plan_lanes(config, lanes))
