"""Nothing stalls in silence, nothing outlives its run (issue #17, items 7 and 8).

Every job has a wall-clock limit (scripts/time_limits.py) enforced by its supervisor
(scripts/job.py): a stopped job is ended and recorded "timed out after N s", and the
lane goes on. A job whose run dies (the cron entry and Snakemake killed with SIGKILL)
ends with it. Real runs, real processes, a real SIGSTOP and SIGKILL.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import NIGHT, REPO, Site
from processes import descendants, wait_for_exit

from scripts.time_limits import job_seconds

AFTER_BACKUP = "2026-11-28T21:00:00Z"


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def parent(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def wait_for(top: int, match, timeout: float = 60) -> int:
    """The first process below `top` for which `match(pid)` holds, polled with a
    deadline (the test looks at its own run's processes only)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for pid in descendants(top):
            if match(pid):
                return pid
    raise AssertionError("the process did not appear")


def slow_rsync_for(site: Site, expid: str) -> None:
    """A slow network for one exposure: its copy starts with a long pause."""
    real = shutil.which("rsync")
    bin_dir = site.root / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "rsync").write_text(
        "#!/bin/sh\n"
        f"case \"$*\" in *--dry-run*) ;; */{expid}/*) exec sleep 600 ;; esac\n"
        f"exec {real} \"$@\"\n")
    (bin_dir / "rsync").chmod(0o755)
    site.env["PATH"] = f"{bin_dir}:{site.env['PATH']}"


def limits(site: Site) -> int:
    site.config["remote"].update(timeout=5, transfer_timeout=10)
    site.config["runtime_margin"] = 1
    from scripts.configuration import with_defaults

    return job_seconds(with_defaults(site.config), "stage")


def test_a_stopped_job_is_ended_at_its_limit_and_the_lane_goes_on(site):
    limit = limits(site)
    site.exposure("00008000")
    site.exposure("00008001")
    slow_rsync_for(site, "00008001")
    run = subprocess.Popen(site.command(), cwd=site.root, env=site.env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        rsync = wait_for(run.pid, lambda p: cmdline(p).startswith("sleep 600"))
        worker = parent(rsync)  # the process doing the job's work
        assert "scripts.stage" in cmdline(worker)
        job = [p for p in (worker, parent(worker)) if "scripts.stage" in cmdline(p)]
        os.kill(worker, signal.SIGSTOP)  # the job hangs: its own timeouts cannot fire
        started = time.monotonic()
        assert run.wait(timeout=limit + 60) != 0, "the run must report the failed job"
        took = time.monotonic() - started
    finally:
        if run.poll() is None:
            run.kill()
    failure = site.failure(NIGHT, "00008001", "staged")
    assert f"timed out after {limit} s" in failure["reason"]
    assert failure["timed_out"]
    assert site.installed(NIGHT, "00008000").is_dir()  # the lane went on
    assert took < limit + 30
    wait_for_exit([*job, rsync], timeout=10)


def test_a_stopped_supervisor_does_not_hang_the_run(site):
    limits(site)
    site.exposure("00008000")
    site.exposure("00008001")
    slow_rsync_for(site, "00008001")
    run = subprocess.Popen(site.command(), cwd=site.root, env=site.env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        rsync = wait_for(run.pid, lambda p: cmdline(p).startswith("sleep 600"))
        supervisor = parent(parent(rsync))
        assert "scripts.stage" in cmdline(supervisor)
        os.kill(supervisor, signal.SIGSTOP)
        # The copy's own timeout ends the work; the worker wakes its supervisor.
        assert run.wait(timeout=120) != 0
    finally:
        if run.poll() is None:
            run.kill()
    assert "timed out" in site.failure(NIGHT, "00008001", "staged")["reason"]
    assert site.installed(NIGHT, "00008000").is_dir()
    wait_for_exit([supervisor, rsync], timeout=10)


def test_no_job_outlives_its_killed_run(site, tape):
    site.config["now"] = "2026-11-28T10:00:00Z"
    site.config.setdefault("kill_file", str(site.root / "stop_desi_transfer"))
    site.exposure("00008100")
    site.run()  # installed; the catch-up and the backup go next
    site.config["now"] = AFTER_BACKUP
    site.env["HTAR_HANG"] = "600"
    cron = subprocess.Popen([sys.executable, str(REPO / "scripts" / "cron_entry.py"),
                             str(site.write_config()), "--lane", "nights"],
                            cwd=site.root, env=site.env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        htar = wait_for(cron.pid, lambda p: "/htar " in cmdline(p) and "-cvhf" in cmdline(p))
        run = descendants(cron.pid)
        snakemake = [p for p in run if "-m snakemake" in cmdline(p)]
        assert snakemake
        for pid in [cron.pid, *snakemake]:  # the cron entry and its Snakemake only
            os.kill(pid, signal.SIGKILL)
        cron.wait(timeout=10)
        # Every process of the run ends with it (the htar above all).
        wait_for_exit([p for p in run if p != cron.pid], timeout=15)
        assert htar in run
    finally:
        os.killpg(cron.pid, signal.SIGKILL) if cron.poll() is None else None
    # The next run backs the night up, one htar at a time.
    site.env.pop("HTAR_HANG")
    site.run()
    assert site.marker(NIGHT, None, "backedup").exists()


def test_a_job_that_cannot_end_itself_is_ended_by_the_cron_entry(site):
    """Supervisor and worker stopped together (``kill -STOP`` of both, or a job stopped
    before it forked): no part of the job can act, the cron entry's watchdog
    (scripts/job_watchdog.py) ends it, and the lane goes on."""
    limit = limits(site)
    site.config.setdefault("kill_file", str(site.root / "stop_desi_transfer"))
    site.exposure("00008000")
    site.exposure("00008001")
    slow_rsync_for(site, "00008001")
    cron = subprocess.Popen([sys.executable, str(REPO / "scripts" / "cron_entry.py"),
                             str(site.write_config()), "--lane", "exposures"],
                            cwd=site.root, env=site.env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        rsync = wait_for(cron.pid, lambda p: cmdline(p).startswith("sleep 600"))
        worker = parent(rsync)
        supervisor = parent(worker)
        assert "scripts.stage" in cmdline(worker) and cmdline(supervisor) == cmdline(worker)
        for pid in (supervisor, worker):
            os.kill(pid, signal.SIGSTOP)
        started = time.monotonic()
        cron.wait(timeout=limit + 90)
        took = time.monotonic() - started
    finally:
        if cron.poll() is None:
            os.killpg(cron.pid, signal.SIGKILL)
    failure = site.failure(NIGHT, "00008001", "staged")
    assert f"timed out after {limit} s" in failure["reason"]
    assert site.installed(NIGHT, "00008000").is_dir()  # the lane went on
    assert took < limit + 60
    wait_for_exit([supervisor, worker, rsync], timeout=10)
