"""Directories reached by descriptor (scripts/own_dirs.py) and the link check's verdict
(scripts/links.py): the deciding parts, on a real file system."""

from __future__ import annotations

import os

import pytest

from scripts.links import (
    STATUS,
    Resolved,
    UnreadableExposureError,
    UnsafeLinkError,
    judge,
    same_exposure,
)
from scripts.own_dirs import UnsafeDirectoryError, pinned, remove, remove_at


def test_pinned_never_goes_through_a_link(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    root = tmp_path / "staging"
    root.mkdir()
    (root / "night").symlink_to(outside)
    with pytest.raises(UnsafeDirectoryError, match="symbolic link"):
        with pinned(root, ["night", "expid"], create=False, role="staging"):
            pass
    with pinned(root, ["night", "expid"], create=True, role="staging") as d:
        (d.path / "file").write_text("x")
        assert d.still_there()
    assert not list(outside.iterdir())  # the link was removed, not followed
    assert (root / "night" / "expid" / "file").read_text() == "x"


def test_a_pinned_directory_is_itself_whatever_is_renamed(tmp_path):
    root = tmp_path / "staging"
    with pinned(root, ["a"], create=True, role="staging") as d:
        os.rename(root / "a", root / "b")
        (root / "a").mkdir()
        (d.path / "file").write_text("x")
        assert not d.still_there()
    assert (root / "b" / "file").exists() and not (root / "a" / "file").exists()


def test_created_directories_are_not_writable_by_others(tmp_path):
    root = tmp_path / "staging"
    root.mkdir()
    (root / "night").mkdir(mode=0o777)
    os.chmod(root / "night", 0o777)
    with pinned(root, ["night"], create=False, role="staging"):
        pass
    assert os.stat(root / "night").st_mode & 0o777 == 0o755


def test_remove_never_follows_a_link(tmp_path):
    precious = tmp_path / "archive" / "exposure"
    precious.mkdir(parents=True)
    (precious / "file").write_text("bytes")
    os.chmod(precious / "file", 0o440)
    root = tmp_path / "staging"
    root.mkdir()
    (root / ".catch-up").symlink_to(tmp_path / "archive")
    remove(root, [".catch-up", "exposure"], "staging")
    assert (precious / "file").read_text() == "bytes"
    (root / "copy").mkdir()
    (root / "copy" / "inner").symlink_to(precious)
    os.chmod(root / "copy", 0o500)
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        remove_at(fd, "copy")
    finally:
        os.close(fd)
    assert not (root / "copy").exists() and (precious / "file").exists()


def test_a_root_of_another_user_is_refused(tmp_path):
    root = tmp_path / "staging"
    root.mkdir()
    os.chown(root, 65534, 65534)
    with pytest.raises(UnsafeDirectoryError, match=f"staging {root} is owned by"):
        with pinned(root, ["night"], create=True, role="staging"):
            pass
    assert not (root / "night").exists()


def check_output(*fields: str, status: str = "0") -> str:
    return "".join(f"{f}\0" for f in fields) + f"{STATUS}\0{status}\0"


def test_judge_reads_identity_and_status():
    out = check_output("/data/20261127/00001234", "", "2049:77")
    assert judge(out, "20261127", "00001234", None) == \
        Resolved("/data/20261127/00001234", "2049:77")
    with pytest.raises(UnreadableExposureError, match="cannot be read"):
        judge(check_output("/data/20261127/00001234", "", "2049:77", status="1"),
              "20261127", "00001234", None)
    with pytest.raises(UnsafeLinkError, match="cannot be read"):
        judge("/data/20261127/00001234\0\0", "20261127", "00001234", None)


def test_a_directory_swapped_during_the_copy_is_refused():
    before = Resolved("/data/20261127/00001234", "2049:77")
    same_exposure(before, Resolved("/data/20261127/00001234", "2049:77"), "n", "e")
    with pytest.raises(UnsafeLinkError, match="changed at the mountain while it was copied"):
        same_exposure(before, Resolved("/data/20261127/00001234", "2049:78"), "n", "e")
