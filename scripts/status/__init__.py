"""What the state says: DESI's status files, the status page, and the status command.

The markers and failure records are the truth; everything here is a view of them that
can be rebuilt at any time, never patched. One module per job:

`model`       an exposure's and a night's records, and the states they are in
`reading`     reading them from the state (and the last listing, HPSS's last answer)
`problems`    what needs a person: the one definition (alerts, page and command)
`run_records` the cron entry's records of the whole run (configuration, mountain)
`backlog`     what is due and not done, and each night's colour
`latency`     publication → installed: median, p95, worst
`year_files`  DESI's ``desi_transfer_status_YYYY.json``
`report`      everything the page shows; the rebuild after a run
`page`        the page (``templates/index.html.j2``, Jinja2; pandas for the plots)
`cli`         ``python -m scripts.status``

This file imports none of pandas, Jinja2 or the page, so the command stays fast.
"""

from scripts.status.backlog import classify, due_time, night_backlog
from scripts.status.cli import main
from scripts.status.latency import LatencySummary, latency_summary
from scripts.status.model import (
    HELD,
    INSTALLED,
    INSTALLED_WITH_ERRORS,
    NIGHT_ATTENTION,
    NIGHT_DONE,
    NIGHT_PROGRESS,
    PUBLISHED,
    RETRYING,
    TRANSFERRING,
    BacklogItem,
    ExposureStatus,
    NightStatus,
)
from scripts.status.problems import Problem, all_problems, find_problems
from scripts.status.reading import (
    hpss_status_path,
    listing_cache_path,
    read_listing,
    read_night,
    record_hpss_status,
    scan_stream,
)
from scripts.status.report import (
    PAGE,
    Report,
    build_report,
    rebuild_after_run,
    status_directory,
    write_status,
    year_file_directory,
)
from scripts.status.year_files import MANIFEST, write_year_files

__all__ = [
    "HELD", "INSTALLED", "INSTALLED_WITH_ERRORS", "MANIFEST", "NIGHT_ATTENTION", "NIGHT_DONE",
    "NIGHT_PROGRESS", "PAGE", "PUBLISHED", "RETRYING", "TRANSFERRING", "BacklogItem",
    "ExposureStatus", "LatencySummary", "NightStatus", "Problem", "Report", "all_problems",
    "build_report", "classify", "due_time", "find_problems", "hpss_status_path",
    "latency_summary", "listing_cache_path", "main", "night_backlog", "read_listing",
    "read_night", "rebuild_after_run", "record_hpss_status", "scan_stream",
    "status_directory", "write_status", "write_year_files", "year_file_directory",
]
