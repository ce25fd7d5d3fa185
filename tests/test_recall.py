"""Tape proven readable (``python -m scripts.audit --recall N``), the daily recall of
the night lane, and the check of each archive written against the night.

The archives are written as the backup writes them (`write_and_confirm`: htar through
the HPSS emulator, or the tar backend), from nights installed as the workflow installs
them (files ``0o440``, directories ``0o2550``); the end-to-end tests run the real
workflow.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import stat
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import yaml
from conftest import NIGHT, REPO, STREAM
from test_audit import flip_in_file

from scripts.audit import load_configuration
from scripts.backup import archive_name, write_and_confirm
from scripts.configuration import get_streams
from scripts.hpss import BackupError
from scripts.plan import Observation, StreamObservation, make_plan
from scripts.recall import ArchiveOnTape, draw_archives, draw_members
from scripts.state_layout import (
    recall_marker_path,
    recall_mismatches_path,
    recall_record_path,
)
from scripts.status.problems import recall_problems
from scripts.tape import Tape

EMULATOR = REPO / "tests" / "hpss_emulator"
HPSS = "desi/spectro/data"
NIGHTS = {"20261125": ["00000801", "00000802"], NIGHT: ["00001001", "00001002"]}
FILES = ("desi", "guide", "sky")


def checksum(expid: str) -> str:
    return f"checksum-{expid}.sha256sum"


def install_night(destination: Path, night: str, expids: list[str]) -> None:
    """A night as installed and locked for its backup (0o440 files, 0o2550 dirs)."""
    for expid in expids:
        exposure = destination / night / expid
        exposure.mkdir(parents=True)
        lines = []
        for name in FILES:
            data = os.urandom(2000 + 500 * FILES.index(name))
            (exposure / f"{name}-{expid}.fits.fz").write_bytes(data)
            lines.append(f"{hashlib.sha256(data).hexdigest()}  {name}-{expid}.fits.fz\n")
        (exposure / checksum(expid)).write_text("".join(lines))
        for path in exposure.iterdir():
            os.chmod(path, 0o440)
        os.chmod(exposure, 0o2550)
    os.chmod(destination / night, 0o2550)


class Tapes:
    """An installed archive of two nights on tape (htar or tar), with backup records."""

    def __init__(self, root: Path, backend: str):
        self.root = root
        self.backend = backend
        self.destination = root / "archive"
        self.state = root / "state"
        self.tape = root / "tape"
        self.env = {k: v for k, v in os.environ.items()
                    if not k.startswith(("HPSS_", "HSI_", "HTAR_"))}
        backup = ({"backend": "htar", "hpss_bin": str(EMULATOR), "hpss_status": "",
                   "timeout": 60} if backend == "htar"
                  else {"backend": "tar", "archive": str(self.tape), "hpss_status": ""})
        if backend == "htar":
            self.env["HPSS_ROOT"] = str(self.tape)
        self.raw = {
            "state": str(self.state), "now": "2026-11-28T21:00:00Z",
            "remote": {"host": "local"}, "backup": backup,
            "streams": {STREAM: {"source": str(root / "mountain"), "staging": str(root / "staging"),
                                 "destination": str(self.destination), "hpss": HPSS,
                                 "checksum_file": "checksum-{exposure}.sha256sum"}}}
        self.state.mkdir(exist_ok=True)  # the tools refuse a state that does not exist
        self.config_file = root / "config.yaml"
        self.config_file.write_text(yaml.safe_dump(self.raw))
        self.config = load_configuration(self.config_file)
        self.stream = get_streams(self.config)[STREAM]

    def back_up(self, night: str, monkeypatch) -> dict:
        """Write the night's archive as the backup does; record it."""
        for key, value in self.env.items():
            if key == "HPSS_ROOT":
                monkeypatch.setenv(key, value)
        tape = Tape(self.config, self.stream)
        archive = write_and_confirm(tape, self.stream, night, 0, [night], NIGHTS[night],
                                    tape.listing())
        record = self.state / STREAM / f"{night}.backedup"
        record.parent.mkdir(parents=True, exist_ok=True)
        record.write_text(json.dumps({"outcome": "backed up", "archives": [archive],
                                      "exposures": archive["exposures"]}))
        return archive

    def tarball(self, night: str) -> Path:
        return self.tape / HPSS / archive_name(self.stream, night, 0)

    def recall(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "scripts.audit", "--config",
                               str(self.config_file), *args], capture_output=True, text=True,
                              cwd=REPO, timeout=120, env=self.env)

    def calls(self, prog: str = "htar") -> list[list[str]]:
        path = self.tape / ".calls.jsonl"
        if not path.exists():
            return []
        return [json.loads(line)["argv"] for line in path.read_text().splitlines()
                if json.loads(line)["prog"] == prog]


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> dict[str, Path]:
    """Both backends' tapes, written once: each test gets a copy (`copy_of`)."""
    roots = {}
    with pytest.MonkeyPatch.context() as monkeypatch:
        for backend in ("htar", "tar"):
            tapes = Tapes(tmp_path_factory.mktemp(backend), backend)
            for night, expids in NIGHTS.items():
                install_night(tapes.destination, night, expids)
                tapes.back_up(night, monkeypatch)
            roots[backend] = tapes.root
    return roots


def copy_of(root: Path, to: Path, backend: str) -> Tapes:
    """A faithful copy (modes and times kept) of a tape and its archive and state."""
    subprocess.run(["cp", "-a", f"{root}/.", str(to)], check=True)
    return Tapes(to, backend)


@pytest.fixture(params=["htar", "tar"])
def tapes(request, pristine, tmp_path) -> Tapes:
    return copy_of(pristine[request.param], tmp_path, request.param)


@pytest.fixture
def htar_tapes(pristine, tmp_path) -> Tapes:
    return copy_of(pristine["htar"], tmp_path, "htar")


def snapshot(*tops: Path, leave_out: tuple[str, ...] = ()) -> dict[str, tuple]:
    """Name → (size, mode, mtime_ns) of everything below `tops`, but `leave_out`
    (names of the emulator's call log, the recall's own records)."""
    seen = {}
    for top in tops:
        for directory, dirs, files in os.walk(top):
            dirs[:] = [d for d in dirs if d not in leave_out]
            for name in [*dirs, *files]:
                if name in leave_out:
                    continue
                path = os.path.join(directory, name)
                info = os.lstat(path)
                seen[path] = (info.st_size, info.st_mode, info.st_mtime_ns)
    return seen


def flip_member_byte(tarball: Path, member: str, offset: int = 100) -> None:
    """One byte of `member`'s data flipped inside the tarball on tape."""
    with tarfile.open(tarball) as tar:
        where = tar.getmember(member).offset_data + offset
    os.chmod(tarball, 0o640)
    flip_in_file(tarball, where)


# --------------------------------------------------------------------------- recall


def test_a_clean_archive_passes_and_nothing_on_tape_or_disk_changes(tapes):
    leave = (".calls.jsonl", ".recall")
    before = snapshot(tapes.destination, tapes.tape, tapes.state, leave_out=leave)
    result = tapes.recall("--recall", "8", "--seed", "7")
    assert (result.returncode, result.stdout) == (0, ""), result.stderr
    assert "seed 7" in result.stderr
    record = json.loads(recall_record_path(tapes.state).read_text())
    assert (record["outcome"], record["problems"], record["seed"]) == ("ok", 0, 7)
    assert 1 <= record["members"] <= 8 and record["bytes"] > 0
    assert snapshot(tapes.destination, tapes.tape, tapes.state, leave_out=leave) == before
    scratch = tapes.state / ".recall" / "scratch"
    if tapes.backend == "htar":
        assert stat.S_IMODE(scratch.stat().st_mode) == 0o700
        assert list(scratch.iterdir()) == []  # the recalled copies are gone
    else:
        assert not scratch.exists()  # read from the tarball itself


def test_a_flipped_byte_in_a_member_on_tape_is_found_by_its_name(tapes):
    member = f"{NIGHT}/00001002/guide-00001002.fits.fz"
    flip_member_byte(tapes.tarball(NIGHT), member)
    leave = (".calls.jsonl", ".recall")
    before = snapshot(tapes.destination, tapes.tape, tapes.state, leave_out=leave)
    # Enough draws to take every member of both archives (18 data files).
    result = tapes.recall("--recall", "200", "--seed", "1")
    assert result.returncode == 1
    archive = archive_name(tapes.stream, NIGHT, 0)
    assert result.stdout.splitlines() == [
        f"{STREAM} {NIGHT}/00001002: guide-00001002.fits.fz: content recalled from {archive}"
        f" differs from {checksum('00001002')} in {archive}"]
    assert snapshot(tapes.destination, tapes.tape, tapes.state, leave_out=leave) == before
    record = json.loads(recall_record_path(tapes.state).read_text())
    assert (record["outcome"], record["problems"], record["members"]) == ("problems", 1, 12)
    # A problem that needs a person, until a recall finds the member good.
    [problem] = recall_problems(tapes.config)
    assert (problem.stream, problem.night, problem.expid, problem.label) == (
        STREAM, NIGHT, "00001002", "tape recall")
    assert member in problem.item
    again = tapes.recall("--recall", "1", "--seed", "2")  # checks the bad member first
    assert again.returncode == 1 and "guide-00001002.fits.fz" in again.stdout
    flip_member_byte(tapes.tarball(NIGHT), member)  # repaired
    assert tapes.recall("--recall", "1", "--seed", "2").returncode == 0
    assert recall_problems(tapes.config) == []
    assert json.loads(recall_mismatches_path(tapes.state).read_text()) == {"members": {}}


@pytest.mark.parametrize("threads", ["1", "2"])
def test_a_tape_archive_cut_short_is_a_line_per_member_and_the_others_pass(tapes, threads):
    """The last member's data cut short on tape: every member drawn from that archive
    is one line (on each hashing path: one member at a time, or side by side), the
    other night's archive still passes, and nothing on tape or disk changes."""
    tarball = tapes.tarball(NIGHT)
    with tarfile.open(tarball) as tar:
        last = max((m for m in tar.getmembers() if m.isreg()), key=lambda m: m.offset_data)
    os.chmod(tarball, 0o640)
    os.truncate(tarball, last.offset_data + 100)
    leave = (".calls.jsonl", ".recall")
    before = snapshot(tapes.destination, tapes.tape, tapes.state, leave_out=leave)
    result = tapes.recall("--recall", "200", "--seed", "1", "--threads", threads)
    assert result.returncode == 1, result.stderr
    archive = archive_name(tapes.stream, NIGHT, 0)
    lines = result.stdout.splitlines()
    assert len(lines) == 6  # the 6 data files of NIGHT's 2 exposures, none of 20261125
    assert all(line.startswith(f"{STREAM} {NIGHT}/") and
               f"cannot be recalled from {archive}: " in line for line in lines), lines
    if tapes.backend == "tar":
        assert all("cut short" in line or "unexpected end" in line for line in lines), lines
    record = json.loads(recall_record_path(tapes.state).read_text())
    # members: those retrieved and compared (20261125's 6); the 6 others are problems
    assert (record["members"], record["problems"]) == (6, 6)
    assert snapshot(tapes.destination, tapes.tape, tapes.state, leave_out=leave) == before


def test_one_htar_per_archive_with_all_its_members_and_the_seed_repeats_it(htar_tapes):
    tapes = htar_tapes
    first = tapes.recall("--recall", "6", "--seed", "42")
    assert first.returncode == 0, first.stderr
    extractions = [argv for argv in tapes.calls() if argv[1] == "-xf"]
    archives = [argv[2] for argv in extractions]
    assert archives == sorted(set(archives))  # one per archive, in archive order
    for argv in extractions:
        names = argv[3:]
        assert all(name.split("/")[0] in NIGHTS and not name.startswith("/") for name in names)
        # each member's exposure's checksum file comes with it
        assert {n.rsplit("/", 1)[0] for n in names} == {
            n.rsplit("/", 1)[0] for n in names if n.endswith(".sha256sum")}
    assert sum(1 for argv in extractions for n in argv[3:] if not n.endswith(".sha256sum")) \
        == json.loads(recall_record_path(tapes.state).read_text())["members"]
    assert tapes.recall("--recall", "6", "--seed", "42").returncode == 0
    assert [argv for argv in tapes.calls() if argv[1] == "-xf"][len(extractions):] \
        == extractions


def test_an_archive_htar_cannot_list_is_one_line(htar_tapes):
    tapes = htar_tapes
    Path(f"{tapes.tarball(NIGHT)}.idx").unlink()  # listing and extraction need it
    result = tapes.recall("--recall", "200", "--seed", "3")
    assert result.returncode == 1
    [line] = result.stdout.splitlines()
    assert line.startswith(f"{STREAM} {NIGHT}: backup archive"
                           f" {archive_name(tapes.stream, NIGHT, 0)} cannot be listed: ")


def test_draws_are_weighted_by_members_and_never_take_checksum_files():
    import random

    from scripts.hpss import Member

    small = ArchiveOnTape(STREAM, "20261125", "a.tar", ("00000001",), 1)
    large = ArchiveOnTape(STREAM, "20261126", "b.tar", ("00000002",), 99)
    empty = ArchiveOnTape(STREAM, "20261127", "c.tar", (), 500)
    drawn = draw_archives([small, large, empty], 1000, random.Random(0))
    assert empty not in drawn and drawn[large] > 900
    assert draw_archives([small, large], 10, random.Random(5)) == \
        draw_archives([small, large], 10, random.Random(5))
    members = [Member("20261125/00000001/x.fits", 10),
               Member("20261125/00000001/checksum-00000001.sha256sum", 10),
               Member("20261125/00000003/y.fits", 10)]  # an exposure not recorded there
    picks = draw_members(small, members, 5, lambda n, e: f"checksum-{e}.sha256sum",
                         random.Random(0))
    assert [p.member for p in picks] == ["20261125/00000001/x.fits"]


def test_the_scratch_directory_must_be_our_own(htar_tapes, tmp_path_factory):
    tapes = htar_tapes
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    (tapes.state / ".recall").mkdir(parents=True)
    (tapes.state / ".recall" / "scratch").symlink_to(elsewhere)
    result = tapes.recall("--recall", "2", "--seed", "1")
    assert result.returncode == 2
    assert "is not a directory of its own" in result.stderr
    assert list(elsewhere.iterdir()) == []


def test_a_recall_sweeps_only_the_scratch_of_killed_recalls(tmp_path):
    """Two recalls at once (the night lane's daily one, one by hand) share the scratch
    root: the second must not remove the first's members mid-extraction, only the
    directories left by a killed recall (its lock free, or none at all)."""
    import fcntl

    from scripts.recall import private_scratch

    root = tmp_path / "scratch"
    root.mkdir(mode=0o700)
    for name in ("recall-live", "recall-dead", "recall-old"):
        (root / name / NIGHT).mkdir(parents=True)
        (root / name / NIGHT / "member.fits").write_bytes(b"x")
        os.chmod(root / name / NIGHT, 0o2550)  # as htar restores it
    (root / "recall-dead.lock").touch()  # its recall was killed: nobody holds it
    live_lock = os.open(root / "recall-live.lock", os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(live_lock, fcntl.LOCK_EX)  # a recall running now, in another process
    try:
        with private_scratch(root) as top:
            assert stat.S_IMODE(top.stat().st_mode) == 0o700 and list(top.iterdir()) == []
            assert (root / "recall-live" / NIGHT / "member.fits").read_bytes() == b"x"
            assert not (root / "recall-dead").exists()
            assert not (root / "recall-dead.lock").exists()
            assert not (root / "recall-old").exists()  # no lock: from before locks
            mine = top
        assert not mine.exists() and not Path(f"{mine}.lock").exists()
        assert sorted(p.name for p in root.iterdir()) == ["recall-live", "recall-live.lock"]
    finally:
        os.close(live_lock)
    with private_scratch(root):  # the live one ended without cleaning up: swept now
        assert not (root / "recall-live").exists()


# --------------------------------------------------------------------------- write check


def test_a_member_list_that_differs_from_the_night_fails_the_backup(tmp_path, monkeypatch):
    """htar leaves a file out and says nothing (exit 0): the archive's own index
    differs from the night, so the backup fails."""
    tapes = Tapes(tmp_path, "htar")
    install_night(tapes.destination, NIGHT, NIGHTS[NIGHT])
    monkeypatch.setenv("HTAR_SKIP", "*/sky-00001001.fits.fz")
    monkeypatch.setenv("HTAR_SKIP_EXIT", "0")
    with pytest.raises(BackupError) as failure:
        tapes.back_up(NIGHT, monkeypatch)
    assert f"{NIGHT}/00001001/sky-00001001.fits.fz: not in the archive" in str(failure.value)


def test_htar_exit_70_with_members_skipped_fails_the_write(tmp_path, monkeypatch):
    tapes = Tapes(tmp_path, "htar")
    install_night(tapes.destination, NIGHT, NIGHTS[NIGHT])
    monkeypatch.setenv("HTAR_SKIP", "*/sky-00001001.fits.fz")
    with pytest.raises(BackupError) as failure:
        tapes.back_up(NIGHT, monkeypatch)
    assert "status 70 after 'HTAR SUCCESSFUL': members were skipped (HTAR: WARNING: cannot" \
        " open [20261127/00001001/sky-00001001.fits.fz]" in str(failure.value)


def test_htar_exit_70_makes_the_workflow_s_backup_fail_unrecorded(site, tape):
    """The real workflow: htar skips a file and exits 70: no backup record, a failure
    record saying why; the next run adopts the archive file by file and records the
    exposure it lacks a file of as not on tape (it goes into the next archive)."""
    site.config["now"] = "2026-11-28T21:00:00Z"
    for expid in ("00001101", "00001102"):
        site.exposure(expid)
    site.env["HTAR_SKIP"] = "*/sky-00001102.fits.fz"
    site.run(check=False)
    assert not site.marker(NIGHT, None, "backedup").exists()
    failure = site.failure(NIGHT, None, "backedup")
    assert "status 70 after 'HTAR SUCCESSFUL': members were skipped" in failure["reason"]
    del site.env["HTAR_SKIP"]
    site.run()
    record = site.record(NIGHT, None, "backedup")
    assert record["archives"][0]["exposures"] == ["00001101"]
    assert "00001102" in record.get("not_on_tape", [])


# --------------------------------------------------------------------------- daily recall


def observation(now: str, recalled: bool | None, hpss=None) -> Observation:
    return Observation(dt.datetime.fromisoformat(now), {STREAM: StreamObservation(None)},
                       hpss=hpss, recalled=recalled)


@pytest.mark.parametrize("per_day, recalled, lane, due", [
    (3, False, "nights", True),
    (3, False, None, True),
    (3, True, "nights", False),      # done today
    (3, False, "exposures", False),  # the night lane's
    (0, None, "nights", False),      # off by default
])
def test_the_daily_recall_is_planned_once_a_day_in_the_night_lane(per_day, recalled, lane,
                                                                     due):
    config = {"backup": {"backend": "htar", "recall_per_day": per_day},
              "exposures_per_run": 20, "catchup_hour": 14, "backup_hour": 20}
    plan = make_plan(config, observation("2026-11-28T21:00:00+00:00", recalled), lane)
    assert plan.recall == ("20261128" if due else None)
    assert plan.wants_hpss == due


def test_the_daily_recall_waits_while_hpss_is_down():
    config = {"backup": {"backend": "htar", "recall_per_day": 3},
              "exposures_per_run": 20, "catchup_hour": 14, "backup_hour": 20}
    plan = make_plan(config, observation("2026-11-28T21:00:00+00:00", False,
                                         hpss=(False, "HPSS status is 'down'")), "nights")
    assert (plan.recall, plan.recall_deferred) == (None, "HPSS status is 'down'")


def test_the_night_lane_recalls_once_a_day_when_configured(site, tape):
    site.config["now"] = "2026-11-28T21:00:00Z"
    site.config["backup"]["recall_per_day"] = 2
    for expid in ("00001101", "00001102"):
        site.exposure(expid)
    site.run()
    assert site.marker(NIGHT, None, "backedup").exists()
    day = recall_marker_path(site.state, "20261128")
    marker = json.loads(day.read_text())
    assert (marker["outcome"], marker["seed"], marker["members"]) == ("ok", 20261128, 2)
    assert (site.state / "logs" / "recall" / "20261128.recalled.log").exists()
    extractions = lambda: [json.loads(line)["argv"] for line in  # noqa: E731
                           (tape / ".calls.jsonl").read_text().splitlines()
                           if "-xf" in json.loads(line)["argv"]]
    assert len(extractions()) == 1  # one archive, its members in one htar
    site.run()  # the same day: no second recall
    assert len(extractions()) == 1
    site.config["now"] = "2026-11-29T03:00:00Z"
    site.run()
    assert len(extractions()) == 2
    assert recall_marker_path(site.state, "20261129").exists()
    page = (site.state / "status" / "index.html").read_text()
    assert "last tape recall: " in page and ", 2 members, OK" in page


def test_without_recall_per_day_the_night_lane_recalls_nothing(site, tape):
    site.config["now"] = "2026-11-28T21:00:00Z"
    site.exposure("00001101")
    site.run()
    assert site.marker(NIGHT, None, "backedup").exists()
    assert not (site.state / ".recall").exists()
    calls = (tape / ".calls.jsonl").read_text()
    assert '"-xf"' not in calls
