"""The archive audit (``python -m scripts.audit``) on archives the real workflow installed.

One archive is installed once per module by the real workflow; each test audits a
faithful copy of it (modes, setgid bits and times preserved), tampered in one way,
and expects exactly the line that names the tampering.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import stat
import subprocess
import sys
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from conftest import NIGHT, REPO, STREAM, Site, require_tool

from scripts.audit import printable

OTHER = "20261126"  # a second night
AFTER_BACKUP = "2026-11-28T21:00:00Z"  # NIGHT is due for backup
EXPOSURES = {NIGHT: ["00001001", "00001002", "00001003"], OTHER: ["00000901"]}


def checksum(expid: str) -> str:
    return f"checksum-{expid}.sha256sum"


def audit(config: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run the audit command as an operator would; output kept as raw bytes."""
    return subprocess.run([sys.executable, "-m", "scripts.audit", "--config", str(config),
                           *args], capture_output=True, cwd=REPO, timeout=120, env=env)


def lines(result: subprocess.CompletedProcess) -> list[str]:
    return result.stdout.decode("ascii").splitlines()


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Site:
    """Four exposures over two nights, installed by the real workflow."""
    require_tool("rsync")
    site = Site(tmp_path_factory.mktemp("installed"))
    for night, expids in EXPOSURES.items():
        for expid in expids:
            site.exposure(expid, night=night)
    site.run()
    for night, expids in EXPOSURES.items():
        for expid in expids:
            assert site.marker(night, expid, "installed").exists()
    return site


@pytest.fixture
def archive(installed: Site, tmp_path: Path) -> Site:
    """A copy of the installed archive and state, with a configuration pointing at it."""
    copy = Site(tmp_path)
    shutil.copytree(installed.destination, copy.destination, symlinks=True)
    shutil.copytree(installed.state, copy.state, symlinks=True)
    copy.write_config()
    return copy


def snapshot(*tops: Path) -> dict[bytes, tuple]:
    """(mode, mtime_ns, sha256 or link target) of every path below `tops`."""
    seen = {}
    for top in tops:
        for directory, dirs, files in os.walk(os.fsencode(top)):
            for name in [b"", *dirs, *files]:
                path = os.path.join(directory, name) if name else directory
                info = os.lstat(path)
                if stat.S_ISREG(info.st_mode):
                    with open(path, "rb") as f:
                        content = hashlib.sha256(f.read()).hexdigest()
                elif stat.S_ISLNK(info.st_mode):
                    content = os.readlink(path)
                else:
                    content = None
                seen[path] = (info.st_mode, info.st_mtime_ns, content)
    return seen


# --------------------------------------------------------------------------- clean archive


def test_a_freshly_installed_archive_passes(archive):
    result = audit(archive.config_file)
    assert result.returncode == 0, result.stdout
    assert result.stdout == b""
    announced, *summary = result.stderr.decode().splitlines()
    assert announced == f"desitransfer: configuration {archive.config_file} (argument)"
    assert len(summary) == 1
    assert summary[0].startswith("audit: 4 exposures audited, ")
    assert summary[0].endswith(", 0 problems")


def test_the_workflow_s_own_workspace_at_the_top_is_skipped(archive):
    (archive.destination / ".desitransfer-tmp").mkdir()
    (archive.destination / ".desitransfer-tmp" / "anything").write_text("x")
    assert audit(archive.config_file).returncode == 0


# --------------------------------------------------------------------------- tampering


def flip_a_byte(site: Site) -> None:
    path = site.installed(NIGHT, "00001001") / "desi-00001001.fits.fz"
    with open(path, "r+b") as f:
        first = f.read(1)
        f.seek(0)
        f.write(bytes([first[0] ^ 0x01]))


def make_group_writable(site: Site) -> None:
    os.chmod(site.installed(NIGHT, "00001002") / "guide-00001002.fits.fz", 0o640)


def leave_rsync_temporary(site: Site) -> None:
    stray = site.destination / NIGHT / ".sky-00001003.fits.fz.Xq81Ab"
    stray.write_bytes(b"partial")


def leave_installing_directory(site: Site) -> None:
    (site.destination / NIGHT / ".00001004.installing").mkdir()


def add_stray_file(site: Site) -> None:
    stray = site.installed(NIGHT, "00001001") / "notes.txt"
    stray.write_text("left here by hand\n")
    os.chmod(stray, 0o644)


def add_link(site: Site) -> None:
    (site.installed(OTHER, "00000901") / "sky-00000901.fits.fz").unlink()
    os.symlink("/etc/hostname", site.installed(OTHER, "00000901") / "sky-00000901.fits.fz")


def remove_exposure(site: Site) -> None:
    shutil.rmtree(site.installed(NIGHT, "00001002"))


def make_night_writable_by_group(site: Site) -> None:
    os.chmod(site.destination / OTHER, 0o2770)


def remove_checksum_file(site: Site) -> None:
    (site.installed(NIGHT, "00001003") / checksum("00001003")).unlink()


def open_exposure_to_others(site: Site) -> None:
    os.chmod(site.installed(OTHER, "00000901"), 0o2755)


TAMPERING: dict[str, tuple[Callable[[Site], None], str]] = {
    "flipped byte": (flip_a_byte, f"{NIGHT}/00001001: desi-00001001.fits.fz: content differs"
                                  f" from {checksum('00001001')}"),
    "file mode": (make_group_writable, f"{NIGHT}/00001002: guide-00001002.fits.fz: mode"
                                       " 0o640, expected 0o440"),
    "rsync temporary": (leave_rsync_temporary,
                        f"{NIGHT}: unexpected file .sky-00001003.fits.fz.Xq81Ab"),
    "interrupted install": (leave_installing_directory,
                            f"{NIGHT}: unexpected directory .00001004.installing (an interrupted"
                            " install's copy: compare it with the exposure, then remove it)"),
    "stray file": (add_stray_file, f"{NIGHT}/00001001: notes.txt: present but not listed in"
                                   f" {checksum('00001001')}; mode 0o644, expected 0o440"),
    "link": (add_link, f"{OTHER}/00000901: sky-00000901.fits.fz: cannot be verified"
                       " (resolves outside the directory); symbolic link to /etc/hostname"),
    "removed exposure": (remove_exposure, f"{NIGHT}/00001002: has an .installed marker but"
                                          " its exposure directory is missing"),
    "checksum file removed": (remove_checksum_file,
                              f"{NIGHT}/00001003: checksum file {checksum('00001003')}"
                              " missing: 3 files cannot be verified"),
    "exposure mode": (open_exposure_to_others,
                      f"{OTHER}/00000901: directory mode 0o2755, expected 0o2750 or 0o2550"),
    "night mode": (make_night_writable_by_group,
                   f"{OTHER}: night directory mode 0o2770, expected 0o2750 or 0o2550"),
}


@pytest.mark.parametrize("case", TAMPERING)
def test_each_tampering_gives_exactly_its_line(archive, case):
    tamper, expected = TAMPERING[case]
    tamper(archive)
    result = audit(archive.config_file)
    assert lines(result) == [f"{STREAM} {expected}"]
    assert result.returncode == 1
    assert result.stderr.decode().rstrip().endswith(", 1 problems")


def test_a_night_directory_gone_with_its_markers_left_is_one_line(archive):
    shutil.rmtree(archive.destination / OTHER)
    result = audit(archive.config_file)
    assert lines(result) == [f"{STREAM} {OTHER}: night directory {archive.destination / OTHER}"
                             " is missing, but 1 exposures have .installed markers"]
    assert result.returncode == 1


def test_an_exposure_without_a_marker_is_audited_but_not_a_problem(archive):
    archive.marker(NIGHT, "00001003", "installed").unlink()
    result = audit(archive.config_file)
    assert result.returncode == 0
    assert b"4 exposures audited" in result.stderr
    flip_a_byte(archive)
    archive.marker(NIGHT, "00001001", "installed").unlink()
    assert lines(audit(archive.config_file)) == [
        f"{STREAM} {TAMPERING['flipped byte'][1]}"]


def test_night_restricts_the_audit_to_that_night(archive):
    add_stray_file(archive)  # in NIGHT
    result = audit(archive.config_file, "--night", OTHER)
    assert (result.returncode, result.stdout) == (0, b"")
    assert b"1 exposures audited" in result.stderr
    result = audit(archive.config_file, "--night", NIGHT)
    assert result.returncode == 1
    assert len(lines(result)) == 1
    assert b"3 exposures audited" in result.stderr


def test_names_that_are_not_utf8_or_hold_control_characters_are_escaped(archive):
    exposure = os.fsencode(archive.installed(NIGHT, "00001003"))
    for name in (b"bad\xff.fits", b"evil\x1b[2J\n\\.fits"):
        fd = os.open(os.path.join(exposure, name), os.O_WRONLY | os.O_CREAT, 0o440)
        os.close(fd)
    result = audit(archive.config_file)
    assert result.returncode == 1
    for raw in (b"\xff", b"\x1b", b"\n\\.fits"):
        assert raw not in result.stdout
    unlisted = f"present but not listed in {checksum('00001003')}"
    assert lines(result) == [
        f"{STREAM} {NIGHT}/00001003: bad\\xff.fits: {unlisted}",
        f"{STREAM} {NIGHT}/00001003: evil\\x1b[2J\\n\\\\.fits: {unlisted}",
    ]


def test_printable_escapes_what_a_terminal_would_act_on():
    assert printable("20261127/00001234: ok") == "20261127/00001234: ok"
    assert printable("a\\b") == "a\\\\b"
    assert printable(os.fsdecode(b"x\xffy")) == "x\\xffy"
    assert printable("\x1b[31m\r\t\x7f") == "\\x1b[31m\\r\\t\\x7f"
    assert printable("caf\u00e9\u202e\u2028") == "caf\u00e9\\u202e\\u2028"


# --------------------------------------------------------------------------- backups

ARCHIVE = f"desi_spectro_data_{NIGHT}.tar"


def back_up(site: Site) -> None:
    """Install two exposures of NIGHT and put the night on tape, with the real workflow."""
    site.config["now"] = AFTER_BACKUP
    for expid in ("00001101", "00001102"):
        site.exposure(expid)
    site.run()
    assert site.record(NIGHT, None, "backedup")["archives"][0]["name"] == ARCHIVE


def tar_backend(site: Site) -> Path:
    """Back up to the tar backend under the site; its archive directory."""
    site.config["backup"] = {"backend": "tar", "archive": str(site.root / "tape"),
                             "hpss_status": ""}
    return site.root / "tape" / "desi/spectro/data"


def test_a_night_on_tape_passes_then_an_exposure_missing_from_its_index_is_found(site):
    tape = tar_backend(site)
    back_up(site)
    assert stat.S_IMODE((site.destination / NIGHT).stat().st_mode) == 0o2550
    assert stat.S_IMODE(site.installed(NIGHT, "00001102").stat().st_mode) == 0o2550
    before = snapshot(site.destination, site.state)
    result = audit(site.write_config())
    assert (result.returncode, result.stdout) == (0, b""), result.stdout
    assert snapshot(site.destination, site.state) == before
    # Every byte is read twice: the data from the archive (checksum files are parsed,
    # not counted), every file from the tarball.
    files = [p for p in site.destination.rglob("*") if p.is_file()]
    data = sum(p.stat().st_size for p in files if not p.name.startswith("checksum-"))
    assert f"{data + sum(p.stat().st_size for p in files)} bytes read".encode() \
        in result.stderr
    index = tape / f"{ARCHIVE}.idx"
    index.write_text("".join(line for line in index.read_text().splitlines(keepends=True)
                             if "/00001102/" not in line))
    result = audit(site.config_file)
    prefix = f"{STREAM} {NIGHT}: backup archive {ARCHIVE}: {NIGHT}/00001102/"
    assert lines(result) == [
        f"{STREAM} {NIGHT}/00001102: the backup record says {ARCHIVE} holds it, but that"
        " archive does not",
        *[f"{prefix}{name}-00001102{suffix}: in the tarball but not in its .idx"
          for name, suffix in [("checksum", ".sha256sum"), ("desi", ".fits.fz"),
                               ("guide", ".fits.fz"), ("sky", ".fits.fz")]]]
    assert result.returncode == 1
    index.unlink()
    [missing, line] = lines(audit(site.config_file))
    assert missing == f"{STREAM} {NIGHT}: backup archive {ARCHIVE} has no {ARCHIVE}.idx in {tape}"
    assert line.startswith(f"{STREAM} {NIGHT}: backup archive {ARCHIVE} cannot be listed: ")
    assert line.endswith("is missing")


def flip_in_file(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0xFF]))


def test_the_tarball_itself_is_read_deleted_truncated_or_altered(site):
    """The records and the index are intact each time: only the tarball changed."""
    tape = tar_backend(site)
    back_up(site)
    tarball = tape / ARCHIVE
    original = tarball.read_bytes()
    assert audit(site.write_config()).returncode == 0
    tarball.unlink()
    result = audit(site.config_file)
    assert lines(result) == [f"{STREAM} {NIGHT}: backup archive {ARCHIVE} is missing from"
                             f" {tape}"]
    assert result.returncode == 1
    # Cut short in the middle of the last file: the members before it were whole.
    with tarfile.open(fileobj=io.BytesIO(original)) as tar:
        last = [m for m in tar.getmembers() if m.isfile()][-1]
    tarball.write_bytes(original[:last.offset_data + last.size // 2])
    [line] = lines(audit(site.config_file))
    assert line.startswith(f"{STREAM} {NIGHT}: backup archive {ARCHIVE} cannot be read:"
                           f" truncated in the data of {last.name} (")
    # Cut at a member boundary: tar sees a shorter archive; the index does not.
    tarball.write_bytes(original[:last.offset])
    result = audit(site.config_file)
    assert lines(result) == [f"{STREAM} {NIGHT}: backup archive {ARCHIVE}: {last.name}:"
                             " listed in its .idx but not in the tarball",
                             f"{STREAM} {NIGHT}/{last.name.split('/')[1]}:"
                             f" {last.name.split('/', 2)[2]}: on disk but not in {ARCHIVE}"]
    # One byte of a file's data flipped: the index's SHA-256 and the checksum file's.
    tarball.write_bytes(original)
    with tarfile.open(tarball) as tar:
        desi = tar.getmember(f"{NIGHT}/00001101/desi-00001101.fits.fz")
    flip_in_file(tarball, desi.offset_data + 100)
    result = audit(site.config_file)
    assert lines(result) == [
        f"{STREAM} {NIGHT}: backup archive {ARCHIVE}: {desi.name}: differs from its .idx"
        " (size or SHA-256)",
        f"{STREAM} {NIGHT}/00001101: desi-00001101.fits.fz: content in {ARCHIVE} differs"
        f" from {checksum('00001101')}"]


def add_late_file(site: Site, expid: str) -> None:
    """What a catch-up does to an installed exposure after its night went to tape
    (the lead's own catch-up swaps a whole new copy in; the audit sees the same)."""
    exposure = site.installed(NIGHT, expid)
    os.chmod(exposure, 0o2750)
    late = exposure / f"late-{expid}.fits.fz"
    late.write_bytes(b"late" * 100)
    os.chmod(late, 0o440)
    listing = exposure / checksum(expid)
    os.chmod(listing, 0o640)
    with open(listing, "a") as f:
        f.write(f"{hashlib.sha256(late.read_bytes()).hexdigest()}  {late.name}\n")
    os.chmod(listing, 0o440)
    os.chmod(exposure, 0o2550)


@pytest.mark.parametrize("backend", ["tar", "htar"])
def test_an_exposure_on_tape_lacking_a_file_on_disk_is_found(site, backend, request):
    if backend == "tar":
        tar_backend(site)
    else:
        request.getfixturevalue("tape")
    back_up(site)
    assert audit(site.write_config(), env=site.env).returncode == 0
    listing = site.installed(NIGHT, "00001102") / checksum("00001102")
    on_tape = listing.stat().st_size
    add_late_file(site, "00001102")
    result = audit(site.config_file, env=site.env)
    assert lines(result) == [
        f"{STREAM} {NIGHT}/00001102: {checksum('00001102')}: {on_tape} bytes in {ARCHIVE},"
        f" {listing.stat().st_size} on disk",
        f"{STREAM} {NIGHT}/00001102: late-00001102.fits.fz: on disk but not in {ARCHIVE}"]
    assert result.returncode == 1


def test_an_htar_archive_deleted_or_truncated_on_tape_is_found(site, tape):
    back_up(site)
    assert audit(site.write_config(), env=site.env).returncode == 0
    tarball = tape / "desi/spectro/data" / ARCHIVE
    original = tarball.read_bytes()
    tarball.write_bytes(original[:len(original) // 3])
    [line] = lines(audit(site.config_file, env=site.env))
    assert line.startswith(f"{STREAM} {NIGHT}: backup archive {ARCHIVE} is"
                           f" {len(original) // 3} bytes on tape, fewer than the ")
    assert line.endswith(" its members need: truncated")
    tarball.unlink()
    result = audit(site.config_file, env=site.env)
    assert lines(result) == [f"{STREAM} {NIGHT}: backup archive {ARCHIVE} is missing from"
                             " desi/spectro/data"]
    assert result.returncode == 1


def test_read_tape_reads_an_htar_archive_s_bytes_through_hsi(site, tape):
    """A flipped byte on tape keeps every size: only reading the bytes finds it, and
    only with --read-tape, which recalls the archive (``hsi get - :``)."""
    back_up(site)
    config = site.write_config()
    assert audit(config, "--read-tape", env=site.env).returncode == 0
    tarball = tape / "desi/spectro/data" / ARCHIVE
    with tarfile.open(tarball) as tar:
        sky = tar.getmember(f"{NIGHT}/00001102/sky-00001102.fits.fz")
    flip_in_file(tarball, sky.offset_data + 7)
    assert audit(config, env=site.env).returncode == 0  # what htar exposes is intact
    result = audit(config, "--read-tape", env=site.env)
    assert lines(result) == [f"{STREAM} {NIGHT}/00001102: sky-00001102.fits.fz: content in"
                             f" {ARCHIVE} differs from {checksum('00001102')}"]
    assert result.returncode == 1
    gets = [json.loads(line)["argv"] for line in (tape / ".calls.jsonl").read_text()
            .splitlines() if json.loads(line)["prog"] == "hsi" and "get" in line]
    assert gets[-1] == ["hsi", "-q", "get", "-", ":", f"desi/spectro/data/{ARCHIVE}"]
    tarball.write_bytes(tarball.read_bytes()[:sky.offset_data + 10])
    assert (f"{STREAM} {NIGHT}: backup archive {ARCHIVE} cannot be read: truncated in the"
            f" data of {sky.name} (10 of {sky.size} bytes)"
            in lines(audit(config, "--read-tape", env=site.env)))


def test_a_backup_record_naming_an_exposure_not_on_tape_is_found(site, tape):
    back_up(site)
    result = audit(site.write_config(), env=site.env)  # HPSS_ROOT: the emulator's tape
    assert (result.returncode, result.stdout) == (0, b""), result.stdout
    record = site.record(NIGHT, None, "backedup")
    record["archives"][0]["exposures"].append("00001199")
    site.marker(NIGHT, None, "backedup").write_text(json.dumps(record))
    result = audit(site.config_file, env=site.env)
    assert lines(result) == [f"{STREAM} {NIGHT}/00001199: the backup record says {ARCHIVE}"
                             " holds it, but that archive does not"]
    assert result.returncode == 1


# --------------------------------------------------------------------------- read-only


def test_the_audit_changes_nothing_in_the_archive_or_the_state(archive):
    for tamper, _ in TAMPERING.values():
        tamper(archive)
    with open(os.path.join(os.fsencode(archive.installed(OTHER, "00000901")), b"bad\xff"),
              "wb") as f:
        f.write(b"x")
    os.chmod(archive.destination / OTHER, 0o2550)  # as a night gone to tape would be
    before = snapshot(archive.destination, archive.state)
    result = audit(archive.config_file)
    assert result.returncode == 1
    # Every tampering is found, less the night's 0o2770, now 0o2550 (a valid mode).
    assert len(lines(result)) >= len(TAMPERING) - 1
    assert snapshot(archive.destination, archive.state) == before


# --------------------------------------------------------------------------- bad input


def test_a_bad_configuration_is_one_line_and_exit_2(tmp_path):
    bad = tmp_path / "config.yaml"
    bad.write_text("state: [unclosed\n")
    result = audit(bad)
    assert result.returncode == 2
    assert result.stdout == b""
    # The file read, then the one line of what is wrong with it.
    assert result.stderr.decode().splitlines() == [
        f"desitransfer: configuration {bad} (argument)",
        f"audit: {bad}: line 2 is not valid YAML; fix it"]
    bad.write_bytes(b"state: /data/caf\xe9\n")  # not UTF-8: one line, no traceback
    result = audit(bad)
    assert (result.returncode, result.stderr.decode().splitlines()[1:]) == (
        2, [f"audit: {bad}: byte 17 is not UTF-8 text; save the file as UTF-8"])
    bad.write_text(yaml.safe_dump({"state": "s", "remote": {"host": "local"}}))
    result = audit(bad)
    assert result.returncode == 2
    assert len(result.stderr.decode().splitlines()) == 2
    assert "streams" in result.stderr.decode().splitlines()[1]


@pytest.mark.parametrize(("args", "message"), [
    (["--night", "2026-11-27"], "audit: --night 2026-11-27: expected YYYYMMDD"),
    (["--stream", "NOPE"], f"audit: --stream NOPE: not configured (streams: {STREAM})"),
    (["--threads", "0"], "audit: --threads 0: expected at least 1"),
])
def test_bad_arguments_are_one_line_and_exit_2(archive, args, message):
    result = audit(archive.config_file, *args)
    assert (result.returncode, result.stdout) == (2, b"")
    assert result.stderr.decode().splitlines()[-1] == message
    assert len(result.stderr.decode().splitlines()) <= 2  # the file read, then why not
