"""Case 4: a night from the mountain to installed and verified, against a shell loop.

The big night (20 exposures × 5 files, about 2 GB) comes from a real OpenSSH server on
127.0.0.1 (generated keys, a free port, a non-daemon child stopped at the end). The
night is before its catch-up hour, so a run is the exposure stages only: stage (rsync
over ssh), verify, install. Fresh state, staging and archive for every run.

The baseline (``bench/baseline.sh``) lists the links once and then, per exposure, runs
rsync with the workflow's flags, ``sha256sum -c`` and ``mv``.

Orchestration overhead is measured on nights of N exposures × 5 files of 256 KB
(N = 20 and 200) from a local mountain (``remote.host: local``): transfer and hashing
are then a few per cent of the wall time, and what remains (wall minus the ``duration``
the ``.staged``, ``.checksummed`` and ``.installed`` records give for the jobs' own
work) is Snakemake's start-up and parse, its scheduling, and the start of one job
process per job. The cost of one ssh connection (which each exposure's rsync pays, in
the workflow and in the baseline alike) is measured apart.
"""

from __future__ import annotations

import hashlib
import json
import os
import statistics
import time
from pathlib import Path

from bench.common import (
    BENCH,
    STREAM,
    WORK,
    BenchError,
    Row,
    Sshd,
    base_config,
    measure,
    remove_tree,
    snakemake_command,
    verdict,
    write_config,
)
from scripts.mountain import checksum_line, publish_exposure

ROOT = WORK / "e2e"
NIGHT = "20261127"
NOW = "2026-11-28T10:00:00Z"  # the day after NIGHT, before the catch-up hour (14 UTC)
FILES = 5
SMALL_FILE = 256 << 10


def make_mountain(root: Path, exposures: int, file_size: int, first: int = 2000) -> int:
    """`exposures` exposures of FILES random files each; return the bytes made."""
    block = os.urandom(max(file_size, 1 << 20))
    total = 0
    for n in range(exposures):
        expid = f"{first + n:08d}"
        data = root / "data" / NIGHT / expid
        data.mkdir(parents=True, exist_ok=True)
        lines = []
        for i, prefix in enumerate(("desi", "guide", "sky", "fibermap", "focus")[:FILES]):
            name = f"{prefix}-{expid}.fits.fz"
            content = (n * FILES + i).to_bytes(8, "little") + block[8:file_size]
            (data / name).write_bytes(content)
            lines.append(checksum_line(name, hashlib.sha256(content).hexdigest()))
            total += len(content)
        (data / f"checksum-{expid}.sha256sum").write_text("".join(lines))
        publish_exposure(root, NIGHT, expid)
    return total


def work_seconds(state: Path) -> dict[str, float]:
    """Σ of the in-job durations recorded in the markers, per stage."""
    sums = {"staged": 0.0, "checksummed": 0.0, "installed": 0.0}
    for stage in sums:
        for marker in (state / STREAM / NIGHT).glob(f"*.{stage}"):
            sums[stage] += json.loads(marker.read_text()).get("duration", 0.0)
    return sums


class Night:
    """One mountain night and the two ways to bring it in."""

    def __init__(self, label: str, exposures: int, file_size: int, sshd: Sshd | None = None):
        self.root = ROOT / label
        self.exposures = exposures
        self.mountain = self.root / "mountain"
        made = self.root / ".made"
        if not made.exists():
            remove_tree(self.root)
            made.parent.mkdir(parents=True)
            made.write_text(str(make_mountain(self.mountain, exposures, file_size)))
        self.bytes = int(made.read_text())
        self.source = self.mountain / "raw"
        self.sshd = sshd
        self.workflow_site = self.root / "workflow"
        self.shell_site = self.root / "shell"

    def _reset(self, site: Path) -> None:
        remove_tree(site)
        site.mkdir(parents=True)
        os.sync()  # the previous run's dirty pages are not written back during this one

    def run_workflow(self, *args: str):
        """One workflow run on a fresh site; (Sample, in-job seconds per stage)."""
        self._reset(self.workflow_site)
        remote = self.sshd.remote if self.sshd else None
        config = write_config(self.workflow_site / "config.yaml", base_config(
            self.workflow_site, self.source, NOW, remote=remote))
        sample = measure(snakemake_command(self.workflow_site, config, *args))
        work = work_seconds(self.workflow_site / "state")
        installed = len(list((self.workflow_site / "state" / STREAM / NIGHT)
                             .glob("*.installed")))
        if installed != self.exposures:
            raise BenchError(f"workflow installed {installed} of {self.exposures}:\n"
                             f"{sample.stderr[-3000:]}")
        remove_tree(self.workflow_site)  # disk: one copy of the night at a time
        return sample, work

    def run_shell(self):
        self._reset(self.shell_site)
        host, ssh = (self.sshd.host, self.sshd.ssh) if self.sshd else ("local", [])
        sample = measure(["sh", str(BENCH / "baseline.sh"), host, str(self.source),
                          str(self.shell_site / "staging"), str(self.shell_site / "archive"),
                          *ssh])
        installed = len(list((self.shell_site / "archive" / NIGHT).iterdir()))
        if installed != self.exposures:
            raise BenchError(f"baseline installed {installed} of {self.exposures}")
        remove_tree(self.shell_site)
        return sample

    def clean(self) -> None:
        remove_tree(self.root)


def ssh_connection_cost(sshd: Sshd, count: int = 10) -> tuple[float, float]:
    """Wall and CPU seconds (client + server, whole machine) of one ``ssh HOST true``."""
    def busy() -> float:
        fields = list(map(int, Path("/proc/stat").read_text().split("\n")[0].split()[1:]))
        return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")

    walls, cpus = [], []
    for _ in range(count):
        before = busy()
        sample = measure([*sshd.ssh, sshd.host, "true"])
        walls.append(sample.wall)
        cpus.append(busy() - before)
    return statistics.median(walls), statistics.median(cpus)


def run(opts) -> tuple[list[Row], list[str]]:
    rows, notes = [], []
    sshd = Sshd(ROOT / "sshd")
    try:
        big = Night("big", opts.e2e_exposures, opts.e2e_file, sshd)
        gb = big.bytes / 1e9
        label = f"{big.exposures} exp. × {FILES} files, {gb:.1f} GB over ssh"
        shell = Row("4 end to end", f"{label}: shell loop rsync + sha256sum -c + mv "
                                    "(baseline)")
        flow = Row("4 end to end", f"{label}: workflow, default profile")
        works, cpus = [], []
        for _ in range(opts.repeat):
            sample = big.run_shell()
            shell.walls.append(sample.wall)
            shell.rss.append(sample.rss_mb)
            cpus.append(("shell", sample.cpu))
            sample, work = big.run_workflow()
            flow.walls.append(sample.wall)
            flow.rss.append(sample.rss_mb)
            cpus.append(("workflow", sample.cpu))
            works.append(work)
        big.clean()
        ratio = flow.wall / shell.wall
        flow.ratio = f"{ratio:.2f}×"
        flow.target = "≤ 1.2×"
        flow.met = verdict(ratio <= 1.2)
        for r in (shell, flow):
            r.throughput = big.bytes / 1e9 / r.wall
        rows += [shell, flow]
        mid = sorted(works, key=lambda w: sum(w.values()))[len(works) // 2]
        cpu_shell = statistics.median(c for k, c in cpus if k == "shell")
        cpu_flow = statistics.median(c for k, c in cpus if k == "workflow")
        conn_wall, conn_cpu = ssh_connection_cost(sshd)
        notes.append(
            f"Case 4 ({label}): GB/s is the night's bytes over the wall time. In-job time"
            f" summed over the workflow's jobs (median run): rsync {mid['staged']:.1f} s,"
            f" hashing {mid['checksummed']:.1f} s, install {mid['installed']:.2f} s (up to 4"
            f" jobs at once on {os.cpu_count()} CPUs, so they overlap and slow each other)."
            f" CPU time of the whole process tree: shell loop {cpu_shell:.1f} s, workflow"
            f" {cpu_flow:.1f} s (the sshd side is not in either; see the ssh figure).")
        notes.append(
            f"Case 4: one ssh connection to the loopback sshd (`ssh HOST true`) takes"
            f" {conn_wall:.2f} s wall and keeps the machine's CPUs busy for {conn_cpu:.2f} s"
            " (client and server, and any other load at the time);"
            f" every exposure's rsync opens one, in the workflow and in the baseline alike.")
    finally:
        sshd.stop()

    per_exposure = {}
    for n in opts.overhead_exposures:
        night = Night(f"small-{n}", n, SMALL_FILE)
        s_row = Row("4 overhead", f"{n} exp. × {FILES} × 256 KB, local: shell loop (baseline)")
        w_row = Row("4 overhead", f"{n} exp. × {FILES} × 256 KB, local: workflow, default "
                                  "profile")
        works, cpus = [], []
        for _ in range(opts.repeat):
            sample = night.run_shell()
            s_row.walls.append(sample.wall)
            s_row.rss.append(sample.rss_mb)
            sample, work = night.run_workflow()
            w_row.walls.append(sample.wall)
            w_row.rss.append(sample.rss_mb)
            works.append(sum(work.values()))
            cpus.append(sample.cpu)
        night.clean()
        jobs = 3 * n + 1
        w_row.ratio = f"{w_row.wall / s_row.wall:.2f}×"
        work = statistics.median(works)
        overhead = w_row.wall - work
        per_exposure[n] = (w_row.wall, s_row.wall, overhead)
        if n >= 200:  # the case (#12): orchestration per exposure, halved
            w_row.target = f"≤ 200 ms/exp. (here {overhead / n * 1000:.0f})"
            w_row.met = verdict(overhead / n <= 0.2)
        notes.append(
            f"Case 4 overhead, {n} exposures ({jobs} jobs): workflow {w_row.wall:.1f} s"
            f" wall, {work:.1f} s of it in-job work (Σ over jobs), so {overhead:.1f} s of"
            f" orchestration = {overhead / n * 1000:.0f} ms per exposure,"
            f" {overhead / jobs * 1000:.0f} ms per job; CPU {statistics.median(cpus):.1f} s"
            f" = {statistics.median(cpus) / jobs * 1000:.0f} ms per job. The shell loop takes"
            f" {s_row.wall:.1f} s ({s_row.wall / n * 1000:.0f} ms per exposure).")
        rows += [s_row, w_row]
    if len(per_exposure) >= 2:
        (n0, (w0, s0, o0)), (n1, (w1, s1, o1)) = sorted(per_exposure.items())[:2]
        notes.append(
            f"Case 4 overhead scaling: from {n0} to {n1} exposures ({n1 / n0:.0f}× the jobs)"
            f" the orchestration grows from {o0:.1f} s to {o1:.1f} s ({o1 / o0:.1f}×):"
            f" {o0 / n0 * 1000:.0f} → {o1 / n1 * 1000:.0f} ms per exposure; each exposure"
            f" beyond {n0} adds"
            f" {(w1 - w0) / (n1 - n0) * 1000:.0f} ms to the workflow's wall time and"
            f" {(s1 - s0) / (n1 - n0) * 1000:.0f} ms to the shell loop's.")
    return rows, notes


def clean() -> None:
    remove_tree(ROOT)


if __name__ == "__main__":  # a probe by hand: python -m bench.endtoend N BYTES [ssh] [ARGS]
    import sys

    use_ssh = len(sys.argv) > 3 and sys.argv[3] == "ssh"
    sshd = Sshd(ROOT / "sshd") if use_ssh else None
    try:
        night = Night(f"probe-{sys.argv[1]}-{sys.argv[2]}", int(sys.argv[1]), int(sys.argv[2]),
                      sshd)
        t = time.perf_counter()
        print("shell", round(night.run_shell().wall, 2))
        sample, work = night.run_workflow(*sys.argv[3 + use_ssh:])
        print("workflow", round(sample.wall, 2), f"{sample.rss_mb:.0f} MB",
              f"cpu {sample.cpu:.1f} s", work)
    finally:
        if sshd:
            sshd.stop()
