"""SHA-256 verification of one exposure directory against its ``sha256sum`` file.

The mountain writes ``checksum-EXPID.sha256sum`` (GNU ``sha256sum`` output) next to
the raw data.  After the transfer, every listed file must be present and match, and
every present file must be listed (as in the original daemon, a file "downloaded but
not listed" is an error).  The checksum file is untrusted input: a name that points
outside the exposure directory is reported, never opened.

Run ``python -m scripts.checksum DIRECTORY CHECKSUM_NAME [--threads N] [--json]``;
the exit status is 0 when the exposure verifies, 1 when it does not and 2 when it
cannot be examined at all.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import stat
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "BUFFER_SIZE",
    "ChecksumListing",
    "VerificationResult",
    "main",
    "parse_checksum_file",
    "sha256_file",
    "verify_exposure",
]

#: Read size for hashing.  Measured on a 500 MB file, a reused 1 MiB buffer was as
#: fast as or slightly faster than ``hashlib.file_digest`` (256 KiB) and 4 MiB.
BUFFER_SIZE = 1 << 20

_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")
_DIGEST_LENGTH = 64
# GNU coreutils (9.x) escapes exactly these in names when a line starts with "\".
_UNESCAPE = {"\\": "\\", "n": "\n", "r": "\r"}
# How many names reason() shows per category before summarising the rest.
_REASON_NAMES = 5


@dataclass(frozen=True)
class ChecksumListing:
    """The parsed content of a ``sha256sum`` file.

    Attributes
    ----------
    entries : dict of str to str
        Normalised relative name to lower-case hex digest.
    malformed : list of tuple of (int, str)
        1-based line number and text of every line that could not be used.
    unsafe : list of str
        Names (as written) that are empty, absolute or contain ``..``.
    """

    entries: dict[str, str] = field(default_factory=dict)
    malformed: list[tuple[int, str]] = field(default_factory=list)
    unsafe: list[str] = field(default_factory=list)


def _unescape(name: str) -> str | None:
    """Undo GNU's name escaping; ``None`` for an escape GNU never writes."""
    out: list[str] = []
    chars = iter(name)
    for char in chars:
        if char != "\\":
            out.append(char)
            continue
        replacement = _UNESCAPE.get(next(chars, ""))
        if replacement is None:
            return None
        out.append(replacement)
    return "".join(out)


def _normalise(name: str) -> str | None:
    """Return the canonical relative form of `name`, or ``None`` if it is unsafe."""
    # NUL cannot be in a POSIX name, and would make os.open raise ValueError later.
    if not name or name.startswith("/") or "\0" in name:
        return None
    parts = [part for part in name.split("/") if part not in ("", ".")]
    # Any "..", even one that would stay inside ("a/../b"), is refused: a checksum
    # file written by sha256sum in the exposure directory never needs one.
    if not parts or ".." in parts:
        return None
    return "/".join(parts)


def _split_line(line: str) -> tuple[str, str] | None:
    """Split one non-blank line into (lower-case digest, raw name)."""
    escaped = line.startswith("\\")
    if escaped:
        line = line[1:]
    digest = line[:_DIGEST_LENGTH]
    if len(digest) != _DIGEST_LENGTH or not _HEX_DIGITS.issuperset(digest):
        return None
    # Text mode is "HASH  NAME", binary mode "HASH *NAME"; one space alone is not
    # what sha256sum writes, and accepting it would make a leading space ambiguous.
    separator = line[_DIGEST_LENGTH : _DIGEST_LENGTH + 2]
    if separator not in ("  ", " *"):
        return None
    name = line[_DIGEST_LENGTH + 2 :]
    if escaped:
        unescaped = _unescape(name)
        if unescaped is None:
            return None
        name = unescaped
    return digest.lower(), name


def parse_checksum_file(text: str) -> ChecksumListing:
    r"""Parse ``sha256sum`` output without touching the file system.

    Parameters
    ----------
    text : str
        The whole checksum file.  Decode it with ``errors="surrogateescape"`` so
        that undecodable names still map to the same file names as ``os`` uses.

    Returns
    -------
    ChecksumListing
        Usable entries plus the malformed lines and unsafe names.  A name listed
        twice with the same digest is one entry; with a different digest the later
        line is malformed and the first digest is kept.

    Notes
    -----
    Lines are split on ``"\n"`` only, and one trailing ``"\r"`` is dropped, so a
    name may contain any other character, including leading or trailing spaces.
    """
    entries: dict[str, str] = {}
    malformed: list[tuple[int, str]] = []
    unsafe: list[str] = []
    for number, raw_line in enumerate(text.split("\n"), start=1):
        line = raw_line.removesuffix("\r")
        if not line.strip():
            continue
        split = _split_line(line)
        if split is None:
            malformed.append((number, line))
            continue
        digest, raw_name = split
        name = _normalise(raw_name)
        if name is None:
            unsafe.append(raw_name)
            continue
        previous = entries.setdefault(name, digest)
        if previous != digest:
            malformed.append((number, line))
    return ChecksumListing(entries=entries, malformed=malformed, unsafe=unsafe)


def _digest_stream(stream: io.RawIOBase, buffer_size: int) -> tuple[str, int]:
    """Hash `stream` to its end with one reused buffer; return (hex, bytes read)."""
    digest = hashlib.sha256()
    buffer = bytearray(buffer_size)
    view = memoryview(buffer)
    total = 0
    # readinto + a memoryview slice allocates nothing per chunk, and hashlib drops
    # the GIL for updates this large, so several of these run truly in parallel.
    while count := stream.readinto(buffer):
        digest.update(view[:count])
        total += count
    return digest.hexdigest(), total


def sha256_file(path: str | os.PathLike[str], buffer_size: int = BUFFER_SIZE) -> str:
    """Return the SHA-256 hex digest of a file, reading it in constant memory.

    Parameters
    ----------
    path : str or path-like
        The file to hash (symbolic links are followed; no containment check).
    buffer_size : int, optional
        Bytes read per call; the buffer is allocated once.

    Returns
    -------
    str
        64 lower-case hex digits.
    """
    if buffer_size < 1:
        raise ValueError(f"buffer_size must be positive, not {buffer_size}")
    with open(path, "rb", buffering=0) as stream:
        return _digest_stream(stream, buffer_size)[0]


@dataclass
class VerificationResult:
    """The outcome of :func:`verify_exposure`.

    Attributes
    ----------
    ok : bool
        True only if the checksum file was read, had no malformed or unsafe lines,
        every listed file matched and every present file was listed.
    checksum_file_missing : bool
        The checksum file is absent (or could not be read, see `checksum_error`).
    mismatched : list of str
        Listed files whose digest differs, that could not be read, are not regular
        files, or are links that resolve outside the directory.
    missing : list of str
        Listed files that are absent (including dangling links).
    unlisted : list of str
        Files present (recursively, ``/``-separated, relative) but not listed.
    malformed : list of tuple of (int, str)
        From :func:`parse_checksum_file`.
    unsafe : list of str
        From :func:`parse_checksum_file`.
    files : int
        Number of files hashed.
    bytes : int
        Number of bytes hashed.
    checksum_name : str
        The checksum file name, for messages.
    errors : dict of str to str
        Why a mismatched file could not be compared, when it could not.
    checksum_error : str or None
        Why an existing checksum file could not be read.
    """

    ok: bool
    checksum_file_missing: bool = False
    mismatched: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unlisted: list[str] = field(default_factory=list)
    malformed: list[tuple[int, str]] = field(default_factory=list)
    unsafe: list[str] = field(default_factory=list)
    files: int = 0
    bytes: int = 0
    checksum_name: str = ""
    errors: dict[str, str] = field(default_factory=dict)
    checksum_error: str | None = None

    def reason(self) -> str:
        """Summarise the result in one short line.

        Returns
        -------
        str
            For example ``"2 mismatched (a.fits, b.fits); 1 missing (c.fits)"``, or
            ``"ok: 3 files, 1024 bytes verified"``.
        """
        parts: list[str] = []
        if self.checksum_file_missing:
            what = _display(self.checksum_name or "checksum file")
            if self.checksum_error:
                parts.append(f"checksum file {what} unreadable: {self.checksum_error}")
            else:
                parts.append(f"checksum file {what} missing")
        if self.malformed:
            lines = ", ".join(
                str(number) for number, _ in self.malformed[:_REASON_NAMES]
            )
            more = len(self.malformed) - _REASON_NAMES
            lines += f", +{more} more" if more > 0 else ""
            parts.append(f"{len(self.malformed)} malformed (line {lines})")
        if self.unsafe:
            parts.append(_summarise("unsafe", self.unsafe, {}))
        if self.mismatched:
            parts.append(_summarise("mismatched", self.mismatched, self.errors))
        if self.missing:
            parts.append(_summarise("missing", self.missing, {}))
        if self.unlisted:
            parts.append(_summarise("unlisted", self.unlisted, {}))
        if not parts:
            return f"ok: {self.files} files, {self.bytes} bytes verified"
        return "; ".join(parts)

    def to_record(self) -> dict:
        """Return the result as a JSON-serialisable dict.

        Returns
        -------
        dict
            Keys ``ok``, ``mismatched``, ``missing``, ``unlisted``, ``malformed``
            (``[line, text]`` pairs), ``unsafe``, ``checksum_file_missing``,
            ``files`` and ``bytes``.
        """
        return {
            "ok": self.ok,
            "mismatched": list(self.mismatched),
            "missing": list(self.missing),
            "unlisted": list(self.unlisted),
            "malformed": [[number, text] for number, text in self.malformed],
            "unsafe": list(self.unsafe),
            "checksum_file_missing": self.checksum_file_missing,
            "files": self.files,
            "bytes": self.bytes,
        }


def _display(name: str) -> str:
    """Make `name` printable on one line (names may hold newlines or be empty)."""
    if not name:
        return "''"
    return name.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r")


def _summarise(label: str, names: Sequence[str], notes: dict[str, str]) -> str:
    """Format ``"N label (a, b: note, +K more)"`` with at most a few names."""
    shown = []
    for name in names[:_REASON_NAMES]:
        note = notes.get(name)
        shown.append(f"{_display(name)}: {note}" if note else _display(name))
    if len(names) > _REASON_NAMES:
        shown.append(f"+{len(names) - _REASON_NAMES} more")
    return f"{len(names)} {label} ({', '.join(shown)})"


def _inside(root: str, path: str) -> bool:
    """Whether the resolved `path` is `root` or below it."""
    prefix = root if root.endswith(os.sep) else root + os.sep
    return path == root or path.startswith(prefix)


def _walk(root: str, relative: str = "") -> list[str]:
    """List every non-directory entry below `root`, without following links.

    A link to a directory is reported as an entry rather than descended, so the
    walk can neither loop nor wander outside `root`.
    """
    names: list[str] = []
    try:
        entries = os.scandir(os.path.join(root, relative) if relative else root)
    except OSError:
        if not relative:
            raise
        # An unreadable subdirectory is reported as one unlisted entry (unless a
        # listed name lies below it, whose open then fails as mismatched).
        return [relative]
    with entries:
        for entry in entries:
            name = f"{relative}/{entry.name}" if relative else entry.name
            if entry.is_dir(follow_symlinks=False):
                names.extend(_walk(root, name))
            else:
                names.append(name)
    return names


def _open_below(root_fd: int, relative: str) -> int:
    """Open ``root/relative`` for reading, refusing any symbolic link on the way.

    `relative` comes from ``os.path.realpath``, so it contained no link when it
    was resolved; opening each component with ``O_NOFOLLOW`` relative to the
    previous one means a link swapped in afterwards fails instead of escaping.
    """
    parts = relative.split("/")
    directory_flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.dup(root_fd)
    try:
        for part in parts[:-1]:
            child = os.open(part, directory_flags, dir_fd=fd)
            os.close(fd)
            fd = child
        # O_NONBLOCK keeps a FIFO swapped in for the file from hanging the open.
        file_flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        return os.open(parts[-1], file_flags, dir_fd=fd)
    finally:
        os.close(fd)


def _hash_below(root_fd: int, relative: str) -> tuple[str, int]:
    """Hash ``root/relative`` (see :func:`_open_below`); return (hex, bytes)."""
    fd = _open_below(root_fd, relative)
    with io.FileIO(fd, "rb", closefd=True) as stream:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(f"{relative} is not a regular file")
        return _digest_stream(stream, BUFFER_SIZE)


def _error_text(error: OSError) -> str:
    """Short description of an OS error, without the file name repeated."""
    return error.strerror or str(error)


def verify_exposure(
    directory: str | os.PathLike[str], checksum_name: str, threads: int = 2
) -> VerificationResult:
    """Verify every file of one exposure directory against its checksum file.

    Parameters
    ----------
    directory : str or path-like
        The exposure directory (it may itself be reached through a link).
    checksum_name : str
        Name of the ``sha256sum`` file inside `directory`.
    threads : int, optional
        Files hashed concurrently, largest first.

    Returns
    -------
    VerificationResult
        Per-category file lists; problems with individual files never raise.

    Raises
    ------
    FileNotFoundError, NotADirectoryError
        If `directory` is not an existing directory.
    ValueError
        If `checksum_name` is unsafe or `threads` is below 1.

    Notes
    -----
    Listed names are resolved; one that resolves outside `directory` (through a
    link) is reported as mismatched without being opened.
    """
    root, checksum_relative = _checked_arguments(directory, checksum_name, threads)
    # The bytes are read below `directory` as given: a directory pinned by descriptor
    # (``/proc/self/fd/N``, scripts/own_dirs.py) is read itself, whatever its path
    # string leads to now.
    root_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        present = set(_walk(root))
        present.discard(checksum_relative)
        text, checksum_error = _read_checksum(root, root_fd, checksum_relative)
        if text is None:
            return VerificationResult(
                ok=False,
                checksum_file_missing=True,
                unlisted=sorted(present),
                checksum_name=checksum_name,
                checksum_error=checksum_error,
            )
        listing = parse_checksum_file(text)
        return _verify_listing(root, root_fd, listing, present, checksum_name, threads)
    finally:
        os.close(root_fd)


def _checked_arguments(
    directory: str | os.PathLike[str], checksum_name: str, threads: int
) -> tuple[str, str]:
    """The resolved exposure directory and the checksum file's normalised name;
    raises as `verify_exposure` documents when the arguments cannot be used."""
    if threads < 1:
        raise ValueError(f"threads must be at least 1, not {threads}")
    checksum_relative = _normalise(checksum_name)
    if checksum_relative is None:
        raise ValueError(f"unsafe checksum file name {checksum_name!r}")
    root = os.path.realpath(directory)
    if not os.path.isdir(root):
        if os.path.lexists(root):
            raise NotADirectoryError(f"{directory} is not a directory")
        raise FileNotFoundError(f"{directory} does not exist")
    return root, checksum_relative


def _read_checksum(
    root: str, root_fd: int, relative: str
) -> tuple[str | None, str | None]:
    """Read the checksum file safely; return (text, None) or (None, why not)."""
    resolved = os.path.realpath(os.path.join(root, relative))
    if not _inside(root, resolved):
        return None, "resolves outside the directory"
    if not os.path.lexists(resolved):
        return None, None
    try:
        fd = _open_below(root_fd, os.path.relpath(resolved, root))
        with io.FileIO(fd, "rb", closefd=True) as stream:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return None, "not a regular file"
            data = stream.readall()
    except OSError as error:
        return None, _error_text(error)
    # surrogateescape keeps undecodable names identical to the str names os uses.
    return data.decode("utf-8", errors="surrogateescape"), None


@dataclass
class _Tally:
    """What one verification found so far."""

    mismatched: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)
    files: int = 0
    bytes: int = 0

    def bad(self, name: str, why: str | None = None) -> None:
        self.mismatched.append(name)
        if why:
            self.errors[name] = why


def _hash_jobs(root: str, listing: ChecksumListing, tally: _Tally) -> list[tuple[int, str, str]]:
    """The listed files to hash as (size, listed name, resolved relative path), largest
    first; names that resolve outside, are absent or are not regular files go to `tally`."""
    jobs = []
    for name in listing.entries:
        resolved = os.path.realpath(os.path.join(root, name))
        if not _inside(root, resolved):
            tally.bad(name, "resolves outside the directory")
            continue
        try:
            info = os.stat(resolved)
        except (FileNotFoundError, NotADirectoryError):
            tally.missing.append(name)
            continue
        except OSError as error:
            tally.bad(name, _error_text(error))
            continue
        if not stat.S_ISREG(info.st_mode):
            tally.bad(name, "not a regular file")
            continue
        jobs.append((info.st_size, name, os.path.relpath(resolved, root)))
    # Largest first: the long hashes start early instead of finishing alone.
    jobs.sort(key=lambda job: (-job[0], job[1]))
    return jobs


def _hash_all(root_fd: int, jobs: list[tuple[int, str, str]], listing: ChecksumListing,
              threads: int, tally: _Tally) -> None:
    """Hash `jobs` with `threads` threads and compare each digest with the listing.
    One thread or one file is hashed here: a pool per exposure costs more than a
    small file's hash (the audit walks thousands of exposures)."""
    if threads == 1 or len(jobs) <= 1:
        for _, name, rel in jobs:
            try:
                digest, count = _hash_below(root_fd, rel)
            except OSError as error:
                tally.bad(name, _error_text(error))
                continue
            _count(tally, listing, name, digest, count)
        return
    with ThreadPoolExecutor(max_workers=threads) as pool:
        futures = [(name, pool.submit(_hash_below, root_fd, rel)) for _, name, rel in jobs]
        for name, future in futures:
            try:
                digest, count = future.result()
            except OSError as error:
                tally.bad(name, _error_text(error))
                continue
            _count(tally, listing, name, digest, count)


def _count(tally: _Tally, listing: ChecksumListing, name: str, digest: str, count: int) -> None:
    tally.files += 1
    tally.bytes += count
    if digest != listing.entries[name]:
        tally.bad(name)


def _unlisted(listing: ChecksumListing, present: set[str]) -> list[str]:
    """Present files no listed name covers. A name below a listed path, e.g. a link
    "sub" to a directory holding the listed "sub/x.fits", is covered by that listing."""
    covered = set(listing.entries)
    for name in listing.entries:
        parts = name.split("/")
        covered.update("/".join(parts[:i]) for i in range(1, len(parts)))
    return sorted(present - covered)


def _verify_listing(
    root: str,
    root_fd: int,
    listing: ChecksumListing,
    present: set[str],
    checksum_name: str,
    threads: int,
) -> VerificationResult:
    """Compare `listing` with the directory; see :func:`verify_exposure`."""
    tally = _Tally()
    _hash_all(root_fd, _hash_jobs(root, listing, tally), listing, threads, tally)
    mismatched, missing, errors = tally.mismatched, tally.missing, tally.errors
    files, hashed_bytes = tally.files, tally.bytes
    unlisted = _unlisted(listing, present)

    ok = not (mismatched or missing or unlisted or listing.malformed or listing.unsafe)
    return VerificationResult(
        ok=ok,
        mismatched=sorted(mismatched),
        missing=sorted(missing),
        unlisted=unlisted,
        malformed=list(listing.malformed),
        unsafe=list(listing.unsafe),
        files=files,
        bytes=hashed_bytes,
        checksum_name=checksum_name,
        errors=errors,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point.

    Parameters
    ----------
    argv : sequence of str, optional
        Arguments without the program name; ``sys.argv[1:]`` by default.

    Returns
    -------
    int
        0 verified, 1 not verified, 2 the directory could not be examined.
    """
    parser = argparse.ArgumentParser(
        prog="python -m scripts.checksum",
        description="Verify an exposure directory against its sha256sum file.",
    )
    parser.add_argument("directory", type=Path, help="exposure directory")
    parser.add_argument("checksum_name", help="checksum file name inside DIRECTORY")
    parser.add_argument("--threads", type=int, default=2, help="parallel hashes (2)")
    parser.add_argument("--json", action="store_true", help="print a JSON record")
    args = parser.parse_args(argv)
    # Names may be undecodable bytes; never let printing them crash the check.
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(errors="backslashreplace")
    try:
        result = verify_exposure(args.directory, args.checksum_name, args.threads)
    except (OSError, ValueError) as error:
        print(f"checksum: {error}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result.to_record(), sort_keys=True))
    else:
        print(f"{args.directory}: {result.reason()}")
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
