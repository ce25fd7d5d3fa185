"""What every case needs: timing a fresh child, result rows, the machine, a loopback sshd.

Wall time is measured around a fresh child process; its peak memory is the
``ru_maxrss`` that ``os.wait4`` reports for that child alone, i.e. the largest
resident set of any one process of the child's tree that was waited for (the
Snakemake process itself for a workflow run; the largest job otherwise).
"""

from __future__ import annotations

import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.loopback_sshd import LoopbackSshd, SshdError

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
WORK = BENCH / "work"
PYTHON = sys.executable
SNAKEMAKE = [PYTHON, "-m", "snakemake"]
STREAM = "DESI_SPECTRO_DATA"
#: The workflow measured; ``--snakefile`` points it at a modified copy to compare.
SNAKEFILE = REPO / "Snakefile"


class BenchError(Exception):
    """A measurement could not be made (a command failed); the message says which."""


@dataclass
class Sample:
    """One measured run of a command."""

    wall: float
    rss_mb: float
    returncode: int
    cpu: float = 0.0  # user + system seconds of the child and its waited-for descendants
    stdout: str = ""
    stderr: str = ""


TIME = "/usr/bin/time"


def measure(command: Sequence[str], cwd: str | os.PathLike | None = None,
            env: dict[str, str] | None = None, timeout: float = 1800,
            check: bool = True) -> Sample:
    """Run `command` in a fresh child; return its wall time, peak RSS and CPU time.

    The child is started through GNU time when it is installed: the peak RSS the
    kernel reports for a child forked from this (large) Python process would
    otherwise include this process's own pages, copied at the fork. Output goes to
    temporary files (a pipe filled by a chatty Snakemake would block it); it is
    returned for parsing and for the error message.
    """
    logs = WORK / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    out_path, err_path, usage_path = logs / "last.out", logs / "last.err", logs / "last.time"
    usage_path.unlink(missing_ok=True)
    wrapped = list(map(str, command))
    if os.access(TIME, os.X_OK):
        wrapped = [TIME, "-f", "%M %U %S", "-o", str(usage_path), *wrapped]
    with open(out_path, "w+b") as out, open(err_path, "w+b") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(wrapped, cwd=cwd, env=env, stdout=out, stderr=err,
                                stdin=subprocess.DEVNULL)
        try:
            _, status, usage = os.wait4(proc.pid, 0) if timeout is None else _wait(proc,
                                                                                   timeout)
        finally:
            wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout = out.read().decode(errors="replace")
        stderr = err.read().decode(errors="replace")
    # ru_maxrss is in kilobytes on Linux; GNU time's %M too.
    rss_kb, cpu = usage.ru_maxrss, usage.ru_utime + usage.ru_stime
    try:
        fields = usage_path.read_text().split("\n")[-2].split()
        rss_kb, cpu = int(fields[0]), float(fields[1]) + float(fields[2])
    except (OSError, IndexError, ValueError):
        pass
    sample = Sample(wall, rss_kb / 1024, proc.returncode, cpu, stdout, stderr)
    if check and sample.returncode != 0:
        raise BenchError(f"{' '.join(map(str, command))[:300]} exited with "
                         f"{sample.returncode}:\n{stderr[-3000:]}")
    return sample


def _wait(proc: subprocess.Popen, timeout: float):
    deadline = time.perf_counter() + timeout
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            return pid, status, usage
        if time.perf_counter() > deadline:
            proc.kill()
            return os.wait4(proc.pid, 0)
        time.sleep(0.002)


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


@dataclass
class Row:
    """One line of the results table."""

    case: str
    name: str
    walls: list[float] = field(default_factory=list)
    rss: list[float] = field(default_factory=list)
    throughput: float | None = None   # GB/s (10^9 bytes), from the median time
    ratio: str = ""                   # to the case's baseline, as text ("1.07×")
    target: str = ""
    met: str = ""                     # "yes", "**NO**" or "" (no target)

    @property
    def wall(self) -> float:
        return median(self.walls) if self.walls else float("nan")

    @property
    def peak(self) -> float:
        return max(self.rss) if self.rss else float("nan")


def verdict(ok: bool) -> str:
    return "yes" if ok else "**NO**"


def markdown_table(rows: Sequence[Row]) -> str:
    lines = ["| case | measurement | runs | median wall (s) | GB/s | peak RSS (MB) "
             "| ratio to baseline | target | met |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        thr = f"{r.throughput:.2f}" if r.throughput is not None else ""
        rss = f"{r.peak:.0f}" if r.rss else ""
        lines.append(f"| {r.case} | {r.name} | {len(r.walls)} | {r.wall:.2f} | {thr} | {rss} "
                     f"| {r.ratio} | {r.target} | {r.met} |")
    return "\n".join(lines)


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def _first_line(command: Sequence[str]) -> str:
    try:
        out = subprocess.run(command, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return "not found"
    return ((out.stdout or out.stderr).strip().splitlines() or ["?"])[0]


def machine() -> dict[str, str]:
    """What the results were measured on."""
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    flags = Path("/proc/cpuinfo").read_text()
    mem_kb = int(next(line.split()[1] for line in Path("/proc/meminfo").read_text()
                      .splitlines() if line.startswith("MemTotal")))
    df = subprocess.run(["df", "-hT", str(BENCH)], capture_output=True, text=True).stdout
    disk = " ".join(df.splitlines()[-1].split()[:3]) if df else "unknown"
    import snakemake

    plugins = subprocess.run([PYTHON, "-m", "pip", "list", "--format=freeze"],
                             capture_output=True, text=True).stdout.splitlines()
    plugins = [p for p in plugins if p.startswith("snakemake-") and "-plugin-" in p]
    return {
        "nproc": str(os.cpu_count()),
        "CPU": cpu + (" (SHA extensions)" if " sha_ni" in flags else ""),
        "memory": f"{mem_kb / 2**20:.1f} GiB",
        "disk (bench/work)": f"{disk}; virtual disk (KVM)" if "hypervisor" in flags else disk,
        "kernel": platform.release(),
        "Python": platform.python_version(),
        "Snakemake": snakemake.__version__
        + (f" (plugins installed: {', '.join(plugins)})" if plugins else ""),
        "rsync": _first_line(["rsync", "--version"]),
        "OpenSSH": _first_line(["ssh", "-V"]),
        "OpenSSL": _first_line(["openssl", "version"]),
        "sha256sum": _first_line(["sha256sum", "--version"]),
    }


def snakemake_command(workdir: Path, config_file: Path, *args: str) -> list[str]:
    """The workflow as users run it; --configfile last (it takes several values)."""
    return [*SNAKEMAKE, "-s", str(SNAKEFILE), "-d", str(workdir), *args,
            "--configfile", str(config_file)]


def empty_snakefile(where: Path) -> Path:
    """A Snakefile with one target rule and nothing to do: Snakemake's own floor."""
    where.mkdir(parents=True, exist_ok=True)
    path = where / "Snakefile"
    path.write_text("rule all:\n    input: []\n")
    return path


def empty_command(where: Path, *args: str) -> list[str]:
    # The same core count as the workflow's profile (profiles/default: cores 4).
    return [*SNAKEMAKE, "-s", str(where / "Snakefile"), "-d", str(where), "--cores", "4",
            *args]


def remove_tree(path: Path) -> None:
    """Remove a tree the workflow made read-only (installed exposures are 0o440)."""
    if not path.exists():
        return
    subprocess.run(["chmod", "-R", "u+w", str(path)], check=False)
    shutil.rmtree(path)


def base_config(root: Path, source: Path, now: str, remote: dict | None = None,
                backend: str = "none") -> dict:
    """A complete workflow configuration for a bench site under `root`."""
    config = {
        "state": str(root / "state"),
        "lookback_nights": 30,
        "now": now,
        "remote": {
            "host": "local",
            "timeout": 600,
            "transfer_timeout": 3600,
            "checksum_lock": str(root / "checksum-running"),
            # Every run lists the mountain: the cost measured is the real one.
            "listing_cache": 0,
        },
        "verify": {"max_attempts": 3, "on_failure": "install", "threads": 2},
        "backup": {"backend": backend},
        "streams": {
            STREAM: {
                "source": str(source),
                "staging": str(root / "staging"),
                "destination": str(root / "archive"),
                "hpss": "desi/spectro/data",
                "checksum_file": "checksum-{exposure}.sha256sum",
            }
        },
    }
    if backend == "tar":
        config["backup"] = {"backend": "tar", "archive": str(root / "tape"),
                            "hpss_status": ""}
    if remote:
        config["remote"].update(remote)
    return config


def write_config(path: Path, config: dict) -> Path:
    import yaml

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config))
    return path


# A loopback sshd standing in for the mountain host (as tests/conftest.py does).

class Sshd(LoopbackSshd):
    """The loopback sshd of tests/loopback_sshd.py, failing as the bench reports errors."""

    def __init__(self, home: Path):
        try:
            super().__init__(home)
        except SshdError as err:
            raise BenchError(str(err)) from None
