"""The status files, the report and the status command, on states written marker by
marker in the real format (scripts.markers), plus one run of the real workflow."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import NIGHT, REPO

import scripts.status as status
from scripts.markers import (
    failure_path,
    marker_path,
    write_failure,
    write_json_atomic,
    write_marker,
)

STREAM = "DESI_SPECTRO_DATA"
NOW = "2027-01-03T21:00:00Z"
DEGRADED = "HPSS status is 'degraded', not 'active'"
MISMATCH = "checksum mismatch: desi-00001302.fits.fz"
HTAR_70 = "HTAR backup failed (status 70); HTAR SUCCESSFUL on stderr"


def ms(when: str) -> int:
    return int(dt.datetime.strptime(when, "%Y-%m-%dT%H:%M:%SZ")
               .replace(tzinfo=dt.UTC).timestamp()) * 1000


def exposure(state: Path, night: str, expid: str, staged: str, verified: str | None = None,
             installed: str | None = None, size: int = 30_000_000) -> None:
    """Markers of an exposure that went as far as the given times say."""
    write_marker(marker_path(state, STREAM, night, expid, "staged"), {
        "time": staged, "duration": 12.5, "bytes": size, "files": 4, "outcome": "staged",
        "attempt": 1, "location": "staging"})
    if verified:
        write_marker(marker_path(state, STREAM, night, expid, "checksummed"), {
            "time": verified, "duration": 3.0, "bytes": size, "files": 3,
            "outcome": "verified", "attempt": 1})
    if installed:
        write_marker(marker_path(state, STREAM, night, expid, "installed"), {
            "time": installed, "duration": 0.1, "bytes": size, "files": 4,
            "outcome": "installed", "attempt": 1})


def backup(state: Path, night: str, archives: list[tuple[str, list[str]]]) -> None:
    """The night's backup record, with its archives (name suffix, exposures)."""
    records = [{"name": f"desi_spectro_data_{night}{suffix}.tar",
                "path": f"desi/spectro/data/desi_spectro_data_{night}{suffix}.tar",
                "size": 60_000_000, "exposures": expids, "time": when}
               for (when, expids), suffix in zip(archives, ["", ".1", ".2"], strict=False)]
    write_marker(marker_path(state, STREAM, night, None, "backedup"), {
        "time": archives[0][0], "outcome": "backed up", "archives": records,
        "exposures": sorted(e for _, es in archives for e in es), "held": [], "duration": 9})


def caught_up(state: Path, night: str, when: str) -> None:
    write_marker(marker_path(state, STREAM, night, None, "caughtup"), {
        "time": when, "outcome": "no changes", "changed_files": [], "duration": 1.0})


def build_state(root: Path) -> dict:
    """A known state across a year boundary, with every kind of failure; its config.

    20261101  installed, never backed up, older than lookback_nights: needs a person
    20261230  installed and caught up; backup due, HPSS degraded
    20261231  done; its backup ran on 2027-01-01 (the file of 2026 all the same) and a
              late exposure went into a supplementary archive on 2027-01-02
    20270101  verified; installed although verification failed; held; rsync retrying
    20270102  installed, caught up; backup failed three times: needs a person
    20270103  tonight: one exposure staged, one only published at the mountain
    """
    state = root / "state"
    exposure(state, "20261101", "00001100", "2026-11-02T03:00:00Z", "2026-11-02T03:00:10Z",
             "2026-11-02T03:00:11Z")
    caught_up(state, "20261101", "2026-11-02T14:00:00Z")
    exposure(state, "20261230", "00001200", "2026-12-31T02:00:00Z", "2026-12-31T02:00:05Z",
             "2026-12-31T02:00:06Z")
    caught_up(state, "20261230", "2026-12-31T14:00:00Z")
    for expid, minute in (("00001234", "10"), ("00001235", "20")):
        exposure(state, "20261231", expid, f"2027-01-01T03:{minute}:00Z",
                 f"2027-01-01T03:{minute}:04Z", f"2027-01-01T03:{minute}:05Z")
    caught_up(state, "20261231", "2027-01-01T14:00:00Z")
    exposure(state, "20261231", "00001236", "2027-01-02T02:00:00Z", "2027-01-02T02:00:04Z",
             "2027-01-02T02:00:05Z")
    backup(state, "20261231", [("2027-01-01T20:05:00Z", ["00001234", "00001235"]),
                               ("2027-01-02T20:10:00Z", ["00001236"])])
    write_marker(marker_path(state, STREAM, "20261231", None, "backedup.1"), {
        "time": "2027-01-02T20:10:00Z", "outcome": "backed up", "supplementary": True})
    exposure(state, "20270101", "00001300", "2027-01-02T03:00:00Z", "2027-01-02T03:00:05Z",
             "2027-01-02T03:00:06Z")
    # Installed by policy after three failed verifications: the marker says "failed"
    # and the failure record stays (what scripts/verify.py writes).
    exposure(state, "20270101", "00001301", "2027-01-02T04:00:00Z")
    checksummed = marker_path(state, STREAM, "20270101", "00001301", "checksummed")
    write_failure(checksummed, "checksum mismatch: guide-00001301.fits.fz", 3,
                  time="2027-01-02T04:02:00Z", exhausted=True, policy="install")
    write_json_atomic(checksummed, {"time": "2027-01-02T04:02:00Z", "outcome": "failed",
                                    "accepted_by_policy": "install", "attempt": 3,
                                    "bytes": 30_000_000, "files": 3})
    write_marker(marker_path(state, STREAM, "20270101", "00001301", "installed"), {
        "time": "2027-01-02T04:02:01Z", "bytes": 30_000_000, "outcome": "installed"})
    # Held by policy: no checksummed marker, no installed marker.
    exposure(state, "20270101", "00001302", "2027-01-02T05:00:00Z")
    write_failure(marker_path(state, STREAM, "20270101", "00001302", "checksummed"), MISMATCH,
                  3, time="2027-01-02T05:03:00Z", exhausted=True, policy="hold", held=True)
    # rsync failed once: retried by the next run, nobody needs to look yet.
    write_failure(marker_path(state, STREAM, "20270101", "00001303", "staged"),
                  "rsync problem (status 23) detected for 20270101/00001303", 1,
                  time="2027-01-02T06:00:00Z")
    for expid in ("00001310", "00001311"):
        exposure(state, "20270102", expid, "2027-01-03T02:00:00Z", "2027-01-03T02:00:05Z",
                 "2027-01-03T02:00:06Z")
    caught_up(state, "20270102", "2027-01-03T14:00:00Z")
    write_failure(marker_path(state, STREAM, "20270102", None, "backedup"), HTAR_70, 3,
                  time="2027-01-03T20:30:00Z")
    exposure(state, "20270103", "00001400", "2027-01-04T02:00:00Z")
    write_json_atomic(status.listing_cache_path(state, STREAM), {
        "key": {}, "epoch": 1799017000.0, "locked": False, "malformed": [],
        "exposures": [["20270103", "00001400"], ["20270103", "00001401"]]})
    write_json_atomic(status.hpss_status_path(state), {
        "time": "2027-01-03T20:59:00Z", "ready": False, "why": DEGRADED})
    return {
        "state": str(state), "status": str(root / "www"), "now": NOW, "lookback_nights": 30,
        "backup": {"backend": "htar"},
        "remote": {"host": "local"},
        "streams": {STREAM: {"source": "/m", "staging": str(root / "staging"),
                             "destination": str(root / "archive"), "hpss": "desi/spectro/data",
                             "checksum_file": "checksum-{exposure}.sha256sum"}},
    }


def age(root: Path, seconds: float = 60) -> None:
    """Date every file and directory below `root` `seconds` ago (settled state)."""
    past = time.time() - seconds
    for directory, _, files in os.walk(root):
        for name in files:
            os.utime(Path(directory, name), (past, past))
        os.utime(directory, (past, past))


def expected_2026() -> dict:
    return {
        "20261101": {"1100": [[1, 1, ms("2026-11-02T03:00:10Z")],
                              [0, 1, ms("2026-11-02T03:00:00Z")]]},
        "20261230": {"1200": [[1, 1, ms("2026-12-31T02:00:05Z")],
                              [0, 1, ms("2026-12-31T02:00:00Z")]]},
        "20261231": {
            "1234": [[2, 1, ms("2027-01-01T20:05:00Z")], [1, 1, ms("2027-01-01T03:10:04Z")],
                     [0, 1, ms("2027-01-01T03:10:00Z")]],
            "1235": [[2, 1, ms("2027-01-01T20:05:00Z")], [1, 1, ms("2027-01-01T03:20:04Z")],
                     [0, 1, ms("2027-01-01T03:20:00Z")]],
            "1236": [[2, 1, ms("2027-01-02T20:10:00Z")], [1, 1, ms("2027-01-02T02:00:04Z")],
                     [0, 1, ms("2027-01-02T02:00:00Z")]],
        },
    }


def expected_2027() -> dict:
    return {
        "20270101": {
            "1300": [[1, 1, ms("2027-01-02T03:00:05Z")], [0, 1, ms("2027-01-02T03:00:00Z")]],
            "1301": [[1, 0, ms("2027-01-02T04:02:00Z")], [0, 1, ms("2027-01-02T04:00:00Z")]],
            "1302": [[1, 0, ms("2027-01-02T05:03:00Z")], [0, 1, ms("2027-01-02T05:00:00Z")]],
            "1303": [[0, 0, ms("2027-01-02T06:00:00Z")]],
        },
        "20270102": {
            e: [[2, 0, ms("2027-01-03T20:30:00Z")], [1, 1, ms("2027-01-03T02:00:05Z")],
                [0, 1, ms("2027-01-03T02:00:00Z")]] for e in ("1310", "1311")
        },
        "20270103": {"1400": [[0, 1, ms("2027-01-04T02:00:00Z")]]},
    }


def compact(data: dict) -> str:
    return json.dumps(data, separators=(",", ":"))


@pytest.fixture
def known(tmp_path: Path) -> dict:
    return build_state(tmp_path)


def year_file(config: dict, year: str) -> Path:
    return Path(config["status"], f"desi_transfer_status_{year}.json")


def test_year_files_have_the_original_layout(known):
    paths = status.write_status(known, page=False)
    assert [p.name for p in paths] == ["desi_transfer_status_2026.json",
                                       "desi_transfer_status_2027.json"]
    # Byte for byte: compact separators, nights and exposures in order, newest row
    # first, EXPIDs without leading zeros, and 20261231 in the 2026 file although its
    # backup ran in 2027 (a night goes in the file of its own year).
    assert year_file(known, "2026").read_text() == compact(expected_2026())
    assert year_file(known, "2027").read_text() == compact(expected_2027())


def test_backup_rows_for_every_exposure_of_the_night(known):
    status.write_status(known, page=False)
    night = json.loads(year_file(known, "2026").read_text())["20261231"]
    backup_rows = {e: [r for r in rows if r[0] == 2] for e, rows in night.items()}
    # The night's archive and its supplementary archive, each at its own time.
    assert backup_rows == {"1234": [[2, 1, ms("2027-01-01T20:05:00Z")]],
                           "1235": [[2, 1, ms("2027-01-01T20:05:00Z")]],
                           "1236": [[2, 1, ms("2027-01-02T20:10:00Z")]]}
    # An exposure installed after the night went to tape has no backup row until an
    # archive holds it.
    exposure(Path(known["state"]), "20261231", "00001237", "2027-01-03T02:00:00Z",
             "2027-01-03T02:00:04Z", "2027-01-03T02:00:05Z")
    status.write_status(known, page=False)
    night = json.loads(year_file(known, "2026").read_text())["20261231"]
    assert [r[0] for r in night["1237"]] == [1, 0]


def test_corrupt_year_file_is_rebuilt_and_kept_as_bad(known):
    path = year_file(known, "2027")
    path.parent.mkdir(parents=True)
    path.write_text('{"20270101": {"1300": [[1, 1, ')  # a write cut short
    status.write_status(known, page=False)
    assert path.read_text() == compact(expected_2027())
    assert path.with_name(path.name + ".bad").read_text() == '{"20270101": {"1300": [[1, 1, '


def test_hand_edited_year_file_is_replaced(known):
    status.write_status(known, page=False)
    path = year_file(known, "2027")
    edited = path.read_text().replace("[[0,0,", "[[0,1,")  # someone "fixed" the rsync row
    path.write_text(edited)
    status.write_status(known, page=False)
    assert path.read_text() == compact(expected_2027())
    assert path.with_name(path.name + ".bad").read_text() == edited


def test_original_daemons_history_is_carried_over(known):
    """Switching from the daemon: its nights the state does not know stay in the file."""
    path = year_file(known, "2026")
    path.parent.mkdir(parents=True)
    original = {"20260601": {"99": [[2, 1, 1780000000000], [1, 1, 1779990000000]]},
                "20261231": {"1234": [[0, 0, 1]]}}  # the state knows this night better
    path.write_text(compact(original))
    status.write_status(known, page=False)
    assert path.with_name(path.name + ".orig").read_text() == compact(original)
    assert json.loads(path.read_text()) == {"20260601": original["20260601"],
                                            **expected_2026()}
    status.write_status(known, page=False)  # our own file now: left alone, no .bad
    assert not path.with_name(path.name + ".bad").exists()
    assert "20260601" in json.loads(path.read_text())


def test_year_file_is_replaced_by_rename(known):
    status.write_status(known, page=False)
    path = year_file(known, "2027")
    before = path.stat().st_ino
    exposure(Path(known["state"]), "20270103", "00001401", "2027-01-04T02:10:00Z")
    status.write_status(known, page=False)
    # A new inode: the new content was written beside and renamed over the old file,
    # so a reader never sees half of it. No temporary file is left behind; the file
    # replaced is kept as .bak, as DESI's own code keeps it.
    assert path.stat().st_ino != before
    assert "1401" in json.loads(path.read_text())["20270103"]
    assert sorted(p.name for p in path.parent.iterdir() if p.name != status.MANIFEST) == [
        "desi_transfer_status_2026.json", "desi_transfer_status_2027.json",
        "desi_transfer_status_2027.json.bak"]


def test_losing_the_state_never_loses_a_night_of_the_year_files(known):
    state = Path(known["state"])
    status.write_status(known, page=False)
    path = year_file(known, "2027")
    before = path.read_text()
    # The state loses a whole night and one exposure of another.
    shutil.rmtree(state / STREAM / "20270101")
    for marker in (state / STREAM / "20270103").glob("00001400.*"):
        marker.unlink()
    exposure(state, "20270103", "00001401", "2027-01-04T02:10:00Z")
    status.write_status(known, page=False)
    after = json.loads(path.read_text())
    assert after["20270101"] == expected_2027()["20270101"]
    assert after["20270103"]["1400"] == expected_2027()["20270103"]["1400"]
    assert "1401" in after["20270103"]
    assert path.with_name(path.name + ".bak").read_text() == before
    # A write cut short: the file is kept as .bad, its history comes back from the .bak.
    bak = path.with_name(path.name + ".bak").read_text()
    path.write_text(path.read_text()[:40])
    shutil.rmtree(state / STREAM / "20270102")
    status.write_status(known, page=False)
    again = json.loads(path.read_text())
    assert again["20270101"] == expected_2027()["20270101"]
    assert again["20270102"] == json.loads(bak)["20270102"]
    assert path.with_name(path.name + ".bak").read_text() == bak  # not the broken file


def test_rebuild_reads_only_the_nights_that_changed(known, monkeypatch):
    state = Path(known["state"])
    age(state)
    status.write_status(known, page=False)
    reads = []
    real = status.reading.read_record
    monkeypatch.setattr(status.reading, "read_record", lambda p: reads.append(Path(p)) or real(p))
    status.write_status(known, page=False)
    assert [p for p in reads if state in p.parents] == []
    exposure(state, "20270103", "00001401", "2027-01-04T02:10:00Z")
    status.write_status(known, page=False)
    nights = {p.parent.name for p in reads if state in p.parents}
    assert nights == {"20270103"}
    assert "1401" in json.loads(year_file(known, "2027").read_text())["20270103"]


def test_report_judges_the_nights(known):
    report = status.build_report(known)
    states = {n.night: n.state for n in report.nights}
    # 20261230 waits for HPSS and 20270101 for an exposure: both backups are more
    # than alerts.backup_late_after (a day) late, and that needs a person.
    assert states == {"20261101": status.NIGHT_ATTENTION, "20261230": status.NIGHT_ATTENTION,
                      "20261231": status.NIGHT_DONE, "20270101": status.NIGHT_ATTENTION,
                      "20270102": status.NIGHT_ATTENTION, "20270103": status.NIGHT_PROGRESS}
    problems = {(p.item, p.stage) for p in report.problems}
    assert problems == {("20261101", "backedup"), ("20270101/00001301", "checksummed"),
                        ("20270101/00001302", "checksummed"), ("20270102", "backedup"),
                        ("20261230", "late"), ("20270101", "late")}
    held = next(p for p in report.problems if p.item == "20270101/00001302")
    assert held.reason == MISMATCH and held.attempts == 3
    assert str(failure_path(marker_path(known["state"], STREAM, "20270101", "00001302",
                                        "checksummed"))) in held.action
    backlog = {(b.night, b.stage): b.why for b in report.backlog}
    assert backlog[("20261230", "backup")] == (
        f"HPSS inactive: {DEGRADED} (checked 2027-01-03T20:59:00Z)")
    assert backlog[("20270101", "catch-up")] == (
        "waiting for 1 exposure(s) to be installed: 00001303")
    assert backlog[("20270102", "backup")].startswith("failed 3×, retried next run: HTAR")
    assert ("20261231", "backup") not in backlog and ("20270103", "catch-up") not in backlog
    tonight = next(n for n in report.nights if n.night == "20270103")
    assert {e.expid: e.state for e in tonight.exposures.values()} == {
        "00001400": status.TRANSFERRING, "00001401": status.PUBLISHED}


def test_latency_runs_from_the_rsync_start_or_the_publication(known):
    night = status.read_night(known["state"], STREAM, "20270102")
    # staged at 02:00:00 after 12.5 s of rsync, installed at 02:00:06
    assert night.exposures["00001310"].latency() == (18.5, "rsync start")
    staged = marker_path(known["state"], STREAM, "20270102", "00001311", "staged")
    write_marker(staged, {**json.loads(staged.read_text()), "published": "2027-01-03T01:50:00Z"})
    night = status.read_night(known["state"], STREAM, "20270102")
    assert night.exposures["00001311"].latency() == (606.0, "published")


def test_command_summary(known, tmp_path, capsys):
    config = tmp_path / "config.yaml"
    config.write_text(json.dumps(known))
    assert status.main(["--config", str(config), "--nights", "3"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].split()[:4] == ["stream", "night", "state", "exposures"]
    assert [line.split()[1] for line in lines[1:4]] == ["20270103", "20270102", "20270101"]
    assert "needs a person" in lines[2] and "in progress" in lines[1]
    assert "20270101 catch-up: waiting for 1 exposure(s) to be installed" in out


def test_command_one_night_and_failures(known, tmp_path, capsys):
    config = tmp_path / "config.yaml"
    config.write_text(json.dumps(known))
    status.main(["--config", str(config), "--night", "20270101"])
    table, backlog = capsys.readouterr().out.split("\n\n")
    rows = {line.split()[1]: line for line in table.splitlines()[1:]}  # stream, expid, …
    assert "20270101 backup: waiting for 1 exposure(s) to be installed: 00001303" in backlog
    assert list(rows) == ["00001300", "00001301", "00001302", "00001303"]
    assert "held" in rows["00001302"] and MISMATCH in rows["00001302"]
    assert "installed with errors" in rows["00001301"]
    status.main(["--config", str(config), "--failures", "--json"])
    problems = json.loads(capsys.readouterr().out)
    assert {(p["item"], p["stage"]) for p in problems} == {
        ("20261101", "backup"), ("20270101/00001301", "verification"),
        ("20270101/00001302", "verification"), ("20270102", "backup"),
        ("20261230", "late data"), ("20270101", "late data")}
    assert all(p["action"] and p["record"] for p in problems)
    status.main(["--config", str(config), "--night", "20270102", "--json"])
    exposures = json.loads(capsys.readouterr().out)
    assert [e["expid"] for e in exposures] == ["00001310", "00001311"]
    assert exposures[0]["installed"] == "2027-01-03T02:00:06Z"
    assert exposures[0]["latency_seconds"] == 18.5


def test_command_reads_only_the_nights_it_shows(known, tmp_path, monkeypatch, capsys):
    config = tmp_path / "config.yaml"
    config.write_text(json.dumps(known))
    reads = []
    real = status.reading.read_record
    monkeypatch.setattr(status.reading, "read_record", lambda p: reads.append(Path(p)) or real(p))
    status.main(["--config", str(config), "--nights", "2"])
    state = Path(known["state"], STREAM)
    read_nights = {p.parent.name if p.parent != state else p.name[:8]
                   for p in reads if state in p.parents}
    assert read_nights == {"20270103", "20270102"}
    assert "20270102" in capsys.readouterr().out


def test_command_default_path_does_not_import_pandas(known, tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(json.dumps(known))
    probe = ("import sys; from scripts.status import main; main(['--config', sys.argv[1]]);"
             " print('PANDAS' if 'pandas' in sys.modules else 'NO PANDAS')")
    result = subprocess.run([sys.executable, "-c", probe, str(config)], cwd=REPO,
                            capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.rstrip().endswith("NO PANDAS")


def test_command_write_rebuilds_files_and_says_where_the_page_is(known, tmp_path, capsys):
    config = tmp_path / "config.yaml"
    config.write_text(json.dumps(known))
    assert status.main(["--config", str(config), "--write"]) == 0
    page = Path(known["status"], "index.html")
    assert f"Status page: {page.as_uri()}" in capsys.readouterr().out
    assert year_file(known, "2027").read_text() == compact(expected_2027())


def test_the_first_stream_stays_in_status_and_further_streams_get_a_directory_each(known):
    """DESI's own page reads the year files in STATUS: the first stream's stay there."""
    config = {**known, "streams": {**known["streams"], "OTHER": known["streams"][STREAM]}}
    assert status.year_file_directory(config, STREAM) == Path(known["status"])
    assert status.year_file_directory(config, "OTHER") == Path(known["status"], "OTHER")
    assert status.year_file_directory(known, STREAM) == Path(known["status"])


def test_unreadable_config_is_one_line(tmp_path, capsys):
    assert status.main(["--config", str(tmp_path / "missing.yaml")]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith("desitransfer: configuration ")  # the file read, then why not
    assert len(lines) == 2 and "cannot read" in lines[1]


def test_workflow_writes_the_status_files(site, tape):
    """The real workflow: the run that backs the night up leaves the year file and page."""
    site.exposure("00003000")
    site.exposure("00003001")
    site.config["now"] = "2026-11-28T21:00:00Z"  # catch-up and backup both due
    site.run()
    data = json.loads((site.state / "status" / "desi_transfer_status_2026.json").read_text())
    assert list(data) == [NIGHT]
    assert sorted(data[NIGHT]) == ["3000", "3001"]
    for rows in data[NIGHT].values():
        assert [r[:2] for r in rows] == [[2, 1], [1, 1], [0, 1]]
    page = (site.state / "status" / "index.html").read_text()
    assert f'id="n-{STREAM}-{NIGHT}"' in page and "Nothing needs a person." in page


def test_rebuild_after_run_never_fails_the_run(known, tmp_path):
    line = status.rebuild_after_run(known)
    assert line.startswith("Status files rebuilt") and line.endswith(
        str(Path(known["status"], "index.html")))
    blocked = tmp_path / "not-a-directory"
    blocked.write_text("")
    line = status.rebuild_after_run({**known, "status": str(blocked)})
    assert line.startswith("Status files NOT rebuilt") and "--write" in line
    log = Path(known["state"], "logs", "status.log").read_text()
    assert "INFO Status files rebuilt" in log and "ERROR Status files NOT rebuilt" in log


def test_only_a_drain_run_with_a_recent_page_leaves_the_rebuild_to_the_next_run(tmp_path):
    from scripts.status.report import DRAIN_REBUILD_SECONDS, PAGE, PAGE_MARK, rebuild_can_wait

    config = {"state": str(tmp_path / "state"), "streams": {}}
    page = tmp_path / "state" / "status" / PAGE
    assert not rebuild_can_wait(config, draining=True)  # no page yet: build it
    page.parent.mkdir(parents=True)
    page.write_bytes(b"<!DOCTYPE html>" + PAGE_MARK + b"<html></html>")
    written = page.stat().st_mtime
    assert rebuild_can_wait(config, draining=True, now=written + 1)
    assert not rebuild_can_wait(config, draining=False, now=written + 1)
    assert not rebuild_can_wait(config, draining=True, now=written + DRAIN_REBUILD_SECONDS)


def test_empty_listings_are_counted_only_after_a_listing_that_found_links():
    from scripts.status.run_records import next_empty_count

    fresh = next_empty_count({}, 0, "t0")
    assert fresh["runs"] == 0 and not fresh["listed"]  # a new stream may list nothing yet
    seen = next_empty_count(fresh, 3, "t1")
    first = next_empty_count(seen, 0, "t2")
    second = next_empty_count(first, 0, "t3")
    assert (first["runs"], second["runs"], second["since"]) == (1, 2, "t2")
    assert next_empty_count(second, 1, "t4")["runs"] == 0
