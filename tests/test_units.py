"""Unit tests of the pure parts: listing, rsync command line and output, targets, markers."""

from __future__ import annotations

import datetime as dt

import pytest

from scripts.markers import failure_path, marker_path, read_failure, write_failure, write_marker
from scripts.remote import LOCK_LINE, first_night, listing_script, parse_listing, remote_command
from scripts.rsync import changed_exposures, changed_files, rsync_command
from scripts.targets import NightState, pending_exposures, scan_night

SOURCE = "/data/dts/exposures/raw"
REMOTE = {"host": "dts", "ssh": ["ssh", "-q", "-o", "BatchMode=yes"], "timeout": 600,
          "checksum_lock": "/tmp/checksum-running"}
LOCAL = {**REMOTE, "host": "local"}


def records(*paths: str, epoch: str = "1795917545.0") -> str:
    """Listing output as `listing_script` makes it: NUL-terminated ``EPOCH PATH``."""
    return "".join(f"{epoch} {path}\0" for path in paths)


def test_parse_listing_keeps_well_formed_links_in_the_window():
    text = records(
        f"{SOURCE}/20261120/00001234",
        f"{SOURCE}/20261120/00001233",
        f"{SOURCE}/20261001/00000001",          # before the window: ignored, not malformed
        f"{SOURCE}/20261120/1234",              # short expid
        f"{SOURCE}/2026112/00001234",           # short night
        f"{SOURCE}/20261120/00001234/extra",    # too deep
        f"{SOURCE}/latest",                     # not NIGHT/EXPID
        f"{SOURCE}/20261120/00001234x",
    )
    listing = parse_listing(text, SOURCE, "20261029")
    assert listing.exposures == [("20261120", "00001233"), ("20261120", "00001234")]
    assert listing.malformed == [
        f"{SOURCE}/20261120/1234", f"{SOURCE}/2026112/00001234",
        f"{SOURCE}/20261120/00001234/extra", f"{SOURCE}/latest",
        f"{SOURCE}/20261120/00001234x",
    ]
    assert not listing.locked
    assert listing.nights() == ["20261120"]


def test_parse_listing_sees_the_checksum_lock_and_source_with_trailing_slash():
    text = f"{LOCK_LINE}\0" + records(f"{SOURCE}/20261120/00001234")
    listing = parse_listing(text, SOURCE + "/", "20261101")
    assert listing.locked and listing.exposures == [("20261120", "00001234")]


def test_first_night_is_lookback_days_before_now_in_utc():
    now = dt.datetime(2027, 1, 1, 2, 0, tzinfo=dt.UTC)
    assert first_night(now, 30) == "20261202"
    assert first_night(now, 1) == "20261231"


def test_remote_command_quotes_paths_and_uses_batch_ssh():
    script = listing_script("/data/with space", "/tmp/lock; rm -rf /")
    assert "'/data/with space'" in script and "'/tmp/lock; rm -rf /'" in script
    assert remote_command(REMOTE, script) == [*REMOTE["ssh"], "dts", script]
    assert remote_command(LOCAL, script) == ["sh", "-c", script]


def test_rsync_command_line():
    command = rsync_command(REMOTE, f"{SOURCE}/20261120/00001234", "/staging/20261120/00001234",
                            delete=True)
    assert command[:4] == ["rsync", "--recursive", "--times", "--omit-dir-times"]
    assert "--copy-dirlinks" not in command  # a link inside an exposure is never followed
    assert "--timeout=600" in command and "--delete" in command and "--verbose" in command
    assert command[command.index("-e") + 1] == "ssh -q -o BatchMode=yes"
    assert command[-2:] == [f"dts:{SOURCE}/20261120/00001234/", "/staging/20261120/00001234/"]
    dry = rsync_command(LOCAL, f"{SOURCE}/20261120", "/dest/20261120", dry_run=True,
                        itemize=True, follow_dirlinks=True)
    assert "--copy-dirlinks" in dry and "--dry-run" in dry
    assert "--itemize-changes" in dry and "-e" not in dry
    assert "--delete" not in dry
    assert dry[-2:] == [f"{SOURCE}/20261120/", "/dest/20261120/"]


def test_rsync_output_interpretation():
    itemized = "\n".join([
        "cd+++++++++ 00001235/",
        ">f+++++++++ 00001235/desi-00001235.fits.fz",
        ">f.st...... 00001234/guide-00001234.fits.fz",
        ".d..t...... 00001236/",
        ">f+++++++++ 00001237/name with spaces.json",
        "*deleting   00001238/old",
    ])
    assert changed_files(itemized) == ["00001235/desi-00001235.fits.fz",
                                       "00001234/guide-00001234.fits.fz",
                                       "00001237/name with spaces.json"]
    assert changed_exposures(changed_files(itemized)) == ["00001234", "00001235", "00001237"]


def test_pending_exposures_skip_installed_and_held():
    listed = [("20261120", "00000001"), ("20261120", "00000002"), ("20261121", "00000003"),
              ("20261121", "00000004")]
    nights = {"20261120": NightState(installed={"00000001"}),
              "20261121": NightState(held={"00000004"})}
    assert pending_exposures(listed, nights) == [("20261120", "00000002"),
                                                 ("20261121", "00000003")]


def test_scan_night_reads_markers_and_held_failures(tmp_path):
    write_marker(marker_path(tmp_path, "S", "20261120", "00000001", "installed"), {})
    write_failure(marker_path(tmp_path, "S", "20261120", "00000002", "checksummed"), "bad", 3,
                  held=True)
    write_failure(marker_path(tmp_path, "S", "20261120", "00000003", "checksummed"), "bad", 1)
    found = scan_night(tmp_path, "S", "20261120")
    assert found.installed == {"00000001"} and found.held == {"00000002"}
    assert scan_night(tmp_path, "S", "20261121") == NightState()


def test_marker_success_removes_the_failure_record(tmp_path):
    marker = marker_path(tmp_path, "S", "20261120", None, "backedup")
    assert marker == tmp_path / "S" / "20261120.backedup"
    write_failure(marker, "htar exited with status 70", 1)
    assert read_failure(marker)["attempts"] == 1
    write_marker(marker, {"outcome": "backed up"})
    assert not failure_path(marker).exists()
    assert [p.name for p in marker.parent.iterdir()] == ["20261120.backedup"]


@pytest.mark.parametrize("stage", ["staged", "checksummed", "installed"])
def test_marker_paths_are_the_interface(tmp_path, stage):
    assert marker_path("st", "DESI", "20261120", "00001234", stage).as_posix() == \
        f"st/DESI/20261120/00001234.{stage}"


def test_ssh_always_runs_in_batch_mode():
    from scripts.remote import ssh_command

    assert ssh_command({"ssh": ["ssh", "-p", "22"]}) == ["ssh", "-o", "BatchMode=yes", "-p", "22"]
    assert ssh_command({"ssh": ["ssh", "-o", "batchmode=yes"]}) == ["ssh", "-o", "batchmode=yes"]
    command = rsync_command({**REMOTE, "ssh": ["ssh", "-q"]}, "/a", "/b")
    assert command[command.index("-e") + 1] == "ssh -o BatchMode=yes -q"


def test_parse_listing_keeps_when_each_link_was_published():
    text = (f"1795917545.2500000000 {SOURCE}/20261128/00001234\0"
            f"1795917546.0 {SOURCE}/20261128/00001235\0"
            f"1795917547.0 {SOURCE}/20261128/bad\0")
    listing = parse_listing(text, SOURCE, "20261101")
    assert listing.exposures == [("20261128", "00001234"), ("20261128", "00001235")]
    assert listing.published == {"20261128/00001234": 1795917545.25,
                                 "20261128/00001235": 1795917546.0}
    assert listing.malformed == [f"{SOURCE}/20261128/bad"]


def test_the_checksum_lock_record_carries_its_age_by_the_mountains_clock():
    from scripts.remote import parse_listing

    text = "CHECKSUM-LOCK-PRESENT 1800000000 1799740800.5\0"
    listing = parse_listing(text, "/src", "20260101")
    assert listing.locked and listing.lock_age == 259199.5
    # The lock vanished between the test and the stamp: still locked, age unknown.
    vanished = parse_listing("CHECKSUM-LOCK-PRESENT 1800000000 \0", "/src", "20260101")
    assert vanished.locked and vanished.lock_age is None
    assert not parse_listing("1.0 /src/20261127/00001234\0", "/src", "20260101").locked
