"""The fault soak, short: a dozen cron runs of one fixed seed, every fault kind in it.

The full soak (200 runs) is ``make soak``; tests/fault_soak.py says what it does. This
runs it as a user would, in a subprocess: real cron entry, real rsync, the HPSS
emulator, a real HTTP status endpoint; the invariants are checked after every run.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from fault_soak import FAULTS

HERE = Path(__file__).resolve().parent
#: Chosen so that every fault kind meets what it is meant to hit (an HPSS fault a due
#: backup, a kill a running run, a stopped job its limit) within the runs below. Each
#: cron run is two Snakemake runs (one per lane, about 4 s each here), and the stopped
#: job's run waits out the job's limit (33 s), so 14 + 2 runs take about two minutes.
SEED = 3
RUNS = 14
QUIET_RUNS = 2


def test_short_fault_soak_keeps_every_invariant(tmp_path):
    summary = tmp_path / "summary.json"
    command = [sys.executable, str(HERE / "fault_soak.py"), "--runs", str(RUNS),
               "--quiet-runs", str(QUIET_RUNS), "--seed", str(SEED),
               "--workdir", str(tmp_path), "--summary-json", str(summary)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{result.stdout[-15000:]}\n{result.stderr[-3000:]}"
    faults = json.loads(summary.read_text())["faults"]
    assert [k for k in FAULTS if faults[k]["effective"] == 0] == [], result.stdout


#: A soak in miniature: a run starts a helper in a session of its own (as
#: scripts/commands.py starts rsync, but without PR_SET_PDEATHSIG) and is killed with
#: its process group; the helper outlives it. Prints what the soak saw.
SURVIVOR = """
import json, os, signal, subprocess, sys
sys.path.insert(0, sys.argv[1])
from fault_soak import SOAK_RUN, become_subreaper, reap, soak_processes
from processes import children, wait_for_exit

become_subreaper()
run = subprocess.Popen(
    [sys.executable, "-c", "import subprocess; print(subprocess.Popen(['sleep', '300'],"
     " start_new_session=True).pid, flush=True); input()"],
    env={**os.environ, SOAK_RUN: "7"}, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
    text=True, start_new_session=True)
helper = int(run.stdout.readline())
try:
    seen = {"running": soak_processes(set())}
    os.killpg(run.pid, signal.SIGKILL)
    run.wait()
    seen["killed"] = soak_processes(set())
finally:
    os.kill(helper, signal.SIGKILL)
wait_for_exit([helper], timeout=10)  # ended, not yet reaped
seen["ended"] = soak_processes(set())
reap(set())
print(json.dumps({"run": run.pid, "helper": helper, "children": children(os.getpid()),
                  **{k: [[p.pid, p.pgid, p.run, p.dying, p.command] for p in v]
                     for k, v in seen.items()}}))
"""


def test_the_soak_finds_a_process_that_outlives_its_killed_run():
    """The soak's search can fail for its reason: the helper, re-parented to the soak
    (its subreaper), is found with its run and command line; once ended, it is not
    alive any more and is reaped."""
    result = subprocess.run([sys.executable, "-c", SURVIVOR, str(HERE)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)
    run, helper = seen["run"], seen["helper"]
    assert sorted(p[0] for p in seen["running"]) == sorted([run, helper])
    assert all(p[2] == 7 for p in seen["running"])
    assert seen["killed"] == [[helper, helper, 7, False, "sleep 300"]]
    assert seen["ended"] == [] and seen["children"] == []
