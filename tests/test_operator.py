"""Run it as DESI would: a production configuration written with ${DESI_ROOT}, found by
every tool through DESITRANSFER_CONFIG, and a person's daily commands, all driven as
a person drives them (the cron entry, the status and audit commands and snakemake as
subprocesses)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import NIGHT, NOW, REPO, require_tool

from scripts.mountain import make_exposure

CRON = [sys.executable, str(REPO / "scripts" / "cron_entry.py")]
SECOND = "DESI_SPECTRO_CAL"
ANNOUNCED = "desitransfer: configuration "


def production_config(root: Path, streams: tuple[str, ...] = ("DESI_SPECTRO_DATA",)) -> dict:
    """A production configuration as DESI writes it: every path from ${DESI_ROOT}."""
    return {
        "state": "${DESI_ROOT}/spectro/staging/state",
        "now": NOW,
        "backup": {"backend": "none"},
        "remote": {"host": "local", "checksum_lock": "$DESI_ROOT/mountain/checksum-running",
                   "listing_cache": 0},
        "streams": {name: {"source": f"${{DESI_ROOT}}/mountain/{name}/raw",
                           "staging": f"${{DESI_ROOT}}/spectro/staging/{name}",
                           "destination": f"${{DESI_ROOT}}/spectro/data/{name}",
                           "hpss": "desi/spectro/data",
                           "checksum_file": "checksum-{exposure}.sha256sum"}
                    for name in streams},
    }


def literal_names(*roots: Path) -> list[Path]:
    """Anything under `roots` whose name holds `$` or `~`: a path used literally."""
    return [p for root in roots for p in root.rglob("*") if "$" in p.name or "~" in p.name]


def tool(command: list[str], env: dict, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, cwd=cwd, env=env,
                          timeout=300)


def status(env: dict, *args: str) -> subprocess.CompletedProcess:
    return tool([sys.executable, "-m", "scripts.status", *args], env)


# --------------------------------------------------------------- fast: no workflow run


@pytest.fixture
def desk(tmp_path):
    """A person's desk: a production file with ${DESI_ROOT} named by DESITRANSFER_CONFIG,
    HOME and a checkout of their own, nothing run yet."""
    root, home, checkout = tmp_path / "desi", tmp_path / "home", tmp_path / "checkout"
    for path in (root, home, checkout):
        path.mkdir()
    config_file = tmp_path / "desi_transfer.yaml"
    config_file.write_text(yaml.safe_dump(production_config(root)))
    env = {**os.environ, "DESI_ROOT": str(root), "HOME": str(home),
           "DESITRANSFER_CONFIG": str(config_file)}
    return {"root": root, "home": home, "checkout": checkout, "file": config_file,
            "env": env, "tmp": tmp_path}


def test_an_unset_variable_is_one_line_naming_key_and_variable_and_nothing_is_made(desk):
    env = {k: v for k, v in desk["env"].items() if k != "DESI_ROOT"}
    result = tool(CRON, env, cwd=desk["checkout"])
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"desitransfer: {desk['file']}: state: ${{DESI_ROOT}} is not set in the environment;"
        " export DESI_ROOT (e.g. in the crontab) or write the path in full"]
    assert literal_names(desk["tmp"]) == []
    assert list(desk["checkout"].iterdir()) == []


def test_an_empty_variable_is_refused_rather_than_making_paths_at_the_root(desk):
    env = {**desk["env"], "DESI_ROOT": ""}
    result = tool(CRON + ["--plan"], env, cwd=desk["checkout"])
    assert result.returncode == 2
    assert "state: ${DESI_ROOT} is set but empty" in result.stderr.splitlines()[-1]


@pytest.mark.parametrize("command", [
    ["-m", "scripts.status"], ["-m", "scripts.status", "--failures"],
    ["-m", "scripts.status", "--night", NIGHT], ["-m", "scripts.status", "--latency"],
    ["-m", "scripts.status", "--report", NIGHT], ["-m", "scripts.status", "--json"],
    ["-m", "scripts.audit"], [str(REPO / "scripts" / "cron_entry.py"), "--plan"],
])
def test_every_report_reads_the_environment_s_configuration_and_refuses_a_missing_state(
        desk, command):
    """Before anything ran, no tool may answer from the demo's config.yaml or with an
    empty report: each names the file it read first on stderr and says the state is
    missing, with a non-zero exit and nothing on stdout."""
    result = tool([sys.executable, *command], desk["env"])
    lines = result.stderr.splitlines()
    assert lines[0] == f"{ANNOUNCED}{desk['file']} (DESITRANSFER_CONFIG)"
    assert result.returncode == 2 and result.stdout == ""
    assert "does not exist" in lines[-1] and str(desk["root"]) in lines[-1]
    assert literal_names(desk["tmp"]) == [] and not (desk["root"] / "spectro").exists()


@pytest.mark.parametrize("command", [
    CRON, [sys.executable, "-m", "scripts.status"], [sys.executable, "-m", "scripts.audit"],
    [sys.executable, "-m", "snakemake", "-n", "-s", str(REPO / "Snakefile")],
])
def test_a_file_that_is_not_utf8_is_one_line_naming_it_not_a_traceback(desk, command):
    """A configuration an old editor saved in Latin-1: every tool, Snakemake by hand
    too (its own reader would raise), says so in one line naming the file and byte."""
    desk["file"].write_bytes(b"# caf\xe9\n" + desk["file"].read_bytes())
    result = tool(command, desk["env"],
                  cwd=REPO if "scripts.status" in command or "scripts.audit" in command
                  else desk["checkout"])
    assert result.returncode != 0
    line = f"{desk['file']}: byte 6 is not UTF-8 text; save the file as UTF-8"
    assert result.stderr.splitlines()[-1].endswith(line), result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""
    assert literal_names(desk["tmp"]) == [] and list(desk["checkout"].iterdir()) == []


def test_the_argument_wins_over_the_environment(desk, tmp_path):
    other = tmp_path / "other.yaml"
    other.write_text(desk["file"].read_text())
    result = status(desk["env"], "--config", str(other))
    assert result.stderr.splitlines()[0] == f"{ANNOUNCED}{other} (argument)"


def test_attempt_counters_never_exceed_their_bound(tmp_path, caplog):
    """A full disk is retried every run, past verify.max_attempts: its log line must
    not read "attempt 5 of 3"."""
    from scripts.stage import record_own_failure

    marker = tmp_path / "00000001.staged"
    with caplog.at_level(logging.ERROR):
        record_own_failure(marker, "no space left on device (staging)", 2, 3, environment=True)
        record_own_failure(marker, "no space left on device (staging)", 5, 3, environment=True)
    messages = [r.getMessage() for r in caplog.records]
    assert "(attempt 2 of 3)" in messages[0]
    assert "(attempt 5, past the 3 of verify.max_attempts)" in messages[1]
    assert "5 of 3" not in messages[1]


def test_a_night_report_escapes_what_comes_from_the_mountain():
    from scripts.status.model import ExposureStatus, NightStatus
    from scripts.status.night_report import night_report

    night = NightStatus("DESI_SPECTRO_DATA", NIGHT, state="needs a person")
    night.exposures["00000001"] = ExposureStatus(
        "DESI_SPECTRO_DATA", NIGHT, "00000001",
        failures={"staged": {"reason": "link <script>alert(1)</script>\x1b[2J", "attempts": 3,
                             "held": True, "time": "2026-11-28T01:00:00Z"}})
    import datetime as dt
    page = night_report(NIGHT, [night], "/nowhere", "c.yaml", dt.datetime.now(dt.UTC))
    assert "<script>" not in page and "&lt;script&gt;" in page and "\\x1b[2J" in page
    assert "held (3 attempt(s)" in page


# --------------------------------------------------------------- the operator journey


@pytest.fixture(scope="module")
def journey(tmp_path_factory):
    """DESI's first day: a production file with ${DESI_ROOT} and two streams, exported
    in the crontab as DESITRANSFER_CONFIG, and the cron entry's first run."""
    require_tool("rsync")
    tmp = tmp_path_factory.mktemp("journey")
    root, home, checkout = tmp / "desi", tmp / "home", tmp / "checkout"
    for path in (root, home, checkout):
        path.mkdir()
    streams = ("DESI_SPECTRO_DATA", SECOND)
    config_file = tmp / "desi_transfer.yaml"
    config_file.write_text(yaml.safe_dump(production_config(root, streams)))
    for name, expid in ((streams[0], "00001001"), (streams[0], "00001002"), (SECOND, "00002001")):
        make_exposure(root / "mountain" / name, NIGHT, expid,
                      {f"desi-{expid}.fits.fz": os.urandom(2000), "request.json": b"{}"})
    env = {**os.environ, "DESI_ROOT": str(root), "HOME": str(home),
           "DESITRANSFER_CONFIG": str(config_file)}
    first = tool(CRON, env, cwd=checkout)  # as the crontab line runs it: no argument
    return {"root": root, "home": home, "checkout": checkout, "file": config_file,
            "env": env, "tmp": tmp, "first": first,
            "state": root / "spectro" / "staging" / "state"}


@pytest.mark.slow
def test_the_first_cron_run_of_a_desi_root_configuration_transfers(journey):
    first, root = journey["first"], journey["root"]
    assert (first.returncode, first.stderr) == (0, "")  # nothing for cron to mail
    for name, expid in (("DESI_SPECTRO_DATA", "00001001"), (SECOND, "00002001")):
        assert (root / "spectro" / "data" / name / NIGHT / expid).is_dir()
    log = (journey["state"] / "logs" / "desi_transfer.log").read_text().splitlines()
    assert log[0].endswith(f"INFO configuration {journey['file']} (DESITRANSFER_CONFIG)")
    assert literal_names(journey["tmp"]) == []
    assert not any(journey["checkout"].glob("$*"))


@pytest.mark.slow
def test_status_shows_one_stream_and_the_night_view_names_it(journey):
    result = status(journey["env"], "--night", NIGHT, "--stream", SECOND)
    assert result.returncode == 0 and result.stderr.startswith(ANNOUNCED)
    table = result.stdout.splitlines()
    assert table[0].split()[:2] == ["stream", "expid"]
    assert table[1].split()[:3] == [SECOND, "00002001", "installed"]
    assert "00001001" not in result.stdout
    both = status(journey["env"], "--night", NIGHT)
    rows = {tuple(line.split()[:2]) for line in both.stdout.splitlines()}
    assert {("DESI_SPECTRO_DATA", "00001001"), (SECOND, "00002001")} <= rows
    unknown = status(journey["env"], "--stream", "NOPE")
    assert unknown.returncode == 2 and "--stream NOPE: not a stream" in unknown.stderr


@pytest.mark.slow
def test_a_night_report_is_one_self_contained_html_file(journey):
    result = status(journey["env"], "--report", NIGHT)
    assert result.returncode == 0 and result.stderr.startswith(ANNOUNCED)
    page = result.stdout
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    for text in ("00001001", "00001002", "00002001", f"Stream {SECOND}",
                 "00001001.staged.log", "installed 20261127/00001001"):
        assert text in page
    # self-contained: nothing is fetched from elsewhere
    assert "src=" not in page and "href=" not in page and "<script" not in page


@pytest.mark.slow
def test_snakemake_by_hand_reads_the_environment_s_configuration(journey):
    env = {**journey["env"]}
    preview = tool([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d",
                    str(journey["checkout"]), "-n"], env)
    assert preview.returncode == 0, preview.stderr[-2000:]
    assert f"{ANNOUNCED}{journey['file']} (DESITRANSFER_CONFIG)" in preview.stderr
    assert ANNOUNCED not in preview.stdout
    assert "demo/" not in preview.stdout + preview.stderr
    dag = tool([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d",
                str(journey["checkout"]), "--dag"], env)
    assert dag.stdout.startswith("digraph") and ANNOUNCED in dag.stderr


@pytest.mark.slow
def test_audit_and_plan_read_it_too_and_the_kill_file_is_from_home(journey):
    audit = tool([sys.executable, "-m", "scripts.audit"], journey["env"])
    assert audit.stderr.startswith(f"{ANNOUNCED}{journey['file']}")
    assert audit.returncode == 0, audit.stdout + audit.stderr
    plan = tool([*CRON, "--plan"], journey["env"], cwd=journey["checkout"])
    assert plan.returncode == 0 and plan.stderr.startswith(ANNOUNCED)
    assert ANNOUNCED not in plan.stdout
    # kill_file's default ~/stop_desi_transfer is in HOME, not a directory named "~"
    (journey["home"] / "stop_desi_transfer").touch()
    try:
        stopped = tool(CRON, journey["env"], cwd=journey["checkout"])
    finally:
        (journey["home"] / "stop_desi_transfer").unlink()
    assert (stopped.returncode, stopped.stderr) == (0, "")
    log = (journey["state"] / "logs" / "desi_transfer.log").read_text()
    assert f"{journey['home']}/stop_desi_transfer detected" in log
    assert literal_names(journey["tmp"]) == []
