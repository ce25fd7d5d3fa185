"""How numbers and times read, on the page and in the command's tables."""

from __future__ import annotations

import datetime as dt
from typing import Any

from scripts.status.model import parse_time


def human_bytes(size: int) -> str:
    value = float(size)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} TB"


def lane_text(lane: dict) -> str:
    """One line saying what a lane is doing (see `scripts.lanes.lane_activity`)."""
    name, state = lane["lane"], lane["state"]
    if state == "running":
        return f"{name} lane: running since {short_time(lane.get('started'))} on {lane.get('on')}"
    if state == "idle":
        return f"{name} lane: idle since {short_time(lane.get('finished'))}"
    if state == "killed":
        return (f"{name} lane: its run of {short_time(lane.get('started'))} was killed;"
                " the next run recovers it")
    return f"{name} lane: {state}"


def lane_line(lane: dict) -> str:
    """The status page's short line for a lane: state, since when, what (the whole of
    `lane_text` goes in its tooltip)."""
    name, state = lane["lane"], lane["state"]
    if state == "running":
        what = [f"{lane[k]} {word}" for k, word in (("exposures", "exposure(s)"),
                                                    ("night_stages", "night stage(s)"))
                if isinstance(lane.get(k), int) and lane[k]]
        return (f"{name} lane: running since {short_time(lane.get('started'))}"
                + "".join(f" · {w}" for w in what))
    if state == "idle":
        code = lane.get("returncode")
        return (f"{name} lane: idle since {short_time(lane.get('finished'))}"
                + ("" if code is None else f" · last run {'ok' if code == 0 else 'failed'}"))
    if state == "killed":
        return f"{name} lane: killed, run of {short_time(lane.get('started'))}"
    if state == "starting":
        return f"{name} lane: starting (listing, planning)"
    return f"{name} lane: {'no run yet' if state == 'never' else state}"


def short_time(value: Any) -> str:
    """``11-29 02:11:46``: a night spans two UTC dates, so the date stays."""
    when = value if isinstance(value, dt.datetime) else parse_time(value)
    return "" if when is None else when.strftime("%m-%d %H:%M:%S")


def duration(seconds: float | None) -> str:
    """``42 s``, ``3.5 min``, ``2.1 h``; empty when unknown."""
    if seconds is None or seconds != seconds:  # None or NaN
        return ""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def format_table(rows: list[dict]) -> str:
    """Rows as aligned text columns (the first row's keys are the header)."""
    if not rows:
        return "(nothing recorded yet)"
    headers = list(rows[0])
    cells = [[str(r[h]) for h in headers] for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
              for row in cells]
    return "\n".join(lines)
