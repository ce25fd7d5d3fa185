"""The exposure lane's watch: fresh data within the minute, with cron's one-minute clock.

Cron starts the cron entry at most once a minute. After its work, the exposure lane
keeps watching until shortly before the next cron start: every
``remote.poll_interval`` seconds it lists tonight's night directory at the mountain
(that directory only: one cheap ``find``), and when a link appeared that its last
listing did not show, it runs the lane again (a full run: its own listing, plan and
markers). It still holds the lane's lock, so no other run of the lane overlaps it,
and it stops at once on the kill file and ends on a failed listing or a failed run,
leaving the rest to the next invocation.

When to list next (`next_poll`) is a pure function of the clock, when the
invocation started, ``cron_interval`` and ``remote.poll_interval``; which exposures
appeared (`appeared`) of two listings; the night being observed (`tonight`) of the
clock. `watch` only acts on them.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import shlex
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from scripts.configuration import get_now, get_streams
from scripts.remote import (
    RemoteError,
    cached_exposures,
    listing_failure,
    parse_listing,
    remote_command,
    run_remote,
)
from scripts.state_layout import listing_cache_path

log = logging.getLogger("desitransfer.watch")
#: A DESI night is named by the date at Kitt Peak (UTC-7, no daylight saving time)
#: when it starts, and turns over at local noon: 19:00 UTC.
NIGHT_TURNOVER = dt.timedelta(hours=19)


def tonight(now: dt.datetime) -> str:
    """The night under way at `now` (UTC): ``YYYYMMDD`` of Kitt Peak's date at its
    start (the night of 2026-11-27 runs from 19:00 UTC on the 27th to 19:00 on the 28th)."""
    return (now.astimezone(dt.UTC) - NIGHT_TURNOVER).strftime("%Y%m%d")


def watch_deadline(now: float, started: float, cron_interval: float,
                   poll_interval: float) -> float:
    """When the watch must have made its last listing: one `poll_interval` before the
    next cron start after `now` (cron starts at ``started + k * cron_interval``), so
    that a run the last listing starts is done before that invocation tries the lock.

    A run that went on past a cron start kept that invocation from the lane (it found
    the lock held and went on to the night lane): its minute is then this watch's too.
    """
    starts = max(1, math.floor((now - started) / cron_interval) + 1)
    return started + starts * cron_interval - poll_interval


def next_poll(now: float, started: float, cron_interval: float,
              poll_interval: float) -> float | None:
    """When to list tonight next, or None: stop watching, the next invocation takes
    over. All times in seconds on one clock (the monotonic one)."""
    if cron_interval <= 0 or poll_interval <= 0:
        return None
    at = now + poll_interval
    return at if at <= watch_deadline(now, started, cron_interval, poll_interval) else None


#: An exposure of a stream: (stream, night, expid).
Exposure = tuple[str, str, str]


def appeared(listed: Iterable[Exposure], known: Iterable[Exposure]) -> list[Exposure]:
    """The exposures of `listed` that `known` (the last listings) lacks, sorted."""
    return sorted(set(listed) - set(known))


def watch_settings(config: dict) -> tuple[float, float] | None:
    """(cron_interval, poll_interval) when the lane watches, else None: not set, 0,
    or not a number (the run refuses such a configuration in one line)."""
    cron_interval = config.get("cron_interval")
    poll_interval = (config.get("remote") or {}).get("poll_interval")
    numbers = (cron_interval, poll_interval)
    if not all(isinstance(n, (int, float)) and not isinstance(n, bool) and math.isfinite(n)
               and n > 0 for n in numbers):
        return None
    return float(cron_interval), float(poll_interval)


def night_script(source: str, night: str) -> str:
    """The remote shell script listing one night's published links, in the records of
    the full listing (`scripts.remote.listing_script`); no night directory yet is no
    link, not a failure."""
    where = shlex.quote(f"{source.rstrip('/')}/{night}")
    return (f"test -d {where} || exit 0; "
            f"find {where} -mindepth 1 -maxdepth 1 -type l -printf '%T@ %p\\0'")


def list_night(remote: dict, source: str, night: str) -> set[tuple[str, str]]:
    """The exposures the mountain publishes in `night` for one stream.

    Raises
    ------
    RemoteError
        The mountain could not be listed (one line).
    """
    result = run_remote(remote_command(remote, night_script(source, night)),
                        timeout=remote["timeout"])
    failure = listing_failure(remote, f"{source.rstrip('/')}/{night}", result)
    if failure is not None:
        raise RemoteError(failure)
    return set(parse_listing(result.stdout, source, night).exposures)


@dataclass
class Watched:
    """How a watch ended: why (one line for the log), and the runs it started."""

    reason: str
    runs: int = 0


def watch(*, started: float, cron_interval: float, poll_interval: float, kill_file: Path,
          list_tonight: Callable[[], set[Exposure]],
          known: Callable[[], set[Exposure]],
          run: Callable[[], bool],
          clock: Callable[[], float] = time.monotonic) -> Watched:
    """Watch tonight until `next_poll` says stop; start `run` for what appeared.

    Parameters
    ----------
    started : float
        When this invocation started, on `clock`.
    list_tonight : callable
        Tonight's exposures at the mountain now; raises `RemoteError`.
    known : callable
        The exposures the lane's last run listed (its listing cache).
    run : callable
        One turn of the lane (a run, and more while a bound leaves work); whether it
        succeeded.
    """
    seen = set(known())
    runs = 0
    while True:
        at = next_poll(clock(), started, cron_interval, poll_interval)
        if at is None:
            return Watched("the next cron start is near", runs)
        while (left := at - clock()) > 0:  # stops within a tenth of a poll on the kill file
            if kill_file.exists():
                return Watched(f"{kill_file} detected", runs)
            time.sleep(min(left, max(0.05, poll_interval / 10)))
        if kill_file.exists():
            return Watched(f"{kill_file} detected", runs)
        try:
            listed = list_tonight()
        except RemoteError as err:
            return Watched(f"listing failed: {err}", runs)
        new = appeared(listed, seen)
        seen |= listed
        if not new:
            continue
        log.info("%d exposure(s) appeared (%s): the exposures lane runs again.", len(new),
                 ", ".join(f"{n}/{e}" for _, n, e in new[:5]))
        runs += 1
        ok = run()
        seen |= known()
        if not ok:
            return Watched("a run failed", runs)


def tonight_lister(config: dict) -> Callable[[], set[Exposure]]:
    """Lists tonight (by the workflow's clock, ``now``) for every stream; a stream
    that cannot be listed raises `RemoteError`."""
    def list_tonight() -> set[Exposure]:
        night = tonight(get_now(config))
        return {(stream.name, n, e) for stream in get_streams(config).values()
                for n, e in list_night(config["remote"], stream.source, night)}

    return list_tonight


def last_listed(config: dict) -> Callable[[], set[Exposure]]:
    """What the lane's last run listed, every stream (its listing cache)."""
    def known() -> set[Exposure]:
        return {(name, n, e) for name in config["streams"]
                for n, e in cached_exposures(listing_cache_path(config["state"], name))}

    return known
