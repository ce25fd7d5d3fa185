"""The report (everything the page shows, read from the state) and the rebuild of the
status files after a run."""

from __future__ import annotations

import datetime as dt
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import scripts.status.reading as reading
from scripts import __version__
from scripts.configuration import get_now, with_defaults
from scripts.joblog import file_handler
from scripts.lanes import lane_activity
from scripts.markers import read_record, write_json_atomic
from scripts.state_layout import logs_directory, recall_record_path, status_directory
from scripts.status.backlog import classify, night_backlog
from scripts.status.latency import LatencySummary, latency_summary
from scripts.status.model import BacklogItem, NightStatus
from scripts.status.problems import Problem, run_problems, stream_problems
from scripts.status.year_files import public_directory, write_year_files

log = logging.getLogger("status")

PAGE = "index.html"
#: The workflow's page when ``STATUS/index.html`` is not its own (DESI's status page,
#: whose JavaScript reads the year files beside it): that one is never overwritten.
OWN_PAGE = "transfer.html"
#: What marks a page this workflow wrote (the template's second line); the footer
#: words recognise a page of a version written before the mark.
PAGE_MARK = b"<!-- desitransfer-workflow status page -->"
OLD_PAGE_MARK = b"by desitransfer-workflow"
PAGE_NIGHTS = 30
#: The problems the page shows (their keys), beside it: a run that changes none of the
#: state's records can still bring a new problem (a stale lock, a stalled lane).
PAGE_PROBLEMS = ".desitransfer-problems.json"


@dataclass
class Report:
    """Everything the status page shows, read from the state."""

    generated: dt.datetime
    now: dt.datetime
    config: dict
    nights: list[NightStatus]                 # newest first, every stream
    problems: list[Problem]                   # everything that needs a person
    backlog: list[BacklogItem]
    hpss: dict | None
    listings: dict[str, dt.datetime | None]   # stream -> time of the last listing
    latency: LatencySummary                   # over the nights shown
    lanes: list[dict] = field(default_factory=list)  # what each lane is doing now
    version: str = __version__
    year_files: list[str] = field(default_factory=list)  # relative to the page
    recall: dict | None = None                # the last tape recall's result record




def year_file_directory(config: dict, stream: str) -> Path:
    """Where a stream's year files go: the first stream's in STATUS itself, where DESI's
    own status page (``index.html`` and its JavaScript) reads them; every further
    stream's in ``STATUS/STREAM``."""
    base = status_directory(config)
    return base if stream == next(iter(config["streams"])) else base / stream


def is_own_page(path: Path) -> bool:
    """Whether the page at `path` was written by this workflow (absent: it may be)."""
    try:
        content = path.read_bytes()
    except FileNotFoundError:
        return True
    except OSError:  # unreadable: not ours to replace
        return False
    return PAGE_MARK in content[:4096] or OLD_PAGE_MARK in content


def page_path(config: dict) -> Path:
    """Where the workflow's page goes: ``STATUS/index.html`` unless that file is
    someone else's (DESI's own page), then ``STATUS/transfer.html``."""
    directory = status_directory(config)
    index = directory / PAGE
    return index if is_own_page(index) else directory / OWN_PAGE


def recent_nights(config: dict, stream: str, count: int,
                  index: dict[str, reading.NightFiles] | None = None) -> list[NightStatus]:
    """The `count` newest nights of a stream (state and last listing), read in full."""
    state = config["state"]
    index = reading.scan_stream(state, stream) if index is None else index
    listing, _ = reading.read_listing(state, stream)
    names = sorted(set(index) | set(listing), reverse=True)[:count]
    return [reading.read_night(state, stream, n, index.get(n, reading.NightFiles()),
                               listing.get(n, ()))
            for n in names]


def judge_nights(config: dict, nights: list[NightStatus], problems: list[Problem],
                 now: dt.datetime, hpss: dict | None) -> list[BacklogItem]:
    """Colour each night by its problems and backlog; return the backlog."""
    backlog = []
    for night in nights:
        items = night_backlog(night, now, config, hpss)
        backlog += items
        mine = [p for p in problems if p.stream == night.stream and p.night == night.night]
        classify(night, mine, items, config)
    return backlog


def build_report(config: dict, now: dt.datetime | None = None,
                 nights: int = PAGE_NIGHTS, ending_run: str | None = None) -> Report:
    """Read the state into what the page shows: recent nights, problems, backlog
    (`ending_run`: see `write_status`)."""
    config = with_defaults(config)
    now = now or get_now(config)
    state = config["state"]
    hpss = read_record(reading.hpss_status_path(state))
    shown, problems, listings = [], run_problems(config), {}
    for stream in config["streams"]:
        index = reading.scan_stream(state, stream)
        problems += stream_problems(config, stream, now, index)
        listings[stream] = reading.read_listing(state, stream)[1]
        shown += recent_nights(config, stream, nights, index)
    backlog = judge_nights(config, shown, problems, now, hpss)
    shown.sort(key=lambda n: (n.night, n.stream), reverse=True)
    latency = latency_summary(e for n in shown for e in n.exposures.values())
    return Report(dt.datetime.now(dt.UTC), now, config, shown, problems, backlog, hpss,
                  listings, latency, lane_activity(state, ending_run),
                  recall=read_record(recall_record_path(state)))


def write_status(config: dict, now: dt.datetime | None = None, page: bool = True,
                 settle: float | None = None, ending_run: str | None = None) -> list[Path]:
    """Rebuild every status file from the state: the year files, then the page.

    `ending_run` is the run that rebuilds as it ends (Snakemake's onsuccess/onerror):
    the page shows its lanes as they are after it, not running.

    Returns
    -------
    list of Path
        The files written (the page last).
    """
    config = with_defaults(config)
    directory = status_directory(config)
    public_directory(directory)
    files = []
    for stream in config["streams"]:
        extra = {} if settle is None else {"settle": settle}
        files += write_year_files(config["state"], stream,
                                  year_file_directory(config, stream), **extra)
    if page:
        from scripts.status.page import write_page  # Jinja2 and pandas: only for the page

        report = build_report(config, now, ending_run=ending_run)
        report.year_files = [str(f.relative_to(directory)) for f in files]
        path = page_path(config)
        if path.name != PAGE and not path.exists():
            log.warning("%s is not this workflow's page (DESI's own status page?): it is"
                        " left alone; the workflow's page is %s", directory / PAGE, path)
        files.append(write_page(report, path))
        write_json_atomic(directory / PAGE_PROBLEMS,
                          {"keys": sorted(p.key for p in report.problems)})
    return files


def page_shows(config: dict, problems: list[Problem]) -> bool:
    """Whether the status page shows exactly `problems` (by their keys); if not, the
    cron entry rebuilds it, so that what is mailed is on the page too."""
    shown = read_record(status_directory(config) / PAGE_PROBLEMS) or {}
    return shown.get("keys") == sorted(p.key for p in problems)


def _status_log(config: dict) -> logging.Handler:
    logs = logs_directory(config)
    logs.mkdir(parents=True, exist_ok=True)
    return file_handler(logs / "status.log")


#: In a drain, the longest the status files may wait for a later run to rebuild them.
DRAIN_REBUILD_SECONDS = 60


def rebuild_can_wait(config: dict, draining: bool, now: float | None = None) -> bool:
    """Whether a successful run may leave the status rebuild to the next run.

    Only a run of a drain (`draining`: an exposure-lane run that left listed exposures
    unplanned, so the cron entry starts the next run at once) whose page is younger
    than `DRAIN_REBUILD_SECONDS`. At archive scale a rebuild takes seconds (2 s at
    2,000 nights), as long as a 20-exposure run, and the next run overwrites it. The
    drain's last run, a failed run and every night-lane run rebuild.
    """
    if not draining:
        return False
    try:
        written = page_path(config).stat().st_mtime
    except OSError:
        return False
    return (time.time() if now is None else now) - written < DRAIN_REBUILD_SECONDS


def rebuild_after_run(config: dict, ending_run: str | None = None) -> str:
    """Snakemake's onsuccess/onerror (and the cron entry after a refused configuration):
    rebuild the status files; one line for the log.

    Writing the status files must not turn a good transfer into a failed run: an
    error (a full disk, a permission, a configuration the page cannot use) is logged
    to ``STATE/logs/status.log`` and reported in the returned line.
    """
    handler: logging.Handler = logging.NullHandler()
    start = time.monotonic()
    try:
        config = with_defaults(config)
        handler = _status_log(config)
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        files = write_status(config, ending_run=ending_run)
        line = (f"Status files rebuilt from the state in {time.monotonic() - start:.1f} s;"
                f" status page: {files[-1].absolute()}")
        log.info(line)
        return line
    except (OSError, KeyError, TypeError, ValueError, ArithmeticError) as err:
        # ArithmeticError: a date out of range from a refused value (lookback_nights)
        line = (f"Status files NOT rebuilt ({type(err).__name__}: {err}); the transfers are"
                " not affected. Fix it, then run: python -m scripts.status --write")
        log.error(line)
        return line
    finally:
        log.removeHandler(handler)
        handler.close()
