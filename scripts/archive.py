"""The archive's only writer: whole, verified exposures go in under their final name.

Nothing else in the workflow writes below ``DESTINATION/NIGHT/EXPID``. A verified copy
is first brought beside the archive, into the workspace ``DESTINATION/.desitransfer``
(same file system, outside every night, so never on tape), made read-only there, and
then either renamed to its final name (a new exposure) or exchanged with the installed
copy in one atomic ``renameat2(RENAME_EXCHANGE)`` (a replacement). A run killed at any
instant leaves either the old or the new exposure under the final name, and only
disposable copies in the workspace, which the next attempt clears.

On a file system without ``RENAME_EXCHANGE`` the replacement takes two renames, the
old copy set aside first; `recover` puts it back if a run died between the two.
"""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import stat
from collections.abc import Callable
from pathlib import Path

from scripts.own_dirs import Pinned, UnsafeDirectoryError, pinned, remove_at, remove_pinned
from scripts.permissions import DIR_MODE, lock_tree, writable

#: The workflow's workspace inside each destination; never part of a night.
WORKSPACE = ".desitransfer"
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
_LIBC = ctypes.CDLL(None, use_errno=True)


def workspace_path(destination: Path, night: str, expid: str, kind: str) -> Path:
    """``DESTINATION/.desitransfer/NIGHT-EXPID.KIND``: ``incoming`` holds a copy on
    its way in (or the old copy on its way out), ``aside`` an old copy during a
    two-rename replacement."""
    return destination / WORKSPACE / f"{night}-{expid}.{kind}"


def exchange(a: Path, b: Path) -> None:
    """Swap the directory entries `a` and `b` atomically.

    Raises
    ------
    OSError
        With ``errno.EINVAL`` or ``ENOSYS`` where the file system cannot.
    """
    if _LIBC.renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b),
                       _RENAME_EXCHANGE) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), str(a))


def discard(path: Path) -> None:
    """Remove a workspace copy, read-only or not; absent is fine. The entry itself is
    removed (a link, never what it points to); the walk never follows a link."""
    try:
        parent = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    try:
        remove_at(parent, path.name)
    finally:
        os.close(parent)


def recover(destination: Path, night: str, expid: str) -> None:
    """Undo what a killed replacement left: an old copy set aside while the final
    name is empty goes back; copies in the workspace are dropped."""
    final = destination / night / expid
    aside = workspace_path(destination, night, expid, "aside")
    if os.path.lexists(aside):
        if not os.path.lexists(final):
            with writable(final.parent):
                os.rename(aside, final)
        else:
            discard(aside)
    discard(workspace_path(destination, night, expid, "incoming"))


def prepare(copy: Pinned, destination: Path, night: str, expid: str,
            dir_mode: int = DIR_MODE) -> Path:
    """Bring the verified `copy` into the workspace, read-only; return its path.

    `copy` is renamed when it is on the destination's file system, else copied (and
    left in place for the caller to remove once the exposure is in). The rename names
    the pinned directory by its parent's descriptor, after checking that the name
    still is it: whatever was planted or moved meanwhile, only the verified copy goes in.

    Raises
    ------
    UnsafeDirectoryError
        The copy was moved or swapped since it was opened, or the workspace is not
        the workflow's own.
    """
    recover(destination, night, expid)
    incoming = workspace_path(destination, night, expid, "incoming")
    with pinned(destination, [WORKSPACE], create=True, role="the archive's workspace",
                own_root=False) as workspace:
        if not copy.still_there():
            raise UnsafeDirectoryError(f"{copy.shown} was moved or replaced after it was"
                                       " verified; it is not installed")
        try:
            os.rename(copy.name, incoming.name, src_dir_fd=copy.parent,
                      dst_dir_fd=workspace.fd)
        except OSError as err:
            if err.errno != errno.EXDEV:
                raise
            try:
                shutil.copytree(copy.path, workspace.path / incoming.name, symlinks=True)
            except BaseException:
                remove_at(workspace.fd, incoming.name)  # a full disk: no partial copy stays
                raise
    lock_tree(incoming, dir_mode)
    return incoming


def place(copy: Pinned, destination: Path, night: str, expid: str) -> None:
    """Install a new exposure: `copy` appears under ``NIGHT/EXPID`` whole, read-only."""
    final = destination / night / expid
    incoming = prepare(copy, destination, night, expid)
    with writable(final.parent):
        os.rename(incoming, final)
    remove_pinned(copy)


def identity(path: Path) -> tuple[int, int]:
    """``(st_dev, st_ino)`` of `path` itself (a link is not followed)."""
    st = os.stat(path, follow_symlinks=False)
    return st.st_dev, st.st_ino


def replace(copy: Pinned, destination: Path, night: str, expid: str,
            before_swap: Callable[[tuple[int, int]], None] | None = None) -> None:
    """Swap the installed exposure for the verified `copy`, atomically.

    `before_swap(identity)` is called with the ``(st_dev, st_ino)`` the exposure will
    have once swapped in, just before the swap: a journal that records it lets a
    later run tell, by what the file system says, whether the swap happened.
    The replaced copy is removed; the caller keeps its record. Directory modes follow
    the installed copy's (0o2550 once its night went to tape).
    """
    final = destination / night / expid
    incoming = prepare(copy, destination, night, expid, DIR_MODE)
    if before_swap is not None:
        before_swap(identity(incoming))
    old_mode = stat.S_IMODE(os.lstat(final).st_mode)
    with writable(final.parent):
        # Moving a directory to another parent needs write permission on it.
        os.chmod(final, old_mode | stat.S_IWUSR)
        try:
            exchange(incoming, final)
        except OSError as err:
            if err.errno not in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
                os.chmod(final, old_mode)
                raise
            aside = workspace_path(destination, night, expid, "aside")
            os.rename(final, aside)
            os.rename(incoming, final)
            incoming = aside
    if not old_mode & stat.S_IWUSR:
        lock_tree(final, old_mode)
    discard(incoming)
    remove_pinned(copy)
