"""Tests for scripts/checksum.py, cross-checked against GNU sha256sum."""

import builtins
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tracemalloc
from pathlib import Path

import pytest

# Works whether or not scripts/__init__.py or tests/conftest.py exist.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scripts import checksum
from scripts.checksum import (
    ChecksumListing,
    VerificationResult,
    parse_checksum_file,
    sha256_file,
    verify_exposure,
)

ROOT = Path(__file__).resolve().parents[1]
CHECKSUM = "checksum-00001234.sha256sum"
H1 = "a" * 64
H2 = "0123456789abcdef" * 4
SHA256SUM = shutil.which("sha256sum")
needs_sha256sum = pytest.mark.skipif(SHA256SUM is None, reason="sha256sum not found")


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_files(directory: Path, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def run_sha256sum(directory: Path, names: list[str], *options: str) -> bytes:
    """Write CHECKSUM in `directory` with the real tool; return its content."""
    output = subprocess.run(
        [SHA256SUM, *options, "--", *names],
        cwd=directory,
        check=True,
        capture_output=True,
    ).stdout
    (directory / CHECKSUM).write_bytes(output)
    return output


def write_listing(directory: Path, lines: list[str]) -> None:
    (directory / CHECKSUM).write_text("".join(line + "\n" for line in lines))


@pytest.fixture
def opened(monkeypatch):
    """Record the absolute path of everything opened through os.open or open()."""
    if not os.path.isdir("/proc/self/fd"):
        pytest.skip("needs /proc to name files opened relative to a directory fd")
    paths: list[str] = []
    real_os_open, real_open = os.open, builtins.open

    def spy_os_open(path, flags, mode=0o777, *, dir_fd=None):
        base = os.readlink(f"/proc/self/fd/{dir_fd}") if dir_fd is not None else ""
        paths.append(os.path.join(base, os.fsdecode(path)))
        return real_os_open(path, flags, mode, dir_fd=dir_fd)

    def spy_open(file, *args, **kwargs):
        if isinstance(file, (str, bytes, os.PathLike)):
            paths.append(os.path.abspath(os.fsdecode(file)))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(os, "open", spy_os_open)
    monkeypatch.setattr(builtins, "open", spy_open)
    return paths


# --------------------------------------------------------------------------- parsing


def test_parse_text_and_binary_mode():
    listing = parse_checksum_file(f"{H1}  a.fits\n{H2} *b.fits.fz\n")
    assert listing == ChecksumListing({"a.fits": H1, "b.fits.fz": H2}, [], [])


def test_parse_names_with_spaces_kept_verbatim():
    listing = parse_checksum_file(f"{H1}  my file.fits\n{H2}   lead and trail \n")
    assert listing.entries == {"my file.fits": H1, " lead and trail ": H2}
    assert not listing.malformed


def test_parse_blank_lines_and_crlf():
    text = f"\n{H1}  a.fits\r\n   \n\r\n{H2} *b.fits\r\n\n"
    listing = parse_checksum_file(text)
    assert listing.entries == {"a.fits": H1, "b.fits": H2}
    assert listing.malformed == [] and listing.unsafe == []


def test_parse_only_one_trailing_cr_removed():
    listing = parse_checksum_file(f"{H1}  a.fits\r\r\n")
    assert listing.entries == {"a.fits\r": H1}


def test_parse_gnu_escaped_names():
    text = (
        f"\\{H1}  back\\\\slash\n\\{H2} *new\\nline\n\\{'b' * 64}  carriage\\rreturn\n"
    )
    listing = parse_checksum_file(text)
    assert listing.entries == {
        "back\\slash": H1,
        "new\nline": H2,
        "carriage\rreturn": "b" * 64,
    }


def test_parse_unescaped_backslash_is_literal():
    assert parse_checksum_file(f"{H1}  a\\nb\n").entries == {"a\\nb": H1}


def test_parse_uppercase_hash_stored_lowercase():
    listing = parse_checksum_file(f"{H2.upper()}  a.fits\n")
    assert listing.entries == {"a.fits": H2}


@pytest.mark.parametrize(
    "line",
    [
        f"{H1[:-1]}  short.fits",
        f"{H1}0  long.fits",
        f"{'g' * 64}  nothex.fits",
        f"{H1} one-space.fits",
        f"{H1}\ttab.fits",
        f"{H1}",
        f"{H1} ",
        f"\\{H1}  bad\\qescape",
        f"\\{H1}  trailing\\",
        "SHA256 (a.fits) = " + H1,
        f" {H1}  leading-space.fits",
        "# a comment",
    ],
)
def test_parse_malformed_line_recorded(line):
    listing = parse_checksum_file(f"{H2}  good.fits\n{line}\n")
    assert listing.entries == {"good.fits": H2}
    assert listing.malformed == [(2, line)]
    assert listing.unsafe == []


@pytest.mark.parametrize(
    "name",
    ["../x", "/etc/passwd", "a/../../b", "a/../b", "..", "sub/..", "", ".", "./"],
)
def test_parse_unsafe_names(name):
    listing = parse_checksum_file(f"{H1}  {name}\n{H2}  ok.fits\n")
    assert listing.entries == {"ok.fits": H2}
    assert listing.unsafe == [name]
    assert listing.malformed == []


def test_parse_unsafe_escaped_name():
    listing = parse_checksum_file(f"\\{H1}  ..\\n/../x\n\\{H1}  /etc\\\\x\n")
    assert listing.unsafe == ["..\n/../x", "/etc\\x"]
    assert listing.entries == {}


def test_parse_dot_slash_normalised_and_subdirectories_allowed():
    listing = parse_checksum_file(f"{H1}  ./a.fits\n{H2}  sub//./x.fits\n")
    assert listing.entries == {"a.fits": H1, "sub/x.fits": H2}


def test_parse_duplicates():
    same = parse_checksum_file(f"{H1}  a.fits\n{H1}  ./a.fits\n")
    assert same.entries == {"a.fits": H1} and same.malformed == []
    differ = parse_checksum_file(f"{H1}  a.fits\n{H2}  b.fits\n{H2} *./a.fits\n")
    assert differ.entries == {"a.fits": H1, "b.fits": H2}
    assert differ.malformed == [(3, f"{H2} *./a.fits")]


def test_parse_empty_text():
    assert parse_checksum_file("") == ChecksumListing({}, [], [])


def test_listing_is_frozen():
    listing = parse_checksum_file("")
    with pytest.raises(AttributeError):
        listing.entries = {}  # type: ignore[misc]


# --------------------------------------------------------------------------- hashing


def test_sha256_file_matches_hashlib_and_buffer_sizes(tmp_path):
    data = os.urandom(3 * 4096 + 17)
    path = tmp_path / "x.bin"
    path.write_bytes(data)
    for size in (1, 4096, 1 << 20):
        assert sha256_file(path, buffer_size=size) == digest(data)
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    assert sha256_file(str(empty)) == digest(b"")


@needs_sha256sum
def test_sha256_file_matches_sha256sum(tmp_path):
    path = tmp_path / "x.bin"
    path.write_bytes(os.urandom(100_000))
    tool = subprocess.run([SHA256SUM, path], capture_output=True, check=True)
    assert tool.stdout.split()[0].decode() == sha256_file(path)


def test_sha256_file_memory_does_not_grow_with_size(tmp_path):
    block = os.urandom(1 << 20)
    path = tmp_path / "big.bin"
    expected = hashlib.sha256()
    with open(path, "wb") as stream:
        for _ in range(64):
            stream.write(block)
            expected.update(block)
    del block
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        result = sha256_file(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert result == expected.hexdigest()
    # One ~1 MiB buffer is expected; 64 MiB would mean the file was read whole.
    assert peak - before < 4 << 20


# ---------------------------------------------------------------------- verification


@pytest.fixture
def exposure(tmp_path):
    """Make an exposure directory of assorted files, and a file outside it."""
    directory = tmp_path / "00001234"
    directory.mkdir()
    files = {
        "desi-00001234.fits.fz": os.urandom(50_000),
        "guide-00001234.fits.fz": os.urandom(20_000),
        "with space.json": b'{"a": 1}\n',
        "empty.fits": b"",
        "sub/coordinates-00001234.fits": os.urandom(3000),
    }
    write_files(directory, files)
    (tmp_path / "outside.fits").write_bytes(b"secret")
    return directory


@needs_sha256sum
def test_all_good_with_sha256sum_text_mode(exposure):
    names = sorted(
        str(p.relative_to(exposure)) for p in exposure.rglob("*") if p.is_file()
    )
    output = run_sha256sum(exposure, names)
    for line in output.decode().splitlines():
        hexdigest, name = line.split("  ", 1)
        assert sha256_file(exposure / name) == hexdigest
    result = verify_exposure(exposure, CHECKSUM)
    assert result.ok, result.reason()
    assert result.files == 5
    assert result.bytes == sum((exposure / n).stat().st_size for n in names)
    assert result.reason().startswith("ok")
    assert result.to_record() == {
        "ok": True,
        "mismatched": [],
        "missing": [],
        "unlisted": [],
        "malformed": [],
        "unsafe": [],
        "checksum_file_missing": False,
        "files": 5,
        "bytes": result.bytes,
    }


@needs_sha256sum
def test_all_good_with_sha256sum_binary_mode(exposure):
    names = [str(p.relative_to(exposure)) for p in exposure.rglob("*") if p.is_file()]
    output = run_sha256sum(exposure, [f"./{n}" for n in names], "-b")
    assert all(b" *./" in line for line in output.splitlines())
    assert b" *./with space.json" in output
    listing = parse_checksum_file(output.decode())
    assert set(listing.entries) == set(names)
    result = verify_exposure(exposure, CHECKSUM, threads=3)
    assert result.ok, result.reason()


@needs_sha256sum
def test_awkward_names_written_by_sha256sum(tmp_path):
    # Bytes that are not UTF-8 must still map to the same os file name.
    names = [b"new\nline.fits", b"back\\slash.fits", b"cr\rname", b"caf\xe9.fits"]
    for name in names:
        (tmp_path / os.fsdecode(name)).write_bytes(name * 10)
    output = subprocess.run(
        [SHA256SUM, "--", *names], cwd=tmp_path, check=True, capture_output=True
    ).stdout
    assert output.count(b"\n\\") >= 2  # the tool really used its escaped form
    (tmp_path / CHECKSUM).write_bytes(output)
    result = verify_exposure(tmp_path, CHECKSUM)
    assert result.ok, result.reason()
    assert result.files == 4
    json.dumps(result.to_record())
    assert "\n" not in result.reason()


@needs_sha256sum
def test_corrupted_byte_is_mismatched(exposure):
    run_sha256sum(exposure, ["desi-00001234.fits.fz", "guide-00001234.fits.fz"])
    (exposure / "with space.json").unlink()
    (exposure / "empty.fits").unlink()
    shutil.rmtree(exposure / "sub")
    path = exposure / "desi-00001234.fits.fz"
    data = bytearray(path.read_bytes())
    data[12345] ^= 0x01
    path.write_bytes(bytes(data))
    result = verify_exposure(exposure, CHECKSUM)
    assert not result.ok
    assert result.mismatched == ["desi-00001234.fits.fz"]
    assert result.missing == [] and result.unlisted == []
    assert result.files == 2
    assert result.reason() == "1 mismatched (desi-00001234.fits.fz)"


def test_listed_but_missing(exposure):
    files = {p.relative_to(exposure).as_posix(): p for p in exposure.rglob("*")}
    lines = [f"{sha256_file(p)}  {n}" for n, p in files.items() if p.is_file()]
    write_listing(exposure, [*lines, f"{H1}  desi-00001234.fits", f"{H2}  c.fits"])
    result = verify_exposure(exposure, CHECKSUM)
    assert not result.ok
    assert result.missing == ["c.fits", "desi-00001234.fits"]
    assert result.mismatched == [] and result.unlisted == []
    assert result.reason() == "2 missing (c.fits, desi-00001234.fits)"


def test_unlisted_extra_file(exposure):
    files = {p.relative_to(exposure).as_posix(): p for p in exposure.rglob("*")}
    write_listing(
        exposure, [f"{sha256_file(p)}  {n}" for n, p in files.items() if p.is_file()]
    )
    (exposure / "extra.fits").write_bytes(b"x")
    (exposure / "sub" / "deeper").mkdir()
    (exposure / "sub" / "deeper" / "y.fits").write_bytes(b"y")
    result = verify_exposure(exposure, CHECKSUM)
    assert not result.ok
    assert result.unlisted == ["extra.fits", "sub/deeper/y.fits"]
    assert result.mismatched == [] and result.missing == []
    assert result.files == 5
    assert "2 unlisted (extra.fits, sub/deeper/y.fits)" in result.reason()


def test_missing_checksum_file(exposure):
    result = verify_exposure(exposure, CHECKSUM)
    assert not result.ok
    assert result.checksum_file_missing
    assert result.unlisted == [
        "desi-00001234.fits.fz",
        "empty.fits",
        "guide-00001234.fits.fz",
        "sub/coordinates-00001234.fits",
        "with space.json",
    ]
    assert result.files == 0 and result.bytes == 0
    assert result.reason().startswith(f"checksum file {CHECKSUM} missing")
    assert result.to_record()["checksum_file_missing"] is True


def test_unsafe_entry_never_reads_outside(exposure, opened):
    outside = exposure.parent / "outside.fits"
    write_listing(
        exposure,
        [
            f"{sha256_file(exposure / 'empty.fits')}  empty.fits",
            f"{digest(b'secret')}  ../outside.fits",
            f"{digest(b'secret')}  {outside}",
            f"{digest(b'secret')}  sub/../../outside.fits",
        ],
    )
    for name in ["desi-00001234.fits.fz", "guide-00001234.fits.fz", "with space.json"]:
        (exposure / name).unlink()
    shutil.rmtree(exposure / "sub")
    opened.clear()
    result = verify_exposure(exposure, CHECKSUM)
    assert not result.ok
    assert result.unsafe == ["../outside.fits", str(outside), "sub/../../outside.fits"]
    assert result.mismatched == [] and result.missing == [] and result.unlisted == []
    assert result.files == 1
    assert "3 unsafe" in result.reason()
    assert str(outside) not in opened
    real = os.path.realpath(exposure)
    assert opened and all(p == real or p.startswith(real + os.sep) for p in opened)


def test_symlink_escaping_directory_is_mismatched_and_not_opened(exposure, opened):
    outside = exposure.parent / "outside.fits"
    (exposure / "link.fits").symlink_to(outside)
    (exposure / "sub" / "uplink.fits").symlink_to("../../outside.fits")
    (exposure / "dirlink").symlink_to(exposure.parent)
    files = {p.relative_to(exposure).as_posix(): p for p in exposure.rglob("*")}
    lines = [
        f"{sha256_file(p)}  {n}"
        for n, p in files.items()
        if p.is_file() and not p.is_symlink()
    ]
    lines += [
        f"{digest(b'secret')}  link.fits",
        f"{digest(b'secret')}  sub/uplink.fits",
        f"{digest(b'secret')}  dirlink/outside.fits",
    ]
    write_listing(exposure, lines)
    opened.clear()
    result = verify_exposure(exposure, CHECKSUM)
    assert not result.ok
    assert result.mismatched == ["dirlink/outside.fits", "link.fits", "sub/uplink.fits"]
    assert result.unlisted == [] and result.missing == []
    assert "resolves outside the directory" in result.reason()
    assert result.files == 5
    real = os.path.realpath(exposure)
    assert all(p == real or p.startswith(real + os.sep) for p in opened)


def test_symlink_inside_directory_is_hashed_through(exposure):
    (exposure / "alias.fits").symlink_to("sub/coordinates-00001234.fits")
    (exposure / "subalias").symlink_to("sub")
    (exposure / "dangling.fits").symlink_to("nowhere.fits")
    files = {p.relative_to(exposure).as_posix(): p for p in exposure.rglob("*")}
    lines = [f"{sha256_file(p)}  {n}" for n, p in files.items() if p.is_file()]
    target = exposure / "sub" / "coordinates-00001234.fits"
    lines += [
        f"{sha256_file(target)}  subalias/coordinates-00001234.fits",
        f"{H1}  dangling.fits",
    ]
    write_listing(exposure, lines)
    result = verify_exposure(exposure, CHECKSUM)
    assert result.mismatched == [] and result.unlisted == []
    assert result.missing == ["dangling.fits"]
    assert result.files == 7


def test_empty_file_and_subdirectory(tmp_path):
    write_files(tmp_path, {"empty.fits": b"", "a/b/c.fits": b"deep"})
    write_listing(
        tmp_path, [f"{digest(b'')}  empty.fits", f"{digest(b'deep')}  a/b/c.fits"]
    )
    result = verify_exposure(tmp_path, CHECKSUM)
    assert result.ok, result.reason()
    assert (result.files, result.bytes) == (2, 4)


def test_malformed_line_fails_even_if_all_files_match(tmp_path):
    write_files(tmp_path, {"a.fits": b"a"})
    write_listing(tmp_path, [f"{digest(b'a')}  a.fits", "garbage"])
    result = verify_exposure(tmp_path, CHECKSUM)
    assert not result.ok
    assert result.malformed == [(2, "garbage")]
    assert result.reason() == "1 malformed (line 2)"
    assert result.to_record()["malformed"] == [[2, "garbage"]]


def test_threads_give_identical_results(exposure):
    for index in range(20):
        (exposure / f"extra-{index:02d}.fits").write_bytes(os.urandom(1000 * index))
    files = {p.relative_to(exposure).as_posix(): p for p in exposure.rglob("*")}
    lines = [f"{sha256_file(p)}  {n}" for n, p in sorted(files.items()) if p.is_file()]
    lines[3] = H1 + lines[3][64:]
    lines[7] = H2 + lines[7][64:]
    lines.append(f"{H1}  absent.fits")
    del lines[10]
    write_listing(exposure, lines)
    one = verify_exposure(exposure, CHECKSUM, threads=1)
    four = verify_exposure(exposure, CHECKSUM, threads=4)
    assert one.to_record() == four.to_record()
    assert one.reason() == four.reason()
    assert len(one.mismatched) == 2 and one.missing == ["absent.fits"]
    assert len(one.unlisted) == 1


def test_largest_files_are_hashed_first(tmp_path, monkeypatch):
    sizes = {"small.fits": 10, "large.fits": 5000, "medium.fits": 300}
    write_files(tmp_path, {name: b"x" * size for name, size in sizes.items()})
    write_listing(tmp_path, [f"{digest(b'x' * s)}  {n}" for n, s in sizes.items()])
    order: list[str] = []
    real = checksum._hash_below

    def spy(root_fd, relative):
        order.append(relative)
        return real(root_fd, relative)

    monkeypatch.setattr(checksum, "_hash_below", spy)
    assert verify_exposure(tmp_path, CHECKSUM, threads=1).ok
    assert order == ["large.fits", "medium.fits", "small.fits"]


def test_unreadable_file_is_mismatched_not_raised():
    """A file the verifying user cannot read: reported, not raised. Root reads
    everything, so as root the verifier runs in a child process as user nobody."""
    import tempfile

    top = Path(tempfile.mkdtemp(prefix="desitransfer-unreadable-"))
    try:
        top.chmod(0o755)
        write_files(top, {"a.fits": b"a", "b.fits": b"b"})
        write_listing(top, [f"{digest(b'a')}  a.fits", f"{digest(b'b')}  b.fits"])
        for name in ("a.fits", CHECKSUM):
            (top / name).chmod(0o644)
        (top / "b.fits").chmod(0)
        code = ("import json, sys; sys.path.insert(0, sys.argv[3]);"
                "from scripts.checksum import verify_exposure;"
                "r = verify_exposure(sys.argv[1], sys.argv[2]);"
                "print(json.dumps([r.ok, r.mismatched, r.files, r.reason()]))")

        def drop_privileges():
            if os.geteuid() == 0:
                os.setgid(65534)
                os.setuid(65534)

        # The checksum module is stdlib-only; as nobody, use an interpreter outside
        # root's home (pyenv and the venv may live there), and a copy of the module
        # beside the exposure: the checkout may sit where other users cannot enter.
        code_dir = top.parent / f"{top.name}-code"
        (code_dir / "scripts").mkdir(parents=True)
        (code_dir / "scripts" / "__init__.py").write_text("")
        shutil.copy(Path(__file__).resolve().parents[1] / "scripts" / "checksum.py",
                    code_dir / "scripts" / "checksum.py")
        for path in (code_dir, code_dir / "scripts"):
            path.chmod(0o755)
        python = "/usr/bin/python3" if os.geteuid() == 0 else sys.executable
        out = subprocess.run([python, "-c", code, str(top), CHECKSUM, str(code_dir)],
                             capture_output=True, text=True, check=True,
                             preexec_fn=drop_privileges)
        ok, mismatched, files, reason = json.loads(out.stdout)
    finally:
        (top / "b.fits").chmod(0o644)
        shutil.rmtree(top)
        shutil.rmtree(top.parent / f"{top.name}-code", ignore_errors=True)
    assert not ok
    assert mismatched == ["b.fits"]
    assert files == 1
    assert reason == "1 mismatched (b.fits: Permission denied)"


def test_non_regular_listed_entries_are_mismatched(tmp_path):
    os.mkfifo(tmp_path / "pipe.fits")
    (tmp_path / "dir.fits").mkdir()
    write_listing(tmp_path, [f"{H1}  pipe.fits", f"{H1}  dir.fits"])
    result = verify_exposure(tmp_path, CHECKSUM)
    assert result.mismatched == ["dir.fits", "pipe.fits"]
    assert result.files == 0
    assert "not a regular file" in result.reason()


def test_checksum_file_escaping_by_symlink_is_not_read(tmp_path, opened):
    exposure = tmp_path / "exp"
    exposure.mkdir()
    (tmp_path / "real.sha256sum").write_text(f"{H1}  a.fits\n")
    (exposure / CHECKSUM).symlink_to("../real.sha256sum")
    opened.clear()
    result = verify_exposure(exposure, CHECKSUM)
    assert not result.ok and result.checksum_file_missing
    assert "outside" in result.reason()
    assert str(tmp_path / "real.sha256sum") not in opened


def test_open_below_refuses_links_swapped_in_after_resolution(tmp_path):
    # The verifier resolves names first; a link that appears afterwards (a race)
    # must make the open fail rather than be followed.
    (tmp_path / "outside.fits").write_bytes(b"secret")
    inner = tmp_path / "exp"
    (inner / "sub").mkdir(parents=True)
    (inner / "link.fits").symlink_to(tmp_path / "outside.fits")
    (inner / "dirlink").symlink_to(tmp_path)
    root_fd = os.open(inner, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for relative in ["link.fits", "dirlink/outside.fits"]:
            with pytest.raises(OSError):
                os.close(checksum._open_below(root_fd, relative))
    finally:
        os.close(root_fd)


def test_argument_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nonexistent"):
        verify_exposure(tmp_path / "nonexistent", CHECKSUM)
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(NotADirectoryError):
        verify_exposure(tmp_path / "file", CHECKSUM)
    with pytest.raises(ValueError):
        verify_exposure(tmp_path, "../x.sha256sum")
    with pytest.raises(ValueError):
        verify_exposure(tmp_path, CHECKSUM, threads=0)


def test_reason_truncates_long_lists():
    result = VerificationResult(ok=False, missing=[f"f{i}.fits" for i in range(12)])
    assert (
        result.reason()
        == "12 missing (f0.fits, f1.fits, f2.fits, f3.fits, f4.fits, +7 more)"
    )


# ----------------------------------------------------------------------------- CLI


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "scripts.checksum", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )


def test_cli_exit_codes_and_output(tmp_path):
    write_files(tmp_path, {"a.fits": b"a"})
    write_listing(tmp_path, [f"{digest(b'a')}  a.fits"])
    good = run_cli(str(tmp_path), CHECKSUM)
    assert good.returncode == 0, good.stderr
    assert good.stdout.count("\n") == 1 and "ok" in good.stdout

    (tmp_path / "a.fits").write_bytes(b"b")
    bad = run_cli(str(tmp_path), CHECKSUM, "--json", "--threads", "1")
    assert bad.returncode == 1
    record = json.loads(bad.stdout)
    assert record["ok"] is False and record["mismatched"] == ["a.fits"]

    missing = run_cli(str(tmp_path / "no-such-dir"), CHECKSUM)
    assert missing.returncode == 2
    output = missing.stdout + missing.stderr
    assert output.count("\n") == 1 and "no-such-dir" in output
