"""Fresh data first (#12): lanes with their own locks, bounded runs, fresh listings.

The real workflow run by the real cron entry. Nothing waits by sleeping: a hung backup
is the HPSS emulator's HTAR_HANG, its start is announced on a FIFO; a run's start is
the creation of its lane's activity record, seen with inotify; runs end when their
process exits.
"""

from __future__ import annotations

import ctypes
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import NIGHT, REPO, STREAM, planned_jobs
from processes import descendants, started_commands, wait_for_exit
from test_cron_entry import CRON, cron, cron_log

from scripts.lanes import lane_activity
from scripts.markers import read_record

TONIGHT = "20261128"
AFTER_BACKUP = "2026-11-28T21:00:00Z"  # NIGHT's catch-up and backup due; TONIGHT's not
RUN_LIMIT = 240


def start_cron(site, *args: str, **env: str) -> subprocess.Popen:
    """The cron entry in the background, in a session of its own (to kill it whole)."""
    site.config.setdefault("kill_file", str(site.root / "stop_desi_transfer"))
    return subprocess.Popen([*CRON, str(site.write_config()), *args], cwd=site.root,
                            env={**site.env, **env}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def finish(process: subprocess.Popen) -> tuple[int, str]:
    _, stderr = process.communicate(timeout=RUN_LIMIT)
    return process.returncode, stderr


def installed_at(site, night: str, expid: str) -> int:
    """When the exposure's `.installed` marker was written (ns)."""
    return site.marker(night, expid, "installed").stat().st_mtime_ns


class Inotify:
    """Wait until a file appears in a directory (Linux inotify, no polling)."""

    IN_CREATE, IN_MOVED_TO = 0x100, 0x80

    def __init__(self, directory: Path):
        self.libc = ctypes.CDLL(None, use_errno=True)
        self.fd = self.libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        assert self.fd >= 0, os.strerror(ctypes.get_errno())
        directory.mkdir(parents=True, exist_ok=True)
        watch = self.libc.inotify_add_watch(self.fd, str(directory).encode(),
                                            self.IN_CREATE | self.IN_MOVED_TO)
        assert watch >= 0, os.strerror(ctypes.get_errno())

    def wait(self, condition, timeout: float) -> None:
        """Block until `condition()` is true, re-checking on every event in the directory."""
        deadline = time.monotonic() + timeout
        while not condition():
            left = deadline - time.monotonic()
            assert left > 0, "timed out waiting for a file"
            ready, _, _ = select.select([self.fd], [], [], left)
            if ready:
                os.read(self.fd, 65536)

    def close(self) -> None:
        os.close(self.fd)


def hanging_htar(site, tape: Path) -> Path:
    """An hpss_bin whose htar announces its first call on a FIFO, then runs the
    emulator (which hangs with HTAR_HANG). Returns the FIFO."""
    bin_dir = site.root / "hpss_bin"
    bin_dir.mkdir()
    emulator = REPO / "tests" / "hpss_emulator"
    (bin_dir / "hsi").symlink_to(emulator / "hsi")
    fifo = site.root / "htar-started"
    os.mkfifo(fifo)
    htar = bin_dir / "htar"
    htar.write_text(f"""#!/bin/sh
if mkdir "{site.root}/htar-announced" 2>/dev/null; then echo started > "{fifo}"; fi
exec "{emulator / 'htar'}" "$@"
""")
    htar.chmod(0o755)
    site.config["backup"]["hpss_bin"] = str(bin_dir)
    site.config["backup"]["timeout"] = 3600
    return fifo


def test_exposure_published_during_a_backup_is_installed_before_the_backup_ends(site, tape):
    site.config["now"] = AFTER_BACKUP
    site.exposure("00006000")
    assert cron(site, "--lane", "exposures").returncode == 0
    fifo = hanging_htar(site, tape)
    site.config["debug"] = True  # the backup job logs the pid of every command it starts
    nights = start_cron(site, "--lane", "nights", HTAR_HANG="3600", HPSS_FAIL_ONCE="1")
    try:
        with open(fifo) as started:  # blocks until htar has been called
            assert started.read().strip() == "started"
        busy = {lane["lane"]: lane for lane in lane_activity(site.state)}
        assert busy["nights"]["state"] == "running"
        assert "backup of DESI_SPECTRO_DATA 20261127" in busy["nights"]["on"]
        site.exposure("00006001", night=TONIGHT)  # published while the backup runs
        result = cron(site)  # the one crontab line: runs every lane whose lock is free
        assert result.returncode == 0, result.stderr
        assert site.marker(TONIGHT, "00006001", "installed").exists()
        assert nights.poll() is None  # the backup is still running...
        assert not site.marker(NIGHT, None, "backedup").exists()  # ...and not done
        assert "the nights lane is busy" in cron_log(site)
    finally:
        tree = descendants(nights.pid)  # cron entry, Snakemake, the job, htar
        os.killpg(nights.pid, signal.SIGKILL)  # the night lane is killed mid-backup
        nights.wait()
        wait_for_exit(tree, timeout=30)  # htar too: it dies with its job
    # The walk down from the cron entry found the hung htar: it was waited for too.
    htar = started_commands(site.state / "logs" / STREAM / f"{NIGHT}.backedup.log",
                            str(site.root / "hpss_bin" / "htar"))
    assert htar and htar[-1] in tree, (htar, tree)
    killed = {lane["lane"]: lane for lane in lane_activity(site.state)}
    assert killed["nights"]["state"] == "killed"
    assert killed["exposures"]["state"] == "idle"
    assert killed["exposures"]["returncode"] == 0
    # The next run recovers the night lane's work, without a person.
    result = cron(site)
    assert result.returncode == 0, result.stderr
    assert site.record(NIGHT, None, "backedup")["outcome"] == "backed up"
    assert lane_activity(site.state)[1]["state"] == "idle"


def test_exposure_published_while_a_backlog_drains_is_installed_before_its_last_night(site):
    backlog = ["20261123", "20261124", "20261125"]
    for night in backlog:
        for n in range(8):
            site.exposure(f"{int(night[-2:]) * 100 + n:08d}", night=night)
    site.config["exposures_per_run"] = 4  # 24 exposures: 6 runs of the exposure lane
    site.config["now"] = "2026-11-28T12:00:00Z"  # before any catch-up of the backlog
    watcher = Inotify(site.state / ".lanes")
    record = site.state / ".lanes" / "exposures.json"
    try:
        draining = start_cron(site)
        # The first run of the exposure lane has planned its share of the backlog.
        watcher.wait(lambda: (read_record(record) or {}).get("exposures", 0) > 0, RUN_LIMIT)
        first = read_record(record)
        assert first["exposures"] == 4 and first["pending"] == 24
        assert first["on"].startswith("4 exposure(s) (20261125: 4)")  # newest night first
        site.exposure("00009999", night=TONIGHT)
        returncode, stderr = finish(draining)
    finally:
        watcher.close()
    assert returncode == 0, stderr
    last_night = max(installed_at(site, "20261123", e.name.split(".")[0])
                     for e in (site.state / STREAM / "20261123").glob("*.installed"))
    assert len(list((site.state / STREAM / "20261123").glob("*.installed"))) == 8
    assert installed_at(site, TONIGHT, "00009999") < last_night
    runs = cron_log(site).count("the exposures lane, run ")
    assert runs >= 6  # many short runs, each with its own listing
    # Runs of the drain leave a recent page to the next; the last one rebuilds it.
    rebuilds = (site.state / "logs" / "status.log").read_text().count("Status files rebuilt")
    assert 1 <= rebuilds < runs
    newest = max(p.stat().st_mtime for p in (site.state / STREAM).rglob("*.installed"))
    assert (site.state / "status" / "index.html").stat().st_mtime >= newest


def test_two_lanes_started_at_the_same_moment_both_run(site):
    site.config["now"] = "2026-11-28T15:00:00Z"  # NIGHT's catch-up due
    site.exposure("00007000")
    assert cron(site, "--lane", "exposures").returncode == 0
    site.exposure("00007001", night=TONIGHT)
    both = [start_cron(site, "--lane", lane) for lane in ("exposures", "nights")]
    results = [finish(process) for process in both]
    assert [code for code, _ in results] == [0, 0], results
    assert site.marker(TONIGHT, "00007001", "installed").exists()
    assert site.record(NIGHT, None, "caughtup")["outcome"] == "no changes"
    assert "busy" not in cron_log(site)
    assert [(lane["state"], lane["returncode"]) for lane in lane_activity(site.state)] == [
        ("idle", 0), ("idle", 0)]
    # The night run recorded the limit of the work it planned (one catch-up): a run
    # draining a backlog is stalled only past its own plan (scripts/lanes.py).
    from scripts.configuration import with_defaults
    from scripts.time_limits import job_seconds

    nights = read_record(site.state / ".lanes" / "nights.json")
    assert (nights["night_stages"], nights["night_seconds"]) == (
        1, job_seconds(with_defaults(site.config), "catch_up"))


def test_the_listing_of_a_run_is_never_older_than_its_start(site):
    site.config["remote"]["listing_cache"] = 3600
    site.exposure("00008000", night=TONIGHT)
    assert cron(site).returncode == 0
    site.exposure("00008001", night=TONIGHT)  # within the cache's hour
    before = time.time()
    assert cron(site).returncode == 0
    assert site.marker(TONIGHT, "00008001", "installed").exists()
    record = read_record(site.state / ".lanes" / "exposures.json")
    assert record["listed_epoch"] >= before
    # A run started by hand does not reuse the cron run's listing either.
    site.exposure("00008002", night=TONIGHT)
    site.run()
    assert site.marker(TONIGHT, "00008002", "installed").exists()


def test_the_night_lane_never_plans_exposure_work(site):
    site.config["now"] = "2026-11-27T10:00:00Z"  # no catch-up due yet
    site.exposure("00007100")
    site.exposure("00007101", night="20261126")
    site.run()
    site.config["now"] = "2026-11-28T15:00:00Z"  # both nights' catch-ups due
    site.exposure("00007102")  # NIGHT is incomplete again; 20261126 is ready
    site.env["DESITRANSFER_LANE"] = "nights"
    lane = planned_jobs(site.run("-n").stdout)
    assert lane == {"all": 1, "catch_up_night": 1}  # 20261126 only, no exposure job
    site.env["DESITRANSFER_LANE"] = "exposures"
    assert planned_jobs(site.run("-n").stdout) == {
        "all": 1, "install_exposure": 1, "stage_exposure": 1, "verify_exposure": 1}
    del site.env["DESITRANSFER_LANE"]
    # Without a lane, a preview shows all the pending work.
    assert planned_jobs(site.run("-n").stdout) == {
        "all": 1, "catch_up_night": 2, "install_exposure": 1, "stage_exposure": 1,
        "verify_exposure": 1}


def test_an_unknown_lane_is_one_line(site):
    result = subprocess.run([*CRON, str(site.write_config()), "--lane", "tape"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr == ("desitransfer: argument --lane: invalid choice: 'tape' "
                             "(choose from 'exposures', 'nights')\n")
    site.env["DESITRANSFER_LANE"] = "tape"
    result = site.run("-n", check=False)
    assert result.returncode != 0
    assert "DESITRANSFER_LANE='tape' is not a lane" in result.stderr


def test_a_bounded_run_takes_the_newest_night_first():
    from scripts.targets import newest_first

    pending = [("S", "20261125", "00000003"), ("S", "20261128", "00000102"),
               ("S", "20261125", "00000001"), ("S", "20261128", "00000101"),
               ("S", "20261126", "00000050")]
    assert newest_first(pending, 3) == [("S", "20261128", "00000101"),
                                        ("S", "20261128", "00000102"),
                                        ("S", "20261126", "00000050")]
    assert len(newest_first(pending)) == 5


def test_the_cron_entry_takes_its_own_options_out_of_the_snakemake_arguments():
    from scripts.cron_entry import REPO, parse_arguments

    options, extra = parse_arguments(["c.yaml", "--lane", "nights", "-n", "--lane=exposures"])
    assert (str(options.config), options.lane, options.debug, extra) == \
        ("c.yaml", "exposures", False, ["-n"])
    options, extra = parse_arguments(["--debug", "c.yaml", "--workflow-profile", "p", "-d", "w"])
    assert (str(options.config), options.lane, options.debug, extra) == \
        ("c.yaml", None, True, ["--workflow-profile", "p", "-d", "w"])
    options, extra = parse_arguments(["--workflow-profile", "p"])
    assert (options.config, options.lane, extra) == \
        (REPO / "config.yaml", None, ["--workflow-profile", "p"])
    with pytest.raises(ValueError, match="invalid choice: 'x'"):
        parse_arguments(["c.yaml", "--lane", "x"])


def test_the_night_lane_never_reruns_an_exposure_job_marked_incomplete(site):
    from base64 import urlsafe_b64encode

    site.config["now"] = "2026-11-27T10:00:00Z"  # no catch-up due yet
    site.exposure("00007200")
    site.run()
    site.config["now"] = "2026-11-28T15:00:00Z"  # NIGHT's catch-up due
    # As Snakemake leaves it while the exposure lane runs (or after it was killed in)
    # the install job: the marker exists and is flagged incomplete.
    marker = str(site.marker(NIGHT, "00007200", "installed"))
    flag = site.root / ".snakemake" / "incomplete" / urlsafe_b64encode(marker.encode()).decode()
    flag.parent.mkdir(parents=True, exist_ok=True)
    flag.write_text('{"external_jobid": null}')
    # A run of all the work would redo the install (rerun-incomplete in the profile)...
    assert planned_jobs(site.run("-n").stdout).get("install_exposure") == 1
    # ...the night lane never plans a job of the exposure lane, incomplete or not.
    site.env["DESITRANSFER_LANE"] = "nights"
    assert planned_jobs(site.run("-n").stdout) == {"all": 1, "catch_up_night": 1}


def test_the_status_command_and_page_say_what_each_lane_is_doing(site):
    from scripts.lanes import start_activity
    from scripts.run_lock import try_lock
    from scripts.status.report import write_status

    site.exposure("00009900")
    site.run()
    held = try_lock(site.state, "exposures")  # as a running exposure lane holds it
    try:
        start_activity(site.state, ["exposures"], "run-1", {"on": "1 exposure(s)"})
        out = subprocess.run([sys.executable, "-m", "scripts.status", "--config",
                              str(site.config_file)], cwd=REPO, capture_output=True,
                             text=True, check=True).stdout
        assert "exposures lane: running since" in out and "on 1 exposure(s)" in out
        assert "nights lane: idle since" in out or "nights lane: never" in out
        page = write_status(site.config)[-1].read_text()
        assert 'id="lanes"' in page and "exposures lane: running since" in page
    finally:
        held.close()


def test_the_page_a_run_writes_as_it_ends_shows_its_lanes_after_it(site):
    """The page is rebuilt in the run's onsuccess, while it still holds its lanes: it
    shows them as they are once it has ended, idle, not running."""
    import html

    site.exposure("00009910")
    site.config["now"] = AFTER_BACKUP  # the night lane has a catch-up to run too
    result = cron(site)
    assert result.returncode == 0, result.stderr
    page = (site.state / "status" / "index.html").read_text()
    card = html.unescape(page.split('id="lanes"', 1)[1].split("</div></div>", 1)[0])
    assert "running" not in card and "starting" not in card, card
    assert "exposures lane: idle since" in card and "nights lane: idle since" in card, card
    assert [lane["state"] for lane in lane_activity(site.state)] == ["idle", "idle"]


# A member of the group, as a real second uid: nobody/nogroup, no other group.
MEMBER = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
GROUP = 65534


@pytest.fixture
def shared(tmp_path_factory):
    """A directory the workflow's user and the group member can both reach, owned by
    the workflow's user and shared with the group (setgid, group-writable), as a
    STATE is shared at NERSC."""
    import shutil
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="shared-", dir="/tmp"))
    os.chown(root, os.geteuid(), GROUP)
    os.chmod(root, 0o2770)
    yield root
    shutil.rmtree(root)


def as_member(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([*MEMBER, *argv], capture_output=True, text=True, timeout=30)


HOLD = ("import fcntl, sys\n"
        "f = open(sys.argv[1])\n"
        "fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)\n"
        "print('held')\n")


def test_a_group_member_cannot_hold_a_lanes_lock(shared):
    from scripts.run_lock import lock_path, try_lock

    state = shared / "state"
    state.mkdir()
    os.chmod(state, 0o2770)
    handle = try_lock(state, "exposures")
    handle.close()  # the lock file exists, the lane is free
    path = lock_path(state, "exposures")
    assert (path.stat().st_mode & 0o777) == 0o600
    member = as_member("/usr/bin/python3", "-c", HOLD, str(path))
    assert member.returncode != 0 and "held" not in member.stdout
    assert "Permission denied" in member.stderr


def test_a_lock_file_planted_by_a_group_member_is_refused_in_one_line(site, shared):
    state = shared / "state"
    lanes = state / ".lanes"
    lanes.mkdir(parents=True)
    os.chmod(lanes, 0o2770)  # a lanes directory the group can write (an older install)
    planted = lanes / "exposures.lock"
    assert as_member("touch", str(planted)).returncode == 0
    assert as_member("ln", "-s", "/etc/hostname", str(lanes / "nights.lock")).returncode == 0
    site.config["state"] = str(state)
    site.exposure("00009950")
    result = cron(site)
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if ".lock" in line]
    assert len(lines) == 2, result.stderr
    assert f"{planted} belongs to uid 65534" in lines[0] and "remove it" in lines[0]
    assert f"{lanes / 'nights.lock'} is a symbolic link" in lines[1]
    assert not site.installed(NIGHT, "00009950").exists()
    assert "Traceback" not in result.stderr
    # Removed (the fix the line names): the next run goes on.
    planted.unlink()
    (lanes / "nights.lock").unlink()
    assert cron(site).returncode == 0
    assert site.installed(NIGHT, "00009950").is_dir()


def test_a_lane_held_longer_than_its_limit_is_mailed_once_and_shown(site):
    import datetime as dt

    from aiosmtpd.controller import Controller
    from loopback_sshd import free_port
    from test_cron_entry import Mailbox, status_command, with_alerts

    from scripts.configuration import with_defaults
    from scripts.lanes import activity_path
    from scripts.markers import write_json_atomic
    from scripts.run_lock import try_lock
    from scripts.time_limits import lane_seconds

    box = Mailbox()
    controller = Controller(box, hostname="127.0.0.1", port=free_port())
    controller.start()
    box.smtp = f"127.0.0.1:{controller.port}"
    try:
        site.exposure("00009960")
        with_alerts(site, box)
        assert cron(site).returncode == 0  # a first run: both lanes ended a run
        config = with_defaults(site.config)
        # Both lanes last ended a run two days ago, and something holds their locks
        # since (a hung run; a group member's hand before the locks were private).
        two_days = dt.datetime.now(dt.UTC) - dt.timedelta(days=2)
        stamp = two_days.strftime("%Y-%m-%dT%H:%M:%SZ")
        for lane in ("exposures", "nights"):
            assert lane_seconds(config, lane) < 2 * 86400
            write_json_atomic(activity_path(site.state, lane),
                              {"lane": lane, "run": "old", "started": stamp, "finished": stamp})
        held = [try_lock(site.state, lane) for lane in ("exposures", "nights")]
        try:
            first = cron(site)  # news: cron says it once too
            assert first.returncode == 1 and first.stderr.count("lane run") == 2
            again = cron(site)
            assert (again.returncode, again.stderr) == (0, "")
            assert sorted(box.subjects()) == [
                "[desitransfer] all streams exposures lane: lane run failed",
                "[desitransfer] all streams nights lane: lane run failed"]
            body = box.messages[0].get_content()
            assert "has ended for 48.0 h" in body and f"held by process {os.getpid()}" in body
            failures = status_command(site, "--failures")
            assert failures.stdout.count("lane run") == 2, failures.stdout
            page = (site.state / "status" / "index.html").read_text()
            assert "no run of the exposures lane has ended" in page
        finally:
            for handle in held:
                handle.close()
        assert cron(site).returncode == 0  # free again: the lanes run, the problem clears
        assert sorted(box.subjects()[2:]) == [
            "[desitransfer] resolved: all streams exposures lane: lane run",
            "[desitransfer] resolved: all streams nights lane: lane run"]
        assert "lane run" not in status_command(site, "--failures").stdout
    finally:
        controller.stop()
