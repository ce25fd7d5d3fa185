"""Directories the workflow owns in shared areas: reached by descriptor, never via a link.

At a data centre the staging area is shared with a Unix group, and another member (an
ordinary user, a mistaken script) can create entries in it: a symbolic link where the
catch-up builds its side copy, or where a night's staging directory goes. A path string
says nothing about where it leads, so nothing here compares paths. Every directory the
workflow writes into or deletes from below a configured root is opened component by
component with ``O_NOFOLLOW | O_DIRECTORY``; each must be a real directory owned by the
workflow's user, and loses any group or other write permission (so that nobody else
can plant anything inside it, or rename what is in it). The open descriptor then pins
the directory: rsync runs in it (``fchdir``), verification reads it through
``/proc/self/fd/N``, and renames and removals name it relative to its parent's
descriptor after checking, by ``st_dev``/``st_ino``, that the name still is it.

A link planted where the workflow creates a directory is removed (the link itself,
never what it points to) and said loudly in the log; a directory or file of another
user there is refused with one line naming it. A root (the staging area, the
archive's workspace) not owned by the workflow's user is refused with one line.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("own_dirs")
_DIRECTORY = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
#: Directories the workflow creates: nobody else may write into them.
OWN_DIR_MODE = 0o750


class UnsafeDirectoryError(Exception):
    """A directory the workflow would write into is not safely its own; one line."""


@dataclass(frozen=True)
class Pinned:
    """An open directory: `fd` is the directory itself, `parent` its parent's
    descriptor, `name` its entry there, `shown` its path for messages only."""

    fd: int
    parent: int
    name: str
    shown: Path

    @property
    def path(self) -> Path:
        """A path that leads to this very directory, whatever is renamed meanwhile
        (for this process and for the children it starts)."""
        return Path(f"/proc/self/fd/{self.fd}")

    def identity(self) -> tuple[int, int]:
        """``(st_dev, st_ino)`` of the directory."""
        st = os.fstat(self.fd)
        return st.st_dev, st.st_ino

    def still_there(self) -> bool:
        """Whether `name` in `parent` still is this directory (not moved, not swapped)."""
        try:
            st = os.stat(self.name, dir_fd=self.parent, follow_symlinks=False)
        except FileNotFoundError:
            return False
        return (st.st_dev, st.st_ino) == self.identity()


def _owner(uid: int) -> str:
    try:
        import pwd

        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except (KeyError, ImportError):
        return f"uid {uid}"


def _check_ours(fd: int, shown: Path, role: str) -> os.stat_result:
    st = os.fstat(fd)
    if st.st_uid != os.geteuid():
        raise UnsafeDirectoryError(
            f"{role} {shown} is owned by {_owner(st.st_uid)}, not by the workflow's user"
            f" {_owner(os.geteuid())}: nothing is written there; give it to"
            f" {_owner(os.geteuid())} or move it away")
    return st


def open_root(root: Path, role: str, own: bool = True) -> int:
    """Open the configured directory `root` (links in its path are the operator's
    choice and followed); with `own`, refuse it unless the workflow's user owns it."""
    fd = os.open(root, _DIRECTORY)
    try:
        if own:
            _check_ours(fd, root, role)
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_child(parent: int, name: str, shown: Path, role: str, create: bool) -> int:
    """Open the directory `name` in `parent` without following a link; create it
    (mode 0o750) when `create`. The result is ours and not writable by others.

    Raises
    ------
    FileNotFoundError
        It is not there and `create` is false.
    UnsafeDirectoryError
        It is a link (and not `create`), a file, or another user's.
    """
    if create:
        try:
            st = os.stat(name, dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            st = None
        if st is not None and stat.S_ISLNK(st.st_mode):
            log.warning("removed a symbolic link %s (owner %s, pointing to %r) where the"
                        " workflow keeps its own directory; what it pointed to is untouched",
                        shown, _owner(st.st_uid), os.readlink(name, dir_fd=parent))
            os.unlink(name, dir_fd=parent)
        try:
            os.mkdir(name, OWN_DIR_MODE, dir_fd=parent)
        except FileExistsError:
            pass
    try:
        fd = os.open(name, _DIRECTORY | os.O_NOFOLLOW, dir_fd=parent)
    except OSError as err:
        if err.errno in (errno.ELOOP, errno.ENOTDIR):
            raise UnsafeDirectoryError(
                f"{role} {shown} is a symbolic link or not a directory: the workflow"
                f" never writes through it; remove it") from None
        raise
    try:
        st = _check_ours(fd, shown, role)
        if st.st_mode & 0o022:
            os.fchmod(fd, stat.S_IMODE(st.st_mode) & ~0o022)
    except BaseException:
        os.close(fd)
        raise
    return fd


@contextmanager
def pinned(root: Path, parts: Sequence[str], *, create: bool, role: str,
           own_root: bool = True) -> Iterator[Pinned]:
    """The directory ``root/parts...``, opened component by component, never through
    a link, every component below `root` the workflow's own (see the module).

    Raises
    ------
    FileNotFoundError
        A component is missing and `create` is false.
    UnsafeDirectoryError
        A component (or, with `own_root`, the root) is not safely the workflow's.
    """
    if not parts:
        raise ValueError("pinned() needs at least one component below the root")
    if create:
        Path(root).mkdir(parents=True, exist_ok=True)  # the configured root itself
    with ExitStack() as stack:
        fd = open_root(root, role, own_root)
        stack.callback(os.close, fd)
        shown = Path(root)
        parent = fd
        for name in parts:
            if not name or name in (".", "..") or "/" in name:
                raise UnsafeDirectoryError(f"{role}: {name!r} is not a directory name")
            shown = shown / name
            parent, fd = fd, open_child(fd, name, shown, role, create)
            stack.callback(os.close, fd)
        yield Pinned(fd, parent, parts[-1], shown)


def _empty(fd: int) -> None:
    """Remove everything in the directory `fd`, read-only or not, never following a link."""
    try:
        os.fchmod(fd, stat.S_IRWXU)
    except PermissionError:
        pass  # not ours: removing may still work, and says so if not
    with os.scandir(fd) as entries:
        names = [(e.name, e.is_dir(follow_symlinks=False)) for e in entries]
    for name, is_dir in names:
        if is_dir:
            child = os.open(name, _DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            try:
                _empty(child)
            finally:
                os.close(child)
            os.rmdir(name, dir_fd=fd)
        else:
            os.unlink(name, dir_fd=fd)


def remove_at(parent: int, name: str) -> None:
    """Remove the entry `name` of the directory `parent`: a link or file itself, a
    directory with everything in it; absent is fine. Nothing is ever followed."""
    try:
        st = os.stat(name, dir_fd=parent, follow_symlinks=False)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(name, dir_fd=parent)
        return
    fd = os.open(name, _DIRECTORY | os.O_NOFOLLOW, dir_fd=parent)
    try:
        _empty(fd)
    finally:
        os.close(fd)
    os.rmdir(name, dir_fd=parent)


def remove_pinned(directory: Pinned) -> None:
    """Remove the pinned directory, if its name still is it."""
    if directory.still_there():
        remove_at(directory.parent, directory.name)


def remove(root: Path, parts: Sequence[str], role: str) -> None:
    """Remove ``root/parts...`` (the last component itself, never followed); nothing
    when a component above it is missing, or is not the workflow's (a link, another
    user's directory: nothing of the workflow's can be below it, and nothing is
    followed; creating the directory again says what is in the way)."""
    try:
        with pinned(root, parts[:-1], create=False, role=role) if len(parts) > 1 \
                else _root_only(root, role) as parent:
            remove_at(parent.fd, parts[-1])
    except FileNotFoundError:
        return
    except UnsafeDirectoryError:
        if len(parts) == 1:
            raise  # the root itself is not the workflow's
        return


@contextmanager
def _root_only(root: Path, role: str) -> Iterator[Pinned]:
    fd = open_root(root, role)
    try:
        yield Pinned(fd, fd, "", Path(root))
    finally:
        os.close(fd)
