"""Backup records tell the truth: they claim only what the archives on tape hold.

Unit tests of the pure parts (member paths → exposures, the ``htar -tv`` listing, the
archive plan), and the real workflow with the HPSS emulator (and the tar backend) for
adopted archives, a failed htar's retry and nights whose links left the mountain.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
from conftest import NIGHT, REPO, STREAM, planned_jobs
from test_night_workflow import htar_calls

from scripts.backup import archive_name, exposures_in, plan_archives
from scripts.configuration import Stream
from scripts.hpss import (
    BackupError,
    Member,
    minimal_tar_size,
    parse_htar_created,
    parse_htar_listing,
    parse_htar_members,
)
from scripts.tape import Tape
from scripts.tape_contents import DiskFile, differences, exposure_on_disk
from scripts.tar_archive import scan_tar
from scripts.targets import NightState, marker_nights, night_exposures

HPSS_DIR = "desi/spectro/data"
BEFORE_CATCHUP = "2026-11-28T10:00:00Z"
AFTER_BACKUP = "2026-11-28T21:00:00Z"
EMULATOR = REPO / "tests" / "hpss_emulator"


def tar_name(night: str = NIGHT, index: int = 0) -> str:
    return f"desi_spectro_data_{night}{'' if index == 0 else f'.{index}'}.tar"


def stream(destination: Path = Path("/archive")) -> Stream:
    return Stream(name=STREAM, source="/mountain/raw", staging=Path("/staging"),
                  destination=destination, hpss=HPSS_DIR,
                  checksum_file="checksum-{exposure}.sha256sum")


# ---------------------------------------------------------------------- unit tests


def test_exposures_in_counts_an_exposure_only_when_it_holds_its_files():
    members = [
        f"{NIGHT}/00001234/desi-00001234.fits.fz",
        f"{NIGHT}/00001234/checksum-00001234.sha256sum",
        f"./{NIGHT}/00001235/sub dir/guide 00001235.fits.fz",  # ./ prefix, spaces
        f"{NIGHT}/00001236/",                  # a bare directory holds no data
        f"{NIGHT}/00001237",                   # nor does a directory entry without /
        f"{NIGHT}/README",                     # not an exposure
        f"{NIGHT}/0000123/short.fits",         # 7 digits
        f"{NIGHT}/000012389/long.fits",        # 9 digits
        f"{NIGHT}/０００01239/wide.fits",        # not ASCII digits
        "20261126/00001240/other-night.fits",  # another night
        "/tmp/HTAR_CF_CHK_1234_1795917545",
    ]
    assert exposures_in(members, NIGHT) == {"00001234", "00001235"}
    assert exposures_in(members, "20261126") == {"00001240"}
    assert exposures_in([], NIGHT) == set()


LISTING = f"""\
HTAR: drwxr-s---  desi/desi          0 2026-11-28 01:02  {NIGHT}/
HTAR: drwxr-s---  desi/desi          0 2026-11-28 01:02  {NIGHT}/00001234/
HTAR: -r--r-----  desi/desi       3000 2026-11-28 01:02  {NIGHT}/00001234/desi-00001234.fits.fz
HTAR: -r--r-----  12345/58191      105 2026-11-28 01:02  {NIGHT}/00001234/a name with spaces
HTAR: -rw-------  desi/desi        256 2026-11-28 21:00  /tmp/HTAR_CF_CHK_4242_1795917545
HTAR: Listing complete for {HPSS_DIR}/{tar_name()}, 3 files 5 total objects
HTAR: HTAR SUCCESSFUL
"""


def test_htar_listing_gives_the_regular_files_as_stored():
    assert parse_htar_listing(LISTING) == [
        f"{NIGHT}/00001234/desi-00001234.fits.fz",
        f"{NIGHT}/00001234/a name with spaces",
    ]
    assert parse_htar_listing("HTAR: HTAR SUCCESSFUL\n") == []


def test_an_unreadable_htar_listing_line_is_an_error_not_a_missing_member():
    garbled = LISTING.replace("3000 2026-11-28 01:02", "3000 yesterday")
    with pytest.raises(BackupError, match="cannot read this line"):
        parse_htar_listing(garbled)


def test_htar_create_output_gives_the_files_it_added():
    output = (f"HTAR: a   {NIGHT}/\nHTAR: a   {NIGHT}/00001234/\n"
              f"HTAR: a   {NIGHT}/00001234/desi-00001234.fits.fz\n"
              "HTAR: a   /tmp/HTAR_CF_CHK_4242_1795917545\n"
              f"HTAR Create complete for {tar_name()}. 10,240 bytes written for 1 member"
              " files, max threads: 4 Transfer time: 0.1 seconds\nHTAR: HTAR SUCCESSFUL\n")
    assert parse_htar_created(output) == [f"{NIGHT}/00001234/desi-00001234.fits.fz"]


def test_plan_adopts_complete_archives_and_reuses_a_name_left_without_its_idx():
    s = stream()
    name = [archive_name(s, NIGHT, i) for i in range(4)]
    # Nothing on tape: the night's first archive.
    assert plan_archives(s, NIGHT, [], {}) == ([], 0)
    # A .tar without its .idx (failed attempt): written again under its name.
    assert plan_archives(s, NIGHT, [], {name[0]: 10}) == ([], 0)
    # Complete and unrecorded (state lost): adopted, the next archive after them.
    complete = {name[0]: 10, f"{name[0]}.idx": 1, name[1]: 10, f"{name[1]}.idx": 1}
    assert plan_archives(s, NIGHT, [], complete) == ([name[0], name[1]], 2)
    # Recorded archives are neither adopted again nor overwritten.
    recorded = [{"name": name[0]}]
    assert plan_archives(s, NIGHT, recorded, complete) == ([name[1]], 2)
    assert plan_archives(s, NIGHT, recorded, {**complete, name[2]: 5}) == ([name[1]], 2)


def test_night_exposures_are_the_listed_and_the_installed_ones():
    listed = [(NIGHT, "00000001"), (NIGHT, "00000002"), (NIGHT, "00000003"),
              ("20261126", "00000009")]
    seen = NightState(installed={"00000001", "00000004"}, held={"00000003"})
    assert night_exposures(listed, NIGHT, seen) == ["00000001", "00000002", "00000004"]


def test_marker_nights_are_the_night_directories_in_the_window(tmp_path):
    assert marker_nights(tmp_path, STREAM, "20261101") == []
    base = tmp_path / STREAM
    for name in ("20261020", "20261101", "20261127", "logs", "2026112"):
        (base / name).mkdir(parents=True)
    (base / "20261126.backedup").write_text("{}")
    assert marker_nights(tmp_path, STREAM, "20261101") == ["20261101", "20261127"]


def test_tape_members_reads_an_archive_back(tmp_path, monkeypatch):
    """Tape.members on real archives: the emulator's ``htar -tvf`` output, parsed, and
    the tar backend's index; they agree, and a missing archive is an error."""
    destination = tmp_path / "archive"
    exposure = destination / NIGHT / "00001234"
    exposure.mkdir(parents=True)
    (exposure / "desi-00001234.fits.fz").write_bytes(b"x" * 100)
    (exposure / "checksum-00001234.sha256sum").write_text("")
    expected = [f"{NIGHT}/00001234/checksum-00001234.sha256sum",
                f"{NIGHT}/00001234/desi-00001234.fits.fz"]
    monkeypatch.setenv("HPSS_ROOT", str(tmp_path / "hpss"))
    backends = {
        "htar": {"backend": "htar", "hpss_bin": str(EMULATOR), "timeout": 30},
        "tar": {"backend": "tar", "archive": str(tmp_path / "tarchive"), "timeout": 30},
    }
    for backup in backends.values():
        tape = Tape({"backup": backup}, stream(destination))
        written = tape.write(tar_name(), [NIGHT])
        assert sorted(written) == sorted(tape.members(tar_name())) == expected
        with pytest.raises(BackupError, match="cannot list"):
            tape.members(tar_name(index=1))


def test_scan_tar_hashes_each_member_once_from_a_pipe_and_finds_truncation(tmp_path):
    """Long names (pax headers), a size that is a multiple of 512 (no padding), an
    empty file; read through a pipe as ``hsi get -`` would give it."""
    contents = {f"{NIGHT}/00001234/{'long-' * 30}.fits": os.urandom(5000),
                f"{NIGHT}/00001234/block.fits": os.urandom(1024),
                f"{NIGHT}/00001234/empty": b"",
                f"{NIGHT}/00001234/last.fits": os.urandom(70000)}
    path = tmp_path / "a.tar"
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        directory = tarfile.TarInfo(f"{NIGHT}/00001234")
        directory.type = tarfile.DIRTYPE  # skipped: no data
        tar.addfile(directory)
        for name, data in contents.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    expected = [Member(n, len(d), hashlib.sha256(d).hexdigest()) for n, d in contents.items()]
    with subprocess.Popen(["cat", str(path)], stdout=subprocess.PIPE) as cat:
        assert list(scan_tar(cat.stdout)) == expected
    data = path.read_bytes()
    with tarfile.open(path) as tar:
        last = tar.getmember(f"{NIGHT}/00001234/last.fits")
    # Cut in a file's data, or in the padding after it: the members before were whole.
    for cut, whole in ((last.offset_data + 100, 3), (last.offset_data + last.size + 10, 4)):
        found = []
        with pytest.raises(BackupError, match="truncated"):
            found.extend(scan_tar(io.BytesIO(data[:cut])))
        assert found == expected[:whole]
    # Cut between two members, tar sees a shorter archive: the caller compares the
    # members with the index.
    assert list(scan_tar(io.BytesIO(data[:last.offset]))) == expected[:3]
    with pytest.raises(BackupError, match="not a tar archive"):
        list(scan_tar(io.BytesIO(b"x" * 2000)))


def test_differences_name_each_file_the_archive_holds_otherwise():
    disk = {"a.fits": DiskFile(10, "aa"), "b.fits": DiskFile(20, "bb"),
            "c.fits": DiskFile(30, "cc"), "late.fits": DiskFile(5, "ll"),
            "checksum.sha256sum": DiskFile(100, "ss")}
    held = {"a.fits": Member("N/E/a.fits", 10),            # no digest (htar): size only
            "b.fits": Member("N/E/b.fits", 21, "bb"),
            "c.fits": Member("N/E/c.fits", 30, "xx"),
            "gone.fits": Member("N/E/gone.fits", 1),
            "checksum.sha256sum": Member("N/E/checksum.sha256sum", 100, "tt")}
    assert differences(disk, held, "A.tar", "checksum.sha256sum") == [
        ("b.fits", "21 bytes in A.tar, 20 on disk"),
        ("c.fits", "content in A.tar differs from checksum.sha256sum"),
        ("checksum.sha256sum", "content in A.tar differs from the file on disk"),
        ("gone.fits", "in A.tar but not on disk"),
        ("late.fits", "on disk but not in A.tar")]
    same = {path: Member(f"N/E/{path}", f.size, f.sha256) for path, f in disk.items()}
    assert differences(disk, same, "A.tar", "checksum.sha256sum") == []


def test_exposure_on_disk_lists_regular_files_with_their_checksums(tmp_path):
    exposure = tmp_path / "00001234"
    (exposure / "sub").mkdir(parents=True)
    (exposure / "a.fits").write_bytes(b"a" * 10)
    (exposure / "sub" / "b.fits").write_bytes(b"b" * 20)
    (exposure / "unlisted").write_bytes(b"u")
    (exposure / "link").symlink_to("/etc/hostname")  # never followed, never listed
    text = (f"{hashlib.sha256(b'a' * 10).hexdigest()}  a.fits\n"
            f"{hashlib.sha256(b'b' * 20).hexdigest()}  sub/b.fits\n").encode()
    (exposure / "checksum.sha256sum").write_bytes(text)
    assert exposure_on_disk(exposure, "checksum.sha256sum") == {
        "a.fits": DiskFile(10, hashlib.sha256(b"a" * 10).hexdigest()),
        "sub/b.fits": DiskFile(20, hashlib.sha256(b"b" * 20).hexdigest()),
        "unlisted": DiskFile(1),
        "checksum.sha256sum": DiskFile(len(text), hashlib.sha256(text).hexdigest())}
    assert exposure_on_disk(tmp_path / "00009999", "checksum.sha256sum") is None


def test_htar_listing_sizes_and_the_least_size_of_a_tar():
    members = parse_htar_members(LISTING)
    assert [(m.size, m.sha256) for m in members] == [(3000, None), (105, None)]
    assert minimal_tar_size(members) == 512 + 3072 + 512 + 512
    assert minimal_tar_size([]) == 0


def test_tape_read_streams_an_htar_archive_through_hsi_and_fails_in_one_line(
        tmp_path, monkeypatch):
    destination = tmp_path / "archive"
    exposure = destination / NIGHT / "00001234"
    exposure.mkdir(parents=True)
    (exposure / "desi-00001234.fits.fz").write_bytes(b"x" * 1000)
    monkeypatch.setenv("HPSS_ROOT", str(tmp_path / "hpss"))
    backup = {"backend": "htar", "hpss_bin": str(EMULATOR), "timeout": 30}
    tape = Tape({"backup": backup}, stream(destination))
    tape.write(tar_name(), [NIGHT])
    with tape.read(tar_name()) as raw:
        found = [m for m in scan_tar(raw) if "HTAR_CF_CHK_" not in m.name]
    assert found == [Member(f"{NIGHT}/00001234/desi-00001234.fits.fz", 1000,
                            hashlib.sha256(b"x" * 1000).hexdigest())]
    with pytest.raises(BackupError, match=r"status 72: \*\*\* hsi: .*No such file"), \
            tape.read(tar_name(index=1)) as raw:
        list(scan_tar(raw))
    monkeypatch.setenv("HSI_HANG", "30")
    backup["timeout"] = 1
    start = time.monotonic()
    with pytest.raises(BackupError, match="timed out after 1 s"), \
            tape.read(tar_name()) as raw:
        list(scan_tar(raw))
    assert time.monotonic() - start < 10


# ------------------------------------------------------------- the real workflow


def created(tape: Path) -> list[str]:
    """The archives htar was asked to create, in order."""
    return [c[2] for c in htar_calls(tape) if c[1] == "-cvhf"]


def tar_files(path: Path) -> list[str]:
    with tarfile.open(path) as tar:
        return sorted(m.name for m in tar.getmembers()
                      if m.isfile() and "HTAR_CF_CHK_" not in m.name)


@pytest.fixture(params=["htar", "tar"])
def archives(request, site) -> Path:
    """Back up with either backend; the directory the night's archives land in."""
    if request.param == "htar":
        return request.getfixturevalue("tape") / HPSS_DIR
    site.config["backup"] = {"backend": "tar", "archive": str(site.root / "tarchive"),
                             "hpss_status": ""}
    return site.root / "tarchive" / HPSS_DIR


def snapshot(path: Path) -> tuple[int, bytes]:
    return path.stat().st_mtime_ns, path.read_bytes()


def test_state_lost_the_adopted_archive_records_only_its_members(site, archives):
    """The night went to tape, an exposure arrived late, and the state was lost: the
    adopted archive's record lists what it really holds, and the late exposure goes
    into a supplementary archive."""
    site.exposure("00004000")
    site.config["now"] = AFTER_BACKUP
    site.run()
    first = snapshot(archives / tar_name())
    site.exposure("00004001")  # published after the night's archive was written
    shutil.rmtree(site.state)
    site.run()
    record = site.record(NIGHT, None, "backedup")
    assert record["outcome"] == "adopted"
    assert [(a["name"], a["exposures"]) for a in record["archives"]] == [
        (tar_name(), ["00004000"])]
    assert record["exposures"] == ["00004000"] and record["not_on_tape"] == ["00004001"]
    assert site.marker(NIGHT, "00004001", "installed").exists()
    jobs = planned_jobs(site.run("-n").stdout)
    assert jobs.get("back_up_late_exposures") == 1 and "back_up_night" not in jobs
    site.run()
    record = site.record(NIGHT, None, "backedup")
    assert [(a["name"], a["exposures"]) for a in record["archives"]] == [
        (tar_name(), ["00004000"]), (tar_name(index=1), ["00004001"])]
    assert record["exposures"] == ["00004000", "00004001"] and "not_on_tape" not in record
    assert site.record(NIGHT, None, "backedup.1")["exposures"] == ["00004001"]
    assert {n.split("/")[1] for n in tar_files(archives / tar_name(index=1))} == {"00004001"}
    assert snapshot(archives / tar_name()) == first  # never overwritten
    assert "back_up_late_exposures" not in planned_jobs(site.run("-n").stdout)


def test_unreadable_record_is_rebuilt_from_the_archive_members(site, tape):
    site.exposure("00004100")
    site.config["now"] = AFTER_BACKUP
    site.run()
    site.exposure("00004101")
    site.marker(NIGHT, None, "backedup").write_text('{"outcome": "backed up", "arch')
    before = len(htar_calls(tape))  # the write's own check of its member list included
    site.run()
    record = site.record(NIGHT, None, "backedup")
    assert record["outcome"] == "adopted"
    assert record["archives"][0]["exposures"] == ["00004100"]
    assert record["exposures"] == ["00004100"] and record["not_on_tape"] == ["00004101"]
    listing = [c for c in htar_calls(tape)[before:] if c[1] == "-tvf"]
    assert listing == [["htar", "-tvf", f"{HPSS_DIR}/{tar_name()}"]]  # read, not assumed
    site.run()
    record = site.record(NIGHT, None, "backedup")
    assert [a["exposures"] for a in record["archives"]] == [["00004100"], ["00004101"]]
    assert created(tape) == [f"{HPSS_DIR}/{tar_name()}", f"{HPSS_DIR}/{tar_name(index=1)}"]


def test_unreadable_record_with_nothing_new_is_rebuilt_too(site, tape):
    site.exposure("00004110")
    site.config["now"] = AFTER_BACKUP
    site.run()
    marker = site.marker(NIGHT, None, "backedup")
    marker.write_text("garbage")  # newer than every input: Snakemake alone would keep it
    site.run()
    assert site.record(NIGHT, None, "backedup")["archives"][0]["exposures"] == ["00004110"]
    assert Path(f"{marker}.bad").read_text() == "garbage"  # kept for a person
    assert len([c for c in htar_calls(tape) if c[1] == "-cvhf"]) == 1  # adopted, not rewritten


def test_a_tar_left_without_its_idx_is_written_again_under_its_own_name(site, tape):
    site.exposure("00004200")
    site.config["now"] = AFTER_BACKUP
    site.env.update(HTAR_FAIL_EXIT="70", HTAR_FAIL_NOIDX="1", HPSS_FAIL_ONCE="1")
    site.run(check=False)
    assert site.failure(NIGHT, None, "backedup")["attempts"] == 1
    assert (tape / HPSS_DIR / tar_name()).is_file()
    assert not (tape / HPSS_DIR / f"{tar_name()}.idx").exists()
    site.run()
    record = site.record(NIGHT, None, "backedup")
    assert record["outcome"] == "backed up" and "status 70" in record["previous_failure"]
    assert [(a["name"], a["exposures"]) for a in record["archives"]] == [
        (tar_name(), ["00004200"])]
    assert (tape / HPSS_DIR / f"{tar_name()}.idx").is_file()
    assert not (tape / HPSS_DIR / tar_name(index=1)).exists()
    assert created(tape) == [f"{HPSS_DIR}/{tar_name()}"] * 2
    assert {n.split("/")[1] for n in tar_files(tape / HPSS_DIR / tar_name())} == {"00004200"}
    # Complete now: a late exposure goes beside it, never into it.
    complete = snapshot(tape / HPSS_DIR / tar_name())
    index = snapshot(tape / HPSS_DIR / f"{tar_name()}.idx")
    site.exposure("00004201")
    site.run()
    assert snapshot(tape / HPSS_DIR / tar_name()) == complete
    assert snapshot(tape / HPSS_DIR / f"{tar_name()}.idx") == index
    assert created(tape)[-1] == f"{HPSS_DIR}/{tar_name(index=1)}"
    assert site.record(NIGHT, None, "backedup")["exposures"] == ["00004200", "00004201"]


def test_a_supplementary_archive_on_tape_without_a_record_is_adopted(site, tape):
    """Its job wrote it and died before recording it: the next run adopts it from its
    members instead of skipping its name for ever."""
    site.exposure("00004400")
    site.config["now"] = AFTER_BACKUP
    site.run()
    main = site.marker(NIGHT, None, "backedup")
    before = main.read_text()
    site.exposure("00004401")
    site.run()
    assert created(tape)[-1] == f"{HPSS_DIR}/{tar_name(index=1)}"
    supplement = snapshot(tape / HPSS_DIR / tar_name(index=1))
    main.write_text(before)  # the record as it was before the supplementary archive
    site.marker(NIGHT, None, "backedup.1").unlink()
    site.run()
    record = site.record(NIGHT, None, "backedup")
    assert [(a["name"], a["exposures"], a.get("adopted", False))
            for a in record["archives"]] == [(tar_name(), ["00004400"], False),
                                             (tar_name(index=1), ["00004401"], True)]
    assert site.record(NIGHT, None, "backedup.1")["outcome"] == "adopted"
    assert len(created(tape)) == 2  # nothing written again
    assert not (tape / HPSS_DIR / tar_name(index=2)).exists()
    assert snapshot(tape / HPSS_DIR / tar_name(index=1)) == supplement


def test_a_night_whose_links_left_the_mountain_is_caught_up_and_backed_up(site, tape):
    """The mountain purged NIGHT (its links and their directory) and one link of
    20261126 after installation: both nights are still caught up and backed up, whole."""
    site.exposure("00004300")
    site.exposure("00004301")
    site.exposure("00004310", night="20261126")
    site.exposure("00004311", night="20261126")
    site.config["now"] = "2026-11-27T10:00:00Z"  # nothing due yet for either night
    site.run()
    for night, expid in [(NIGHT, "00004300"), (NIGHT, "00004301"), ("20261126", "00004311")]:
        assert site.marker(night, expid, "installed").exists()
    shutil.rmtree(site.source / NIGHT)
    (site.source / "20261126" / "00004311").unlink()
    site.config["now"] = AFTER_BACKUP
    result = site.run()
    for night, expids in [(NIGHT, ["00004300", "00004301"]),
                          ("20261126", ["00004310", "00004311"])]:
        assert site.marker(night, None, "caughtup").exists()
        record = site.record(night, None, "backedup")
        assert record["outcome"] == "backed up" and record["exposures"] == expids
        assert {n.split("/")[1] for n in tar_files(tape / HPSS_DIR / tar_name(night))} == \
            set(expids)
    assert (f"Night {NIGHT} of stream {STREAM} has no links at the mountain any more"
            in result.stderr)
    assert "Night 20261126 of stream" not in result.stderr  # still listed (00004310)
    jobs = planned_jobs(site.run("-n").stdout)
    assert not {"catch_up_night", "back_up_night", "back_up_late_exposures"} & set(jobs)


def test_an_adopted_archive_written_before_a_catch_up_changed_the_night_is_completed(
        site, archives):
    """The night went to tape; then the state was lost, a late file reached the mountain,
    and the catch-up swapped a new version of the exposure in. The archive adopted on
    the next backup holds the old version: the record says so, and the exposure goes
    into a supplementary archive, whole. The audit then finds the night as it is."""
    files = {"desi-00004500.fits.fz": b"d" * 3000, "sky-00004500.fits.fz": b"s" * 300}
    site.exposure("00004500", files=files)
    site.exposure("00004501")
    site.config["now"] = AFTER_BACKUP
    site.run()
    first = snapshot(archives / tar_name())
    shutil.rmtree(site.state)
    site.exposure("00004500", files={**files, "late-00004500.fits.fz": b"late" * 50})
    site.run()
    late = site.installed(NIGHT, "00004500") / "late-00004500.fits.fz"
    assert late.read_bytes() == b"late" * 50  # the catch-up swapped the new version in
    record = site.record(NIGHT, None, "backedup")
    assert record["outcome"] == "adopted"
    assert [(a["name"], a["exposures"], a.get("outdated")) for a in record["archives"]] == [
        (tar_name(), ["00004501"], ["00004500"])]
    assert record["not_on_tape"] == ["00004500"]
    site.run()
    record = site.record(NIGHT, None, "backedup")
    assert [(a["name"], a["exposures"]) for a in record["archives"]] == [
        (tar_name(), ["00004501"]), (tar_name(index=1), ["00004500"])]
    assert record["exposures"] == ["00004500", "00004501"] and "not_on_tape" not in record
    assert tar_files(archives / tar_name(index=1)) == [
        f"{NIGHT}/00004500/{name}" for name in sorted(
            ["checksum-00004500.sha256sum", *files, "late-00004500.fits.fz"])]
    assert snapshot(archives / tar_name()) == first  # never overwritten
    audit = subprocess.run([sys.executable, "-m", "scripts.audit", "--config",
                            str(site.write_config())], capture_output=True, text=True,
                           cwd=REPO, env=site.env, timeout=120)
    assert (audit.returncode, audit.stdout) == (0, ""), audit.stdout
