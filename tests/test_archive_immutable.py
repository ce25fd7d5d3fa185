"""The archive is immutable: installed bytes change only by swapping in a whole,
verified exposure. Each test is a way the archive lost verified bytes before (issue #10),
run through the real workflow with real rsync."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import stat
import subprocess
import sys
import tarfile
import time
import uuid
from pathlib import Path

from conftest import NIGHT, REPO, STREAM, planned_jobs
from processes import started_commands, wait_for_exit
from test_exposure_workflow import tree

from scripts.mountain import checksum_line

BEFORE_CATCHUP = "2026-11-28T10:00:00Z"
AFTER_CATCHUP = "2026-11-28T15:00:00Z"
AFTER_BACKUP = "2026-11-28T21:00:00Z"


def tar_backend(site) -> Path:
    archive = site.root / "tape"
    site.config["backup"] = {"backend": "tar", "archive": str(archive)}
    return archive / "desi/spectro/data" / f"desi_spectro_data_{NIGHT}.tar"


def rewrite(path: Path, content: bytes, later: float = 60) -> None:
    """Change a mountain file as a camera would: new bytes, a newer time."""
    mtime = path.stat().st_mtime
    path.write_bytes(content)
    os.utime(path, (mtime + later, mtime + later))


def flip(content: bytes) -> bytes:
    changed = bytearray(content)
    changed[10] ^= 0xFF
    return bytes(changed)


def write_checksums(data: Path, expid: str) -> None:
    """The mountain's checksum file, listing the exposure's current files."""
    lines = [checksum_line(p.name, hashlib.sha256(p.read_bytes()).hexdigest())
             for p in sorted(data.iterdir()) if not p.name.startswith("checksum-")]
    (data / f"checksum-{expid}.sha256sum").write_text("".join(lines))
    mtime = (data / f"checksum-{expid}.sha256sum").stat().st_mtime + 60
    os.utime(data / f"checksum-{expid}.sha256sum", (mtime, mtime))


def test_file_changed_at_the_mountain_after_install_never_reaches_archive_or_tape(site):
    tarball = tar_backend(site)
    site.config["now"] = BEFORE_CATCHUP
    data = site.exposure("00005000")
    site.run()
    installed = site.installed(NIGHT, "00005000")
    verified = tree(installed)
    victim = data / "desi-00005000.fits.fz"
    rewrite(victim, flip(victim.read_bytes()))  # the checksum file is unchanged
    site.config["now"] = AFTER_BACKUP  # morning catch-up, then the final one and tape
    site.run()
    assert tree(installed) == verified  # the archive kept the verified bytes
    failure = site.failure(NIGHT, "00005000", "updated")
    assert "changed after installation" in failure["reason"]
    assert "desi-00005000.fits.fz" in failure["mismatched"]
    assert site.record(NIGHT, None, "caughtup")["failed_exposures"] == ["00005000"]
    assert site.marker(NIGHT, None, "backedup").exists()  # not held back by it
    with tarfile.open(tarball) as tar:
        member = tar.extractfile(f"{NIGHT}/00005000/desi-00005000.fits.fz").read()
    assert hashlib.sha256(member).hexdigest() == verified["desi-00005000.fits.fz"][1]
    assert not (site.staging / ".catch-up" / NIGHT / "00005000").exists()


def test_legitimate_update_is_swapped_in_whole_and_reaches_tape(site):
    tarball = tar_backend(site)
    site.config["now"] = BEFORE_CATCHUP
    data = site.exposure("00005001")
    site.run()
    old_record = site.record(NIGHT, "00005001", "installed")
    rewrite(data / "sky-00005001.fits.fz", b"new sky" * 50)
    (data / "late-00005001.json").write_text('{"late": true}')
    write_checksums(data, "00005001")
    site.config["now"] = AFTER_BACKUP
    site.run()
    installed = site.installed(NIGHT, "00005001")
    assert (installed / "sky-00005001.fits.fz").read_bytes() == b"new sky" * 50
    assert (installed / "late-00005001.json").is_file()
    assert {mode for mode, _ in tree(installed).values()} == {0o440}
    update = site.record(NIGHT, "00005001", "updated")["updates"][-1]
    assert update["replaced"] == old_record  # the replaced version's record is kept
    assert sorted(update["changed_files"]) == [
        "00005001/checksum-00005001.sha256sum", "00005001/late-00005001.json",
        "00005001/sky-00005001.fits.fz"]
    assert site.record(NIGHT, "00005001", "installed")["files"] == 5
    with tarfile.open(tarball) as tar:
        assert tar.extractfile(f"{NIGHT}/00005001/late-00005001.json").read() == \
            b'{"late": true}'
    assert not list((site.destination / ".desitransfer").iterdir())


def corrupt_installed(path: Path) -> bytes:
    os.chmod(path, 0o640)
    path.write_bytes(flip(path.read_bytes()))
    os.chmod(path, 0o440)
    return path.read_bytes()


def test_adoption_never_deletes_archive_bytes_when_the_mountain_purged_them(site):
    data = site.exposure("00005010")
    site.run()
    victim = site.installed(NIGHT, "00005010") / "desi-00005010.fits.fz"
    archived = corrupt_installed(victim)
    others = {k: v for k, v in tree(site.installed(NIGHT, "00005010")).items()
              if k != victim.name}
    shutil.rmtree(site.state)  # state lost
    (data / victim.name).unlink()  # and the mountain has purged its copy
    site.run(check=False)
    assert victim.read_bytes() == archived  # never deleted, never modified
    assert {k: v for k, v in tree(site.installed(NIGHT, "00005010")).items()
            if k != victim.name} == others
    assert victim.name in site.failure(NIGHT, "00005010", "checksummed")["reason"]
    assert not (site.staging / NIGHT / "00005010").exists()


def test_adopted_copy_that_fails_is_replaced_by_a_verified_copy_from_the_mountain(site):
    data = site.exposure("00005011")
    site.run()
    victim = site.installed(NIGHT, "00005011") / "desi-00005011.fits.fz"
    corrupt_installed(victim)
    shutil.rmtree(site.state)
    site.run()
    assert victim.read_bytes() == (data / victim.name).read_bytes()
    assert site.record(NIGHT, "00005011", "checksummed")["outcome"] == "verified"
    assert "replaced" in site.record(NIGHT, "00005011", "installed")["how"]
    assert {mode for mode, _ in tree(site.installed(NIGHT, "00005011")).values()} == {0o440}


def test_sigkill_during_catch_up_leaves_nothing_in_the_installed_exposure(site):
    site.config["now"] = BEFORE_CATCHUP
    data = site.exposure("00005020")
    site.run()
    installed = site.installed(NIGHT, "00005020")
    before = tree(installed)
    (data / "late-00005020.fits.fz").write_bytes(os.urandom(1) * (240 * 2**20))
    write_checksums(data, "00005020")
    site.config["now"] = AFTER_CATCHUP
    site.config["debug"] = True  # the job logs its commands' pids
    process = subprocess.Popen(site.command(), cwd=site.root, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    side = site.staging / ".catch-up" / NIGHT / "00005020"
    deadline = time.monotonic() + 60
    while not (side.is_dir() and any(p.name.startswith(".") for p in side.iterdir())):
        assert process.poll() is None, "the catch-up ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.005)
    survivors = started_commands(site.state / "logs" / STREAM / f"{NIGHT}.caughtup.log",
                                 "rsync")
    assert survivors, "the catch-up's rsync was not running"
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    wait_for_exit(survivors, timeout=10)
    assert tree(installed) == before  # no temporary file, modes as installed
    assert stat.S_IMODE(installed.stat().st_mode) == 0o2750
    site.run()
    assert (installed / "late-00005020.fits.fz").stat().st_size == 240 * 2**20
    assert site.record(NIGHT, None, "caughtup")["outcome"] == "updated"
    assert not side.exists()


def test_links_leading_outside_are_never_followed(site):
    home = site.root / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "id_rsa").write_text("PRIVATE KEY")
    site.exposure("00005030")
    (site.source / NIGHT / "00005031").symlink_to(home)  # a published link gone astray
    data = site.exposure("00005032")
    (data / "calib").symlink_to(home)  # a directory link inside an exposure
    result = site.run(check=False)
    assert result.returncode != 0
    assert site.installed(NIGHT, "00005030").is_dir()
    for area in (site.staging, site.destination):
        assert not list(area.rglob("id_rsa")) and not list(area.rglob(".ssh"))
    outside = site.failure(NIGHT, "00005031", "staged")
    assert "points to" in outside["reason"] and outside["held"]
    inside = site.failure(NIGHT, "00005032", "staged")
    assert "'calib'" in inside["reason"] and "outside" in inside["reason"]
    # Held: later runs leave them alone until a person removes the record.
    jobs = planned_jobs(site.run("-n").stdout)
    assert "stage_exposure" not in jobs


def test_killed_cross_filesystem_install_is_recovered_without_a_person(site):
    site.exposure("00005040")
    site.run()
    installed = site.installed(NIGHT, "00005040")
    verified = tree(installed)
    # What a cross-file-system install killed after its final rename leaves behind:
    # the staged copy still there, the exposure in place, no installed marker.
    staging = site.staging / NIGHT / "00005040"
    shutil.copytree(installed, staging)
    site.marker(NIGHT, "00005040", "installed").unlink()
    site.run()
    assert not staging.exists()
    assert tree(installed) == verified
    assert site.record(NIGHT, "00005040", "installed")["outcome"] == "installed"


def test_install_across_file_systems(site):
    shm = Path("/dev/shm") / f"desitransfer-test-{uuid.uuid4().hex}"
    assert os.stat("/dev/shm").st_dev != os.stat(site.root).st_dev
    site.config["streams"][STREAM]["staging"] = str(shm)
    try:
        data = site.exposure("00005041")
        site.run()
        installed = site.installed(NIGHT, "00005041")
        assert (installed / "desi-00005041.fits.fz").read_bytes() == \
            (data / "desi-00005041.fits.fz").read_bytes()
        assert not (shm / NIGHT / "00005041").exists()
        assert not list((site.destination / ".desitransfer").iterdir())
    finally:
        shutil.rmtree(shm, ignore_errors=True)


def test_adopting_an_exposure_of_a_night_on_tape_keeps_it_locked(site):
    site.exposure("00005050")
    site.run()
    night = site.destination / NIGHT
    for path in (night, night / "00005050"):
        os.chmod(path, 0o2550)  # as after the night's backup
    shutil.rmtree(site.state)
    site.run()
    assert site.record(NIGHT, "00005050", "installed")["how"] == "already in place"
    assert stat.S_IMODE((night / "00005050").stat().st_mode) == 0o2550
    assert stat.S_IMODE(night.stat().st_mode) == 0o2550


def test_a_hand_started_run_and_the_cron_entry_exclude_each_other(site):
    site.exposure("00005060", {"big.fits": os.urandom(1) * (200 * 2**20)})
    hand = subprocess.Popen(site.command(), cwd=site.root, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    staging = site.staging / NIGHT / "00005060"
    deadline = time.monotonic() + 60
    while not (staging.is_dir() and any(p.name.startswith(".") for p in staging.iterdir())):
        assert hand.poll() is None, hand.stderr.read()[-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.005)
    cron = subprocess.run([sys.executable, str(REPO / "scripts" / "cron_entry.py"),
                           str(site.config_file)], cwd=site.root, capture_output=True,
                          text=True, timeout=60)
    assert hand.poll() is None  # the cron entry ended while the hand run still ran
    assert cron.returncode == 0
    assert "another run holds" in (site.state / "logs" / "desi_transfer.log").read_text()
    assert hand.wait(timeout=300) == 0, hand.stderr.read()
    assert site.installed(NIGHT, "00005060").is_dir()


def test_a_hand_started_run_refuses_while_the_cron_entry_runs(site):
    from scripts.run_lock import try_lock

    site.exposure("00005061")
    held = try_lock(site.state, "exposures")  # as the cron entry holds it for its run
    try:
        result = site.run(check=False)
        preview = site.run("-n")  # a preview takes no lock
    finally:
        held.close()
    assert result.returncode != 0
    assert "another run holds" in result.stderr
    assert not site.marker(NIGHT, "00005061", "staged").exists()
    assert planned_jobs(preview.stdout)["stage_exposure"] == 1
    site.run()
    assert site.installed(NIGHT, "00005061").is_dir()


def test_a_command_dies_with_the_job_that_started_it(tmp_path):
    fifo = tmp_path / "pid"
    os.mkfifo(fifo)
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from scripts.commands import run;"
            " run(['sh', '-c', f'echo $$ > {sys.argv[2]}; exec sleep 300'], timeout=600)")
    job = subprocess.Popen([sys.executable, "-c", code, str(REPO), str(fifo)])
    with open(fifo) as f:  # blocks until the command has started
        pid = int(f.read())
    job.kill()  # SIGKILL: no handler of the job runs
    job.wait()
    wait_for_exit([pid], timeout=10)

