"""A person's verbs on one exposure (``python -m scripts.control``), run as a person runs
them: a subprocess, beside the real cron entry, the real workflow and the HPSS emulator.
"""

from __future__ import annotations

import getpass
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import yaml
from conftest import NIGHT, REPO, STREAM
from test_cron_entry import cron
from test_exposure_workflow import corrupt_at_source

from scripts.control import Exposure, Refused, decide
from scripts.markers import write_json_atomic, write_marker
from scripts.run_lock import try_lock
from scripts.state_layout import hold_path, listing_cache_path, marker_path

ME = getpass.getuser()
HPSS_DIR = "desi/spectro/data"


def control(config: Path | None, *args: str, env: dict | None = None
            ) -> subprocess.CompletedProcess:
    options = [] if config is None else ["--config", str(config)]
    return subprocess.run([sys.executable, "-m", "scripts.control", *args, *options],
                          cwd=REPO, capture_output=True, text=True, timeout=300, env=env)


def status(config: Path, *args: str) -> str:
    return subprocess.run([sys.executable, "-m", "scripts.status", "--config", str(config),
                           *args], cwd=REPO, capture_output=True, text=True, timeout=120,
                          check=True).stdout


def one_line(result: subprocess.CompletedProcess) -> str:
    lines = result.stdout.splitlines()
    assert len(lines) == 1, result.stdout + result.stderr
    return lines[0]


@pytest.fixture
def small(tmp_path) -> tuple[Path, dict]:
    """A configuration and a state without a run: one exposure known by the listing
    (20261127/00007001), one failing staging (00007002), one installed (00007003)."""
    state = tmp_path / "state"
    config = {"state": str(state), "now": "2026-11-28T16:00:00Z",
              "remote": {"host": "local"}, "backup": {"backend": "none"},
              "streams": {STREAM: {
                  "source": str(tmp_path / "mountain" / "raw"),
                  "staging": str(tmp_path / "staging"),
                  "destination": str(tmp_path / "archive"), "hpss": HPSS_DIR,
                  "checksum_file": "checksum-{exposure}.sha256sum"}}}
    (tmp_path / "mountain" / "raw").mkdir(parents=True)
    write_json_atomic(listing_cache_path(state, STREAM), {
        "exposures": [[NIGHT, "00007001"], [NIGHT, "00007002"], [NIGHT, "00007003"]]})
    write_json_atomic(f"{marker_path(state, STREAM, NIGHT, '00007002', 'staged')}.failed",
                      {"time": "2026-11-28T02:00:00Z", "reason": "no space left on device",
                       "attempts": 2})
    for stage in ("staged", "checksummed", "installed"):
        write_marker(marker_path(state, STREAM, NIGHT, "00007003", stage), {"outcome": "ok"})
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path, config


def test_hold_shows_who_and_when_everywhere_and_release_gives_it_back(small):
    path, config = small
    result = control(path, "hold", f"{NIGHT}/00007001", "--why", "bad flat")
    assert result.returncode == 0, result.stderr
    assert one_line(result).startswith(f"held {NIGHT}/00007001 ({STREAM}) for {ME}")
    assert result.stderr == f"desitransfer: configuration {path} (argument)\n"
    record = json.loads(hold_path(config["state"], STREAM, NIGHT, "00007001").read_text())
    assert record["by"] == ME and record["held"] is True and record["why"] == "bad flat"
    failures = status(path, "--failures")
    assert f"{NIGHT}/00007001" in failures and f"held by {ME} at {record['time']}" in failures
    plan = subprocess.run([sys.executable, str(REPO / "scripts" / "cron_entry.py"), str(path),
                           "--plan"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert f"held: 1 exposure(s): {STREAM} {NIGHT}/00007001" in plan.stdout, plan.stderr
    again = control(path, "hold", f"{NIGHT}/00007001")
    assert again.returncode == 1 and "already held by" in one_line(again)

    released = control(path, "release", f"{NIGHT}/00007001")
    assert released.returncode == 0
    assert one_line(released).startswith(f"released {NIGHT}/00007001")
    assert not hold_path(config["state"], STREAM, NIGHT, "00007001").exists()
    assert "00007001" not in status(path, "--failures")
    log = (Path(config["state"]) / "logs" / "control.log").read_text()
    assert f"{ME}: hold held {NIGHT}/00007001" in log and f"{ME}: release released" in log


def test_unknown_exposure_and_installed_hold_are_refused_in_one_line(small):
    path, config = small
    before = sorted(p.name for p in Path(config["state"], STREAM, NIGHT).iterdir())
    for verb in ("retry", "hold", "release"):
        result = control(path, verb, f"{NIGHT}/00009999")
        assert result.returncode == 1
        assert "is unknown in stream" in one_line(result), result.stdout
    result = control(path, "hold", f"{NIGHT}/00007003")
    assert result.returncode == 1 and "is installed" in one_line(result)
    result = control(path, "release", f"{NIGHT}/00007001")
    assert result.returncode == 1 and "is not held" in one_line(result)
    assert sorted(p.name for p in Path(config["state"], STREAM, NIGHT).iterdir()) == before
    bad = control(path, "hold", "2026-11-27/7001")
    assert bad.returncode == 2 and bad.stdout == "" and bad.stderr.count("\n") == 1
    unknown_stream = control(path, "hold", f"{NIGHT}/00007001", "--stream", "OTHER")
    assert unknown_stream.returncode == 1 and "not a stream" in one_line(unknown_stream)


def test_retry_of_an_exposure_not_installed_clears_its_records(small):
    path, config = small
    failure = Path(f"{marker_path(config['state'], STREAM, NIGHT, '00007002', 'staged')}.failed")
    result = control(path, "retry", f"{NIGHT}/00007002")
    assert result.returncode == 0
    assert "not installed yet; removed 00007002.staged.failed" in one_line(result)
    assert not failure.exists()


def test_it_never_races_a_run_holding_the_lane(small):
    path, config = small
    held = try_lock(config["state"], "exposures")  # as a cron run of the lane holds it
    try:
        result = control(path, "hold", f"{NIGHT}/00007001", "--wait", "0")
    finally:
        held.close()
    assert result.returncode == 1
    assert "another run holds" in one_line(result) and "nothing done" in result.stdout
    assert not hold_path(config["state"], STREAM, NIGHT, "00007001").exists()
    assert control(path, "hold", f"{NIGHT}/00007001", "--wait", "0").returncode == 0


def test_the_configuration_comes_from_the_environment_and_the_state_must_exist(small, tmp_path):
    path, config = small
    env = {**subprocess.os.environ, "DESITRANSFER_CONFIG": str(path)}
    result = control(None, "hold", f"{NIGHT}/00007001", env=env)
    assert result.returncode == 0
    assert result.stderr == f"desitransfer: configuration {path} (DESITRANSFER_CONFIG)\n"
    missing = tmp_path / "missing.yaml"
    missing.write_text(yaml.safe_dump({**config, "state": str(tmp_path / "nowhere")}))
    result = control(missing, "hold", f"{NIGHT}/00007001")
    assert result.returncode == 2 and "does not exist" in result.stderr
    assert result.stderr.count("\n") == 2  # the configuration's name, then why


def test_decisions():
    listed = Exposure(STREAM, NIGHT, "00000001", listed=True)
    assert decide("hold", listed).write_hold and decide("hold", listed).lanes == ("exposures",)
    installed = Exposure(STREAM, NIGHT, "00000001", records=("installed",), installed=True,
                         failures=("checksummed",))
    action = decide("retry", installed)
    assert action.replace and action.lanes == ("exposures", "nights")
    policy = Exposure(STREAM, NIGHT, "00000001", records=("staged.failed",),
                      policy_holds=("staged",), failures=("staged",))
    assert decide("release", policy).remove == ("staged.failed",)
    with pytest.raises(Refused, match="unknown"):
        decide("retry", Exposure(STREAM, NIGHT, "00000001"))


def archive_members(tape: Path, name: str) -> set[str]:
    with tarfile.open(tape / HPSS_DIR / name) as tar:
        return {m.name.split("/")[1] for m in tar.getmembers()
                if m.name.startswith(f"{NIGHT}/") and m.name.count("/") >= 2}


def test_an_operator_s_day(site, tape):
    """First run; a person holds one exposure, its night goes to tape without it; the
    person releases it and it follows in a supplementary archive; an exposure installed
    by policy after failed verification is retried once fixed at the mountain: it
    verifies, is swapped in, its failure clears and it goes to tape again; the audit
    is clean."""
    site.exposure("00005000")
    victim = corrupt_at_source(site, "00005001")  # installed although it fails (policy)
    site.config["now"] = "2026-11-28T10:00:00Z"  # the night is not due yet
    first = cron(site)  # the failure is news to cron: exit 1, one line naming it
    assert first.returncode == 1, first.stderr
    assert "1 new problem" in first.stderr and "00005001: verification" in first.stderr
    assert site.installed(NIGHT, "00005001").is_dir()
    assert "00005001" in status(site.config_file, "--failures")

    site.exposure("00005002")  # published late; a person holds it before a run takes it
    held = control(site.config_file, "hold", f"{NIGHT}/00005002")
    assert held.returncode == 0 and held.stdout.startswith(f"held {NIGHT}/00005002")
    site.config["now"] = "2026-11-28T21:00:00Z"  # catch-up and backup due
    again = cron(site)  # 00005001's failure was told; the hold is news, once, to all
    assert again.returncode == 1 and "1 new problem" in again.stderr, again.stderr
    assert f"00005002: held by a person: held by {ME}" in again.stderr
    assert not site.installed(NIGHT, "00005002").exists()
    backup = site.record(NIGHT, None, "backedup")
    assert backup["held"] == ["00005002"]
    assert backup["exposures"] == ["00005000", "00005001"]
    tar = f"desi_spectro_data_{NIGHT}.tar"
    assert archive_members(tape, tar) == {"00005000", "00005001"}
    page = (site.state / "status" / "index.html").read_text()
    assert f"held by {ME} at" in page

    released = control(site.config_file, "release", f"{NIGHT}/00005002")
    assert released.returncode == 0
    assert cron(site).returncode == 0
    assert site.installed(NIGHT, "00005002").is_dir()
    assert archive_members(tape, f"desi_spectro_data_{NIGHT}.1.tar") == {"00005002"}

    content = bytearray(victim.read_bytes())  # the mountain fixes the corrupted file
    content[100] ^= 0xFF
    victim.write_bytes(bytes(content))
    retried = control(site.config_file, "retry", f"{NIGHT}/00005001")
    assert retried.returncode == 0, retried.stdout + retried.stderr
    assert one_line(retried).startswith(f"retried {NIGHT}/00005001")
    assert "supplementary archive" in retried.stdout
    assert (site.installed(NIGHT, "00005001") / victim.name).read_bytes() == bytes(content)
    assert site.record(NIGHT, "00005001", "checksummed")["outcome"] == "verified"
    assert "00005001" not in status(site.config_file, "--failures")
    last = cron(site)
    assert last.returncode == 0, last.stderr
    assert archive_members(tape, f"desi_spectro_data_{NIGHT}.2.tar") == {"00005001"}
    audit = subprocess.run([sys.executable, "-m", "scripts.audit", "--config",
                            str(site.config_file)], cwd=REPO, capture_output=True,
                           text=True, timeout=300, env=site.env)
    assert audit.returncode == 0, audit.stdout + audit.stderr
    assert audit.stdout == "" and audit.stderr.rstrip().endswith(", 0 problems")
