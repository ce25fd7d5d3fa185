"""The workflow on a real Slurm cluster, with the Slurm profile (profiles/slurm).

A single-node cluster from Debian's packages runs on this machine for the session
(tests/slurm/cluster.py: real munged, slurmctld and slurmd, a generated slurm.conf on
free ports, partitions ``debug`` and ``xfer``). Snakemake's Slurm executor plugin
submits the jobs with sbatch and follows them with squeue; slurmctld's job completion
log is the per-job accounting record checked here (there is no slurmdbd, hence no
sacct: see tests/slurm/README.md).

One night goes through the whole workflow: its backup, on the ``xfer`` partition, is
given a one-minute time limit while htar hangs (the HPSS emulator's HTAR_HANG, once),
so Slurm itself kills it; the next run backs the night up. The end state is compared
with a local run of the same night.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import stat
import subprocess
import tarfile
import time
from pathlib import Path

import pytest
import yaml
from conftest import NIGHT, REPO, STREAM, Site
from slurm.cluster import INSTALL, Cluster, ClusterError, missing_tools

PROFILE = REPO / "profiles" / "slurm"
AFTER_BACKUP = "2026-11-28T21:00:00Z"  # catch-up and backup both due for NIGHT
EXPOSURES = ("00005000", "00005001")
HPSS_DIR = "desi/spectro/data"
# Test-only executor settings. No accounting database here: follow jobs with squeue
# (slurm.conf keeps finished jobs visible for MinJobAge). Status checks 2, 14, 36, 68 s
# after a submission (the plugin adds 10 s each time nothing finished): a job of 5-7 s
# is seen after 14 s, one killed at its one-minute limit after 68 s. Keep the Slurm
# logs of successful jobs too, to map jobs to rules.
SLURM_TEST_ARGS = ("--slurm-status-command", "squeue",
                   "--slurm-init-seconds-before-status-checks", "2",
                   "--slurm-keep-successful-logs")
RUN_LIMIT = 300  # seconds for one workflow run (the killed one takes 150-210 s)


@pytest.fixture(scope="session")
def slurm(tmp_path_factory):
    """A running single-node Slurm cluster (stopped at the end of the session)."""
    missing = missing_tools()
    if missing:
        pytest.fail(f"Slurm is not installed ({', '.join(missing)} missing): run `{INSTALL}`"
                    " (or `make system-packages`)", pytrace=False)
    if os.getuid() != 0:
        pytest.fail("the test Slurm cluster runs its daemons as root: run the tests as root",
                    pytrace=False)
    cluster = Cluster(tmp_path_factory.mktemp("slurm"))
    try:
        cluster.start()
    except ClusterError as err:
        cluster.stop()
        pytest.fail(f"the test Slurm cluster did not start: {err}", pytrace=False)
    try:
        yield cluster
    finally:
        cluster.stop()


def profile_resources(**overrides: str) -> list[str]:
    """The profile's set-resources as ``--set-resources`` arguments, with `overrides`
    (``rule=resource:value``) replacing single values: a --set-resources on the command
    line replaces the profile's whole list."""
    profile = yaml.safe_load((PROFILE / "config.yaml").read_text())
    values = {(rule, name): value for rule, resources in profile["set-resources"].items()
              for name, value in resources.items()}
    for key, value in overrides.items():
        rule, name = key.split("__")
        values[(rule, name)] = value
    return ["--set-resources", *(f"{r}:{n}={v}" for (r, n), v in values.items())]


def exposure_files(expid: str) -> dict[str, bytes]:
    """The same content on both mountains (Site.exposure's default is random)."""
    seed = hashlib.sha256(expid.encode()).digest()
    return {f"desi-{expid}.fits.fz": seed * 400, f"guide-{expid}.fits.fz": seed[::-1] * 90,
            f"sky-{expid}.fits.fz": b"sky" * 100}


def night_site(site: Site) -> Site:
    for expid in EXPOSURES:
        site.exposure(expid, exposure_files(expid))
    site.config["now"] = AFTER_BACKUP
    site.config["verify"]["threads"] = 1  # two jobs at once on two cores
    return site


def run_while(site: Site, args: list[str], condition, action) -> subprocess.CompletedProcess:
    """Run the workflow in `site`; once `condition()` holds during the run, do `action()`.

    Returns the run's CompletedProcess (output through files: nothing blocks on a pipe).
    """
    out, err = site.root / "run.out", site.root / "run.err"
    with open(out, "w") as stdout, open(err, "w") as stderr:
        process = subprocess.Popen(site.command(*args), stdout=stdout, stderr=stderr,
                                   cwd=site.root, env=site.env)
    try:
        deadline = time.monotonic() + RUN_LIMIT
        while process.poll() is None and not condition():
            assert time.monotonic() < deadline, "the condition never held during the run"
            time.sleep(0.5)  # polling a condition under a deadline
        action()
        process.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return subprocess.CompletedProcess(process.args, process.returncode, out.read_text(),
                                       err.read_text())


def slurm_jobs(site: Site, cluster: Cluster) -> list[dict[str, str]]:
    """The Slurm jobs of the workflow's runs in `site`: the rule (from the executor's
    log path, ``.snakemake/slurm_logs/rule_RULE/WILDCARDS/JOBID.log``) joined with
    slurmctld's completion record of the job."""
    records = {job["JobId"]: job for job in cluster.completed_jobs()}
    jobs = []
    for log in sorted((site.root / ".snakemake" / "slurm_logs").glob("rule_*/*/*.log")):
        assert log.stem in records, f"Slurm job {log.stem} ({log}) has no completion record"
        jobs.append({"rule": log.parts[-3].removeprefix("rule_"), "log": str(log),
                     **records[log.stem]})
    return jobs


def slurm_time(text: str) -> float:
    """Epoch seconds of a Slurm time stamp (local time, to the second)."""
    return dt.datetime.fromisoformat(text).timestamp()


def tree(path: Path) -> dict[str, tuple[int, str]]:
    """Relative name → (mode, sha256) of every file below `path`."""
    return {str(p.relative_to(path)): (stat.S_IMODE(p.stat().st_mode),
                                       hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(path.rglob("*")) if p.is_file()}


#: What differs between two sites by nature: when things happened.
VARYING = ("time", "duration", "published", "identity")  # identity: the inode verified


def state_view(site: Site) -> dict[str, dict]:
    """Every marker and failure record of the stream, without times and durations, and
    with the site's own directory as ``SITE``."""
    view = {}
    for path in sorted((site.state / STREAM).rglob("*")):
        if path.is_file():
            record = json.loads(path.read_text().replace(str(site.root), "SITE"))
            for archive in record.get("archives", []):
                for key in VARYING:
                    archive.pop(key, None)
            view[str(path.relative_to(site.state))] = {
                k: v for k, v in record.items() if k not in VARYING}
    return view


def tape_view(tape: Path) -> dict[str, list[str]]:
    """Archive name → member names (the emulator's consistency member left out)."""
    return {p.name: sorted(m for m in tarfile.open(p).getnames() if "HTAR_CF_CHK" not in m)
            for p in sorted((tape / HPSS_DIR).glob("*.tar"))}


def test_a_night_through_slurm_backup_killed_at_its_time_limit_then_redone(
        site, tape, slurm, tmp_path_factory):
    night_site(site)
    site.env.update(SLURM_CONF=slurm.env["SLURM_CONF"], PATH=slurm.env["PATH"])
    site.config["remote"]["listing_cache"] = 600
    # htar hangs once; our own limit (backup.timeout) is far away: Slurm must kill it.
    site.config["backup"]["timeout"] = 600
    site.env.update(HTAR_HANG="600", HPSS_FAIL_ONCE="1")
    profile = ("--workflow-profile", str(PROFILE), *SLURM_TEST_ARGS)

    # The local run to compare with goes while Slurm's backup job hangs (it is started
    # once that job runs on the xfer partition): the test waits for the time limit anyway.
    local = night_site(Site(tmp_path_factory.mktemp("local-run")))
    local.config["backup"] = dict(site.config["backup"])
    local.env["HPSS_ROOT"] = str(local.root / "hpss")
    first = run_while(site, [*profile, *profile_resources(back_up_night__runtime="1")],
                      lambda: "xfer" in slurm.squeue("--noheader", "--states=RUNNING", "-o", "%P"),
                      local.run)
    assert first.returncode != 0
    jobs = slurm_jobs(site, slurm)
    by_rule = {}
    for job in jobs:
        by_rule.setdefault(job["rule"], []).append(job)
    # The heavy stages ran as Slurm jobs, with the profile's partition and time limit.
    assert len(by_rule["stage_exposure"]) == len(by_rule["verify_exposure"]) == 2
    assert len(by_rule["catch_up_night"]) == 1
    for rule in ("stage_exposure", "verify_exposure", "catch_up_night"):
        for job in by_rule[rule]:
            assert (job["JobState"], job["Partition"]) == ("COMPLETED", "debug"), job
    # Slurm's limit is the backstop: above the workflow's own limits for the step.
    remote = site.config["remote"]
    for job in by_rule["stage_exposure"]:
        assert int(job["TimeLimit"]) * 60 > remote["timeout"] + remote["transfer_timeout"]
    # The backup: on the transfer partition, killed by Slurm at its one-minute limit.
    [killed] = by_rule["back_up_night"]
    assert (killed["JobState"], killed["Partition"], killed["TimeLimit"]) == \
        ("TIMEOUT", "xfer", "1")
    assert "DUE TO TIME LIMIT" in Path(killed["log"]).read_text()
    assert f"SLURM-job '{killed['JobId']}' failed, SLURM status is: 'TIMEOUT'" in first.stderr
    assert not site.marker(NIGHT, None, "backedup").exists()
    failed = Path(f"{site.marker(NIGHT, None, 'backedup')}.failed")
    assert failed.exists(), "Slurm killed the backup and it left no failure record: " \
        "the steps must record a SIGTERM (scripts/joblog.py, record_termination)"
    failure = site.failure(NIGHT, None, "backedup")
    assert failure["killed"] is True and failure["slurm_job"] == killed["JobId"]
    assert "killed by SIGTERM" in failure["reason"]
    for expid in EXPOSURES:
        assert site.marker(NIGHT, expid, "installed").exists()
    assert site.marker(NIGHT, None, "caughtup").exists()
    # Jobs re-parse the Snakefile on their node: the listing came from the cache
    # written by the submitting run, not from the mountain again.
    cache = site.state / ".listing" / f"{STREAM}.json"
    assert cache.stat().st_mtime < slurm_time(killed["StartTime"])

    second = site.run(*profile, timeout=RUN_LIMIT)
    assert "back_up_night" in second.stderr
    record = site.record(NIGHT, None, "backedup")
    assert record["outcome"] == "backed up"
    assert record["previous_failure"] == failure["reason"]
    assert not Path(f"{site.marker(NIGHT, None, 'backedup')}.failed").exists()
    redone = [j for j in slurm_jobs(site, slurm) if j["rule"] == "back_up_night"]
    assert [(j["JobState"], j["Partition"]) for j in redone] == \
        [("TIMEOUT", "xfer"), ("COMPLETED", "xfer")]
    assert int(redone[1]["TimeLimit"]) * 60 > site.config["backup"]["timeout"]

    # The same night run locally (default profile) ends in the same state and archive.
    slurm_state = state_view(site)
    del slurm_state[f"{STREAM}/{NIGHT}.backedup"]["previous_failure"]
    assert slurm_state == state_view(local)
    assert tree(site.destination) == tree(local.destination)
    assert tape_view(tape) == tape_view(local.root / "hpss")
    assert list(tape_view(tape)) == [f"desi_spectro_data_{NIGHT}.tar"]
