"""The real workflow, end to end, on a local mountain with real rsync."""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import NIGHT, REPO, STREAM, planned_jobs
from processes import started_commands, wait_for_exit

from scripts.markers import utc_timestamp
from scripts.mountain import checksum_line


def tree(path: Path) -> dict[str, tuple[int, str]]:
    """Relative name → (mode, sha256) of every file below `path`."""
    out = {}
    for p in sorted(path.rglob("*")):
        if p.is_file():
            out[str(p.relative_to(path))] = (stat.S_IMODE(p.stat().st_mode),
                                             hashlib.sha256(p.read_bytes()).hexdigest())
    return out


def test_normal_night_is_installed_read_only_then_nothing_to_do(site):
    for expid in ("00001000", "00001001", "00001002"):
        site.exposure(expid)
    site.run()
    for expid in ("00001000", "00001001", "00001002"):
        installed = site.installed(NIGHT, expid)
        source = site.mountain / "data" / NIGHT / expid
        assert {k: v[1] for k, v in tree(installed).items()} == \
               {k: v[1] for k, v in tree(source).items()}
        assert {mode for mode, _ in tree(installed).values()} == {0o440}
        assert stat.S_IMODE(installed.stat().st_mode) == 0o2750
        for stage, files in (("staged", 4), ("checksummed", 3), ("installed", 4)):
            record = site.record(NIGHT, expid, stage)  # the checksum file is not hashed
            assert record["files"] == files and record["time"].endswith("Z")
        assert site.record(NIGHT, expid, "checksummed")["outcome"] == "verified"
        assert not (site.staging / NIGHT / expid).exists()
        link_time = dt.datetime.fromtimestamp((site.source / NIGHT / expid).lstat().st_mtime,
                                              dt.UTC)
        assert site.record(NIGHT, expid, "staged")["published"] == utc_timestamp(link_time)
    assert stat.S_IMODE((site.destination / NIGHT).stat().st_mode) == 0o2750
    before = {p: p.stat().st_mtime_ns for p in site.state.rglob("*.installed")}
    dry = site.run("-n")
    assert planned_jobs(dry.stdout) .keys() <= {"all"}
    noop = site.run()
    assert "Status files rebuilt" not in noop.stdout + noop.stderr  # O(archive): not on a no-op
    assert {p: p.stat().st_mtime_ns for p in site.state.rglob("*.installed")} == before


def test_space_in_name_and_binary_entries(site):
    data = site.exposure("00001010", {"a file with spaces.fits": b"x" * 500, "b.json": b"{}"})
    lines = [f"{hashlib.sha256(b'x' * 500).hexdigest()} *a file with spaces.fits\n",
             "\n", f"{hashlib.sha256(b'{}').hexdigest()} *b.json\n"]
    (data / "checksum-00001010.sha256sum").write_text("".join(lines))
    site.run()
    assert site.record(NIGHT, "00001010", "checksummed")["outcome"] == "verified"
    spaced = site.installed(NIGHT, "00001010") / "a file with spaces.fits"
    assert spaced.read_bytes() == b"x" * 500


def corrupt_at_source(site, expid: str) -> Path:
    data = site.exposure(expid)
    victim = data / f"desi-{expid}.fits.fz"
    content = bytearray(victim.read_bytes())
    content[100] ^= 0xFF
    victim.write_bytes(bytes(content))
    return victim


def test_persistent_mismatch_with_hold_stays_out_of_the_archive(site):
    corrupt_at_source(site, "00001020")
    site.exposure("00001021")
    site.config["verify"]["on_failure"] = "hold"
    result = site.run(check=False)
    assert result.returncode != 0
    assert "checksum error(s) detected for 20261127/00001020" in result.stderr
    assert not site.installed(NIGHT, "00001020").exists()
    assert (site.staging / NIGHT / "00001020").is_dir()
    assert not site.marker(NIGHT, "00001020", "checksummed").exists()
    failure = site.failure(NIGHT, "00001020", "checksummed")
    assert failure["held"] is True and failure["attempts"] == 3
    assert failure["mismatched"] == ["desi-00001020.fits.fz"]
    assert site.installed(NIGHT, "00001021").is_dir()  # the others go on
    # Held means held: the next run plans nothing for it and succeeds.
    assert "verify_exposure" not in planned_jobs(site.run("-n").stdout)
    site.run()


def test_persistent_mismatch_with_install_goes_in_with_its_failure_record(site):
    corrupt_at_source(site, "00001030")
    site.run()
    assert site.installed(NIGHT, "00001030").is_dir()
    record = site.record(NIGHT, "00001030", "checksummed")
    assert record["outcome"] == "failed" and record["accepted_by_policy"] == "install"
    failure = site.failure(NIGHT, "00001030", "checksummed")
    assert failure["attempts"] == 3 and failure["policy"] == "install"
    assert failure["mismatched"] == ["desi-00001030.fits.fz"]
    assert site.record(NIGHT, "00001030", "installed")["verification"] == "failed"


def test_corruption_in_the_first_copy_only_is_fixed_by_the_retry(site):
    site.exposure("00001040")
    site.run(str(site.marker(NIGHT, "00001040", "staged")))
    staged = site.staging / NIGHT / "00001040" / "desi-00001040.fits.fz"
    st = staged.stat()
    content = bytearray(staged.read_bytes())
    content[7] ^= 0x01  # same size, same mtime: rsync's quick check would keep it
    staged.write_bytes(bytes(content))
    os.utime(staged, ns=(st.st_atime_ns, st.st_mtime_ns))
    site.run()
    record = site.record(NIGHT, "00001040", "checksummed")
    assert record["outcome"] == "verified" and record["attempt"] == 2
    assert not Path(f"{site.marker(NIGHT, '00001040', 'checksummed')}.failed").exists()
    installed = site.installed(NIGHT, "00001040") / "desi-00001040.fits.fz"
    source = site.mountain / "data" / NIGHT / "00001040" / "desi-00001040.fits.fz"
    assert installed.read_bytes() == source.read_bytes()


def test_missing_checksum_file(site):
    data = site.exposure("00001050")
    (data / "checksum-00001050.sha256sum").unlink()
    site.config["verify"]["on_failure"] = "hold"
    site.run(check=False)
    failure = site.failure(NIGHT, "00001050", "checksummed")
    assert failure["checksum_file_missing"] is True
    assert "missing" in failure["reason"]
    assert not site.installed(NIGHT, "00001050").exists()


def test_unlisted_extra_file(site):
    data = site.exposure("00001060")
    (data / "extra.txt").write_text("not in the checksum file")
    site.config["verify"]["max_attempts"] = 1
    site.run()
    failure = site.failure(NIGHT, "00001060", "checksummed")
    assert failure["unlisted"] == ["extra.txt"]
    assert site.record(NIGHT, "00001060", "checksummed")["outcome"] == "failed"


def test_parent_directory_entry_is_a_failure_and_reads_nothing_outside(site):
    data = site.exposure("00001070", {"a.fits": b"a"})
    outside = site.mountain / "data" / NIGHT / "secret.txt"
    outside.write_text("outside the exposure")
    digest = hashlib.sha256(b"outside the exposure").hexdigest()
    with open(data / "checksum-00001070.sha256sum", "a") as f:
        f.write(checksum_line("../secret.txt", digest))
    site.config["verify"]["on_failure"] = "hold"
    site.run(check=False)
    failure = site.failure(NIGHT, "00001070", "checksummed")
    assert failure["unsafe"] == ["../secret.txt"]
    assert not site.installed(NIGHT, "00001070").exists()


def test_malformed_symlink_is_logged_and_skipped(site):
    site.exposure("00001080")
    (site.source / NIGHT / "0000108").symlink_to(".")
    (site.source / "junk").symlink_to(".")
    result = site.run()
    assert "Malformed symlink detected" in result.stderr
    assert f"{site.source}/{NIGHT}/0000108" in result.stderr
    assert f"{site.source}/junk" in result.stderr
    assert site.installed(NIGHT, "00001080").is_dir()


def test_checksum_lock_plans_no_transfer(site):
    site.exposure("00001090")
    site.lock.write_text("")
    result = site.run("-n")
    assert "Checksums are being computed at the mountain" in result.stdout + result.stderr
    assert "stage_exposure" not in planned_jobs(result.stdout)
    site.lock.unlink()
    assert planned_jobs(site.run("-n").stdout)["stage_exposure"] == 1


def test_lookback_window_bounds_the_listing(site):
    site.exposure("00001100", night="20261001")  # older than 30 nights before NOW
    site.exposure("00001101")
    jobs = planned_jobs(site.run("-n").stdout)
    assert jobs["stage_exposure"] == 1


def test_exposure_already_in_destination_is_verified_in_place_and_adopted(site):
    data = site.exposure("00001110")
    installed = site.installed(NIGHT, "00001110")
    installed.parent.mkdir(parents=True)
    subprocess.run(["cp", "-a", str(data), str(installed)], check=True)
    inode = (installed / "desi-00001110.fits.fz").stat().st_ino
    site.run()
    assert site.record(NIGHT, "00001110", "staged")["outcome"] == "adopted"
    assert site.record(NIGHT, "00001110", "checksummed")["location"] == "destination"
    assert (installed / "desi-00001110.fits.fz").stat().st_ino == inode  # not copied again
    assert stat.S_IMODE((installed / "desi-00001110.fits.fz").stat().st_mode) == 0o440


def copy_of_the_workflow(into: Path) -> Path:
    """A copy of the workflow to edit: tests never touch the checkout's own files."""
    ignore = shutil.ignore_patterns(".git", ".venv", ".snakemake", "tests", "bench", "demo",
                                    "__pycache__", "*.pyc")
    shutil.copytree(REPO, into, ignore=ignore)
    return into / "Snakefile"


GUARDS = ("rerun-triggers: mtime", "drop-metadata: true")


@pytest.mark.parametrize("kept, reruns", [
    (GUARDS, False),  # the profile as shipped
    (GUARDS[:1], False),  # a state with Snakemake's metadata from before drop-metadata
    ((), True),  # the probe can fail for its reason: without both, the exposure reruns
], ids=["shipped", "rerun-triggers-only", "neither"])
def test_editing_a_rule_or_a_key_reruns_no_done_exposure(site, tmp_path, kept, reruns):
    """The probe for the profile's `rerun-triggers: mtime` and `drop-metadata: true`:
    with a done exposure as the input of a due catch-up, an edited rule and a changed
    key must plan no exposure job."""
    snakefile = copy_of_the_workflow(tmp_path / "workflow")
    profile = snakefile.parent / "profiles" / "default" / "config.yaml"
    text = profile.read_text()
    assert all(guard in text for guard in GUARDS)
    profile.write_text("".join(line for line in text.splitlines(keepends=True)
                               if not line.startswith(GUARDS) or line.startswith(kept)))
    site.config["now"] = "2026-11-28T10:00:00Z"  # before the night's catch-up
    site.exposure("00001120")

    def run(*args: str) -> subprocess.CompletedProcess:
        site.write_config()
        command = [sys.executable, "-m", "snakemake", "-s", str(snakefile), "-d",
                   str(site.root), *args, "--configfile", str(site.config_file)]
        return subprocess.run(command, capture_output=True, text=True, cwd=site.root,
                              timeout=300, check=True, env=site.env)

    run()
    assert site.marker(NIGHT, "00001120", "installed").exists()
    rules = snakefile.parent / "rules" / "exposure.smk"
    rules.write_text(rules.read_text().replace("--threads {threads}\"",
                                               "--threads {threads} # edited\""))
    site.config["verify"]["threads"] = 1  # the jobs' params change with the config
    site.config["now"] = "2026-11-28T15:00:00Z"  # the catch-up is due: inputs are checked
    planned = planned_jobs(run("-n").stdout)
    assert planned.get("catch_up_night") == 1
    assert ("install_exposure" in planned) == reruns, planned


def test_sigkill_during_rsync_is_completed_by_the_next_run(site):
    big = {f"desi-{i}.fits.fz": os.urandom(1) * (60 * 2**20) for i in range(4)}
    site.exposure("00001130", big)
    site.config["debug"] = True  # the job logs its commands' pids
    process = subprocess.Popen(site.command(), cwd=site.root, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, start_new_session=True)
    staging = site.staging / NIGHT / "00001130"
    deadline = time.monotonic() + 60
    # Poll for rsync's temporary file: the run is then mid-transfer.
    while not (staging.is_dir() and any(p.name.startswith(".") for p in staging.iterdir())):
        assert process.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.005)
    survivors = started_commands(
        site.state / "logs" / STREAM / NIGHT / "00001130.staged.log", "rsync")
    assert survivors, "rsync was not running"
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    # rsync runs in a session of its own; it must die with the job that started it.
    wait_for_exit(survivors, timeout=10)
    assert not site.marker(NIGHT, "00001130", "staged").exists()
    assert not site.installed(NIGHT, "00001130").exists()
    assert not list((site.root / ".snakemake").glob("locks/*"))  # nothing stale to clear
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "cron_entry.py"),
                             str(site.write_config())],
                            cwd=site.root, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert site.record(NIGHT, "00001130", "checksummed")["outcome"] == "verified"
    assert sorted(p.name for p in site.installed(NIGHT, "00001130").iterdir()) == \
        sorted([*big, "checksum-00001130.sha256sum"])


def test_dag_draws_with_graphviz(site):
    site.exposure("00001140")
    (site.source / NIGHT / "bad-link").symlink_to(".")  # its warning must not reach stdout
    dag = site.run("--dag").stdout
    assert dag.startswith("digraph snakemake_dag")
    svg = subprocess.run(["dot", "-Tsvg"], input=dag, capture_output=True, text=True,
                         check=True).stdout
    assert "stage_exposure" in svg and "install_exposure" in svg


def test_a_stream_that_cannot_be_listed_fails_the_run_but_not_the_others(site):
    site.exposure("00001150")
    site.config["streams"]["DESI_SPECTRO_OTHER"] = {
        **site.config["streams"][STREAM], "source": str(site.root / "no-such-source"),
        "staging": str(site.root / "staging2"), "destination": str(site.root / "archive2")}
    result = site.run(check=False)
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines()
              if line.startswith("desitransfer: stream DESI_SPECTRO_OTHER")]
    assert errors and "check streams.*.source" in errors[0]
    assert site.installed(NIGHT, "00001150").is_dir()
    assert (site.state / ".listing" / "DESI_SPECTRO_OTHER.json.failed").is_file()
    # Every stream unlisted: one line and nothing planned.
    site.config["streams"][STREAM]["source"] = str(site.root / "gone")
    result = site.run("-n", check=False)
    assert result.returncode == 1
    assert len([line for line in result.stderr.splitlines()
                if line.startswith("desitransfer: stream")]) == 2
