"""A throwaway single-node Slurm cluster for the tests: real munged, slurmctld, slurmd.

Everything lives in one directory: a generated ``slurm.conf`` (free ports, this machine's
CPUs and memory, partitions ``debug`` and ``xfer``), munge's own key and socket, the
daemons' state, spool, logs and pid files, and the job completion log
(``JobCompType=jobcomp/filetxt``: one line per finished job, written by slurmctld). No
system file is read or changed; clients find the cluster through ``SLURM_CONF``.

There is no slurmdbd: the executor plugin follows jobs with ``squeue`` (``MinJobAge`` is
long enough for that), and the per-job record is slurmctld's job completion log.

The daemons run as root (``SlurmUser=root``), as Debian's packages allow. By hand::

    python tests/slurm/cluster.py /tmp/slurm     # start; prints the SLURM_CONF to export
    python tests/slurm/cluster.py /tmp/slurm --stop
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

#: Debian's packages that provide the daemons and the client commands.
PACKAGES = "munge slurmctld slurmd slurm-client"
INSTALL = f"apt-get update && apt-get install -y {PACKAGES}"
DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "squeue", "scontrol", "sinfo", "srun")
#: How long a job stays visible to squeue after it ended: the executor plugin follows
#: jobs with squeue when there is no accounting database.
MIN_JOB_AGE = 600

TEMPLATE = Path(__file__).with_name("slurm.conf.in")


class ClusterError(RuntimeError):
    """The cluster could not be started (the message says which daemon and why)."""


def missing_tools() -> list[str]:
    """The daemons and client commands that are not installed."""
    found = []
    for name in DAEMONS + CLIENTS:
        if not (shutil.which(name) or os.path.exists(f"/usr/sbin/{name}")):
            found.append(name)
    return found


def tool(name: str) -> str:
    return shutil.which(name) or f"/usr/sbin/{name}"


def free_ports(count: int) -> list[int]:
    """`count` distinct TCP ports free on this machine now."""
    sockets, ports = [], []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("", 0))
            sockets.append(s)
            ports.append(s.getsockname()[1])
    finally:
        for s in sockets:
            s.close()
    return ports


def memory_mb() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    return 1024


def wait_until(condition, limit: float, what: str, poll: float = 0.1):
    """Poll `condition` until it returns something true; ClusterError after `limit` s."""
    deadline = time.monotonic() + limit
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise ClusterError(f"{what}: not within {limit:.0f} s")
        time.sleep(poll)  # polling a condition under a deadline


class Cluster:
    """A single-node Slurm cluster under `root` (see the module docstring)."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).resolve()
        self.conf = self.root / "slurm.conf"
        self.jobcomp = self.root / "jobcomp.log"
        self.logs = self.root / "log"
        self.munge_dir = self.root / "munge"
        self.socket = self.munge_dir / "munge.socket"
        self.node = socket.gethostname().split(".")[0]
        self.bin = self.root / "bin"
        self.processes: dict[str, subprocess.Popen] = {}

    # -- configuration ------------------------------------------------------------
    @property
    def env(self) -> dict[str, str]:
        """The environment of a Slurm client (or daemon) of this cluster."""
        return {**os.environ, "SLURM_CONF": str(self.conf),
                "PATH": f"{self.bin}{os.pathsep}{os.environ.get('PATH', '')}"}

    def write_srun(self) -> None:
        """An ``srun`` first on PATH that restores SLURM_CONF, then runs the real srun.

        The jobstep executor plugin (0.6.x) removes every ``SLURM_*`` variable but the
        job's identity before it calls ``srun`` inside a job, SLURM_CONF included; on a
        real cluster srun then finds /etc/slurm/slurm.conf. This cluster's configuration
        is not there (no system file is touched), hence this one-line wrapper.
        """
        self.bin.mkdir(parents=True, exist_ok=True)
        srun = self.bin / "srun"
        srun.write_text(f'#!/bin/sh\nSLURM_CONF={shlex.quote(str(self.conf))} '
                        f'exec {shlex.quote(tool("srun"))} "$@"\n')
        os.chmod(srun, 0o755)

    def write_config(self) -> None:
        for sub in ("state", "spool", "log", "munge"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        # munged refuses a socket directory or key that others can write or read.
        os.chmod(self.munge_dir, 0o700)
        os.chmod(self.root, 0o755)
        key = self.munge_dir / "munge.key"
        if not key.exists():
            key.write_bytes(os.urandom(1024))
        os.chmod(key, 0o400)
        ctld_port, slurmd_port = free_ports(2)
        values = {
            "ROOT": str(self.root),
            "NODE": self.node,
            "CPUS": str(os.cpu_count() or 1),
            "MEMORY": str(max(512, memory_mb() - 1024)),
            "CTLD_PORT": str(ctld_port),
            "SLURMD_PORT": str(slurmd_port),
            "SOCKET": str(self.socket),
            "JOBCOMP": str(self.jobcomp),
            "MIN_JOB_AGE": str(MIN_JOB_AGE),
        }
        text = TEMPLATE.read_text()
        self.conf.write_text(
            re.sub(r"@([A-Z_]+)@", lambda m: values.get(m.group(1), m.group(0)), text))

    # -- life cycle ---------------------------------------------------------------
    def _spawn(self, name: str, argv: list[str]) -> None:
        out = open(self.logs / f"{name}.out", "ab")
        self.processes[name] = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=self.env, start_new_session=True)
        out.close()

    def _check_alive(self, name: str) -> None:
        proc = self.processes[name]
        if proc.poll() is not None:
            tail = (self.logs / f"{name}.out").read_text(errors="replace")[-3000:]
            log = self.logs / f"{name}.log"
            if log.exists():
                tail += log.read_text(errors="replace")[-3000:]
            raise ClusterError(f"{name} exited with status {proc.returncode}:\n{tail}")

    def start(self, limit: float = 60.0) -> Cluster:
        """Start munged, slurmctld and slurmd; return once the node is idle."""
        self.write_config()
        self.write_srun()
        self._spawn("munged", [
            tool("munged"), "--foreground", "--force",
            f"--socket={self.socket}", f"--key-file={self.munge_dir / 'munge.key'}",
            f"--log-file={self.logs / 'munged.log'}", f"--pid-file={self.munge_dir / 'munged.pid'}",
            f"--seed-file={self.munge_dir / 'munged.seed'}"])
        wait_until(lambda: self._check_alive("munged") or self.socket.exists(), limit,
                   "munged did not create its socket")
        self._spawn("slurmctld", [tool("slurmctld"), "-D", "-i", "-f", str(self.conf)])
        self._spawn("slurmd", [tool("slurmd"), "-D", "-N", self.node, "-f", str(self.conf)])

        def idle():
            for name in ("slurmctld", "slurmd"):
                self._check_alive(name)
            out = subprocess.run(["sinfo", "--noheader", "-N", "-o", "%T"],
                                 capture_output=True, text=True, env=self.env)
            return out.returncode == 0 and out.stdout.split() and \
                all(state == "idle" for state in out.stdout.split())

        wait_until(idle, limit, "the Slurm node did not become idle")
        return self

    def stop(self, limit: float = 30.0) -> None:
        """Stop every daemon this object started (slurmd, slurmctld, munged), by pid."""
        for name in ("slurmd", "slurmctld", "munged"):
            proc = self.processes.pop(name, None)
            if proc is None or proc.poll() is not None:
                continue
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=limit)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=limit)

    # -- what the cluster recorded ------------------------------------------------
    def completed_jobs(self) -> list[dict[str, str]]:
        """slurmctld's job completion log: one dict per finished job (JobId, JobName,
        JobState, Partition, TimeLimit, ...)."""
        if not self.jobcomp.exists():
            return []
        jobs = []
        for line in self.jobcomp.read_text().splitlines():
            record = dict(re.findall(r"(\w+)=(\S*)", line))
            if record:
                jobs.append(record)
        return jobs

    def squeue(self, *args: str) -> str:
        return subprocess.run(["squeue", *args], capture_output=True, text=True,
                              env=self.env, check=True, timeout=30).stdout


def main(argv: list[str]) -> int:
    if missing_tools():
        print(f"missing {' '.join(missing_tools())}; run: {INSTALL}", file=sys.stderr)
        return 1
    root = Path(argv[0])
    if "--stop" in argv:
        for name in ("slurmd", "slurmctld"):
            pid = root / f"{name}.pid"
            if pid.exists():
                os.kill(int(pid.read_text()), signal.SIGTERM)
        pid = root / "munge" / "munged.pid"
        if pid.exists():
            os.kill(int(pid.read_text()), signal.SIGTERM)
        return 0
    cluster = Cluster(root).start()
    # Detach: the daemons outlive this command; --stop ends them by their pid files.
    cluster.processes.clear()
    print(f"export SLURM_CONF={cluster.conf}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
