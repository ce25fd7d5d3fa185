"""Case 4, ssh sharing: per-exposure orchestration over the loopback sshd, one shared
ssh connection per run against one connection per command (today's design before the
shared connection: commit ``UNSHARED``, checked out in a git worktree), in the same run.

Both contenders run the cron entry's exposure lane (``--lane exposures``, one run:
``exposures_per_run`` above the night's size) on N small exposures (5 files of 256 KB)
from a real sshd on 127.0.0.1; the connections each opened are counted in sshd's log.

One probe by hand: ``python -m bench.sharing N``.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from bench.common import (
    REPO,
    STREAM,
    WORK,
    BenchError,
    Row,
    Sshd,
    base_config,
    measure,
    remove_tree,
    write_config,
)
from bench.endtoend import NIGHT, NOW, SMALL_FILE, make_mountain

ROOT = WORK / "sharing"
#: The design before the shared connection (its base commit).
UNSHARED = "8072a5d"


def unshared_checkout() -> Path:
    where = ROOT / "unshared"
    if not (where / "Snakefile").exists():
        where.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", "--force",
                        str(where), UNSHARED], check=True, capture_output=True)
    return where


def accepted(sshd: Sshd) -> int:
    return sshd.log.read_text().count("Accepted publickey")


def one_run(repo: Path, site: Path, source: Path, sshd: Sshd, exposures: int):
    """One exposure-lane run of `repo`'s cron entry; (Sample, connections opened)."""
    remove_tree(site)
    site.mkdir(parents=True)
    config = base_config(site, source, NOW, remote=sshd.remote)
    config["exposures_per_run"] = exposures + 10
    config["kill_file"] = str(site / "stop")
    if repo == REPO:
        config["cron_interval"] = 0  # one pass: the watch is case 5's
    before = accepted(sshd)
    sample = measure([sys.executable, str(repo / "scripts" / "cron_entry.py"),
                      str(write_config(site / "config.yaml", config)), "--lane", "exposures"],
                     cwd=site)
    installed = len(list((site / "state" / STREAM / NIGHT).glob("*.installed")))
    if installed != exposures:
        raise BenchError(f"{repo.name}: installed {installed} of {exposures}:"
                         f" {sample.stderr[-2000:]}")
    opened = accepted(sshd) - before
    remove_tree(site)
    return sample, opened


def run(opts, exposures: int = 200) -> tuple[list[Row], list[str]]:
    rows, notes = [], []
    mountain = ROOT / f"mountain-{exposures}"
    if not (mountain / ".made").exists():
        remove_tree(mountain)
        mountain.mkdir(parents=True)
        (mountain / ".made").write_text(str(make_mountain(mountain, exposures, SMALL_FILE)))
    sshd = Sshd(ROOT / "sshd")
    try:
        old = Row("4 ssh sharing", f"{exposures} exp. × 5 × 256 KB over ssh: a connection per"
                                   f" command ({UNSHARED}, baseline)")
        new = Row("4 ssh sharing", f"{exposures} exp. × 5 × 256 KB over ssh: one shared"
                                   " connection per run")
        connections = {"old": [], "new": []}
        for _ in range(opts.repeat):
            for key, row, repo in (("old", old, unshared_checkout()), ("new", new, REPO)):
                sample, opened = one_run(repo, ROOT / f"site-{key}", mountain / "raw", sshd,
                                         exposures)
                row.walls.append(sample.wall)
                row.rss.append(sample.rss_mb)
                connections[key].append((opened, sample.cpu))
        new.ratio = f"{new.wall / old.wall:.2f}×"
        rows += [old, new]
        for key, row in (("old", old), ("new", new)):
            opened = sorted(c for c, _ in connections[key])[len(connections[key]) // 2]
            cpu = sorted(c for _, c in connections[key])[len(connections[key]) // 2]
            notes.append(f"Case 4 ssh sharing ({row.name}): {row.wall:.1f} s wall ="
                         f" {row.wall / exposures * 1000:.0f} ms per exposure, {opened} ssh"
                         f" connections opened (sshd's log), CPU of the cron entry's tree"
                         f" {cpu:.1f} s (the sshd side not included).")
    finally:
        sshd.stop()
    return rows, notes


def clean() -> None:
    where = ROOT / "unshared"
    if where.exists():
        subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(where)],
                       capture_output=True)
    remove_tree(ROOT)


if __name__ == "__main__":
    import argparse

    count = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    try:
        found, notes = run(argparse.Namespace(repeat=1), count)
        print("\n".join(notes))
    finally:
        clean()
