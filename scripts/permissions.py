"""Permission modes of the archive, in one place, and the walks that apply them."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

#: Installed directories: group-readable, setgid so new files keep the group.
DIR_MODE = 0o2750
#: Installed files: read-only for the owner and the group.
FILE_MODE = 0o440
#: Files while an exposure is unlocked for a catch-up.
FILE_MODE_UNLOCKED = FILE_MODE | stat.S_IWUSR
#: Directories of a night once it is backed up: no user-write either.
DIR_MODE_BACKUP = DIR_MODE & ~stat.S_IWUSR


def set_tree_modes(top: str | os.PathLike, dir_mode: int, file_mode: int | None) -> None:
    """Set `dir_mode` on `top` and every directory below it, `file_mode` on files.

    Symbolic links are left alone (their own mode is meaningless on Linux).
    """
    top = Path(top)
    # Directories first from the top: a directory must be enterable before its
    # children can be changed, even when tightening.
    os.chmod(top, dir_mode)
    for dirpath, dirnames, filenames in os.walk(top):
        for d in dirnames:
            p = os.path.join(dirpath, d)
            if not os.path.islink(p):
                os.chmod(p, dir_mode)
        if file_mode is not None:
            for f in filenames:
                p = os.path.join(dirpath, f)
                if not os.path.islink(p):
                    os.chmod(p, file_mode)


def lock_tree(top: str | os.PathLike, dir_mode: int = DIR_MODE) -> None:
    """Make an exposure read-only as installed (dirs `dir_mode`, files 0o440)."""
    set_tree_modes(top, dir_mode, FILE_MODE)


def locked_dir_mode(path: str | os.PathLike) -> int:
    """The directory mode an existing exposure keeps when it is locked again:
    0o2550 if it has already lost user-write for tape, else 0o2750."""
    return DIR_MODE if os.lstat(path).st_mode & stat.S_IWUSR else DIR_MODE_BACKUP


@contextmanager
def writable(directory: str | os.PathLike) -> Iterator[None]:
    """Give the owner write permission on `directory` for the block, then restore its
    mode (a night that went to tape is 0o2550, and a late exposure still goes in)."""
    mode = stat.S_IMODE(os.lstat(directory).st_mode)
    if not mode & stat.S_IWUSR:
        os.chmod(directory, mode | stat.S_IWUSR)
    try:
        yield
    finally:
        if not mode & stat.S_IWUSR:
            os.chmod(directory, mode)
