"""The page's three plots as shapes in SVG coordinates; the template draws them.

Hand-drawn inline SVG rather than a plotting library: three small charts (bars and
dots) in about a hundred lines, no dependency, a few kB in the page, and every mark
carries its class and a ``<title>`` tooltip that tests and people can read.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pandas as pd

from scripts.status.formatting import duration as fmt_seconds

WIDTH, HEIGHT = 360, 210
LEFT, RIGHT, TOP, BOTTOM = 50, 12, 12, 42
PLOT_W, PLOT_H = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
COLOURS = {"done": "#2da44e", "attention": "#cf222e", "progress": "#d4a72c",
           "retrying": "#bc4c00"}
#: At most this many x labels under a chart.
X_LABELS = 8


@dataclass
class Mark:
    """A bar (``rect``) or a point (``circle``) with its tooltip."""

    x: float
    y: float
    width: float
    height: float
    colour: str
    title: str


@dataclass
class Chart:
    """What the template draws: grid lines with labels, x labels, marks."""

    title: str
    unit: str
    css_class: str
    empty: str = ""                                           # the message when no data
    y_ticks: list[tuple[float, str]] = field(default_factory=list)  # (y, label)
    x_labels: list[tuple[float, str]] = field(default_factory=list)
    marks: list[Mark] = field(default_factory=list)
    kind: str = "bar"                                         # bar or point


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


def _y_ticks(ticks: list[float]) -> list[tuple[float, str]]:
    return [(TOP + PLOT_H - PLOT_H * t / ticks[-1], f"{t:g}" if abs(t) < 1e5 else f"{t:.2g}")
            for t in ticks]


def _labelled(index: int, total: int) -> bool:
    """Evenly spaced x labels, the newest night always labelled."""
    return (total - 1 - index) % max(1, math.ceil(total / X_LABELS)) == 0


def bar_chart(title: str, nights: pd.DataFrame, column: str, scale: float, unit: str,
              css_class: str, colour_of: dict[str, str]) -> Chart:
    """One bar per night (oldest left), coloured by the night's state."""
    chart = Chart(title, unit, css_class)
    data = nights.dropna(subset=[column])
    data = data[data[column] > 0]
    if data.empty:
        chart.empty = "no data yet"
        return chart
    values = data[column] / scale
    ticks = nice_ticks(float(values.max()))
    chart.y_ticks = _y_ticks(ticks)
    slot = PLOT_W / len(data)
    width = max(2.0, min(28.0, slot * 0.7))
    for i, (row, value) in enumerate(zip(data.itertuples(), values, strict=True)):
        x = LEFT + slot * i + (slot - width) / 2
        h = PLOT_H * value / ticks[-1]
        chart.marks.append(Mark(x, TOP + PLOT_H - h, width, max(h, 0.5),
                                COLOURS[colour_of.get(row.state, "progress")],
                                f"{row.night} {row.stream}: {value:.3g} {unit}"))
        if _labelled(i, len(data)):
            chart.x_labels.append((x + width / 2, f"{row.night[4:6]}-{row.night[6:]}"))
    return chart


def latency_chart(title: str, exposures: pd.DataFrame, colour_of: dict[str, str]) -> Chart:
    """Latency of every installed exposure, one strip per night (oldest left).

    Within a night's strip the exposures are spread in the order they were installed,
    so a slow stretch of the night shows as a rising run of points.
    """
    chart = Chart(title, "s", "latency", kind="point")
    data = exposures.dropna(subset=["latency_s", "installed_at"])
    if data.empty:
        chart.empty = "no installed exposure yet"
        return chart
    top = float(data["latency_s"].max())
    scale, chart.unit = (1, "s") if top < 120 else (60, "min") if top < 7200 else (3600, "h")
    ticks = nice_ticks(top / scale)
    chart.y_ticks = _y_ticks(ticks)
    groups = list(data.sort_values("installed_at").groupby("night", sort=True))
    slot = PLOT_W / len(groups)
    for i, (night, group) in enumerate(groups):
        left, span = LEFT + slot * i + slot * 0.15, slot * 0.7
        for j, row in enumerate(group.itertuples()):
            chart.marks.append(Mark(
                left + span * (j + 0.5) / len(group),
                TOP + PLOT_H - PLOT_H * row.latency_s / scale / ticks[-1], 2.5, 2.5,
                COLOURS[colour_of.get(row.state, "progress")],
                f"{night}/{row.expid}: {fmt_seconds(row.latency_s)}"))
        if _labelled(i, len(groups)):
            chart.x_labels.append((LEFT + slot * (i + 0.5), f"{night[4:6]}-{night[6:]}"))
    return chart


def latency_note(exposures: pd.DataFrame) -> str:
    """What the latency plot measures from, with the median."""
    basis = exposures["latency_from"].dropna()
    if basis.empty or (basis == "rsync start").all():
        note = ("From the start of the exposure's rsync (the staged record's time minus its"
                " duration) to installed: the time the link appeared at the mountain is not"
                " recorded.")
    elif (basis == "published").all():
        note = "From the link's appearance at the mountain to installed."
    else:
        note = ("From the link's appearance at the mountain to installed (from the start of"
                " the rsync where the appearance is not recorded).")
    median = exposures["latency_s"].median()
    return note if math.isnan(median) else f"Median {fmt_seconds(float(median))}. {note}"
