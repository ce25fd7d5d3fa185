"""Metrics for the data centre's monitoring (#20, item 1): the file node_exporter's
textfile collector reads, parsed by prometheus_client's own parser after real runs of
the workflow (a clean night, a held exposure, HPSS down, a running backup), and the
pure parts on hand-made input."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import stat
import time
from pathlib import Path

import pytest
from conftest import NIGHT, STREAM
from processes import descendants, wait_for_exit
from prometheus_client.parser import text_string_to_metric_families
from test_cron_entry import cron
from test_lanes import hanging_htar, start_cron

import scripts.metrics as metrics_module
import scripts.status.reading as reading
from scripts.markers import read_record, write_marker
from scripts.metrics import (
    KINDS,
    LATENCY_BUCKETS,
    OLDER_RECHECK_SECONDS,
    MetricsSnapshot,
    StreamFigures,
    exposition,
    stream_summaries,
    summarise_night,
    write_metrics,
)
from scripts.state_layout import listing_cache_path, marker_path, metrics_path
from scripts.status.model import ExposureStatus, NightStatus

AFTER_BACKUP = "2026-11-28T21:00:00Z"  # NIGHT's catch-up and backup due
A_DAY_LATER = "2026-11-29T21:00:00Z"   # NIGHT's backup due for 25 h


def parse(text: str) -> dict[tuple[str, frozenset], float]:
    """Every sample of a metrics text: (name, labels) -> value, by the library's parser."""
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[sample.name, frozenset(sample.labels.items())] = sample.value
    return out


def metrics(site) -> dict[tuple[str, frozenset], float]:
    path = site.state / "status" / "desitransfer.prom"
    return parse(path.read_text())


def value(samples: dict, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def epoch(text: str) -> float:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def tar_backend(site) -> None:
    site.config["backup"] = {"backend": "tar", "archive": str(site.root / "tape"),
                             "hpss_status": ""}


# --------------------------------------------------------------------------- pure parts


def test_families_from_a_snapshot_have_base_units_totals_and_a_cumulative_histogram():
    figures = StreamFigures("S", pending=3, held=1, failed=2, late_exposures=1,
                            late_nights=0, problems={"staging": 1, "late data": 1},
                            installed=7, installed_bytes=7 * 10**9,
                            buckets=[1, 2, 0, 0, 0, 0, 0, 0, 0, 0, 3, 1], latency_sum=9000.5,
                            latency_count=7, last_success={"install": 1_800_000_000.0})
    lanes = [{"lane": "exposures", "state": "running", "started": "2027-01-15T08:00:00Z"},
             {"lane": "nights", "state": "idle", "finished": "2027-01-15T07:00:00Z"}]
    snapshot = MetricsSnapshot([figures], {"configuration": 1}, lanes,
                               {"ready": False, "time": "2027-01-15T07:59:00Z"},
                               epoch("2027-01-15T08:00:42Z"))
    text = exposition(snapshot).decode()
    samples = parse(text)
    assert value(samples, "desitransfer_exposures_pending", stream="S") == 3
    assert value(samples, "desitransfer_exposures_held", stream="S") == 1
    assert value(samples, "desitransfer_exposures_failed", stream="S") == 2
    assert value(samples, "desitransfer_exposures_late", stream="S") == 1
    assert value(samples, "desitransfer_installed_exposures_total", stream="S") == 7
    assert value(samples, "desitransfer_installed_bytes_total", stream="S") == 7e9
    # Cumulative buckets from 1 s to 1 h, then +Inf; every kind has a series.
    cumulative = [value(samples, "desitransfer_publication_to_installed_seconds_bucket",
                        stream="S", le=str(b)) for b in LATENCY_BUCKETS]
    assert cumulative == [1, 3, 3, 3, 3, 3, 3, 3, 3, 3, 6]
    assert value(samples, "desitransfer_publication_to_installed_seconds_bucket",
                 stream="S", le="+Inf") == 7
    assert value(samples, "desitransfer_publication_to_installed_seconds_sum",
                 stream="S") == 9000.5
    assert {v for (n, labels), _ in samples.items() if n == "desitransfer_problems"
            for k, v in labels if k == "kind"} == set(KINDS)
    assert value(samples, "desitransfer_problems", stream="S", kind="late data") == 1
    assert value(samples, "desitransfer_problems", stream="S", kind="backup") == 0
    assert value(samples, "desitransfer_problems", stream="all streams",
                 kind="configuration") == 1
    assert value(samples, "desitransfer_last_success_timestamp_seconds", stream="S",
                 stage="install") == 1_800_000_000
    # A stage never done has no sample (not a 0 that looks like 1970).
    assert value(samples, "desitransfer_last_success_timestamp_seconds", stream="S",
                 stage="backup") is None
    assert value(samples, "desitransfer_lane_state", lane="exposures", state="running") == 1
    assert value(samples, "desitransfer_lane_state", lane="exposures", state="idle") == 0
    assert value(samples, "desitransfer_lane_run_age_seconds", lane="exposures") == 42
    assert value(samples, "desitransfer_lane_run_age_seconds", lane="nights") == 0
    assert value(samples, "desitransfer_lane_last_finished_timestamp_seconds",
                 lane="nights") == epoch("2027-01-15T07:00:00Z")
    assert value(samples, "desitransfer_hpss_up") == 0
    assert "# TYPE desitransfer_installed_exposures_total counter" in text
    assert all(n.startswith("desitransfer_") for n, _ in samples)


def exposure(night: NightStatus, expid: str, published: str, installed: str,
             size: int = 100) -> None:
    night.exposures[expid] = ExposureStatus(night.stream, night.night, expid, stages={
        "staged": {"time": installed, "published": published, "outcome": "staged"},
        "checksummed": {"time": installed, "outcome": "verified"},
        "installed": {"time": installed, "bytes": size}})


def test_a_nights_summary_puts_each_latency_in_its_bucket():
    night = NightStatus("S", NIGHT)
    exposure(night, "00000001", "2026-11-28T02:00:00Z", "2026-11-28T02:00:01Z")  # 1 s
    exposure(night, "00000002", "2026-11-28T02:00:00Z", "2026-11-28T02:00:02Z")  # 2 s
    exposure(night, "00000003", "2026-11-28T02:00:00Z", "2026-11-28T04:00:00Z")  # 2 h
    night.exposures["00000004"] = ExposureStatus("S", NIGHT, "00000004", failures={
        "staged": {"held": True, "reason": "link leads outside", "attempts": 1}})
    summary = summarise_night(night, [])
    assert summary["buckets"] == [1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]
    assert summary["latency_count"] == 3 and summary["latency_sum"] == 7203
    assert summary["installed"] == 3 and summary["bytes"] == 300 and summary["held"] == 1
    assert summary["newest"]["installed"] == epoch("2026-11-28T04:00:00Z")


def settle(*paths: Path) -> None:
    """Date `paths` a minute back: older than the settle time."""
    old = time.time() - 60
    for path in paths:
        os.utime(path, (old, old))


def test_a_run_reads_only_the_window_nights_that_changed(tmp_path, monkeypatch):
    state = tmp_path / "state"
    nights = ("20261001", "20261002", NIGHT)  # two before the window (from 20261029)
    for night in nights:
        for expid in ("00000001", "00000002"):
            write_marker(marker_path(state, STREAM, night, expid, "installed"),
                         {"time": "2026-11-27T02:00:00Z", "bytes": 10})
    settle(state / STREAM, *(state / STREAM).rglob("*"))
    config = {"state": str(state), "verify": {"max_attempts": 3}, "backup": {"backend": "tar"}}
    now = time.time()
    first, _ = stream_summaries(config, STREAM, "20261029", now)
    assert first["older"]["installed"] == 4 and first["older"]["stale"] == 2
    assert first[NIGHT]["installed"] == 2 and set(first) == {NIGHT, "older"}
    reads = []
    real = reading.read_record
    monkeypatch.setattr(reading, "read_record", lambda p: reads.append(Path(p)) or real(p))
    assert stream_summaries(config, STREAM, "20261029", now)[0] == first
    assert reads == []  # a no-op run: every night from the cache
    write_marker(marker_path(state, STREAM, NIGHT, "00000003", "installed"),
                 {"time": "2026-11-27T03:00:00Z", "bytes": 10})
    again, _ = stream_summaries(config, STREAM, "20261029", now)
    assert {p.parent.name for p in reads} == {NIGHT} and again[NIGHT]["installed"] == 3
    # A night-level marker appears among the older nights: their sum is redone, and
    # only that night is read again.
    reads.clear()
    settle(state / STREAM / NIGHT, *(state / STREAM / NIGHT).iterdir())
    stream_summaries(config, STREAM, "20261029", now)  # NIGHT, settled, is cached again
    reads.clear()
    backedup = marker_path(state, STREAM, "20261001", None, "backedup")
    write_marker(backedup, {"archives": []})
    settle(backedup)
    again, _ = stream_summaries(config, STREAM, "20261029", now)
    assert reads and {p.name[:8] if p.parent.name == STREAM else p.parent.name
                      for p in reads} == {"20261001"}
    assert again["older"]["stale"] == 1 and again["older"]["installed"] == 4
    # A change inside an older night (a person's) shows within OLDER_RECHECK_SECONDS.
    late = marker_path(state, STREAM, "20261002", "00000003", "installed")
    write_marker(late, {"time": "2026-11-27T03:00:00Z", "bytes": 10})
    settle(late, late.parent)
    assert stream_summaries(config, STREAM, "20261029", now)[0]["older"]["installed"] == 4
    later, _ = stream_summaries(config, STREAM, "20261029", now + OLDER_RECHECK_SECONDS + 1)
    assert later["older"]["installed"] == 5


def test_a_link_planted_at_the_metrics_file_is_replaced_never_followed(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("someone else's file")
    status = tmp_path / "state" / "status"
    status.mkdir(parents=True)
    (status / "desitransfer.prom").symlink_to(victim)
    config = {"state": str(tmp_path / "state"), "remote": {"host": "local"},
              "streams": {STREAM: {"source": "s", "staging": "t", "destination": "d",
                                   "hpss": "h", "checksum_file": "c"}}}
    path = write_metrics(config)
    assert path == status / "desitransfer.prom" == metrics_path(config)
    assert victim.read_text() == "someone else's file"
    assert not path.is_symlink() and stat.S_IMODE(path.stat().st_mode) == 0o644
    assert value(parse(path.read_text()), "desitransfer_exposures_pending", stream=STREAM) == 0
    assert [p.name for p in status.iterdir()] == ["desitransfer.prom"]  # no temporary left


# --------------------------------------------------------------------------- real runs


def test_a_clean_night(site):
    tar_backend(site)
    site.config["now"] = AFTER_BACKUP
    site.exposure("00008000")
    site.exposure("00008001")
    start = time.time()
    site.run()
    elapsed = time.time() - start
    samples = metrics(site)
    s = {"stream": STREAM}
    for name in ("exposures_pending", "exposures_held", "exposures_failed", "exposures_late",
                 "nights_late"):
        assert value(samples, f"desitransfer_{name}", **s) == 0, name
    assert all(v == 0 for (n, _), v in samples.items() if n == "desitransfer_problems")
    installed = [site.record(NIGHT, e, "installed") for e in ("00008000", "00008001")]
    assert value(samples, "desitransfer_installed_exposures_total", **s) == 2
    assert value(samples, "desitransfer_installed_bytes_total", **s) == sum(
        r["bytes"] for r in installed)
    latencies = [epoch(site.record(NIGHT, e, "installed")["time"])
                 - epoch(site.record(NIGHT, e, "staged")["published"])
                 for e in ("00008000", "00008001")]
    assert value(samples, "desitransfer_publication_to_installed_seconds_count", **s) == 2
    assert value(samples, "desitransfer_publication_to_installed_seconds_sum",
                 **s) == pytest.approx(sum(latencies))
    assert value(samples, "desitransfer_publication_to_installed_seconds_bucket", le="+Inf",
                 **s) == 2
    # Each stage's last success is its newest record's time, in Unix seconds.
    newest = {
        "stage": max(epoch(site.record(NIGHT, e, "staged")["time"])
                     for e in ("00008000", "00008001")),
        "verify": max(epoch(site.record(NIGHT, e, "checksummed")["time"])
                      for e in ("00008000", "00008001")),
        "install": max(epoch(r["time"]) for r in installed),
        "catch_up": epoch(site.record(NIGHT, None, "caughtup")["time"]),
        "backup": epoch(site.record(NIGHT, None, "backedup")["time"]),
        "listing": read_record(listing_cache_path(site.state, STREAM))["epoch"],
    }
    for stage, when in newest.items():
        assert value(samples, "desitransfer_last_success_timestamp_seconds", stage=stage,
                     **s) == pytest.approx(when), stage
    # The file is written at the end of the run, which holds both lanes (a run by hand).
    for lane in ("exposures", "nights"):
        assert value(samples, "desitransfer_lane_state", lane=lane, state="running") == 1
        assert 0 <= value(samples, "desitransfer_lane_run_age_seconds", lane=lane) <= elapsed + 1
    assert value(samples, "desitransfer_hpss_up") is None  # the tar backend asks no HPSS
    # A no-op run writes it again; a preview writes nothing.
    path = site.state / "status" / "desitransfer.prom"
    before = path.stat().st_mtime_ns
    site.run()
    assert path.stat().st_mtime_ns > before
    written = path.stat().st_mtime_ns
    site.run("-n")
    assert path.stat().st_mtime_ns == written


def test_a_held_exposure(site):
    site.exposure("00008010")
    looped = site.exposure("00008011")
    (looped / "loop").symlink_to("loop")  # held at once: a link loop inside
    site.run(check=False)
    samples = metrics(site)
    s = {"stream": STREAM}
    assert site.failure(NIGHT, "00008011", "staged")["held"]
    assert value(samples, "desitransfer_exposures_held", **s) == 1
    assert value(samples, "desitransfer_exposures_failed", **s) == 1
    assert value(samples, "desitransfer_exposures_pending", **s) == 0  # held: not pending
    assert value(samples, "desitransfer_problems", kind="staging", **s) == 1
    assert value(samples, "desitransfer_installed_exposures_total", **s) == 1
    assert value(samples, "desitransfer_exposures_late", **s) == 0  # published after `now`


def test_hpss_down_defers_the_backup_and_a_day_later_the_night_is_late(site, tape,
                                                                         status_server):
    site.config["now"] = AFTER_BACKUP
    site.exposure("00008020")
    status_server.set_status("degraded")
    site.run()
    samples = metrics(site)
    s = {"stream": STREAM}
    hpss = read_record(site.state / ".hpss_status.json")
    assert value(samples, "desitransfer_hpss_up") == 0
    assert value(samples, "desitransfer_hpss_checked_timestamp_seconds") == epoch(hpss["time"])
    assert value(samples, "desitransfer_last_success_timestamp_seconds", stage="backup",
                 **s) is None
    assert value(samples, "desitransfer_last_success_timestamp_seconds", stage="catch_up",
                 **s) is not None
    assert value(samples, "desitransfer_nights_late", **s) == 0
    site.config["now"] = A_DAY_LATER
    site.run()
    samples = metrics(site)
    assert value(samples, "desitransfer_nights_late", **s) == 1
    assert value(samples, "desitransfer_problems", kind="late data", **s) == 1
    status_server.set_status("active")
    site.run()
    samples = metrics(site)
    assert value(samples, "desitransfer_hpss_up") == 1
    assert value(samples, "desitransfer_nights_late", **s) == 0
    assert value(samples, "desitransfer_last_success_timestamp_seconds", stage="backup",
                 **s) == epoch(site.record(NIGHT, None, "backedup")["time"])


def test_a_running_backup(site, tape):
    site.config["now"] = AFTER_BACKUP
    site.exposure("00008030")
    assert cron(site, "--lane", "exposures").returncode == 0
    fifo = hanging_htar(site, tape)
    nights = start_cron(site, "--lane", "nights", HTAR_HANG="3600", HPSS_FAIL_ONCE="1")
    try:
        started = time.time()
        with open(fifo) as announced:  # blocks until htar has been called
            assert announced.read().strip() == "started"
        assert cron(site, "--lane", "exposures").returncode == 0
        seen = time.time()
        samples = metrics(site)
    finally:
        tree = descendants(nights.pid)
        os.killpg(nights.pid, signal.SIGKILL)
        nights.wait()
        wait_for_exit(tree, timeout=30)
    record = json.loads((site.state / ".lanes" / "nights.json").read_text())
    assert value(samples, "desitransfer_lane_state", lane="nights", state="running") == 1
    assert value(samples, "desitransfer_lane_state", lane="nights", state="idle") == 0
    age = value(samples, "desitransfer_lane_run_age_seconds", lane="nights")
    assert age == pytest.approx(seen - epoch(record["started"]), abs=seen - started + 1)
    assert value(samples, "desitransfer_last_success_timestamp_seconds", stage="backup",
                 stream=STREAM) is None
    assert value(samples, "desitransfer_last_success_timestamp_seconds", stage="catch_up",
                 stream=STREAM) is not None  # the catch-up ran before the backup
    assert value(samples, "desitransfer_hpss_up") == 1


def test_a_cold_cache_is_filled_over_runs_and_totals_wait_until_it_is(tmp_path, monkeypatch):
    state = tmp_path / "state"
    for night in ("20261001", "20261002", NIGHT):
        write_marker(marker_path(state, STREAM, night, "00000001", "installed"),
                     {"time": "2026-11-27T02:00:00Z", "bytes": 10})
    settle(state / STREAM, *(state / STREAM).rglob("*"))
    config = {"state": str(state), "verify": {"max_attempts": 3}, "backup": {"backend": "none"}}
    monkeypatch.setattr(metrics_module, "OLDER_READ_SECONDS", -1.0)  # no time for older nights
    summaries, _ = stream_summaries(config, STREAM, "20261029", time.time())
    assert summaries["older"]["complete"] is False and summaries[NIGHT]["installed"] == 1
    figures = metrics_module.stream_figures(STREAM, summaries.values(), 0, None, [], {})
    snapshot = MetricsSnapshot([figures], {}, [], None, time.time())
    samples = parse(exposition(snapshot).decode())
    assert value(samples, "desitransfer_installed_exposures_total", stream=STREAM) is None
    assert value(samples, "desitransfer_exposures_held", stream=STREAM) == 0
    monkeypatch.setattr(metrics_module, "OLDER_READ_SECONDS", 60.0)
    summaries, _ = stream_summaries(config, STREAM, "20261029", time.time())
    assert summaries["older"]["complete"] is True and summaries["older"]["installed"] == 2
    figures = metrics_module.stream_figures(STREAM, summaries.values(), 0, None, [], {})
    samples = parse(exposition(MetricsSnapshot([figures], {}, [], None, 0)).decode())
    assert value(samples, "desitransfer_installed_exposures_total", stream=STREAM) == 3
