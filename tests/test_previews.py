"""A preview changes nothing (issue #18): ``snakemake -n``, ``--dag`` and ``--rulegraph``
write nothing under the state, status, staging, destination or tape directories, and
``--dag`` without a target draws one bounded run, not the whole backlog."""

from __future__ import annotations

import os
import re
from pathlib import Path

from conftest import Site, planned_jobs

OLD_NIGHTS = ("20261120", "20261121", "20261122")


def snapshot(*tops: Path) -> dict[str, tuple]:
    """Every entry below `tops`: name → (kind, size, mode, mtime_ns)."""
    seen = {}
    for top in tops:
        if not top.exists():
            seen[str(top)] = None
            continue
        for dirpath, dirnames, filenames in os.walk(top):
            for name in [*dirnames, *filenames]:
                path = os.path.join(dirpath, name)
                st = os.lstat(path)
                seen[path] = (st.st_mode, st.st_size, st.st_mtime_ns)
    return seen


def scenario(site: Site, status_server) -> list[Path]:
    """Three nights of 30 pending exposures, a night installed and due for backup with
    HPSS down, and a backup record that cannot be read."""
    site.config["now"] = "2026-11-28T10:00:00Z"  # before the catch-up of NIGHT
    site.config["exposures_per_run"] = 20
    site.exposure("00007000")
    site.run()  # NIGHT installed
    for n, night in enumerate(OLD_NIGHTS):
        for i in range(30):
            site.exposure(f"{7100 + 100 * n + i:08d}", {"a.fits": b"a"}, night=night)
    site.config["now"] = "2026-11-29T10:00:00Z"  # NIGHT due for catch-up and backup
    status_server.set_status("down")
    state = site.state
    broken = site.marker(OLD_NIGHTS[0], None, "backedup")
    broken.parent.mkdir(parents=True, exist_ok=True)
    broken.write_text("{not json")
    site.config["status"] = str(site.root / "status")
    return [state, site.root / "status", site.staging, site.destination, site.root / "hpss"]


def test_previews_write_nothing(site, tape, status_server):
    watched = scenario(site, status_server)
    site.config["remote"]["listing_cache"] = 0
    before = snapshot(*watched)
    dry = site.run("-n")
    assert planned_jobs(dry.stdout).get("stage_exposure") == 91 - 1  # all work, shown
    site.run("--dag")
    site.run("--rulegraph")
    after = snapshot(*watched)
    changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
    assert changed == []


def test_a_dag_without_target_draws_one_bounded_run(site, tape, status_server):
    scenario(site, status_server)
    dag = site.run("--dag").stdout
    # Jobs to run are drawn solid; the done chain of an exposure a due night-level
    # stage reads is drawn dashed.
    staged = set(re.findall(r'expid: (\d{8})[^\]]*style="rounded"\]', dag))
    assert len(staged) == site.config["exposures_per_run"]
    assert "00007000" not in staged  # installed: done


def test_preview_kind_reads_the_command_line():
    from scripts.preview import preview_kind

    assert preview_kind(["snakemake", "-n"]) == "dry-run"
    assert preview_kind(["snakemake", "-np", "--cores", "1"]) == "dry-run"
    assert preview_kind(["snakemake", "--dag"]) == "dag"
    assert preview_kind(["snakemake", "--rulegraph"]) == "rulegraph"
    assert preview_kind(["snakemake", "--lint"]) == "lint"
    assert preview_kind(["snakemake", "-j1", "-s", "Snakefile"]) is None
    assert preview_kind(["snakemake", "--configfile", "-n.yaml"]) is None
    assert preview_kind(["snakemake", "--", "-n"]) is None


def test_plan_says_what_the_next_runs_do_and_changes_nothing(site, tape, status_server):
    import subprocess
    import sys

    from conftest import REPO, STREAM

    watched = scenario(site, status_server)
    before = snapshot(*watched)
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "cron_entry.py"),
                             str(site.write_config()), "--plan"], capture_output=True,
                            text=True, cwd=site.root, env=site.env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert str(site.config_file) in result.stderr.splitlines()[0]
    assert snapshot(*watched) == before
    assert result.stdout.splitlines() == [
        "exposures lane: 20 exposure(s) this run, 70 more pending"
        " (the lane runs again at once)",
        f"  {STREAM} 20261122: 20 exposure(s) (00007300 … 00007319)",
        "nights lane: 1 stage(s) this run",
        f"  {STREAM} 20261127 caughtup: due",
        f"  {STREAM} 20261127 backedup: deferred: HPSS status is 'down', not 'active'",
        *(f"  {STREAM} {night}: waiting for 30 exposure(s) to be installed"
          for night in OLD_NIGHTS),
        "held: 0 exposure(s)",
    ]
    # What the next run of each lane then does, line by line.
    site.env["DESITRANSFER_LANE"] = "exposures"
    site.run()
    installed = {p.parent.name + "/" + p.name.split(".")[0]
                 for p in site.state.glob(f"{STREAM}/*/*.installed")}
    assert installed == {"20261127/00007000"} | {f"20261122/{7300 + i:08d}" for i in range(20)}
    site.env["DESITRANSFER_LANE"] = "nights"
    site.run()
    assert site.marker("20261127", None, "caughtup").exists()
    assert not site.marker("20261127", None, "backedup").exists()
    assert not [night for night in OLD_NIGHTS if site.marker(night, None, "caughtup").exists()]
