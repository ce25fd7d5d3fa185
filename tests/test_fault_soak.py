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
#: backup, a kill a running run) within the runs below. Each cron run is two Snakemake
#: runs (one per lane, about 4 s each here), so 9 + 2 runs keep this near a minute.
SEED = 3
RUNS = 9
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
