"""The exposure lane's watch between cron starts: its decisions, then the real thing
(a real mountain listed with find, the real cron entry, the real clock)."""

from __future__ import annotations

import datetime as dt
import fcntl
import subprocess
import time
from pathlib import Path

import pytest
from conftest import NIGHT, STREAM, Site, require_tool
from loopback_sshd import free_port
from test_cron_entry import CRON, cron_log

from scripts.configuration import with_defaults
from scripts.remote import RemoteError
from scripts.watch import (
    appeared,
    list_night,
    next_poll,
    tonight,
    tonight_lister,
    watch,
    watch_deadline,
    watch_settings,
)


def utc(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


def test_tonight_turns_over_at_noon_at_kitt_peak():
    assert tonight(utc("2026-11-28T16:00:00Z")) == "20261127"  # the morning after
    assert tonight(utc("2026-11-28T18:59:59Z")) == "20261127"
    assert tonight(utc("2026-11-28T19:00:00Z")) == "20261128"  # noon in Arizona
    assert tonight(utc("2026-11-29T06:30:00Z")) == "20261128"  # 23:30 local
    assert tonight(utc("2026-01-01T02:00:00Z")) == "20251231"


def test_the_last_listing_leaves_one_poll_before_the_next_cron_start():
    started, cron, poll = 1000.0, 60.0, 5.0
    assert next_poll(1010.0, started, cron, poll) == 1015.0
    assert next_poll(1050.0, started, cron, poll) == 1055.0
    assert next_poll(1050.5, started, cron, poll) is None  # 1055.5: too close to 1060
    for tenth in range(0, 600):
        now = started + tenth / 10
        at = next_poll(now, started, cron, poll)
        assert at is None or at <= started + cron - poll


def test_a_run_past_a_cron_start_keeps_that_minute():
    # That invocation found the lock held and went on: nobody else watches it.
    started, cron, poll = 0.0, 60.0, 5.0
    assert watch_deadline(61.0, started, cron, poll) == 115.0
    assert next_poll(61.0, started, cron, poll) == 66.0
    assert next_poll(112.0, started, cron, poll) is None


def test_no_watch_without_both_intervals():
    assert next_poll(0.0, 0.0, 0.0, 5.0) is None
    assert watch_settings(with_defaults({"remote": {}})) == (60.0, 5.0)
    assert watch_settings({"cron_interval": 0, "remote": {"poll_interval": 5}}) is None
    assert watch_settings({"cron_interval": "60", "remote": {"poll_interval": 5}}) is None
    assert watch_settings({"cron_interval": True, "remote": {"poll_interval": 5}}) is None
    assert watch_settings({"cron_interval": 60, "remote": {"poll_interval": float("nan")}}) \
        is None


def test_what_appeared_is_what_the_last_listings_lack():
    known = {("S", NIGHT, "00000001")}
    listed = {("S", NIGHT, "00000001"), ("S", NIGHT, "00000003"), ("S", NIGHT, "00000002")}
    assert appeared(listed, known) == [("S", NIGHT, "00000002"), ("S", NIGHT, "00000003")]
    assert appeared(known, listed) == []


@pytest.fixture
def mountain(tmp_path: Path) -> Site:
    """A mountain and a configuration only: nothing here runs the workflow."""
    return Site(tmp_path)


def config_of(site: Site) -> dict:
    return with_defaults(dict(site.config))


def test_one_night_is_listed_and_a_missing_night_is_empty(mountain):
    mountain.exposure("00003000")
    mountain.exposure("00003001")
    mountain.exposure("00003999", night="20261126")  # another night: not listed
    bad = mountain.source / NIGHT / "not-an-exposure"
    bad.symlink_to(".")
    remote = config_of(mountain)["remote"]
    assert list_night(remote, str(mountain.source), NIGHT) == {
        (NIGHT, "00003000"), (NIGHT, "00003001")}
    assert list_night(remote, str(mountain.source), "20261128") == set()


class Mountain:
    """The real lister of a site's mountain, and what a test does between listings."""

    def __init__(self, site: Site, on_listing=None):
        self.lister = tonight_lister(config_of(site))
        self.calls = 0
        self.on_listing = on_listing or (lambda n: None)

    def __call__(self):
        self.calls += 1
        self.on_listing(self.calls)
        return self.lister()


def test_the_watch_runs_for_what_appears_and_ends_before_the_next_cron_start(mountain):
    mountain.exposure("00003100")
    known = {(STREAM, NIGHT, "00003100")}  # what the lane's last run listed
    lister = Mountain(mountain, lambda n: n == 3 and mountain.exposure("00003101"))
    runs = []

    def run() -> bool:
        runs.append(time.monotonic())
        known.add((STREAM, NIGHT, "00003101"))  # the run lists it too
        return True

    started = time.monotonic()
    watched = watch(started=started, cron_interval=3.0, poll_interval=0.25,
                    kill_file=mountain.root / "stop", list_tonight=lister,
                    known=lambda: set(known), run=run)
    ended = time.monotonic()
    assert watched.reason == "the next cron start is near"
    assert watched.runs == 1 and len(runs) == 1  # once, for the exposure that appeared
    assert lister.calls >= 5  # and it kept watching after the run
    assert ended < started + 3.0  # the next invocation finds the lane free


def test_the_kill_file_stops_the_watch_within_one_poll(mountain):
    kill_file = mountain.root / "stop"
    touched = []

    def touch(n: int) -> None:
        if n == 2:
            kill_file.touch()
            touched.append(time.monotonic())

    lister = Mountain(mountain, touch)
    watched = watch(started=time.monotonic(), cron_interval=60.0, poll_interval=1.0,
                    kill_file=kill_file, list_tonight=lister, known=set,
                    run=lambda: pytest.fail("no run: nothing appeared"))
    assert watched.reason == f"{kill_file} detected"
    assert time.monotonic() - touched[0] <= 1.0  # before the next listing was due
    assert lister.calls == 2


def test_a_listing_failure_ends_the_watch(mountain):
    require_tool("ssh")
    config = config_of(mountain)
    config["remote"].update(host="nobody@127.0.0.1", timeout=10,
                            ssh=["ssh", "-o", "BatchMode=yes", "-p", str(free_port())])
    lister = tonight_lister(config)
    with pytest.raises(RemoteError, match="cannot reach"):
        lister()
    started = time.monotonic()
    watched = watch(started=started, cron_interval=60.0, poll_interval=0.1,
                    kill_file=mountain.root / "stop", list_tonight=lister, known=set,
                    run=lambda: pytest.fail("no run after a failed listing"))
    assert watched.reason.startswith("listing failed: cannot reach nobody@127.0.0.1")
    assert watched.runs == 0 and time.monotonic() - started < 30


def test_a_failed_run_ends_the_watch(mountain):
    lister = Mountain(mountain, lambda n: n == 1 and mountain.exposure("00003200"))
    watched = watch(started=time.monotonic(), cron_interval=60.0, poll_interval=0.1,
                    kill_file=mountain.root / "stop", list_tonight=lister, known=set,
                    run=lambda: False)
    assert watched.reason == "a run failed" and watched.runs == 1 and lister.calls == 1


# The cron entry watching, as cron runs it.

def lane_released(site: Site, timeout: float) -> float:
    """When the exposure lane's lock can be taken (polled with a deadline)."""
    deadline = time.monotonic() + timeout
    with open(site.state / ".lanes" / "exposures.lock", "a") as lock:
        while time.monotonic() < deadline:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                time.sleep(0.05)
                continue
            fcntl.flock(lock, fcntl.LOCK_UN)
            return time.monotonic()
    raise AssertionError("the exposure lane was never released")


def first_run_ended(site: Site, timeout: float) -> None:
    record = site.state / ".lanes" / "exposures.json"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if record.exists() and '"returncode"' in record.read_text():
            return
        time.sleep(0.05)
    raise AssertionError("the first run of the exposure lane never ended")


def start_cron(site: Site, *args: str) -> subprocess.Popen:
    site.config.setdefault("kill_file", str(site.root / "stop_desi_transfer"))
    return subprocess.Popen([*CRON, str(site.write_config()), *args], cwd=site.root,
                            env=site.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)


def test_the_cron_entry_installs_what_appears_and_leaves_the_next_start_free(site):
    site.config["cron_interval"] = 20
    site.config["remote"]["poll_interval"] = 0.5
    site.exposure("00003300")
    started = time.monotonic()
    cron = start_cron(site, "--lane", "exposures")
    try:
        first_run_ended(site, timeout=60)
        site.exposure("00003301")  # published while the lane watches
        released = lane_released(site, timeout=60)
        assert cron.wait(timeout=60) == 0, cron.stderr.read()
    finally:
        cron.kill()
    assert released < started + 20  # before the next cron start
    for expid in ("00003300", "00003301"):
        assert site.marker(NIGHT, expid, "installed").exists()
    assert "1 exposure(s) appeared (20261127/00003301)" in cron_log(site)
    assert "stopped watching (the next cron start is near) after 1 run(s)" in cron_log(site)


def test_the_kill_file_ends_the_cron_entry_s_watch(site):
    site.config["cron_interval"] = 60
    site.config["remote"]["poll_interval"] = 1
    site.exposure("00003400")
    cron = start_cron(site)
    try:
        first_run_ended(site, timeout=60)
        (site.root / "stop_desi_transfer").touch()
        assert cron.wait(timeout=20) == 0  # not at the next cron start, 60 s on
    finally:
        cron.kill()
    log = cron_log(site)
    assert "stopped watching" in log and "stop_desi_transfer detected" in log
    assert "the nights lane does not run" in log  # nothing more in this invocation


def test_a_preview_through_the_cron_entry_does_not_watch(site):
    site.config["cron_interval"] = 60
    site.exposure("00003500")
    started = time.monotonic()
    cron = start_cron(site, "--lane", "exposures", "-n")
    try:
        assert cron.wait(timeout=40) == 0
    finally:
        cron.kill()
    assert time.monotonic() - started < 40
    assert "watching" not in cron_log(site)
    assert not site.marker(NIGHT, "00003500", "installed").exists()
