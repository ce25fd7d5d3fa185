"""Metrics for the data centre's monitoring: one Prometheus text file per run.

Every run (not a preview) rewrites ``metrics`` (default ``STATUS/desitransfer.prom``)
for node_exporter's textfile collector: a temporary file beside it, then a rename, so
the collector reads the old file or the new one, never half of one (it reads only
``*.prom``; the temporary name ends otherwise). The text is made by the
``prometheus_client`` library (a registry and its text exposition), never by hand.

Like the status page, the metrics are a view of the state: `observe_metrics` reads
it, `metric_families` turns what was read into metric families (pure: a test builds
them from a hand-made `MetricsSnapshot`), `write_metrics` writes them. At archive
scale the whole state is summarised once: each night's figures are kept in
``STATE/.metrics/STREAM.json`` with the night's fingerprint (the mtimes of its marker
directory and night-level markers, as for the year files), so a run re-reads only the
nights that changed. The metrics (``desitransfer_`` prefix, base units, ``_total`` on
counters) are listed in README.md, section Monitoring.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import scripts.status.reading as reading
from scripts.configuration import get_now, with_defaults
from scripts.lanes import lane_activity
from scripts.markers import read_record, write_bytes_atomic, write_json_atomic
from scripts.remote import Listing, first_night
from scripts.state_layout import (
    hpss_status_path,
    listing_cache_path,
    metrics_cache_path,
    metrics_nights_path,
    metrics_path,
    stream_directory,
)
from scripts.status.late import published_times
from scripts.status.latency import publication_latency
from scripts.status.model import NightStatus, parse_time
from scripts.status.problems import (
    ALL_STREAMS,
    LABELS,
    Problem,
    find_problems,
    late_problems,
    malformed_links,
    run_problems,
)
from scripts.status.reading import NightFiles
from scripts.status.year_files import PUBLIC_MODE, SETTLE_SECONDS, night_fingerprint
from scripts.targets import scan_night

log = logging.getLogger("status")

PREFIX = "desitransfer"
#: Upper bounds of the publication → installed histogram, seconds: 1 s to 1 h.
LATENCY_BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1800.0, 3600.0)
#: The stages whose last success is reported, and the marker stage behind each
#: (the listing's is the listing cache's time).
STAGES = {"listing": None, "stage": "staged", "verify": "checksummed",
          "install": "installed", "catch_up": "caughtup", "backup": "backedup"}
#: What a lane can be doing (`scripts.lanes.lane_activity`).
LANE_STATES = ("running", "starting", "idle", "killed", "never")
#: Every kind of problem, so that each has a series (0 when none).
KINDS = tuple(dict.fromkeys(LABELS.values()))
#: Bumped when a night's summary changes form: cached summaries are then read again.
CACHE_VERSION = 1
#: The longest the older nights' sum is trusted without looking at their markers.
OLDER_RECHECK_SECONDS = 3600
#: The most a run spends reading older nights that are not in the cache (the first
#: run after an upgrade, at archive scale: minutes in all); the next runs go on.
OLDER_READ_SECONDS = 5.0


# --------------------------------------------------------------------------- per night


def summarise_night(night: NightStatus, problems: Iterable[Problem]) -> dict[str, Any]:
    """A night's figures (JSON, cached by the night's fingerprint): the EXPIDs installed
    and held (``ids``: kept for the window's nights only), exposures and bytes
    installed, the latency histogram's counts per bucket (the last: above 1 h), sum
    and count, each stage's newest success (epoch seconds), the exposures held, the
    problems of its records by kind and the exposures among them."""
    buckets = [0] * (len(LATENCY_BUCKETS) + 1)
    total, count, installed, size = 0.0, 0, 0, 0
    newest: dict[str, float] = {}

    def seen(stage: str, record: dict | None) -> None:
        when = parse_time((record or {}).get("time"))
        if when is not None:
            newest[stage] = max(newest.get(stage, 0.0), when.timestamp())

    for exposure in night.exposures.values():
        seen("staged", exposure.stages.get("staged"))
        checksummed = exposure.stages.get("checksummed")
        if checksummed is not None and checksummed.get("outcome") != "failed":
            seen("checksummed", checksummed)
        if "installed" not in exposure.stages:
            continue
        seen("installed", exposure.stages["installed"])
        installed += 1
        size += exposure.bytes
        latency = publication_latency(exposure)
        if latency is not None:
            buckets[next((i for i, b in enumerate(LATENCY_BUCKETS) if latency <= b),
                         len(LATENCY_BUCKETS))] += 1
            total += latency
            count += 1
    for stage, record in night.stages.items():
        seen(stage.split(".")[0], record)
    problems = list(problems)
    kinds = count_kinds(problems)
    failed = {p.expid for p in problems if p.expid is not None}
    ids = {"installed": sorted(e.expid for e in night.exposures.values()
                               if "installed" in e.stages),
           "held": sorted(e.expid for e in night.exposures.values() if e.held)}
    return {"ids": ids, "installed": installed, "bytes": size, "buckets": buckets,
            "latency_sum": total, "latency_count": count, "newest": newest,
            "held": sum(1 for e in night.exposures.values() if e.held),
            "problems": kinds, "failed": len(failed)}


def _usable(summary: Any) -> bool:
    """Whether a cached summary has the form `summarise_night` gives (it is read back)."""
    return (isinstance(summary, dict)
            and all(isinstance(summary.get(k), int) for k in ("installed", "bytes", "held",
                                                               "latency_count", "failed"))
            and isinstance(summary.get("latency_sum"), (int, float))
            and isinstance(summary.get("buckets"), list)
            and len(summary["buckets"]) == len(LATENCY_BUCKETS) + 1
            and all(isinstance(b, int) for b in summary["buckets"])
            and isinstance(summary.get("newest"), dict)
            and all(isinstance(v, (int, float)) for v in summary["newest"].values())
            and isinstance(summary.get("problems"), dict)
            and all(isinstance(v, int) for v in summary["problems"].values()))


def cache_key(config: dict) -> dict:
    """What every cached summary depends on besides its night's markers."""
    return {"version": CACHE_VERSION, "max_attempts": config["verify"]["max_attempts"],
            "buckets": list(LATENCY_BUCKETS)}


def night_summaries(config: dict, stream: str, index: Mapping[str, NightFiles],
                    cached: Mapping[str, Any], deadline: float | None = None,
                    needs: tuple[str, ...] = ()) -> tuple[dict[str, dict], dict[str, list]]:
    """The summary of every night of `index`: from `cached` (night -> [fingerprint,
    summary]) where the night's fingerprint is the same, else read from its markers.

    `index` is `scripts.status.reading.scan_stream` with ``stat=True``. Returns the
    summaries and what to cache now; a night changed in the last `SETTLE_SECONDS` is
    read and not cached (it may still be changing). After `deadline` (``monotonic``
    seconds) no more night is read: those left out have no summary. A cached summary
    without the keys `needs` is read again.
    """
    state, attempts = config["state"], config["verify"]["max_attempts"]
    newest_allowed = time.time_ns() - int(SETTLE_SECONDS * 1e9)
    out, keep = {}, {}
    # Newest first: a budget spent on a cold cache reads the nights that matter most.
    for night, files in sorted(index.items(), reverse=True):
        fingerprint = night_fingerprint(files, newest_allowed)
        entry = cached.get(night)
        if (fingerprint is not None and isinstance(entry, list) and len(entry) == 2
                and entry[0] == fingerprint and _usable(entry[1])
                and all(k in entry[1] for k in needs)):
            out[night] = entry[1]
            keep[night] = entry
            continue
        if deadline is not None and time.monotonic() > deadline:
            continue
        status = reading.read_night(state, stream, night, files)
        out[night] = summarise_night(status, find_problems(status, state, attempts))
        if fingerprint is not None:
            keep[night] = [fingerprint, out[night]]
    return out, keep


def add_summaries(summaries: Iterable[dict]) -> dict[str, Any]:
    """The sum of night summaries, in a summary's form (the newest times the newest)."""
    total: dict[str, Any] = {"installed": 0, "bytes": 0, "held": 0, "failed": 0,
                             "latency_sum": 0.0, "latency_count": 0,
                             "buckets": [0] * (len(LATENCY_BUCKETS) + 1), "newest": {},
                             "problems": {}}
    for summary in summaries:
        for name in ("installed", "bytes", "held", "failed", "latency_sum", "latency_count"):
            total[name] += summary[name]
        total["buckets"] = [a + b for a, b in zip(total["buckets"], summary["buckets"],
                                                  strict=True)]
        for stage, when in summary["newest"].items():
            total["newest"][stage] = max(when, total["newest"].get(stage, 0.0))
        for kind, count in summary["problems"].items():
            total["problems"][kind] = total["problems"].get(kind, 0) + count
    return total


def _digest(names: list[str]) -> str:
    """A digest of a set of names: a night or a night-level marker that appears or goes
    among the older nights changes it."""
    return hashlib.sha1("\0".join(sorted(names)).encode(errors="surrogateescape")).hexdigest()


def stream_summaries(config: dict, stream: str, oldest: str, now: float
                     ) -> tuple[dict[str, dict], dict[str, NightFiles]]:
    """The summaries a stream's metrics are made of: one per night of the look-back
    window (from `oldest` on), and one for all the older nights together (key
    ``"older"``, with ``"stale"``: older nights with installed exposures and no
    backup); and the window's `scan_stream` index.

    The workflow writes only in the window's nights. The older nights' sum is kept in
    ``STATE/.metrics/STREAM.json`` and redone when the window moves, when a name among
    the older nights appears or goes (a night, a night-level marker) and at least every
    `OLDER_RECHECK_SECONDS` (a person's change inside an old night), from each older
    night's cached summary (``STREAM.nights.json``), re-read where its fingerprint
    changed. A run thus reads the window's few nights and one small file.
    """
    state = config["state"]
    key = cache_key(config)
    path = metrics_cache_path(state, stream)
    cache = read_record(path) or {}
    if cache.get("key") != key:
        cache = {}
    window_cached = cache.get("window") if isinstance(cache.get("window"), dict) else {}
    index, listing = _window_index(state, stream, oldest, cache.get("listing"))
    names = listing["before"]
    window, window_keep = night_summaries(config, stream, index, window_cached,
                                          needs=("ids",))
    older = cache.get("older") if isinstance(cache.get("older"), dict) else {}
    checked = older.get("checked")
    fresh = (older.get("oldest") == oldest and older.get("names") == names
             and isinstance(checked, (int, float)) and 0 <= now - checked < OLDER_RECHECK_SECONDS
             and _usable(older.get("summary")) and isinstance(older.get("stale"), int))
    if not fresh:
        older = _sum_older(config, stream, oldest, key, names, now)
    if not fresh or window_keep != window_cached or listing != cache.get("listing"):
        write_json_atomic(path, {"key": key, "window": window_keep, "older": older,
                                 "listing": listing})
    return {**window, "older": {**older["summary"], "stale": older["stale"],
                                "complete": older.get("complete", True)}}, index


def _window_index(state: str, stream: str, oldest: str, listed: Any
                  ) -> tuple[dict[str, NightFiles], dict[str, Any]]:
    """The window's `scan_stream` index (with ``stat``), and what to remember of the
    listing of ``STATE/STREAM``: its mtime, the window's names and the older names'
    digest.

    At archive scale ``STATE/STREAM`` holds thousands of names and listing it is most
    of a no-op run's metrics. A name appears or goes there only by a rename or an
    unlink, which changes the directory's mtime: while that is what was recorded (and
    was older than `SETTLE_SECONDS` then, so no change can share its clock tick), the
    remembered names are the directory's, and only they are ``stat``-ed.
    """
    directory = stream_directory(state, stream)
    try:
        mtime = os.stat(directory).st_mtime_ns
    except (FileNotFoundError, NotADirectoryError):
        return {}, {"mtime": None, "oldest": oldest, "window": {}, "before": _digest([])}
    if (isinstance(listed, dict) and listed.get("mtime") == mtime
            and listed.get("oldest") == oldest and listed.get("settled")
            and isinstance(listed.get("window"), dict)
            and isinstance(listed.get("before"), str)):
        try:
            return _restat(directory, listed["window"]), listed
        except (OSError, TypeError, ValueError):
            pass  # a name went (or a record read back is not what was written): list
    before: list[str] = []  # the names of the older nights (one scandir for both)
    index = reading.scan_stream(state, stream, stat=True, since=oldest, before=before)
    window = {n: [f.directory, sorted(f.files)] for n, f in index.items()}
    settled = mtime < time.time_ns() - int(SETTLE_SECONDS * 1e9)
    return index, {"mtime": mtime, "oldest": oldest, "settled": settled, "window": window,
                   "before": _digest(before)}


def _restat(directory: Path, window: dict) -> dict[str, NightFiles]:
    """The window's index from its remembered names (see `_window_index`)."""
    index = {}
    for night, (is_directory, names) in window.items():
        files = NightFiles(directory=bool(is_directory))
        if is_directory:
            files.directory_mtime = os.stat(directory / night).st_mtime_ns
        for name in names:
            st = os.stat(directory / name)
            files.files[str(name)] = (st.st_mtime_ns, st.st_size)
        index[str(night)] = files
    return index


def _sum_older(config: dict, stream: str, oldest: str, key: dict, names: str,
               now: float) -> dict[str, Any]:
    """The older nights' sum (see `stream_summaries`), each night's summary cached."""
    state = config["state"]
    path = metrics_nights_path(state, stream)
    cache = read_record(path) or {}
    cached = cache.get("nights") if cache.get("key") == key else None
    cached = cached if isinstance(cached, dict) else {}
    index = {n: f for n, f in reading.scan_stream(state, stream, stat=True).items()
             if n < oldest}
    summaries, keep = night_summaries(config, stream, index, cached,
                                      time.monotonic() + OLDER_READ_SECONDS)
    for entry in keep.values():  # an older night's EXPIDs are never asked for
        entry[1].pop("ids", None)
    if keep != cached:
        write_json_atomic(path, {"key": key, "nights": keep})
    stale = 0
    if config["backup"]["backend"] != "none":
        stale = sum(1 for n, s in summaries.items()
                    if s["installed"] and f"{n}.backedup" not in index[n].files)
    left = len(index) - len(summaries)
    if left:
        log.info("metrics: %d older night(s) of %s still to summarise (the next runs go"
                 " on; the totals are left out until then)", left, stream)
    # An incomplete sum is never fresh: the next run goes on where this one stopped.
    return {"oldest": oldest, "names": names, "checked": now if not left else None,
            "summary": add_summaries(summaries.values()), "stale": stale,
            "complete": not left}


# --------------------------------------------------------------------------- per stream


@dataclass
class StreamFigures:
    """What the metrics say of one stream."""

    stream: str
    pending: int = 0             # listed, not installed, not held
    held: int = 0
    failed: int = 0              # exposures with a problem that needs a person
    late_exposures: int = 0
    late_nights: int = 0
    problems: dict[str, int] = field(default_factory=dict)   # kind -> count
    installed: int = 0
    installed_bytes: int = 0
    buckets: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))
    latency_sum: float = 0.0
    latency_count: int = 0
    last_success: dict[str, float] = field(default_factory=dict)  # STAGES key -> epoch
    #: False while older nights are still being summarised (the first runs after an
    #: upgrade): the totals are left out rather than shown short.
    complete: bool = True


def count_kinds(problems: Iterable[Problem]) -> dict[str, int]:
    """Problems by kind (their label: staging, backup, late data...)."""
    kinds: dict[str, int] = {}
    for problem in problems:
        kinds[problem.label] = kinds.get(problem.label, 0) + 1
    return kinds


def stream_figures(stream: str, summaries: Iterable[dict], pending: int,
                   listing_epoch: float | None, late: Iterable[Problem],
                   other_problems: Mapping[str, int]) -> StreamFigures:
    """A stream's figures from the summaries of its nights (`stream_summaries`) and
    what the window says: `pending` exposures, the `late` problems (exposures and
    nights), and the problems no night's records hold (kind -> count: malformed links,
    older nights without a backup)."""
    late, summaries = list(late), list(summaries)
    total = add_summaries(summaries)
    problems = dict(total["problems"])
    for kind, count in [*count_kinds(late).items(), *other_problems.items()]:
        problems[kind] = problems.get(kind, 0) + count
    marker_stage = {marker: name for name, marker in STAGES.items() if marker}
    last_success = {marker_stage[stage]: when for stage, when in total["newest"].items()
                    if stage in marker_stage}
    if listing_epoch is not None:
        last_success["listing"] = listing_epoch
    return StreamFigures(
        stream, pending=pending, held=total["held"], failed=total["failed"],
        late_exposures=sum(1 for p in late if p.expid is not None),
        late_nights=sum(1 for p in late if p.expid is None), problems=problems,
        installed=total["installed"], installed_bytes=total["bytes"],
        buckets=total["buckets"], latency_sum=total["latency_sum"],
        latency_count=total["latency_count"], last_success=last_success,
        complete=all(s.get("complete", True) for s in summaries))


@dataclass
class MetricsSnapshot:
    """Everything the metrics file says, read from the state (`observe_metrics`)."""

    streams: list[StreamFigures]
    run_problems: dict[str, int]        # kind -> count, problems of the whole run
    lanes: list[dict]                   # `scripts.lanes.lane_activity`
    hpss: dict | None                   # HPSS's last answer, if asked
    now: float                          # the real clock (the lanes' records use it)


def _epoch(value: Any) -> float | None:
    when = parse_time(value)
    return None if when is None else when.timestamp()


# --------------------------------------------------------------------------- families


def metric_families(snapshot: MetricsSnapshot) -> list:
    """The metric families of `snapshot`, as ``prometheus_client`` metric objects.

    Pure: the same snapshot gives the same families. Timestamps are Unix seconds,
    durations seconds, sizes bytes; a time never recorded has no sample.
    """
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
    )

    def gauge(name: str, text: str, labels: tuple[str, ...] = ()) -> GaugeMetricFamily:
        return GaugeMetricFamily(f"{PREFIX}_{name}", text, labels=list(labels))

    pending = gauge("exposures_pending", "Listed exposures not yet installed (held ones"
                    " excluded).", ("stream",))
    held = gauge("exposures_held", "Exposures held by policy: a person must release"
                 " them.", ("stream",))
    failed = gauge("exposures_failed", "Exposures with a failure that needs a person.",
                   ("stream",))
    late = gauge("exposures_late", "Exposures published at the mountain more than"
                 " alerts.late_after seconds ago and not installed.", ("stream",))
    late_nights = gauge("nights_late", "Nights whose backup has been due for more than"
                        " alerts.backup_late_after seconds and that are not on tape.",
                        ("stream",))
    problems = gauge("problems", "Problems that need a person (what is mailed and shown),"
                     " by kind.", ("stream", "kind"))
    success = gauge("last_success_timestamp_seconds", "When each stage last succeeded"
                    " (Unix time).", ("stream", "stage"))
    exposures = CounterMetricFamily(f"{PREFIX}_installed_exposures", "Exposures installed"
                                    " in the archive, as the state records them.",
                                    labels=["stream"])
    volume = CounterMetricFamily(f"{PREFIX}_installed_bytes", "Bytes installed in the"
                                 " archive, as the state records them.", labels=["stream"])
    latency = HistogramMetricFamily(f"{PREFIX}_publication_to_installed_seconds",
                                    "Time from an exposure's publication at the mountain"
                                    " to its installation.", labels=["stream"])
    for s in snapshot.streams:
        labels = [s.stream]
        pending.add_metric(labels, s.pending)
        held.add_metric(labels, s.held)
        failed.add_metric(labels, s.failed)
        late.add_metric(labels, s.late_exposures)
        late_nights.add_metric(labels, s.late_nights)
        for kind in KINDS:
            problems.add_metric([s.stream, kind], s.problems.get(kind, 0))
        for stage in STAGES:
            if stage in s.last_success:
                success.add_metric([s.stream, stage], s.last_success[stage])
        if not s.complete:  # a short total would read as a counter reset
            continue
        exposures.add_metric(labels, s.installed)
        volume.add_metric(labels, s.installed_bytes)
        cumulative, running = [], 0
        for bound, count in zip((*LATENCY_BUCKETS, float("inf")), s.buckets, strict=True):
            running += count
            cumulative.append(("+Inf" if bound == float("inf") else repr(bound), running))
        latency.add_metric(labels, cumulative, s.latency_sum)
    for kind in KINDS:
        problems.add_metric([ALL_STREAMS, kind], snapshot.run_problems.get(kind, 0))
    state = gauge("lane_state", "What each lane is doing: 1 for its state, 0 for the"
                  " others.", ("lane", "state"))
    age = gauge("lane_run_age_seconds", "How long the lane's current run has been going"
                " (0 when no run is going).", ("lane",))
    finished = gauge("lane_last_finished_timestamp_seconds", "When a run of the lane last"
                     " ended (Unix time).", ("lane",))
    for lane in snapshot.lanes:
        for name in LANE_STATES:
            state.add_metric([lane["lane"], name], 1 if lane["state"] == name else 0)
        started = _epoch(lane.get("started")) if lane["state"] == "running" else None
        age.add_metric([lane["lane"]], max(0.0, snapshot.now - started) if started else 0)
        ended = max(filter(None, (_epoch(lane.get("last_finished")),
                                  _epoch(lane.get("finished")))), default=None)
        if ended is not None:
            finished.add_metric([lane["lane"]], ended)
    families = [pending, held, failed, late, late_nights, problems, success, exposures,
                volume, latency, state, age, finished]
    if snapshot.hpss is not None:
        up = gauge("hpss_up", "HPSS's availability at its last check (1 active, 0 not).")
        up.add_metric([], 1 if snapshot.hpss.get("ready") else 0)
        checked = gauge("hpss_checked_timestamp_seconds", "When HPSS's status was last"
                        " asked (Unix time).")
        when = _epoch(snapshot.hpss.get("time"))
        families.append(up)
        if when is not None:
            checked.add_metric([], when)
            families.append(checked)
    generated = gauge("metrics_generated_timestamp_seconds", "When this file was written"
                      " (Unix time): an old one means no run has ended since.")
    generated.add_metric([], snapshot.now)
    return [*families, generated]


def exposition(snapshot: MetricsSnapshot) -> bytes:
    """The metrics file's bytes: `snapshot`'s families in a registry of their own, in
    Prometheus' text format (``prometheus_client.generate_latest``)."""
    from prometheus_client import CollectorRegistry, generate_latest

    class Snapshot:
        def collect(self):
            return metric_families(snapshot)

    registry = CollectorRegistry(auto_describe=False)
    registry.register(Snapshot())
    return generate_latest(registry)


# --------------------------------------------------------------------------- reading, writing


def observe_metrics(config: dict, now: dt.datetime | None = None,
                    listings: Mapping[str, Listing | None] | None = None) -> MetricsSnapshot:
    """Read what the metrics say from the state: the nights' summaries (cached), the
    last listing, the late data at `now` (default: the configuration's ``now``), the
    run's problems, the lanes and HPSS's last answer.

    A run passes the listings it planned from (stream -> `scripts.remote.Listing`,
    None for a stream it could not list): they are the listing cache's content, so
    the cache is not read and checked again.
    """
    return _observe(with_defaults(config), now, listings or {})


def _listing(state: str, stream: str, oldest: str, listing: Listing | None
             ) -> tuple[dict[str, set[str]], float | None, Callable, dict]:
    """The last listing of `stream`: NIGHT -> EXPIDs, when it was made (epoch seconds),
    a function of (night, expid) -> publication or None, and the record
    `malformed_links` reads. From the run's own `listing` when given (its time: the
    cache's mtime, written with it), else from the cache."""
    path = listing_cache_path(state, stream)
    if listing is None:
        record = read_record(path) or {}
        listed, when = reading.listing_of(record)
        known = published_times(state, stream, oldest, record, listed)
        return (listed, None if when is None else when.timestamp(),
                lambda night, expid: known.get((night, expid)), record)
    listed: dict[str, set[str]] = {}
    for night, expid in listing.exposures:
        listed.setdefault(night, set()).add(expid)
    # The parse made the keys NIGHT/EXPID and the times numbers; only the exposures
    # not installed are looked up (a handful, not the window's thousands).
    raw = listing.published
    try:
        made = os.stat(path).st_mtime
    except OSError:
        made = None
    return (listed, made, lambda night, expid: raw.get(f"{night}/{expid}"),
            {"malformed": listing.malformed})


def _observe(config: dict, now: dt.datetime | None,
             listings: Mapping[str, Listing | None]) -> MetricsSnapshot:
    """`observe_metrics` of a configuration with its defaults."""
    now = now or get_now(config)
    state = config["state"]
    oldest = first_night(now, config["lookback_nights"])
    streams = []
    for stream in config["streams"]:
        summaries, index = stream_summaries(config, stream, oldest, time.time())
        listed, when, published_of, record = _listing(state, stream, oldest,
                                                      listings.get(stream))
        installed, pending = {}, 0
        published: dict[tuple[str, str], float] = {}  # of the listed, not installed
        for night, expids in listed.items():
            ids = summaries.get(night, {}).get("ids")
            if ids is None:  # a night read after the listing, or not cached: read it
                seen = scan_night(state, stream, night)
                ids = {"installed": seen.installed, "held": seen.held}
            installed[night] = set(ids["installed"])
            waiting = expids - installed[night]
            pending += len(waiting - set(ids["held"]))
            if night >= oldest:
                for expid in waiting:
                    if (at := published_of(night, expid)) is not None:
                        published[night, expid] = at
        late = late_problems(config, stream, now, index, installed=installed,
                             published=published)
        # The problems no night's records hold (see `scripts.status.problems`): the
        # malformed links, and the nights older than the window without a backup.
        other = count_kinds(malformed_links(state, stream, record))
        stale = summaries["older"]["stale"]
        other[LABELS["backedup"]] = other.get(LABELS["backedup"], 0) + stale
        streams.append(stream_figures(stream, summaries.values(), pending, when, late,
                                      other))
    locks = {name: {"locked": listing.locked, "lock_age": listing.lock_age}
             for name, listing in listings.items() if listing is not None}
    return MetricsSnapshot(streams, count_kinds(run_problems(config, listings=locks)),
                           lane_activity(state),
                           read_record(hpss_status_path(state)), time.time())


def write_metrics(config: dict, now: dt.datetime | None = None,
                  listings: Mapping[str, Listing | None] | None = None,
                  defaults: bool = False) -> Path:
    """Write the metrics file (atomically: a temporary file beside it, then a rename; a
    link planted at its name is replaced, never followed); return its path.
    `listings`: see `observe_metrics`. With `defaults`, `config` has its defaults
    already (Snakemake's validation sets them, as the cron entry's `with_defaults`)."""
    config = config if defaults else with_defaults(config)
    path = metrics_path(config)
    write_bytes_atomic(path, exposition(_observe(config, now, listings or {})),
                       PUBLIC_MODE)
    return path


def metrics_after_run(config: dict,
                      listings: Mapping[str, Listing | None] | None = None) -> str:
    """Snakemake's onsuccess/onerror (and the cron entry): write the metrics file; one
    line for the log. `config` has its defaults (both callers' have them).
    Metrics must never turn a good transfer into a failed run: an error is reported in
    the line (and the monitoring sees the file grow old)."""
    start = time.monotonic()
    try:
        path = write_metrics(config, listings=listings, defaults=True)
    except ImportError as err:  # an environment made before the dependency
        line = (f"Metrics NOT written: {err.name or err} is not installed; the transfers"
                " are not affected. Run: .venv/bin/pip install -r requirements.txt")
        log.error(line)
        return line
    except (OSError, KeyError, TypeError, ValueError, ArithmeticError) as err:
        line = (f"Metrics NOT written ({type(err).__name__}: {err}); the transfers are"
                " not affected. Fix it, then run: python -m scripts.status --write")
        log.error(line)
        return line
    return f"Metrics written in {time.monotonic() - start:.2f} s: {path}"


__all__ = ["CACHE_VERSION", "KINDS", "LATENCY_BUCKETS", "STAGES", "MetricsSnapshot",
           "StreamFigures", "exposition", "metric_families", "metrics_after_run",
           "night_summaries", "observe_metrics", "stream_figures", "stream_summaries",
           "summarise_night",
           "write_metrics"]
