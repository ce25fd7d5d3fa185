"""The status page: one self-contained HTML file an operator reads each morning.

``STATUS/index.html`` shows the most recent nights first, each coloured by its state
(done, needs a person, in progress), every exposure's staged / verified / installed /
backed-up times and failures, what needs a person, the backlog of nights waiting for
catch-up or backup and why, and three plots: data volume per night, transfer latency
per exposure, and rsync throughput per night.

Everything is inline (CSS and SVG plots drawn here; no script, no font, no image is
fetched), so it opens from a file, behind a firewall, and with JavaScript off. The
tables are built with pandas from the report that `scripts.status.build_report` reads
from the state.
"""

from __future__ import annotations

import html
import math
import os
from pathlib import Path

import pandas as pd

from scripts.status import (
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
    Problem,
    Report,
    due_time,
    human_bytes,
    short_time,
    write_bytes_atomic,
)

#: CSS class of each night and exposure state.
NIGHT_CLASS = {NIGHT_DONE: "done", NIGHT_ATTENTION: "attention", NIGHT_PROGRESS: "progress"}
EXPOSURE_CLASS = {INSTALLED: "done", INSTALLED_WITH_ERRORS: "attention", HELD: "attention",
                  RETRYING: "retrying", TRANSFERRING: "progress", PUBLISHED: "progress"}
COLOURS = {"done": "#2da44e", "attention": "#cf222e", "progress": "#d4a72c",
           "retrying": "#bc4c00"}
#: Nights whose details are open when the page loads (besides those needing a person).
OPEN_NIGHTS = 1

CSS = """
:root { --done:#1a7f37; --done-bg:#dafbe1; --att:#cf222e; --att-bg:#ffebe9;
  --prog:#7d4e00; --prog-bg:#fff8c5; --retry:#bc4c00; --muted:#57606a; --line:#d0d7de; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif;
  margin: 0; color: #1f2328; background: #f6f8fa; }
main { max-width: 1180px; margin: 0 auto; padding: 18px 20px 40px; }
h1 { font-size: 22px; margin: 0 0 4px; }
h2 { font-size: 17px; margin: 26px 0 8px; }
.meta, .note { color: var(--muted); margin: 2px 0; }
.badge { display: inline-block; padding: 1px 8px; border-radius: 10px; font-size: 12px;
  font-weight: 600; white-space: nowrap; }
.badge.done { background: var(--done-bg); color: var(--done); }
.badge.attention { background: var(--att-bg); color: var(--att); }
.badge.progress { background: var(--prog-bg); color: var(--prog); }
.badge.retrying { background: #fff1e5; color: var(--retry); }
.cards { display: flex; gap: 12px; flex-wrap: wrap; margin-top: 14px; }
.card { background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: 10px 14px;
  min-width: 150px; flex: 1; }
.card .value { font-size: 22px; font-weight: 600; }
.card .label { color: var(--muted); font-size: 12px; text-transform: uppercase; }
.card.attention { border-color: var(--att); background: var(--att-bg); }
.card.done { border-left: 5px solid var(--done); }
.card.progress { border-left: 5px solid #d4a72c; }
table { border-collapse: collapse; width: 100%; background: #fff; }
th, td { text-align: left; padding: 4px 8px; border-bottom: 1px solid var(--line);
  vertical-align: top; }
th { font-size: 12px; text-transform: uppercase; color: var(--muted); background: #f6f8fa; }
td.time, td.num { font-variant-numeric: tabular-nums; white-space: nowrap; }
td.num { text-align: right; }
td.ok { color: var(--done); }
td.bad { color: var(--att); font-weight: 600; }
td.wait { color: var(--muted); }
td.reason { min-width: 160px; overflow-wrap: anywhere; }
td.reason.bad { font-weight: normal; }
table.exposures { font-size: 13px; }
td.time.bad { white-space: normal; min-width: 90px; }
.box { background: #fff; border: 1px solid var(--line); border-radius: 8px; overflow-x: auto; }
.scroll { overflow-x: auto; }
.box.attention { border-color: var(--att); }
.empty { padding: 10px 14px; color: var(--muted); background: #fff; border: 1px solid var(--line);
  border-radius: 8px; }
.plots { display: flex; gap: 12px; flex-wrap: wrap; }
figure { margin: 0; background: #fff; border: 1px solid var(--line); border-radius: 8px;
  padding: 8px; flex: 1; min-width: 360px; }
figcaption { font-weight: 600; margin: 0 4px 4px; }
figure .note { font-size: 12px; margin: 4px; }
details.night { background: #fff; border: 1px solid var(--line); border-left-width: 6px;
  border-radius: 8px; margin: 8px 0; }
details.night.done { border-left-color: var(--done); }
details.night.attention { border-left-color: var(--att); }
details.night.progress { border-left-color: #d4a72c; }
details.night > summary { cursor: pointer; padding: 8px 12px; }
details.night > summary strong { font-size: 15px; margin: 0 6px; }
.nightbody { padding: 0 12px 12px; }
.nightbody ul { margin: 4px 0 8px; padding-left: 18px; }
tr.attention td:first-child { box-shadow: inset 4px 0 var(--att); }
tr.retrying td:first-child { box-shadow: inset 4px 0 var(--retry); }
tr.progress td:first-child { box-shadow: inset 4px 0 #d4a72c; }
tr.done td:first-child { box-shadow: inset 4px 0 var(--done); }
footer { margin-top: 28px; color: var(--muted); font-size: 12px; }
footer a { color: inherit; }
"""


def esc(value: object) -> str:
    return html.escape("" if value is None else str(value))


def fmt_seconds(seconds: float | None) -> str:
    if seconds is None or (isinstance(seconds, float) and math.isnan(seconds)):
        return ""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


# --------------------------------------------------------------------------- tables


def exposure_frame(nights: list[NightStatus]) -> pd.DataFrame:
    """One row per exposure of the shown nights: the data the tables and plots use."""
    rows = []
    for night in nights:
        for exposure in night.sorted_exposures():
            latency = exposure.latency()
            staged = exposure.stages.get("staged", {})
            duration = staged.get("duration")
            rows.append({
                "stream": night.stream, "night": night.night, "night_state": night.state,
                "expid": exposure.expid, "state": exposure.state, "bytes": exposure.bytes,
                "installed_at": exposure.time("installed"),
                "latency_s": None if latency is None else latency[0],
                "latency_from": None if latency is None else latency[1],
                "rsync_bytes": staged.get("bytes") if staged.get("outcome") == "staged" else None,
                "rsync_s": duration if staged.get("outcome") == "staged" else None,
            })
    columns = ["stream", "night", "night_state", "expid", "state", "bytes", "installed_at",
               "latency_s", "latency_from", "rsync_bytes", "rsync_s"]
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
    rsync = rsync[rsync["rsync_s"] > 0]
    sums = rsync.groupby(["stream", "night"])[["rsync_bytes", "rsync_s"]].sum()
    throughput = (sums["rsync_bytes"] / sums["rsync_s"]).rename("throughput")
    frame = base.join(volume, on=["stream", "night"]).join(throughput, on=["stream", "night"])
    frame["volume"] = frame["volume"].fillna(0)
    return frame.sort_values(["night", "stream"]).reset_index(drop=True)


def problems_table(problems: list[Problem]) -> str:
    if not problems:
        return '<p class="empty" id="no-problems">Nothing needs a person.</p>'
    rows = "".join(
        f'<tr class="attention"><td>{esc(p.stream)}</td><td><a href="#{esc(anchor(p))}">'
        f'{esc(p.item)}</a></td><td>{esc(p.stage)}</td><td class="reason">{esc(p.reason)}</td>'
        f'<td class="num">{esc(p.attempts)}</td><td class="time">{esc(short_time(p.time))}</td>'
        f'<td class="reason">{esc(p.action)}</td></tr>'
        for p in problems)
    return ('<div class="box attention"><table id="problems"><thead><tr><th>Stream</th>'
            "<th>Night/exposure</th><th>Stage</th><th>Reason</th><th>Attempts</th>"
            f"<th>Since</th><th>What to do</th></tr></thead><tbody>{rows}</tbody></table></div>")


def anchor(problem: Problem) -> str:
    if problem.expid:
        return f"e-{problem.stream}-{problem.night}-{problem.expid}"
    return f"n-{problem.stream}-{problem.night}"


def backlog_table(backlog: list[BacklogItem]) -> str:
    if not backlog:
        return '<p class="empty" id="no-backlog">No night is waiting for catch-up or backup.</p>'
    rows = "".join(
        f'<tr class="{"attention" if b.needs_person else "progress"}"><td>{esc(b.stream)}</td>'
        f'<td><a href="#n-{esc(b.stream)}-{esc(b.night)}">{esc(b.night)}</a></td>'
        f"<td>{esc(b.stage)}</td><td class=\"time\">{esc(short_time(b.due))}</td>"
        f'<td class="reason">{esc(b.why)}</td></tr>'
        for b in sorted(backlog, key=lambda b: (b.night, b.stage)))
    return ('<div class="box"><table id="backlog"><thead><tr><th>Stream</th><th>Night</th>'
            "<th>Stage</th><th>Due since (UTC)</th><th>Why it waits</th></tr></thead>"
            f"<tbody>{rows}</tbody></table></div>")


def stage_cell(exposure: ExposureStatus, stage: str) -> str:
    """A time cell: green when done, red when failed, grey dash when not yet."""
    record = exposure.stages.get(stage)
    failure = exposure.failures.get(stage)
    if record is not None:
        if stage == "checksummed" and record.get("outcome") == "failed":
            return f'<td class="time bad">{esc(short_time(record.get("time")))} failed</td>'
        return f'<td class="time ok">{esc(short_time(record.get("time")))}</td>'
    if failure is not None:
        word = "held" if failure.get("held") else "failed"
        return f'<td class="time bad">{esc(short_time(failure.get("time")))} {word}</td>'
    return '<td class="wait">—</td>'


def backup_cell(exposure: ExposureStatus, night: NightStatus) -> str:
    if exposure.archive is not None:
        name = exposure.archive.get("name", "")
        return (f'<td class="time ok" title="{esc(name)}">'
                f"{esc(short_time(exposure.archive.get('time')))}</td>")
    failure = night.backup_failure()
    if failure is not None and "installed" in exposure.stages:
        return f'<td class="time bad">{esc(short_time(failure.get("time")))} failed</td>'
    return '<td class="wait">—</td>'


def exposure_rows(night: NightStatus) -> str:
    rows = []
    for exposure in night.sorted_exposures():
        latency = exposure.latency()
        state = exposure.state
        failure = exposure.failure_text()
        rows.append(
            f'<tr id="e-{esc(night.stream)}-{esc(night.night)}-{esc(exposure.expid)}"'
            f' class="{EXPOSURE_CLASS[state]}"><td>{esc(exposure.expid)}</td>'
            f'<td><span class="badge {EXPOSURE_CLASS[state]}">{esc(state)}</span></td>'
            f'<td class="num">{esc(human_bytes(exposure.bytes)) if exposure.bytes else ""}</td>'
            f"{stage_cell(exposure, 'staged')}{stage_cell(exposure, 'checksummed')}"
            f"{stage_cell(exposure, 'installed')}{backup_cell(exposure, night)}"
            f'<td class="num">{esc(fmt_seconds(latency[0] if latency else None))}</td>'
            f'<td class="reason{" bad" if failure else ""}">{esc(failure)}</td></tr>')
    return "".join(rows)


def night_section(night: NightStatus, backlog: list[BacklogItem], open_: bool,
                  config: dict) -> str:
    css = NIGHT_CLASS[night.state]
    archived = night.archived()
    total = len(night.exposures)
    installed = night.count(lambda e: "installed" in e.stages)
    verified = night.count(lambda e: e.verification == "verified")
    parts = [f"{total} exposure{'s' if total != 1 else ''}",
             f"installed {installed}/{total} ({human_bytes(night.bytes)})",
             f"verified {verified}/{total}"]
    caughtup = night.stages.get("caughtup")
    catch_up_due = due_time(night.night, config["catchup_hour"])
    parts.append(f"caught up {short_time(caughtup.get('time'))}" if caughtup
                 else f"catch-up from {short_time(catch_up_due)}")
    backedup = night.stages.get("backedup")
    if config["backup"]["backend"] == "none":
        parts.append("no backup (backend none)")
    elif backedup:
        parts.append(f"backed up {short_time(backedup.get('time'))} ({len(archived)}/{total})")
    else:
        parts.append(f"backup from {short_time(due_time(night.night, config['backup_hour']))}")
    items = []
    if caughtup:
        changed = len(caughtup.get("changed_files", []) or [])
        items.append(f"Catch-up: {esc(caughtup.get('outcome', ''))}"
                     f"{f', {changed} changed file(s)' if changed else ''}.")
    for archive in (backedup or {}).get("archives", []):
        items.append(f"Archive <code>{esc(archive.get('path') or archive.get('name'))}</code>:"
                     f" {len(archive.get('exposures', []))} exposure(s),"
                     f" {esc(human_bytes(archive.get('size') or 0))},"
                     f" {esc(short_time(archive.get('time')))}.")
    for held in (backedup or {}).get("held", []):
        items.append(f"Exposure {esc(held)} held by policy: not in the archive.")
    for stage, failure in sorted(night.failures.items()):
        items.append(f'<span class="badge attention">{esc(stage)} failed</span> '
                     f"{esc(failure.get('reason', '?'))} (attempt {esc(failure.get('attempts'))},"
                     f" {esc(short_time(failure.get('time')))})")
    for item in backlog:
        items.append(f'<span class="badge {"attention" if item.needs_person else "progress"}">'
                     f"{esc(item.stage)} waiting</span> {esc(item.why)}")
    facts = f"<ul>{''.join(f'<li>{i}</li>' for i in items)}</ul>" if items else ""
    table = ""
    if night.exposures:
        table = ('<div class="scroll"><table class="exposures"><thead><tr><th>Exposure</th>'
                 "<th>State</th><th>Size</th><th>Staged</th><th>Verified</th><th>Installed</th>"
                 "<th>Backed up</th><th>Latency</th><th>Failure</th></tr></thead>"
                 f"<tbody>{exposure_rows(night)}</tbody></table></div>")
    return (f'<details class="night {css}" id="n-{esc(night.stream)}-{esc(night.night)}"'
            f'{" open" if open_ else ""}><summary><span class="badge {css}">{esc(night.state)}'
            f"</span><strong>{esc(night.night)}</strong>"
            f'<span class="meta">{esc(night.stream)} · {esc(" · ".join(parts))}</span>'
            f'</summary><div class="nightbody">{facts}{table}</div></details>')


# --------------------------------------------------------------------------- plots

WIDTH, HEIGHT = 360, 210
LEFT, RIGHT, TOP, BOTTOM = 50, 12, 12, 42


def nice_ticks(top: float, count: int = 4) -> list[float]:
    """Round tick values from 0 to at least `top` (1, 2, 2.5 or 5 × 10^k apart)."""
    if not top or top <= 0 or math.isnan(top):
        return [0.0, 1.0]
    raw = top / count
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)
    ticks = [0.0]
    while ticks[-1] < top - 1e-12:
        ticks.append(round(ticks[-1] + step, 10))
    return ticks


def tick_label(value: float) -> str:
    return f"{value:g}" if abs(value) < 1e5 else f"{value:.2g}"


def svg_frame(title: str, body: str, y_ticks: list[float], y_label: str,
              x_labels: list[tuple[float, str, str]]) -> str:
    """An SVG chart: grid, axes, tick labels, and the `body` drawn in plot coordinates."""
    plot_h = HEIGHT - TOP - BOTTOM
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}"'
             f' width="100%" role="img" aria-label="{esc(title)}"'
             ' font-family="system-ui, sans-serif" font-size="10">']
    top = y_ticks[-1]
    for tick in y_ticks:
        y = TOP + plot_h - plot_h * tick / top
        parts.append(f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y:.1f}" y2="{y:.1f}"'
                     f' stroke="{"#8c959f" if tick == 0 else "#eaeef2"}"/>'
                     f'<text x="{LEFT - 4}" y="{y + 3:.1f}" text-anchor="end" fill="#57606a">'
                     f"{esc(tick_label(tick))}</text>")
    parts.append(f'<text x="12" y="{TOP + plot_h / 2:.0f}" fill="#57606a" text-anchor="middle"'
                 f' transform="rotate(-90 12 {TOP + plot_h / 2:.0f})">{esc(y_label)}</text>')
    for x, label, anchor_ in x_labels:
        parts.append(f'<text x="{x:.1f}" y="{HEIGHT - BOTTOM + 14}" text-anchor="{anchor_}"'
                     f' fill="#57606a">{esc(label)}</text>')
    parts.append(body)
    parts.append("</svg>")
    return "".join(parts)


def empty_chart(title: str, message: str) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}"'
            f' width="100%" role="img" aria-label="{esc(title)}"><rect x="0" y="0"'
            f' width="{WIDTH}" height="{HEIGHT}" fill="#f6f8fa"/><text x="{WIDTH / 2}"'
            f' y="{HEIGHT / 2}" text-anchor="middle" fill="#57606a"'
            f' font-family="system-ui, sans-serif" font-size="12">{esc(message)}</text></svg>')


def bar_chart(title: str, nights: pd.DataFrame, column: str, scale: float, unit: str,
              css_class: str) -> str:
    """One bar per night (oldest left), coloured by the night's state."""
    data = nights.dropna(subset=[column])
    data = data[data[column] > 0]
    if data.empty:
        return empty_chart(title, "no data yet")
    values = data[column] / scale
    ticks = nice_ticks(float(values.max()))
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    slot = plot_w / len(data)
    width = max(2.0, min(28.0, slot * 0.7))
    bars, labels = [], []
    every = max(1, math.ceil(len(data) / 8))
    for i, (row, value) in enumerate(zip(data.itertuples(), values, strict=True)):
        x = LEFT + slot * i + (slot - width) / 2
        h = plot_h * value / ticks[-1]
        colour = COLOURS[NIGHT_CLASS.get(row.state, "progress")]
        bars.append(f'<rect class="{css_class}" x="{x:.1f}" y="{TOP + plot_h - h:.1f}"'
                    f' width="{width:.1f}" height="{max(h, 0.5):.1f}" fill="{colour}">'
                    f"<title>{esc(row.night)} {esc(row.stream)}: {value:.3g} {esc(unit)}"
                    "</title></rect>")
        if (len(data) - 1 - i) % every == 0:  # evenly spaced, the newest night always
            labels.append((x + width / 2, f"{row.night[4:6]}-{row.night[6:]}", "middle"))
    return svg_frame(title, "".join(bars), ticks, unit, labels)


def latency_chart(title: str, exposures: pd.DataFrame) -> str:
    """Latency of every installed exposure, one strip per night (oldest left).

    Within a night's strip the exposures are spread in the order they were installed,
    so a slow stretch of the night shows as a rising run of points.
    """
    data = exposures.dropna(subset=["latency_s", "installed_at"])
    if data.empty:
        return empty_chart(title, "no installed exposure yet")
    top_seconds = float(data["latency_s"].max())
    scale, unit = (1, "s") if top_seconds < 120 else (60, "min") if top_seconds < 7200 else (
        3600, "h")
    ticks = nice_ticks(top_seconds / scale)
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    groups = list(data.sort_values("installed_at").groupby("night", sort=True))
    slot = plot_w / len(groups)
    every = max(1, math.ceil(len(groups) / 8))
    points, labels = [], []
    for i, (night, group) in enumerate(groups):
        left, span = LEFT + slot * i + slot * 0.15, slot * 0.7
        for j, row in enumerate(group.itertuples()):
            x = left + span * (j + 0.5) / len(group)
            y = TOP + plot_h - plot_h * row.latency_s / scale / ticks[-1]
            colour = COLOURS[EXPOSURE_CLASS.get(row.state, "progress")]
            points.append(f'<circle class="latency" cx="{x:.1f}" cy="{y:.1f}" r="2.5"'
                          f' fill="{colour}" fill-opacity="0.8"><title>{esc(night)}/'
                          f"{esc(row.expid)}: {fmt_seconds(row.latency_s)}</title></circle>")
        if (len(groups) - 1 - i) % every == 0:
            labels.append((LEFT + slot * (i + 0.5), f"{night[4:6]}-{night[6:]}", "middle"))
    return svg_frame(title, "".join(points), ticks, unit, labels)


def plots(exposures: pd.DataFrame, nights: pd.DataFrame) -> str:
    volume_unit, volume_scale = ("GB", 1e9) if nights["volume"].max() >= 1e9 else ("MB", 1e6)
    volume = bar_chart("Data volume per night", nights, "volume", volume_scale, volume_unit,
                       "volume")
    latency = latency_chart("Transfer latency per exposure", exposures)
    throughput = bar_chart("rsync throughput per night", nights, "throughput", 1e6, "MB/s",
                           "throughput")
    basis = exposures["latency_from"].dropna()
    if basis.empty or (basis == "rsync start").all():
        latency_note = ("From the start of the exposure's rsync (the staged record's time"
                        " minus its duration) to installed: the time the link appeared at"
                        " the mountain is not recorded.")
    elif (basis == "published").all():
        latency_note = "From the link's appearance at the mountain to installed."
    else:
        latency_note = ("From the link's appearance at the mountain to installed (from the"
                        " start of the rsync where the appearance is not recorded).")
    median = exposures["latency_s"].median()
    if not math.isnan(median):
        latency_note = f"Median {fmt_seconds(float(median))}. " + latency_note
    return (
        '<div class="plots">'
        f'<figure id="plot-volume"><figcaption>Data volume per night</figcaption>{volume}'
        '<p class="note">Bytes installed per night; colour = night state.</p></figure>'
        f'<figure id="plot-latency"><figcaption>Transfer latency per exposure</figcaption>'
        f'{latency}<p class="note">{esc(latency_note)}</p></figure>'
        f'<figure id="plot-throughput"><figcaption>Throughput per night</figcaption>'
        f"{throughput}<p class=\"note\">Bytes copied by rsync ÷ rsync time, per night.</p>"
        "</figure></div>")


# --------------------------------------------------------------------------- the page


def cards(report: Report, nights: pd.DataFrame) -> str:
    latest = report.nights[0] if report.nights else None
    out = []
    if latest is not None:
        css = NIGHT_CLASS[latest.state]
        installed = latest.count(lambda e: "installed" in e.stages)
        out.append(f'<div class="card {css}"><div class="label">Last night</div>'
                   f'<div class="value">{esc(latest.night)}</div>'
                   f'<span class="badge {css}">{esc(latest.state)}</span></div>')
        out.append(f'<div class="card"><div class="label">Installed last night</div>'
                   f'<div class="value">{installed}/{len(latest.exposures)}</div>'
                   f"{esc(human_bytes(latest.bytes))}</div>")
    attention = len(report.problems)
    out.append(f'<div class="card{" attention" if attention else ""}"><div class="label">'
               f'Needs a person</div><div class="value">{attention}</div>'
               f'<a href="#attention">failures</a></div>')
    out.append(f'<div class="card"><div class="label">Backlog</div>'
               f'<div class="value">{len(report.backlog)}</div>'
               '<a href="#backlog-section">nights waiting</a></div>')
    out.append(f'<div class="card"><div class="label">Shown nights</div>'
               f'<div class="value">{len(report.nights)}</div>'
               f"{esc(human_bytes(int(nights['volume'].sum())))} installed</div>")
    return f'<section class="cards">{"".join(out)}</section>'


def render(report: Report) -> str:
    """The whole page as one HTML string."""
    exposures = exposure_frame(report.nights)
    nights = night_frame(exposures, report.nights)
    backlog_by_night: dict[tuple[str, str], list[BacklogItem]] = {}
    for item in report.backlog:
        backlog_by_night.setdefault((item.stream, item.night), []).append(item)
    sections = []
    for i, night in enumerate(report.nights):
        open_ = i < OPEN_NIGHTS or night.state == NIGHT_ATTENTION
        items = backlog_by_night.get((night.stream, night.night), [])
        sections.append(night_section(night, items, open_, report.config))
    listing = ", ".join(f"{esc(s)} {esc(short_time(t)) or 'never'}"
                        for s, t in report.listings.items())
    hpss = ""
    if report.hpss:
        word = "active" if report.hpss.get("ready") else "inactive"
        hpss = (f" · HPSS {word} at {esc(short_time(report.hpss.get('time')))}"
                f"{': ' + esc(report.hpss.get('why')) if not report.hpss.get('ready') else ''}")
    files = " · ".join(f'<a href="{esc(f)}">{esc(f)}</a>' for f in report.year_files)
    backend = report.config["backup"]["backend"]
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>DESI transfer status — {esc(report.now.strftime('%Y-%m-%d %H:%M'))} UTC</title>
<style>{CSS}</style></head>
<body><main>
<header><h1>DESI raw-data transfer</h1>
<p class="meta">Status at {esc(report.now.strftime('%Y-%m-%d %H:%M:%S'))} UTC ·
streams: {esc(', '.join(report.config['streams']))} · backup: {esc(backend)} ·
last mountain listing: {listing or 'none'}{hpss}</p>
<p class="meta"><span class="badge done">done</span> installed, verified, caught up and backed
up · <span class="badge attention">needs a person</span> a failure the workflow will not fix
alone · <span class="badge progress">in progress</span> still moving or waiting</p>
</header>
{cards(report, nights)}
<section id="attention"><h2>Needs a person</h2>{problems_table(report.problems)}</section>
<section id="backlog-section"><h2>Backlog</h2>{backlog_table(report.backlog)}</section>
<section id="plots"><h2>Plots</h2>{plots(exposures, nights)}</section>
<section id="nights"><h2>Nights, most recent first</h2>
{''.join(sections) or '<p class="empty">No night recorded yet.</p>'}</section>
<footer><p>Built from the markers and failure records in
<code>{esc(os.path.abspath(report.config['state']))}</code> at
{esc(report.generated.strftime('%Y-%m-%d %H:%M:%S'))} UTC; the state is the truth and this
page is rebuilt after every run that changes it (or by <code>python -m scripts.status
--write</code>). Times are UTC, shown as month-day hour:minute:second.</p>
<p>DESI status files: {files or 'none yet'}</p>
<p>This page needs no network access and no JavaScript.</p></footer>
</main></body></html>
"""


def write_page(report: Report, path: str | os.PathLike) -> Path:
    """Write the page atomically (temporary file + rename); return its path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(path, render(report).encode())
    return path
