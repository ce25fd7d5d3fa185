"""Latency: how long an exposure takes from its publication at the mountain to the archive.

Read from the markers only: the staged record's ``published`` (when the mountain's
link appeared, from the listing) and the installed record's ``time``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from scripts.status.model import ExposureStatus, parse_time


@dataclass(frozen=True)
class LatencySummary:
    """Publication → installed, in seconds, over some exposures."""

    count: int
    median: float | None
    p95: float | None
    worst: float | None
    worst_exposure: str = ""   # NIGHT/EXPID of the worst

    def as_dict(self) -> dict:
        return {"count": self.count, "median_seconds": self.median,
                "p95_seconds": self.p95, "worst_seconds": self.worst,
                "worst_exposure": self.worst_exposure}


def publication_latency(exposure: ExposureStatus) -> float | None:
    """Seconds from the link's publication to installed, or None when either is unknown."""
    published = parse_time((exposure.stages.get("staged") or {}).get("published"))
    installed = exposure.time("installed")
    if published is None or installed is None:
        return None
    return max(0.0, (installed - published).total_seconds())


def _percentile(values: list[float], fraction: float) -> float:
    """The nearest-rank percentile of sorted `values`."""
    rank = max(1, math.ceil(fraction * len(values)))
    return values[rank - 1]


def latency_summary(exposures: Iterable[ExposureStatus]) -> LatencySummary:
    """Median, 95th percentile (nearest rank) and worst publication → installed latency."""
    found = [(latency, f"{e.night}/{e.expid}") for e in exposures
             if (latency := publication_latency(e)) is not None]
    if not found:
        return LatencySummary(0, None, None, None)
    found.sort()
    values = [v for v, _ in found]
    middle = len(values) // 2
    median = values[middle] if len(values) % 2 else (values[middle - 1] + values[middle]) / 2
    return LatencySummary(len(values), median, _percentile(values, 0.95), values[-1],
                          found[-1][1])
