"""Tests of the HPSS emulator (tests/hpss_emulator/hsi and htar) itself."""
import json
import os
import re
import signal
import subprocess
import sys
import tarfile
import zlib
from pathlib import Path

import pytest

EMULATOR = Path(__file__).resolve().parent / "hpss_emulator"
HSI = str(EMULATOR / "hsi")
HTAR = str(EMULATOR / "htar")
NIGHT = "20261128"
HPSS_DIR = "/desi/spectro/data"
ARCHIVE = f"{HPSS_DIR}/desi_spectro_data_{NIGHT}.tar"
LS_LINE = re.compile(
    r"^[-dl][-rwxsStT]{9}\s+\d+\s+\S+\s+\S+\s+\d+\s+[A-Z][a-z]{2}\s+\d{1,2}\s+(\d\d:\d\d|\d{4})\s+\S+$"
)
INJECTION_VARS = ("HPSS_", "HSI_", "HTAR_")


def clean_env(root, **extra):
    """The current environment without emulator variables, plus *extra*.

    The scripts are executed directly (``#!/usr/bin/env python3``); the
    directory of the interpreter running pytest goes first on PATH so that
    ``env`` finds it quickly (instead of e.g. a slow pyenv shim).
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(INJECTION_VARS)}
    env["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), env.get("PATH", "")])
    if root is not None:
        env["HPSS_ROOT"] = str(root)
    env.update({k: str(v) for k, v in extra.items()})
    return env


def run(cmd, root, cwd=None, timeout=30, **extra):
    """Run an emulator command with a clean environment plus *extra* variables."""
    return subprocess.run(cmd, check=False, cwd=cwd, env=clean_env(root, **extra),
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def tape(tmp_path):
    return tmp_path / "tape"


@pytest.fixture
def src(tmp_path):
    """A night of raw data, including a symlink to a file outside the tree."""
    top = tmp_path / "src"
    exposure = top / NIGHT / "00012345"
    exposure.mkdir(parents=True)
    (exposure / "desi-00012345.fits.fz").write_bytes(bytes(range(256)) * 64)
    (exposure / "checksum-00012345.sha256sum").write_text("abc  desi-00012345.fits.fz\n")
    outside = tmp_path / "elsewhere.json"
    outside.write_text('{"linked": true}\n')
    (top / NIGHT / "linked.json").symlink_to(outside)
    return top


def htar_create(tape, src, archive=ARCHIVE, **extra):
    return run([HTAR, "-cvhf", archive, "-H", "crc:verify=all", NIGHT], tape, cwd=src, **extra)


def hsi_ls(tape, tmp_path, directory=HPSS_DIR, **extra):
    out = tmp_path / "ls.txt"
    proc = run([HSI, "-O", str(out), "ls", "-l", directory], tape, **extra)
    return proc, out.read_text().splitlines()


def source_files(src):
    return {p.relative_to(src).as_posix(): p.read_bytes()
            for p in (src / NIGHT).rglob("*") if p.is_file()}


def local(tape, hpss_path):
    return tape / hpss_path.lstrip("/")


# --------------------------------------------------------------------- hsi --

def test_hpss_root_required(tmp_path):
    for prog in (HSI, HTAR):
        proc = run([prog, "ls", "-l", "/"], None)
        assert proc.returncode == 2
        assert len(proc.stderr.strip().splitlines()) == 1


def test_listing_after_htar(tape, src, tmp_path):
    assert htar_create(tape, src).returncode == 0
    proc, lines = hsi_ls(tape, tmp_path)
    assert proc.returncode == 0
    assert proc.stdout == ""
    assert "[connecting to" in proc.stderr  # banner noise, as real hsi
    assert lines[0] == f"{HPSS_DIR}:"
    for line in lines[1:]:
        assert LS_LINE.match(line), line
    names = [line.split()[-1] for line in lines[1:]]
    assert names == [f"desi_spectro_data_{NIGHT}.tar", f"desi_spectro_data_{NIGHT}.tar.idx"]
    size = local(tape, ARCHIVE).stat().st_size
    assert lines[1].split()[4] == str(size)
    assert lines[1].startswith("-")

    # Every invocation is logged with its argv and cwd.
    calls = [json.loads(line) for line in (tape / ".calls.jsonl").read_text().splitlines()]
    assert calls[0]["argv"] == ["htar", "-cvhf", ARCHIVE, "-H", "crc:verify=all", NIGHT]
    assert calls[0]["cwd"] == str(src)
    assert calls[1]["argv"] == ["hsi", "-O", str(tmp_path / "ls.txt"), "ls", "-l", HPSS_DIR]


def test_listing_variants(tape, tmp_path):
    (tape / "desi" / "spectro" / "data").mkdir(parents=True)
    (tape / "desi" / "spectro" / "file.txt").write_text("x")
    # -q: no banner; leading '/' or not is the same HPSS path.
    out = tmp_path / "q.txt"
    proc = run([HSI, "-q", "-O", str(out), "ls", "-l", "desi/spectro"], tape)
    assert proc.returncode == 0 and proc.stderr == ""
    lines = out.read_text().splitlines()
    assert lines[0] == "/desi/spectro:"
    assert lines[1].startswith("d") and lines[1].split()[-1] == "data"
    assert lines[2].startswith("-") and lines[2].split()[-1] == "file.txt"
    # Without -O the listing goes to stderr; dot files (emulator state) are hidden.
    proc = run([HSI, "ls", "-l", "/"], tape)
    assert proc.returncode == 0 and proc.stdout == ""
    listing = proc.stderr.splitlines()
    assert "/:" in listing
    assert [ln.split()[-1] for ln in listing[listing.index("/:") + 1:]] == ["desi"]


def test_ls_missing_dir(tape, tmp_path):
    tape.mkdir()
    proc, lines = hsi_ls(tape, tmp_path, "/desi/nothere")
    assert proc.returncode != 0
    assert proc.returncode == 72
    assert any(line.startswith("**") and "/desi/nothere" in line for line in lines)


# -------------------------------------------------------------------- htar --

def test_htar_round_trip(tape, src, tmp_path):
    proc = htar_create(tape, src)
    assert proc.returncode == 0, proc.stderr
    stdout = proc.stdout.splitlines()
    assert stdout[-1] == "HTAR: HTAR SUCCESSFUL"
    added = [line.split()[-1] for line in stdout if line.startswith("HTAR: a ")]
    expected = set(source_files(src))
    assert expected <= set(added)
    assert f"{NIGHT}/" in added and f"{NIGHT}/00012345/" in added
    assert proc.stderr == ""

    # A real tar file; the symlink was dereferenced (h).
    tar_path = local(tape, ARCHIVE)
    with tarfile.open(tar_path) as tar:
        link = tar.getmember(f"{NIGHT}/linked.json")
        assert link.isreg()
        assert tar.extractfile(link).read() == b'{"linked": true}\n'
        data = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isreg()}

    # Index: one line per member with a correct CRC32.
    idx = {}
    for line in Path(str(tar_path) + ".idx").read_text().splitlines():
        if not line.startswith("#"):
            crc, size, kind, name = line.split(" ", 3)
            idx[name] = (crc, int(size), kind)
    assert set(idx) == set(data) | {f"{NIGHT}", f"{NIGHT}/00012345"}
    for name, payload in data.items():
        assert idx[name] == (f"{zlib.crc32(payload):08x}", len(payload), "f")

    # -tvf lists members; name is the last field.
    proc = run([HTAR, "-tvf", ARCHIVE], tape, cwd=tmp_path)
    assert proc.returncode == 0
    listed = [line.split()[-1] for line in proc.stdout.splitlines()[:-1]]
    assert expected <= set(listed)

    # -xvf restores identical bytes (and not HTAR's consistency file).
    restore = tmp_path / "restore"
    restore.mkdir()
    proc = run([HTAR, "-xvf", ARCHIVE.lstrip("/"), "-H", "verify=crc"], tape, cwd=restore)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == "HTAR: HTAR SUCCESSFUL"
    assert source_files(restore) == source_files(src)
    assert not (restore / f"{NIGHT}/linked.json").is_symlink()
    assert sorted(p.name for p in restore.iterdir()) == [NIGHT]

    # Selected members only; an unknown member is an error.
    member = f"{NIGHT}/00012345/desi-00012345.fits.fz"
    partial = tmp_path / "partial"
    partial.mkdir()
    proc = run([HTAR, "-xvf", ARCHIVE, member, f"{NIGHT}/nothere"], tape, cwd=partial)
    assert proc.returncode != 0 and f"No match for file/member: {NIGHT}/nothere" in proc.stderr
    proc = run([HTAR, "-xvf", ARCHIVE, member], tape, cwd=partial)
    assert proc.returncode == 0
    assert (partial / member).read_bytes() == (src / member).read_bytes()
    assert not (partial / NIGHT / "linked.json").exists()


def test_htar_missing_path(tape, src):
    proc = run([HTAR, "-cvhf", ARCHIVE, "-H", "crc:verify=all", "20990101"], tape, cwd=src)
    assert proc.returncode == 1
    assert "ERROR" in proc.stderr and "No such file or directory" in proc.stderr
    assert "HTAR SUCCESSFUL" not in proc.stdout
    assert not local(tape, ARCHIVE).exists()


# ------------------------------------------------------- failure injection --

def test_htar_fail_exit(tape, src):
    proc = htar_create(tape, src, HTAR_FAIL_EXIT=70)
    assert proc.returncode == 70
    assert proc.stdout.splitlines()[-1] == "HTAR: HTAR SUCCESSFUL"
    assert local(tape, ARCHIVE + ".idx").exists()
    proc = htar_create(tape, src, HTAR_FAIL_EXIT=70, HTAR_FAIL_NOIDX=1)
    assert proc.returncode == 70
    assert local(tape, ARCHIVE).exists()
    assert not local(tape, ARCHIVE + ".idx").exists()


def test_htar_skip_leaves_members_out_and_exits_70(tape, src, tmp_path):
    """A member htar cannot read is left out: "HTAR SUCCESSFUL", then exit 70."""
    member = f"{NIGHT}/00012345/desi-00012345.fits.fz"
    proc = htar_create(tape, src, HTAR_SKIP="*/desi-*")
    assert proc.returncode == 70
    assert proc.stdout.splitlines()[-1] == "HTAR: HTAR SUCCESSFUL"
    assert f"[{member}]" in proc.stderr and "skipped" in proc.stderr
    assert f"HTAR: a   {member}" not in proc.stdout
    listed = run([HTAR, "-tvf", ARCHIVE], tape, cwd=tmp_path)
    assert listed.returncode == 0
    names = [line.split()[-1] for line in listed.stdout.splitlines()]
    assert member not in names and f"{NIGHT}/00012345/checksum-00012345.sha256sum" in names
    with tarfile.open(local(tape, ARCHIVE)) as tar:
        assert member not in tar.getnames()
    # An htar that hides it: the same archive, exit 0.
    proc = htar_create(tape, src, HTAR_SKIP="*/desi-*", HTAR_SKIP_EXIT=0)
    assert proc.returncode == 0 and "skipped" in proc.stderr


def test_htar_extracts_files_of_read_only_directories(tape, tmp_path):
    """An archived directory of mode 0o2550 (a night on tape) is extracted with its
    files, its mode set last; extraction writes nothing but below the cwd."""
    top = tmp_path / "night"
    exposure = top / NIGHT / "00012345"
    exposure.mkdir(parents=True)
    (exposure / "a.fits").write_bytes(b"a" * 1000)
    os.chmod(exposure / "a.fits", 0o440)
    os.chmod(exposure, 0o2550)
    try:
        assert htar_create(tape, top).returncode == 0
        restore = tmp_path / "restore"
        restore.mkdir()
        proc = run([HTAR, "-xvf", ARCHIVE, f"{NIGHT}/00012345"], tape, cwd=restore)
        assert proc.returncode == 0, proc.stderr
        assert (restore / NIGHT / "00012345" / "a.fits").read_bytes() == b"a" * 1000
        assert os.stat(restore / NIGHT / "00012345").st_mode & 0o777 == 0o550
        assert sorted(p.name for p in restore.iterdir()) == [NIGHT]
        os.chmod(restore / NIGHT / "00012345", 0o700)
    finally:
        os.chmod(exposure, 0o750)


def test_htar_stderr_noise(tape, src):
    proc = htar_create(tape, src, HTAR_STDERR="WARNING: something odd happened")
    assert proc.returncode == 0
    assert "WARNING: something odd happened" in proc.stderr
    assert local(tape, ARCHIVE + ".idx").exists()


def test_htar_no_idx(tape, src, tmp_path):
    proc = htar_create(tape, src, HTAR_NO_IDX=1)
    assert proc.returncode == 0
    assert local(tape, ARCHIVE).exists()
    assert not local(tape, ARCHIVE + ".idx").exists()
    # Like real htar, listing needs the index.
    proc = run([HTAR, "-tvf", ARCHIVE], tape, cwd=tmp_path)
    assert proc.returncode != 0
    assert "HTAR FAILED" in proc.stdout and ".idx" in proc.stderr


def test_htar_corrupt(tape, src):
    proc = htar_create(tape, src, HTAR_CORRUPT=1)
    assert proc.returncode == 1
    assert "CRC" in proc.stderr
    assert "HTAR SUCCESSFUL" not in proc.stdout
    assert not local(tape, ARCHIVE + ".idx").exists()


def test_hsi_fail(tape, tmp_path):
    (tape / "desi").mkdir(parents=True)
    proc, lines = hsi_ls(tape, tmp_path, "/desi", HSI_FAIL=1)
    assert proc.returncode == 72
    assert lines and all(line.startswith("**") for line in lines)


def test_fail_once(tape, src, tmp_path):
    local(tape, HPSS_DIR).mkdir(parents=True)
    proc, _ = hsi_ls(tape, tmp_path, HSI_FAIL=1, HPSS_FAIL_ONCE=1)
    assert proc.returncode == 72
    assert (tape / ".failed-once-HSI_FAIL").exists()
    proc, lines = hsi_ls(tape, tmp_path, HSI_FAIL=1, HPSS_FAIL_ONCE=1)
    assert proc.returncode == 0 and lines == [f"{HPSS_DIR}:"]

    assert htar_create(tape, src, HTAR_CORRUPT=1, HPSS_FAIL_ONCE=1).returncode == 1
    assert not local(tape, ARCHIVE + ".idx").exists()
    assert htar_create(tape, src, HTAR_CORRUPT=1, HPSS_FAIL_ONCE=1).returncode == 0
    assert local(tape, ARCHIVE + ".idx").exists()


def test_hang_fail_once(tape, src):
    # First call hangs briefly and sets the flag; the retry must not hang at
    # all (it would exceed the timeout if HTAR_HANG=600 were honoured).
    assert htar_create(tape, src, HTAR_HANG=0.1, HPSS_FAIL_ONCE=1).returncode == 0
    assert (tape / ".failed-once-HTAR_HANG").exists()
    proc = htar_create(tape, src, HTAR_HANG=600, HPSS_FAIL_ONCE=1, timeout=20)
    assert proc.returncode == 0


def test_hsi_hang_killed_by_timeout(tape):
    # subprocess.run kills the child (SIGKILL) when the timeout expires.
    with pytest.raises(subprocess.TimeoutExpired):
        run([HSI, "-O", os.devnull, "ls", "/"], tape, timeout=0.3, HSI_HANG=600)


def test_htar_hang_killed_by_sigterm(tape, src):
    proc = subprocess.Popen([HTAR, "-cvhf", ARCHIVE, NIGHT], cwd=src,
                            env=clean_env(tape, HTAR_HANG=600),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        with pytest.raises(subprocess.TimeoutExpired):
            proc.wait(timeout=0.3)
        proc.terminate()
        assert proc.wait(timeout=10) == -signal.SIGTERM
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert not local(tape, ARCHIVE).exists()
