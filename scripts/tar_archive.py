"""The ``tar`` backup backend: a tarball and its index in a local or mounted directory.

For sites without HPSS. The index ``NAME.tar.idx`` holds one JSON line per member
(name, size, sha256); the tarball is re-read and checked against it before the backup
counts, as ``htar -H crc:verify=all`` does on tape.
"""

from __future__ import annotations

import hashlib
import json
import os
import tarfile
from pathlib import Path

from scripts.hpss import BackupError

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


def archive_members(directory: Path, name: str) -> list[str]:
    """The regular files of archive `name`, as its index ``NAME.idx`` lists them.

    The index is written only after the tarball verified against it, so it is the
    archive's member list (directories are not in it).

    Raises
    ------
    BackupError
        The index is missing or unreadable.
    """
    path = directory / f"{name}.idx"
    try:
        return [entry["name"] for entry in read_index(path)]
    except FileNotFoundError:
        raise BackupError(f"cannot list {directory / name}: its index {path} is missing"
                          ) from None
    except (OSError, ValueError, TypeError, KeyError) as err:
        raise BackupError(f"cannot list {directory / name}: its index {path} is unreadable"
                          f" ({type(err).__name__}: {err})") from None


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
