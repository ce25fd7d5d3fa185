"""The status page: one self-contained HTML file an operator reads each morning.

``STATUS/index.html`` is rendered from ``templates/index.html.j2`` (Jinja2, which comes
with Snakemake) with the report `scripts.status.report.build_report` reads from the
state. Everything is inline (CSS and SVG; no script, no font, no image is fetched), so
it opens from a file, behind a firewall, and with JavaScript off. pandas does the
per-night aggregation behind the plots. Every value reaches the HTML escaped, and
printable (`scripts.escaping.printable`): a file name with any bytes cannot break it.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import TYPE_CHECKING

import jinja2
import markupsafe
import pandas as pd

import scripts.status.plots as plots
from scripts.escaping import printable
from scripts.markers import write_bytes_atomic
from scripts.status.backlog import due_time
from scripts.status.formatting import duration, human_bytes, lane_line, lane_text, short_time
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
    ExposureStatus,
    NightStatus,
)
from scripts.status.year_files import PUBLIC_MODE

if TYPE_CHECKING:  # the report module imports this one, for the page
    from scripts.status.report import Report

#: CSS class of each night and exposure state.
NIGHT_CLASS = {NIGHT_DONE: "done", NIGHT_ATTENTION: "attention", NIGHT_PROGRESS: "progress"}
EXPOSURE_CLASS = {INSTALLED: "done", INSTALLED_WITH_ERRORS: "attention", HELD: "attention",
                  RETRYING: "retrying", TRANSFERRING: "progress", PUBLISHED: "progress"}
#: Nights whose details are open when the page loads (besides those needing a person).
OPEN_NIGHTS = 1
TEMPLATES = Path(__file__).with_name("templates")


def exposure_frame(nights: list[NightStatus]) -> pd.DataFrame:
    """One row per exposure of the shown nights: the data the plots use."""
    rows = []
    for night in nights:
        for exposure in night.sorted_exposures():
            latency = exposure.latency()
            staged = exposure.stages.get("staged", {})
            copied = staged.get("outcome") == "staged"
            rows.append({
                "stream": night.stream, "night": night.night, "expid": exposure.expid,
                "state": exposure.state, "bytes": exposure.bytes,
                "installed_at": exposure.time("installed"),
                "latency_s": None if latency is None else latency[0],
                "latency_from": None if latency is None else latency[1],
                "rsync_bytes": staged.get("bytes") if copied else None,
                "rsync_s": staged.get("duration") if copied else None,
            })
    columns = ["stream", "night", "expid", "state", "bytes", "installed_at", "latency_s",
               "latency_from", "rsync_bytes", "rsync_s"]
    frame = pd.DataFrame(rows, columns=columns)
    for column in ("bytes", "latency_s", "rsync_bytes", "rsync_s"):
        frame[column] = pd.to_numeric(frame[column], errors="coerce")
    frame["installed_at"] = pd.to_datetime(frame["installed_at"], utc=True)
    return frame


def night_frame(exposures: pd.DataFrame, nights: list[NightStatus]) -> pd.DataFrame:
    """Per night (oldest first): installed volume and rsync throughput."""
    base = pd.DataFrame([{"stream": n.stream, "night": n.night, "state": n.state}
                         for n in nights], columns=["stream", "night", "state"])
    installed = exposures[exposures["installed_at"].notna()]
    volume = installed.groupby(["stream", "night"])["bytes"].sum().rename("volume")
    rsync = exposures.dropna(subset=["rsync_bytes", "rsync_s"])
    sums = rsync[rsync["rsync_s"] > 0].groupby(["stream", "night"])[["rsync_bytes", "rsync_s"]]
    totals = sums.sum()
    throughput = (totals["rsync_bytes"] / totals["rsync_s"]).rename("throughput")
    frame = base.join(volume, on=["stream", "night"]).join(throughput, on=["stream", "night"])
    frame["volume"] = frame["volume"].fillna(0)
    return frame.sort_values(["night", "stream"]).reset_index(drop=True)


def installed_count(night: NightStatus) -> int:
    return night.count(lambda e: "installed" in e.stages)


def stage_cell(exposure: ExposureStatus, stage: str) -> tuple[str, str]:
    """(CSS class, text) of a time cell: ok when done, bad when failed, wait when not yet."""
    record, failure = exposure.stages.get(stage), exposure.failures.get(stage)
    if record is not None:
        failed = stage == "checksummed" and exposure.verification == "failed"
        return ("time bad", f"{short_time(record.get('time'))} failed") if failed else (
            "time ok", short_time(record.get("time")))
    if failure is not None:
        word = "held" if failure.get("held") else "failed"
        return "time bad", f"{short_time(failure.get('time'))} {word}"
    return "wait", "—"


def backup_cell(exposure: ExposureStatus, night: NightStatus) -> tuple[str, str]:
    if exposure.archive is not None:
        return "time ok", short_time(exposure.archive.get("time"))
    failure = night.backup_failure()
    if failure is not None and "installed" in exposure.stages:
        return "time bad", f"{short_time(failure.get('time'))} failed"
    return "wait", "—"


def night_summary(night: NightStatus, config: dict) -> list[str]:
    """The facts in a night's one-line summary."""
    total = len(night.exposures)
    parts = [f"{total} exposure{'s' if total != 1 else ''}",
             f"installed {installed_count(night)}/{total}"
             f" ({human_bytes(night.bytes)})",
             f"verified {night.count(lambda e: e.verification == 'verified')}/{total}"]
    caughtup, backedup = night.stages.get("caughtup"), night.stages.get("backedup")
    parts.append(f"caught up {short_time(caughtup.get('time'))}" if caughtup
                 else f"catch-up from {short_time(due_time(night.night, config['catchup_hour']))}")
    if config["backup"]["backend"] == "none":
        parts.append("no backup (backend none)")
    elif backedup:
        parts.append(f"backed up {short_time(backedup.get('time'))}"
                     f" ({len(night.archived())}/{total})")
    else:
        parts.append(f"backup from {short_time(due_time(night.night, config['backup_hour']))}")
    return parts


def _printable(value: object) -> object:
    """Every plain string shown goes through `printable`; the template's own markup
    (a macro's output) is left as it is."""
    if isinstance(value, str) and not isinstance(value, markupsafe.Markup):
        return printable(value)
    return value


@functools.cache
def environment() -> jinja2.Environment:
    """Jinja2 with HTML escaping, and `printable` applied to every value shown."""
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES),
                             autoescape=True, undefined=jinja2.StrictUndefined,
                             finalize=_printable, trim_blocks=True, lstrip_blocks=True)
    env.filters.update(short_time=short_time, human_bytes=human_bytes, duration=duration,
                       lane_text=lane_text, lane_line=lane_line,
                       printable=printable)
    env.globals.update(stage_cell=stage_cell, installed_count=installed_count,
                       backup_cell=backup_cell, night_summary=night_summary,
                       night_class=NIGHT_CLASS,
                       exposure_class=EXPOSURE_CLASS, abspath=os.path.abspath)
    return env


def charts(exposures: pd.DataFrame, nights: pd.DataFrame) -> dict:
    volume_unit, volume_scale = ("GB", 1e9) if nights["volume"].max() >= 1e9 else ("MB", 1e6)
    return {
        "volume": plots.bar_chart("Data volume per night", nights, "volume", volume_scale,
                                  volume_unit, "volume", NIGHT_CLASS),
        "latency": plots.latency_chart("Transfer latency per exposure", exposures,
                                       EXPOSURE_CLASS),
        "throughput": plots.bar_chart("rsync throughput per night", nights, "throughput", 1e6,
                                      "MB/s", "throughput", NIGHT_CLASS),
        "latency_note": plots.latency_note(exposures),
    }


def render(report: Report) -> str:
    """The whole page as one HTML string."""
    exposures = exposure_frame(report.nights)
    nights = night_frame(exposures, report.nights)
    backlog: dict[tuple[str, str], list] = {}
    for item in report.backlog:
        backlog.setdefault((item.stream, item.night), []).append(item)
    opened = {(n.stream, n.night) for i, n in enumerate(report.nights)
              if i < OPEN_NIGHTS or n.state == NIGHT_ATTENTION}
    return environment().get_template("index.html.j2").render(
        report=report, plots=charts(exposures, nights), geometry=plots,
        installed_volume=int(nights["volume"].sum()), backlog_by_night=backlog,
        opened=opened, sorted_backlog=sorted(report.backlog, key=lambda b: (b.night, b.stage)))


def write_page(report: Report, path: str | os.PathLike) -> Path:
    """Write the page atomically (temporary file + rename); return its path."""
    path = Path(path)
    write_bytes_atomic(path, render(report).encode(), PUBLIC_MODE)
    return path
