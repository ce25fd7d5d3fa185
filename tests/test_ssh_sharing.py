"""One ssh connection per lane run, over a real sshd on loopback: counted in sshd's own
log; a master killed mid-run fails no exposure; no master outlives its killed run."""

from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from pathlib import Path

from conftest import NIGHT, Site
from processes import descendants, wait_for_exit
from test_cron_entry import CRON, cron, cron_log
from test_job_limits import cmdline, wait_for

from scripts.remote import CommandResult, broken_under
from scripts.ssh_master import (
    SCRATCH_PREFIX,
    SCRATCH_STALE,
    SOCKET_PATH_MAX,
    control_key,
    sharing_refused,
    sweep_scratch,
)
from scripts.state_layout import ssh_control_path


def over_ssh(site: Site, sshd: dict) -> None:
    site.config["remote"].update(host=sshd["host"], ssh=sshd["ssh"])


def connections(sshd: dict) -> int:
    """Connections sshd accepted so far (one "Accepted publickey" line each)."""
    return Path(sshd["log"]).read_text().count("Accepted publickey")


def is_master(pid: int) -> bool:
    return "ControlMaster=yes" in cmdline(pid) and " -M " in cmdline(pid)


def slow_network(site: Site, bytes_per_second_k: int) -> None:
    """rsync's copies crawl (a real rsync, with --bwlimit): a transfer is in flight
    long enough to cut its connection."""
    real = shutil.which("rsync")
    bin_dir = site.root / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "rsync").write_text(
        "#!/bin/sh\n"
        f"case \"$*\" in *--dry-run*) exec {real} \"$@\" ;; esac\n"
        f"exec {real} --bwlimit={bytes_per_second_k} \"$@\"\n")
    (bin_dir / "rsync").chmod(0o755)
    site.env["PATH"] = f"{bin_dir}:{site.env['PATH']}"


def copying(site: Site, timeout: float) -> None:
    """Wait (polling, with a deadline) until rsync has written bytes into staging."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(p.is_file() and p.name.startswith(".") and p.stat().st_size > 0
               for p in site.staging.rglob("*")):
            return
        time.sleep(0.05)
    raise AssertionError("no copy got under way")


def test_a_run_opens_one_ssh_connection(site, sshd):
    over_ssh(site, sshd)
    for n in range(4):
        site.exposure(f"0000600{n}")
    before = connections(sshd)
    result = cron(site, "--lane", "exposures")
    assert result.returncode == 0, result.stderr
    # The listing, 2 link checks and an rsync per exposure: 13 commands, 1 connection.
    assert connections(sshd) - before == 1
    for n in range(4):
        assert site.marker(NIGHT, f"0000600{n}", "installed").exists()
    private = site.state / ".ssh"
    if not private.exists():  # pytest's own directory is too deep for a socket
        assert sharing_refused(ssh_control_path(site.state, "x" * 12))
        return
    assert stat.S_IMODE(private.stat().st_mode) == 0o700
    assert list(private.iterdir()) == []  # closed with the run: no socket left


def test_a_state_directory_too_deep_for_a_socket_still_shares_one_connection(site, sshd):
    """At a site whose state directory is deep (a project path), the socket goes to a
    fresh private directory of TMPDIR, removed with the run."""
    over_ssh(site, sshd)
    site.state = site.root / ("deep-" * 20) / "state"
    site.config["state"] = str(site.state)
    assert sharing_refused(ssh_control_path(site.state, "x" * 12))
    tmp = Path(tempfile.mkdtemp(prefix="dt", dir="/tmp"))
    site.env["TMPDIR"] = str(tmp)
    try:
        for n in range(2):
            site.exposure(f"0000640{n}")
        before = connections(sshd)
        result = cron(site, "--lane", "exposures")
        assert result.returncode == 0, result.stderr
        assert connections(sshd) - before == 1
        for n in range(2):
            assert site.marker(NIGHT, f"0000640{n}", "installed").exists()
        assert "not shared" not in cron_log(site)
        assert not (site.state / ".ssh").exists()
        assert list(tmp.iterdir()) == []  # its private directory went with the run
    finally:
        shutil.rmtree(tmp)
    assert "shared ssh connection is closed (1 opened)" in cron_log(site)


def test_a_killed_master_fails_no_exposure(site, sshd):
    over_ssh(site, sshd)
    slow_network(site, 100)
    site.exposure("00006100", {"desi-00006100.fits.fz": os.urandom(600_000)})
    before = connections(sshd)
    run = subprocess.Popen([*CRON, str(site.write_config()), "--lane", "exposures"],
                           cwd=site.root, env=site.env, stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, text=True)
    try:
        # The copy is under way through the master: its ssh is a child of rsync.
        rsync = wait_for(run.pid, lambda p: cmdline(p).startswith(
            f"{shutil.which('rsync')} --bwlimit") and "--server" not in cmdline(p))
        assert rsync
        copying(site, timeout=60)  # bytes are flowing through the master
        master = next(p for p in descendants(run.pid) if is_master(p))
        os.kill(master, signal.SIGKILL)
        assert run.wait(timeout=120) == 0, run.stderr.read()
    finally:
        if run.poll() is None:
            run.kill()
    assert site.marker(NIGHT, "00006100", "installed").exists()
    assert not list(site.state.rglob("*.failed"))  # no failure recorded, no attempt spent
    log = cron_log(site)
    assert "the shared ssh connection to" in log and "opening a new one" in log
    assert connections(sshd) - before == 2  # the master, then its replacement
    assert "(2 opened)" in log
    rule_log = site.state / "logs" / "DESI_SPECTRO_DATA" / NIGHT / "00006100.staged.log"
    assert "the shared ssh connection ended under rsync" in rule_log.read_text()


def test_no_master_outlives_its_killed_run(site, sshd):
    over_ssh(site, sshd)
    slow_network(site, 50)
    site.exposure("00006200", {"desi-00006200.fits.fz": os.urandom(600_000)})
    run = subprocess.Popen([*CRON, str(site.write_config()), "--lane", "exposures"],
                           cwd=site.root, env=site.env, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for(run.pid, lambda p: "--bwlimit" in cmdline(p))
        tree = descendants(run.pid)
        master = next(p for p in tree if is_master(p))
        snakemake = [p for p in tree if "-m snakemake" in cmdline(p)]
        for pid in [run.pid, *snakemake]:  # the cron entry and its Snakemake only
            os.kill(pid, signal.SIGKILL)
        run.wait(timeout=10)
        wait_for_exit([master], timeout=10)
    finally:
        os.killpg(run.pid, signal.SIGKILL) if run.poll() is None else None


def test_a_socket_path_too_long_or_unquotable_is_not_shared():
    remote = {"host": "desi@mountain", "ssh": ["ssh", "-q"]}
    key = control_key(remote, "exposures")
    assert len(key) == 12 and key != control_key(remote, "nights")
    assert sharing_refused(ssh_control_path("/global/cfs/state", key)) is None
    deep = "/s" * (SOCKET_PATH_MAX // 2)
    assert "longer than a unix socket's path" in sharing_refused(ssh_control_path(deep, key))
    assert "characters" in sharing_refused(ssh_control_path("/st ate", key))


def test_only_a_failure_under_a_replaced_master_is_run_again():
    failed = CommandResult(("rsync",), 12, "", "broken pipe", 1.0)
    assert broken_under(failed, (1, 10), None)  # the master died
    assert broken_under(failed, (1, 10), (1, 11))  # and was replaced
    assert not broken_under(failed, (1, 10), (1, 10))  # it still serves: a real failure
    assert not broken_under(failed, None, None)  # no master: the command went alone
    timed_out = CommandResult(("rsync",), None, "", "", 9.0, timed_out=True)
    assert not broken_under(timed_out, (1, 10), None)
    assert not broken_under(CommandResult(("ssh",), 0, "", "", 0.1), (1, 10), None)


def test_a_preview_opens_no_shared_connection(site, sshd):
    over_ssh(site, sshd)
    site.exposure("00006300")
    result = cron(site, "--lane", "exposures", "-n")
    assert result.returncode == 0, result.stderr
    assert not (site.state / ".ssh").exists()
    assert not site.marker(NIGHT, "00006300", "installed").exists()


def test_socket_directories_of_killed_runs_are_swept_once_stale(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    old, fresh = tmp_path / f"{SCRATCH_PREFIX}old", tmp_path / f"{SCRATCH_PREFIX}fresh"
    other = tmp_path / "someone-elses"
    for where in (old, fresh, other):
        where.mkdir()
        (where / "0123456789ab").write_bytes(b"")
    day_ago = time.time() - SCRATCH_STALE - 60
    for where in (old, other):
        os.utime(where, (day_ago, day_ago))
    sweep_scratch(time.time())
    assert not old.exists() and fresh.exists() and other.exists()
