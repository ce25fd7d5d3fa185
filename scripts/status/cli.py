"""``python -m scripts.status``: what the state says, for a person or a machine.

    python -m scripts.status [--config FILE] [--nights N]   # the last nights
    python -m scripts.status --night NIGHT                   # one night's exposures
    python -m scripts.status --failures                      # what needs a person
    python -m scripts.status --latency                       # published → installed
    python -m scripts.status --json ...                      # the same for machines
    python -m scripts.status --write                         # rebuild files and page
    python -m scripts.status --report NIGHT > night.html     # one night, one HTML file
    python -m scripts.status --stream NAME ...               # one stream only

The configuration is ``--config``, else ``$DESITRANSFER_CONFIG``, else the bundled
``config.yaml``; the file read is the first line on stderr (stdout is the output).

Its default path reads the directories of the nights it shows and nothing else, and
imports neither pandas nor the page code, so it stays fast however large the archive.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys

import scripts.status.reading as reading
from scripts.configuration import (
    ConfigurationError,
    announce_configuration,
    find_configuration,
    get_now,
    read_configuration,
    require_state,
)
from scripts.lanes import lane_activity
from scripts.markers import read_record, valid_night
from scripts.status.formatting import duration, format_table, human_bytes, lane_text, short_time
from scripts.status.latency import LatencySummary, latency_summary
from scripts.status.model import ExposureStatus, NightStatus
from scripts.status.problems import Problem, all_problems, find_problems
from scripts.status.report import judge_nights, recent_nights, write_status


def summary_row(night: NightStatus) -> dict:
    archived = night.archived()
    return {
        "stream": night.stream, "night": night.night, "state": night.state,
        "exposures": len(night.exposures), "bytes": night.bytes,
        "verified": night.count(lambda e: e.verification == "verified"),
        "installed": night.count(lambda e: "installed" in e.stages),
        "backed_up": sum(1 for e in night.exposures if e in archived),
        "caught_up": "caughtup" in night.stages,
        "failures": night.failure_count(),
    }


def exposure_row(exposure: ExposureStatus) -> dict:
    latency = exposure.latency()
    archive = exposure.archive or {}
    return {
        "stream": exposure.stream, "night": exposure.night, "expid": exposure.expid,
        "state": exposure.state, "bytes": exposure.bytes,
        "staged": exposure.stages.get("staged", {}).get("time"),
        "verified": exposure.stages.get("checksummed", {}).get("time"),
        "verification": exposure.verification,
        "installed": exposure.stages.get("installed", {}).get("time"),
        "backed_up": archive.get("time"), "archive": archive.get("name"),
        "latency_seconds": None if latency is None else round(latency[0], 1),
        "latency_from": None if latency is None else latency[1],
        "failures": {s: {"reason": f.get("reason"), "attempts": f.get("attempts"),
                         "time": f.get("time"), "held": bool(f.get("held"))}
                     for s, f in exposure.failures.items()},
    }


def problem_row(problem: Problem) -> dict:
    return {"stream": problem.stream, "item": problem.item, "stage": problem.label,
            "attempts": problem.attempts, "since": problem.time, "reason": problem.reason,
            "action": problem.action, "record": problem.record}


def _summary_text(row: dict) -> dict:
    return {"stream": row["stream"], "night": row["night"], "state": row["state"],
            "exposures": row["exposures"], "size": human_bytes(row["bytes"]),
            "verified": row["verified"], "installed": row["installed"],
            "backed up": row["backed_up"], "caught up": "yes" if row["caught_up"] else "no",
            "failures": row["failures"]}


def _exposure_text(row: dict) -> dict:
    latency = row["latency_seconds"]
    return {"stream": row["stream"], "expid": row["expid"], "state": row["state"],
            "size": human_bytes(row["bytes"]),
            "staged": short_time(row["staged"]), "verified": short_time(row["verified"]),
            "installed": short_time(row["installed"]),
            "backed up": short_time(row["backed_up"]),
            "latency": "" if latency is None else f"{latency:.0f} s",
            "failure": "; ".join(f"{s}: {f['reason']} (attempt {f['attempts']})"
                                 for s, f in row["failures"].items())}


def failures_output(config: dict, now: dt.datetime, as_json: bool):
    """What ``--failures`` prints: the same problems the alerts mail and the page shows."""
    rows = [problem_row(p) for p in all_problems(config, now)]
    if as_json:
        return rows
    if not rows:
        return "Nothing needs a person."
    return format_table([{k: v for k, v in r.items() if k != "record"} for r in rows])


def _chosen_nights(config: dict, night: str | None, count: int) -> list[NightStatus]:
    state = config["state"]
    chosen = []
    for stream in config["streams"]:
        if night:
            listing, _ = reading.read_listing(state, stream)
            chosen.append(reading.read_night(state, stream, night, listed=listing.get(night, ())))
        else:
            chosen += recent_nights(config, stream, count)
    return chosen


def latency_text(latency: LatencySummary) -> str:
    if not latency.count:
        return "No installed exposure with a publication time in these nights."
    return (f"Latency, published → installed ({latency.count} exposures): median"
            f" {duration(latency.median)}, p95 {duration(latency.p95)}, worst"
            f" {duration(latency.worst)} ({latency.worst_exposure})")


def latency_output(config: dict, night: str | None, count: int, as_json: bool):
    """``--latency``: publication → installed over the nights chosen (median, p95, worst)."""
    nights = _chosen_nights(config, night, count)
    latency = latency_summary(e for n in nights for e in n.exposures.values())
    return latency.as_dict() if as_json else latency_text(latency)


def nights_output(config: dict, now: dt.datetime, night: str | None, count: int,
                  as_json: bool):
    """The table of the last nights (or one night's exposures), latency and backlog."""
    nights = _chosen_nights(config, night, count)
    problems = [p for n in nights
                for p in find_problems(n, config["state"], config["verify"]["max_attempts"])]
    hpss = read_record(reading.hpss_status_path(config["state"]))
    backlog = judge_nights(config, nights, problems, now, hpss)
    nights.sort(key=lambda n: (n.night, n.stream), reverse=True)
    latency = latency_summary(e for n in nights for e in n.exposures.values())
    if night:
        rows = [exposure_row(e) for n in nights for e in n.sorted_exposures()]
        text = format_table([_exposure_text(r) for r in rows]) if rows else (
            f"Nothing recorded for night {night} (stream"
            f" {', '.join(config['streams']) or 'none'}).")
    else:
        rows = [summary_row(n) for n in nights]
        text = format_table([_summary_text(r) for r in rows])
    if as_json:
        return rows
    if latency.count:
        text += "\n\n" + latency_text(latency)
    if not night:  # the overview also says what each lane is doing now
        text += "\n\n" + "\n".join(lane_text(lane) for lane in lane_activity(config["state"]))
    if backlog:
        text += "\n\nBacklog (due, not done):\n" + "\n".join(
            f"  {b.stream} {b.night} {b.stage}: {b.why}" for b in backlog)
    return text


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m scripts.status",
        description="Show the transfer status, read from the state (markers and failure"
                    " records); --write rebuilds the status files and page.")
    parser.add_argument("--config", help="configuration file (default: $DESITRANSFER_CONFIG,"
                                          " else config.yaml beside the Snakefile)")
    parser.add_argument("--stream", help="this stream only (default: every stream)")
    parser.add_argument("--report", metavar="NIGHT",
                        help="one night as one self-contained HTML file on stdout: its"
                             " exposures, their stages with times, failures and logs")
    parser.add_argument("--nights", type=int, default=10, help="how many recent nights")
    parser.add_argument("--night", help="the exposures of one night (YYYYMMDD)")
    parser.add_argument("--failures", action="store_true", help="what needs a person")
    parser.add_argument("--latency", action="store_true",
                        help="publication → installed latency (median, p95, worst)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--write", action="store_true",
                        help="rebuild STATUS/desi_transfer_status_YYYY.json and index.html,"
                             " and write the metrics file")
    args = parser.parse_args(argv)
    for option, value in (("--night", args.night), ("--report", args.report)):
        if value is not None and not valid_night(value):
            parser.error(f"{option} {value}: expected YYYYMMDD, a real date")
    return args


def load_config(path: str) -> tuple[dict, dt.datetime]:
    """The configuration with its defaults, paths expanded, and the time it says it is.

    Raises
    ------
    ConfigurationError
        One line naming the file and what is wrong; a state directory that does not
        exist is one too (its report would be empty, not good).
    """
    try:
        config = read_configuration(path)
        config["state"], config["streams"]  # noqa: B018 (required keys)
        require_state(config, path)
        return config, get_now(config)
    except KeyError as err:
        raise ConfigurationError(f"{path}: {err.args[0]} is required; see README.md, section"
                                 " Configuration") from None


def only_stream(config: dict, name: str | None, path) -> dict:
    """`config` with `name` its only stream (``--stream``); all of them without one.

    Raises
    ------
    ConfigurationError
        `name` is not a configured stream (one line naming them).
    """
    if name is None:
        return config
    if name not in config["streams"]:
        raise ConfigurationError(f"--stream {name}: not a stream of {path} (streams:"
                                 f" {', '.join(sorted(config['streams']))})")
    return {**config, "streams": {name: config["streams"][name]}}


def report_output(config: dict, now: dt.datetime, night: str, config_file) -> str:
    """``--report NIGHT``: the night's HTML (scripts/status/night_report.py)."""
    from scripts.status.night_report import night_report

    nights = _chosen_nights(config, night, 1)
    problems = [p for n in nights
                for p in find_problems(n, config["state"], config["verify"]["max_attempts"])]
    judge_nights(config, nights, problems, now, read_record(
        reading.hpss_status_path(config["state"])))
    return night_report(night, nights, config["state"], str(config_file), now)


def main(argv: list[str] | None = None) -> int:
    args = parse_arguments(argv)
    path, origin = find_configuration(args.config)
    announce_configuration([path], origin)
    try:
        config, now = load_config(path)
        config = only_stream(config, args.stream, path)
    except ConfigurationError as err:
        print(f"status: {err}", file=sys.stderr)
        return 2
    written = []
    if args.write:
        try:
            written = write_status(config, now)
            from scripts.metrics import write_metrics  # prometheus_client: only here

            written.insert(-1, write_metrics(config, now))
        except OSError as err:
            print(f"status: cannot write the status files: {err}", file=sys.stderr)
            return 1
    if args.report:
        sys.stdout.write(report_output(config, now, args.report, path.absolute()))
        return 0
    if args.failures:
        output = failures_output(config, now, args.json)
    elif args.latency:
        output = latency_output(config, args.night, args.nights, args.json)
    else:
        output = nights_output(config, now, args.night, args.nights, args.json)
    if args.json:
        json.dump(output, sys.stdout, indent=1, default=str)
        print()
    else:
        print(output)
        if written:
            print(f"\nStatus page: {written[-1].absolute().as_uri()}")
    return 0
