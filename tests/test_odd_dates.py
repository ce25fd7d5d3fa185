"""A night that is no date (``20261131``, ``20260230``) is malformed wherever it comes
from: the mountain's listing or the state. It is skipped and reported once, and never
stops a night's catch-up, backup, the status page or the status command."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import NIGHT, REPO, STREAM

from scripts.markers import valid_expid, valid_night
from scripts.remote import parse_listing

AFTER_BACKUP = "2026-11-28T21:00:00Z"


@pytest.mark.parametrize("night", ["20261131", "20260230", "20250229", "20261300",
                                   "20261100", "00001127", "99991127", "2026112", "2026-11-",
                                   "２０２６１１２７", 20261127])
def test_impossible_nights_are_not_nights(night):
    assert not valid_night(night)


@pytest.mark.parametrize("night", ["20261127", "20240229", "19700101", "29991231"])
def test_real_nights_are_nights(night):
    assert valid_night(night)


def test_exposure_ids_are_eight_ascii_digits():
    assert valid_expid("00001234")
    bad = ("0000123", "000012345", "0000123x", "０００１２３４５", 1)
    assert not any(valid_expid(e) for e in bad)


def test_a_link_with_an_impossible_date_is_malformed():
    source = "/data/raw"
    text = "".join(f"1.0 {source}/{link}\0" for link in
                   ("20261131/00001001", "20260230/00001002", f"{NIGHT}/00001003"))
    listing = parse_listing(text, source, "20260101")
    assert listing.exposures == [(NIGHT, "00001003")]
    assert listing.malformed == [f"{source}/20261131/00001001", f"{source}/20260230/00001002"]


def status(site, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "scripts.status", "--config",
                           str(site.config_file), *args], cwd=REPO, capture_output=True,
                          text=True, timeout=120)


def test_impossible_dates_at_the_mountain_and_in_the_state_stop_nothing(site, tmp_path):
    site.exposure("00001000")
    site.exposure("00001001", night="20261131")  # inside the window as a string
    site.exposure("00001002", night="20260230")
    # A marker directory of a night that is no date, as a mistaken hand or a bug leaves.
    bogus = site.state / STREAM / "20261199"
    bogus.mkdir(parents=True)
    (bogus / "00001003.installed").write_text(json.dumps({"time": "2026-11-28T00:00:00Z"}))
    site.config["now"] = AFTER_BACKUP
    site.config["backup"] = {"backend": "tar", "archive": str(tmp_path / "tape"),
                             "hpss_status": ""}
    result = site.run()
    # The real night is installed, caught up and backed up.
    assert site.record(NIGHT, "00001000", "installed")
    assert site.record(NIGHT, None, "caughtup")
    assert site.record(NIGHT, None, "backedup")["archives"][0]["exposures"] == ["00001000"]
    assert not (site.destination / "20261131").exists()
    assert not (site.destination / "20260230").exists()
    warnings = [line for line in result.stderr.splitlines() if "Malformed symlink" in line]
    assert len(warnings) == 2, result.stderr
    # The status command, its failures and the page work, and report each link once.
    assert status(site).returncode == 0
    failures = status(site, "--failures")
    assert failures.returncode == 0, failures.stderr
    assert failures.stdout.count("20261131/00001001") == 1
    assert failures.stdout.count("20260230/00001002") == 1
    written = status(site, "--write")
    assert written.returncode == 0, written.stderr
    page = (site.state / "status" / "index.html").read_text()
    assert "20261131/00001001" in page and "20261199" not in page
    year = json.loads((site.state / "status" / "desi_transfer_status_2026.json").read_text())
    assert sorted(year) == [NIGHT]
    # A second run does nothing new and still does not fail.
    site.run()


def test_a_stray_name_in_a_night_of_the_state_is_no_exposure(tmp_path):
    from scripts.targets import scan_night

    night = tmp_path / STREAM / NIGHT
    night.mkdir(parents=True)
    for name in ("00001000.installed", "1000.installed", "0000100x.installed",
                 "--help.installed", ".installed"):
        (night / name).write_text("{}")
    assert scan_night(tmp_path, STREAM, NIGHT).installed == {"00001000"}
