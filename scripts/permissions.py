"""Permission modes of the archive, in one place, and the walks that apply them."""

from __future__ import annotations

import os
import stat
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


def lock_tree(top: str | os.PathLike) -> None:
    """Make an exposure read-only as installed (dirs 0o2750, files 0o440)."""
    set_tree_modes(top, DIR_MODE, FILE_MODE)


def unlock_tree(top: str | os.PathLike) -> None:
    """Let the owner write an installed exposure again (for a catch-up sync)."""
    set_tree_modes(top, DIR_MODE | stat.S_IWUSR, FILE_MODE_UNLOCKED)
