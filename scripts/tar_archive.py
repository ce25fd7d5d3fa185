"""The ``tar`` backup backend: a tarball and its index in a local or mounted directory.

For sites without HPSS. The index ``NAME.tar.idx`` holds one JSON line per member
(name, size, sha256); the tarball is re-read and checked against it before the backup
counts, as ``htar -H crc:verify=all`` does on tape.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from scripts.hpss import BackupError, Member

_CHUNK = 1 << 20


def _sha256(stream) -> str:
    digest = hashlib.sha256()
    while chunk := stream.read(_CHUNK):
        digest.update(chunk)
    return digest.hexdigest()


def list_archives(directory: Path) -> dict[str, int]:
    """Names (and sizes) of the files in the archive directory."""
    if not directory.is_dir():
        return {}
    return {e.name: e.stat().st_size for e in os.scandir(directory) if e.is_file()}


def write_archive(directory: Path, name: str, cwd: Path, members: list[str]) -> dict:
    """Write ``directory/name`` from `members` (paths relative to `cwd`), then verify it.

    Returns
    -------
    dict
        ``size``, and ``members``: the regular files archived, as stored (relative to
        `cwd`), in archive order.
    """
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / name
    partial = directory / f".{name}.partial"
    index = []
    with tarfile.open(partial, "w", dereference=True) as tar:
        for member in members:
            for path in sorted(_walk(cwd / member)):
                relative = str(path.relative_to(cwd))
                tar.add(path, arcname=relative, recursive=False)
                if path.is_file():
                    with open(path, "rb") as f:
                        index.append({"name": relative, "size": path.stat().st_size,
                                      "sha256": _sha256(f)})
    problems = verify_archive(partial, index)
    if problems:
        partial.unlink()
        raise BackupError(f"tar archive {final} failed verification: {problems[0]}")
    with open(directory / f".{name}.idx.partial", "w") as f:
        f.writelines(json.dumps(entry, sort_keys=True) + "\n" for entry in index)
    os.replace(partial, final)
    os.replace(directory / f".{name}.idx.partial", directory / f"{name}.idx")
    return {"size": final.stat().st_size, "members": [entry["name"] for entry in index]}


def _walk(top: Path):
    yield top
    if top.is_dir():
        for dirpath, dirnames, filenames in os.walk(top, followlinks=True):
            for n in dirnames + filenames:
                yield Path(dirpath, n)


def read_index(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def archive_members(directory: Path, name: str) -> list[Member]:
    """The regular files of archive `name`, as its index ``NAME.idx`` lists them.

    The index is written only after the tarball verified against it, so it is the
    archive's member list (directories are not in it), with each file's size and
    SHA-256.

    Raises
    ------
    BackupError
        The index is missing or unreadable.
    """
    path = directory / f"{name}.idx"
    try:
        return [Member(str(entry["name"]), int(entry["size"]), str(entry["sha256"]))
                for entry in read_index(path)]
    except FileNotFoundError:
        raise BackupError(f"cannot list {directory / name}: its index {path} is missing"
                          ) from None
    except (OSError, ValueError, TypeError, KeyError) as err:
        raise BackupError(f"cannot list {directory / name}: its index {path} is unreadable"
                          f" ({type(err).__name__}: {err})") from None


class _ForwardReader(io.RawIOBase):
    """A file object over a stream (a file, or a pipe from ``hsi get``) that `tarfile`
    can walk in its seekable mode while the data is read by the caller.

    tarfile's stream mode copies every block through its own buffer (a third of the
    hashing speed, measured); here tarfile reads only the headers, the caller reads
    each member's data straight into its buffer, and a seek is only ever forward
    (skipped by reading) or back over the one byte tarfile re-reads to check that a
    member's data is complete.
    """

    def __init__(self, raw: BinaryIO):
        self.raw = raw
        self.position = 0
        self.last = b""      # the last byte read, for tarfile's one-byte look-back
        self.pending = b""   # that byte, to be read again after a seek back over it

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.position - len(self.pending)

    def readinto(self, buffer) -> int:
        view = memoryview(buffer).cast("B")
        if not len(view):
            return 0
        if self.pending:
            view[0] = self.pending[0]
            self.pending = b""
            return 1
        count = self.raw.readinto(view) or 0
        if count:
            self.position += count
            self.last = bytes(view[count - 1:count])
        return count

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            return self.readall()
        out, filled = bytearray(size), 0
        with memoryview(out) as view:
            while filled < size:
                count = self.readinto(view[filled:])
                if not count:
                    break
                filled += count
        return bytes(out[:filled])

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        here = self.tell()
        target = here + offset if whence == io.SEEK_CUR else offset
        if whence not in (io.SEEK_SET, io.SEEK_CUR):
            raise io.UnsupportedOperation("seek from the end of a stream")
        if target == here - 1 and not self.pending and self.last:
            self.pending = self.last
        elif target > here:
            skip = bytearray(min(target - here, _CHUNK))
            while self.tell() < target:
                if not self.readinto(memoryview(skip)[:target - self.tell()]):
                    break  # short: tarfile's next read finds the end
        elif target != here:
            raise io.UnsupportedOperation(f"cannot seek back from {here} to {target}")
        return self.tell()


def scan_tar(raw: BinaryIO) -> Iterator[Member]:
    """Read a tar archive once, front to back, and yield each regular file with the
    SHA-256 of its bytes.

    Memory stays flat (one 1 MiB buffer) and every byte is read once: the
    archive's headers by `tarfile`, its data straight into the hashing buffer. `raw`
    may be a pipe. Directories, links and other entries are skipped.

    Raises
    ------
    BackupError
        The archive is truncated or not a tar archive; the members yielded before
        were read in full.
    """
    reader = _ForwardReader(raw)
    buffer = bytearray(_CHUNK)
    view = memoryview(buffer)
    try:
        with tarfile.open(fileobj=reader, mode="r:") as tar:
            for info in tar:
                if not info.isreg():
                    continue
                digest, left = hashlib.sha256(), info.size
                while left > 0:
                    count = reader.readinto(view[:min(left, _CHUNK)])
                    if not count:
                        raise BackupError(f"truncated in the data of {info.name} ("
                                          f"{info.size - left} of {info.size} bytes)")
                    digest.update(view[:count])
                    left -= count
                yield Member(info.name, info.size, digest.hexdigest())
                tar.members.clear()  # tarfile keeps every header; nothing here needs them
    except (tarfile.TarError, EOFError) as err:
        raise BackupError(f"truncated or not a tar archive ({err})") from None


def verify_archive(tar_path: Path, index: list[dict]) -> list[str]:
    """Re-read the tarball: every indexed member present with its size and SHA-256.

    Returns
    -------
    list of str
        Problems found; empty when the archive matches its index.
    """
    problems = []
    expected = {e["name"]: e for e in index}
    seen = set()
    try:
        with tarfile.open(tar_path, "r") as tar:
            for info in tar:
                if not info.isfile():
                    continue
                seen.add(info.name)
                entry = expected.get(info.name)
                if entry is None:
                    problems.append(f"{info.name}: not in the index")
                    continue
                digest = _sha256(tar.extractfile(info))
                if info.size != entry["size"] or digest != entry["sha256"]:
                    problems.append(f"{info.name}: content differs from the index")
    except (tarfile.TarError, OSError) as err:
        return [f"unreadable tarball ({err})"]
    problems += [f"{name}: missing from the tarball" for name in sorted(set(expected) - seen)]
    return problems
