"""Night-level stages end to end: catch-up and backup, with real rsync, a real HTTP
status endpoint and the HPSS emulator standing in for hsi and htar."""

from __future__ import annotations

import hashlib
import json
import stat
import subprocess
import tarfile
from pathlib import Path

from conftest import NIGHT, planned_jobs
from processes import wait_for_exit

from scripts.mountain import checksum_line
from scripts.tar_archive import read_index, verify_archive

HPSS_DIR = "desi/spectro/data"
BEFORE_CATCHUP = "2026-11-28T10:00:00Z"   # day after NIGHT, before 14 UTC
AFTER_CATCHUP = "2026-11-28T15:00:00Z"    # catch-up due, backup not yet
AFTER_BACKUP = "2026-11-28T21:00:00Z"     # both due for NIGHT


def tar_name(night: str, index: int = 0) -> str:
    return f"desi_spectro_data_{night}{'' if index == 0 else f'.{index}'}.tar"


def htar_writes(tape: Path) -> list[list[str]]:
    """The htar calls that wrote an archive (each is followed by its check, -tvf)."""
    return [call for call in htar_calls(tape) if call[1] == "-cvhf"]


def htar_calls(tape: Path) -> list[list[str]]:
    calls = tape / ".calls.jsonl"
    if not calls.exists():
        return []
    return [c["argv"] for c in map(json.loads, calls.read_text().splitlines())
            if c["prog"] == "htar"]


def add_late_file(site, expid: str, name: str, content: bytes, night: str = NIGHT) -> None:
    data = site.mountain / "data" / night / expid
    (data / name).write_bytes(content)
    with open(data / f"checksum-{expid}.sha256sum", "a") as f:
        f.write(checksum_line(name, hashlib.sha256(content).hexdigest()))


def test_late_file_is_caught_up_and_reverified(site):
    site.exposure("00003000")
    site.exposure("00003001")
    site.config["now"] = BEFORE_CATCHUP
    site.run()
    assert not site.marker(NIGHT, None, "caughtup").exists()
    add_late_file(site, "00003000", "late-00003000.json", b'{"late": true}')
    site.config["now"] = AFTER_CATCHUP
    site.run()
    record = site.record(NIGHT, None, "caughtup")
    assert record["outcome"] == "updated"
    assert sorted(record["changed_files"]) == ["00003000/checksum-00003000.sha256sum",
                                               "00003000/late-00003000.json"]
    assert record["exposures"]["00003000"]["outcome"] == "verified"
    assert "00003001" not in record["exposures"]  # unchanged: not touched
    late = site.installed(NIGHT, "00003000") / "late-00003000.json"
    assert late.read_bytes() == b'{"late": true}'
    assert stat.S_IMODE(late.stat().st_mode) == 0o440
    assert stat.S_IMODE(site.installed(NIGHT, "00003000").stat().st_mode) == 0o2750


def test_catch_up_with_nothing_new_says_so(site):
    site.exposure("00003010")
    site.config["now"] = AFTER_CATCHUP
    site.run()
    assert site.record(NIGHT, None, "caughtup")["outcome"] == "no changes"


def test_three_nights_of_backlog_are_backed_up_in_one_run(site, tape, status_server):
    nights = ["20261124", "20261125", "20261126"]
    for i, night in enumerate(nights):
        site.exposure(f"0000310{i}", night=night)
    site.exposure("00003109")  # NIGHT (20261127): its backup is not due yet at 16:00 on 11-28
    site.run()
    for night in nights:
        record = site.record(night, None, "backedup")
        assert record["outcome"] == "backed up"
        assert record["archives"][0]["name"] == tar_name(night)
        assert (tape / HPSS_DIR / tar_name(night)).is_file()
        assert (tape / HPSS_DIR / f"{tar_name(night)}.idx").is_file()
        assert site.record(night, None, "caughtup")["outcome"] == "no changes"
        night_dir = site.destination / night
        assert stat.S_IMODE(night_dir.stat().st_mode) == 0o2550
    assert not site.marker(NIGHT, None, "backedup").exists()
    assert site.marker(NIGHT, None, "caughtup").exists()
    assert status_server.requests == 1  # the endpoint is read once per run
    calls = htar_writes(tape)
    # each archive written is checked against the night from its own index
    assert [c for c in htar_calls(tape) if c[1] == "-tvf"] == [
        ["htar", "-tvf", c[2]] for c in calls]
    assert sorted(calls) == sorted(
        ["htar", "-cvhf", f"{HPSS_DIR}/{tar_name(n)}", "-H", "crc:verify=all", n]
        for n in nights)
    with tarfile.open(tape / HPSS_DIR / tar_name(nights[0])) as tar:
        member = tar.extractfile(f"{nights[0]}/00003100/desi-00003100.fits.fz")
        source = site.mountain / "data" / nights[0] / "00003100" / "desi-00003100.fits.fz"
        assert member.read() == source.read_bytes()


def test_hpss_inactive_defers_then_backs_up_when_active(site, tape, status_server):
    site.exposure("00003200")
    site.config["now"] = AFTER_BACKUP
    status_server.set_status("degraded")
    result = site.run()
    assert "Backup of 1 night(s) deferred: HPSS status is 'degraded'" in result.stderr
    assert not site.marker(NIGHT, None, "backedup").exists()
    assert not Path(f"{site.marker(NIGHT, None, 'backedup')}.failed").exists()
    assert htar_calls(tape) == []
    status_server.body = b"<html>maintenance</html>"
    assert "did not return JSON" in site.run().stderr
    status_server.set_status("active")
    site.run()
    assert site.record(NIGHT, None, "backedup")["outcome"] == "backed up"


def test_htar_exit_70_is_a_failure_then_succeeds_on_the_retry(site, tape):
    """htar printed HTAR SUCCESSFUL but exited 70: not backed up. Both files are on
    tape, so the retry adopts them (as the original would), from the archive's member
    list, and says why."""
    site.exposure("00003300")
    site.config["now"] = AFTER_BACKUP
    site.env.update(HTAR_FAIL_EXIT="70", HPSS_FAIL_ONCE="1")
    result = site.run(check=False)
    assert result.returncode != 0
    assert not site.marker(NIGHT, None, "backedup").exists()
    failure = site.failure(NIGHT, None, "backedup")
    assert "status 70" in failure["reason"] and failure["attempts"] == 1
    site.run()
    record = site.record(NIGHT, None, "backedup")
    assert record["outcome"] == "adopted" and "status 70" in record["previous_failure"]
    assert [a["name"] for a in record["archives"]] == [tar_name(NIGHT)]
    assert record["exposures"] == ["00003300"]
    assert [c[1] for c in htar_calls(tape)] == ["-cvhf", "-tvf"]  # written once, then read
    assert not Path(f"{site.marker(NIGHT, None, 'backedup')}.failed").exists()


def test_htar_exit_70_without_idx_is_retried_under_the_same_name(site, tape):
    """A .tar without its .idx is a failed attempt, not an archive: the retry writes
    the whole night again under the same name (htar overwrites it); no NAME.1.tar."""
    site.exposure("00003301")
    site.config["now"] = AFTER_BACKUP
    site.env.update(HTAR_FAIL_EXIT="70", HTAR_FAIL_NOIDX="1", HPSS_FAIL_ONCE="1")
    site.run(check=False)
    assert site.failure(NIGHT, None, "backedup")["attempts"] == 1
    site.run()
    record = site.record(NIGHT, None, "backedup")
    assert record["outcome"] == "backed up"
    assert [a["name"] for a in record["archives"]] == [tar_name(NIGHT)]
    assert record["archives"][0]["exposures"] == ["00003301"]
    assert (tape / HPSS_DIR / f"{tar_name(NIGHT)}.idx").is_file()
    assert not (tape / HPSS_DIR / tar_name(NIGHT, 1)).exists()
    assert htar_writes(tape)[-1] == htar_writes(tape)[0]  # the whole night, same name


def test_stderr_with_exit_0_and_no_idx_is_a_failure(site, tape):
    site.exposure("00003310")
    site.config["now"] = AFTER_BACKUP
    site.env.update(HTAR_NO_IDX="1", HTAR_STDERR="HPSS connection reset")
    site.run(check=False)
    assert not site.marker(NIGHT, None, "backedup").exists()
    assert "not both in the archive" in site.failure(NIGHT, None, "backedup")["reason"]


def test_htar_that_hangs_is_ended_by_the_timeout(site, tape):
    site.exposure("00003320")
    site.config["now"] = AFTER_BACKUP
    site.config["backup"]["timeout"] = 2
    site.env.update(HTAR_HANG="300")
    site.run(check=False, timeout=120)
    assert "timed out" in site.failure(NIGHT, None, "backedup")["reason"]


def test_archive_already_on_tape_is_adopted_from_its_members(site, tape):
    """Written by the old daemon (here: by htar from the mountain's copy): adopted, its
    exposures read from its member list, and never written again."""
    site.exposure("00003400")
    site.config["now"] = AFTER_BACKUP
    archive = f"{HPSS_DIR}/{tar_name(NIGHT)}"
    subprocess.run([site.config["backup"]["hpss_bin"] + "/htar", "-cvhf", archive, NIGHT],
                   cwd=site.mountain / "data", env=site.env, check=True, capture_output=True)
    on_tape = (tape / archive).read_bytes()
    site.run()
    record = site.record(NIGHT, None, "backedup")
    assert record["outcome"] == "adopted" and record["exposures"] == ["00003400"]
    assert htar_calls(tape)[1:] == [["htar", "-tvf", archive]]  # read, not written
    assert (tape / archive).read_bytes() == on_tape


def test_exposure_arriving_after_backup_goes_to_a_supplementary_archive(site, tape):
    site.exposure("00003500")
    site.config["now"] = AFTER_BACKUP
    site.run()
    first = (tape / HPSS_DIR / tar_name(NIGHT)).read_bytes()
    assert site.record(NIGHT, None, "backedup")["exposures"] == ["00003500"]
    site.exposure("00003501")  # a whole new exposure in an old night
    jobs = planned_jobs(site.run("-n").stdout)
    assert jobs.get("back_up_late_exposures") == 1 and "back_up_night" not in jobs
    assert "catch_up_night" not in jobs
    site.run()
    assert site.record(NIGHT, "00003501", "checksummed")["outcome"] == "verified"
    supplement = site.record(NIGHT, None, "backedup.1")
    assert supplement["exposures"] == ["00003501"] and supplement["supplementary"]
    record = site.record(NIGHT, None, "backedup")
    assert [a["name"] for a in record["archives"]] == [tar_name(NIGHT), tar_name(NIGHT, 1)]
    assert record["archives"][1]["exposures"] == ["00003501"]
    assert record["exposures"] == ["00003500", "00003501"]
    assert (tape / HPSS_DIR / tar_name(NIGHT)).read_bytes() == first  # never overwritten
    assert htar_writes(tape)[-1] == ["htar", "-cvhf", f"{HPSS_DIR}/{tar_name(NIGHT, 1)}",
                                     "-H", "crc:verify=all", f"{NIGHT}/00003501"]
    site.run()  # and then the night is done
    assert len(htar_writes(tape)) == 2


def test_year_boundary(site, tape):
    site.exposure("00003600", night="20261231")
    site.config["now"] = "2027-01-01T19:59:59Z"
    site.run()
    assert site.marker("20261231", None, "caughtup").exists()
    assert not site.marker("20261231", None, "backedup").exists()
    site.config["now"] = "2027-01-01T20:00:00Z"
    site.run()
    record = site.record("20261231", None, "backedup")
    assert record["archives"][0]["name"] == "desi_spectro_data_20261231.tar"
    assert (tape / HPSS_DIR / "desi_spectro_data_20261231.tar.idx").is_file()


def test_dry_run_shows_the_due_night_jobs_and_no_others(site, tape):
    site.exposure("00003700", night="20261125")  # catch-up and backup due
    site.exposure("00003701", night="20261126")  # catch-up due only
    site.exposure("00003702", night="20261127")  # tonight's: nothing due
    site.config["now"] = "2026-11-27T15:00:00Z"
    result = site.run("-n")
    jobs = planned_jobs(result.stdout)
    assert jobs["catch_up_night"] == 2 and jobs["back_up_night"] == 1
    assert f"{site.state}/DESI_SPECTRO_DATA/20261125.backedup" in result.stdout
    assert "20261126.backedup" not in result.stdout
    assert "20261127.caughtup" not in result.stdout


def test_tar_backend_round_trip_and_a_corrupted_tarball_is_detected(site, tmp_path):
    site.exposure("00003800")
    site.config["now"] = AFTER_BACKUP
    site.config["backup"] = {"backend": "tar", "archive": str(tmp_path / "tape"),
                             "hpss_status": ""}
    site.run()
    archive = tmp_path / "tape" / HPSS_DIR / tar_name(NIGHT)
    index = read_index(Path(f"{archive}.idx"))
    assert site.record(NIGHT, None, "backedup")["archives"][0]["members"] == len(index) == 4
    restored = tmp_path / "restored"
    with tarfile.open(archive) as tar:
        tar.extractall(restored, filter="data")
    for entry in index:
        assert hashlib.sha256((restored / entry["name"]).read_bytes()).hexdigest() == \
            entry["sha256"]
    assert verify_archive(archive, index) == []
    data = bytearray(archive.read_bytes())
    data[data.index(b"skysky") + 1] ^= 0xFF  # a byte of the sky file's content
    archive.write_bytes(bytes(data))
    assert verify_archive(archive, index) == [
        f"{NIGHT}/00003800/sky-00003800.fits.fz: content differs from the index"]


def test_backend_none_never_pretends_a_night_is_on_tape(site):
    site.exposure("00003900")
    site.config["now"] = AFTER_BACKUP
    assert "back_up_night" not in planned_jobs(site.run("-n").stdout)
    site.run()
    assert not site.marker(NIGHT, None, "backedup").exists()


def test_a_terminated_backup_leaves_a_failure_record_and_no_htar_behind(site, tape):
    """Slurm ends a job over its time limit with SIGTERM: the attempt must be visible
    (a failure record) and must not leave htar running on its own."""
    import os
    import signal
    import subprocess
    import time

    site.exposure("00003950")
    site.config["now"] = AFTER_BACKUP
    site.env.update(HTAR_HANG="300")
    run = subprocess.Popen(site.command(), cwd=site.root, env=site.env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           start_new_session=True)
    calls = tape / ".calls.jsonl"
    deadline = time.monotonic() + 90
    while not htar_calls(tape):  # poll for the condition, bounded
        assert run.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    htar_pid = [json.loads(line) for line in calls.read_text().splitlines()][-1]["pid"]
    # The job is htar's parent (commands.run starts it directly): read only htar's own
    # /proc entry, never the machine's other processes.
    job = int(Path(f"/proc/{htar_pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    assert job != run.pid
    os.kill(job, signal.SIGTERM)
    assert run.wait(timeout=60) != 0
    failure = site.failure(NIGHT, None, "backedup")
    assert failure["reason"].startswith("killed by SIGTERM") and failure["killed"]
    wait_for_exit([htar_pid], timeout=10)  # htar must not outlive the terminated job
