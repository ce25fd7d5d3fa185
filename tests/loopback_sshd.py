"""A real OpenSSH server on 127.0.0.1 standing in for the mountain host.

Used by the tests' ``sshd`` fixture and by the benchmark suite: generated host and user
keys, a free port, BatchMode so nothing ever waits for a password.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import time
from pathlib import Path


class SshdError(RuntimeError):
    """sshd is missing or did not start; one line."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LoopbackSshd:
    """A real OpenSSH server on 127.0.0.1 with generated keys; a non-daemon child."""

    def __init__(self, home: Path):
        sshd_bin = shutil.which("sshd") or "/usr/sbin/sshd"
        if not os.path.exists(sshd_bin) or not shutil.which("ssh"):
            raise SshdError("sshd/ssh not installed: apt-get install openssh-server"
                             " openssh-client")
        home.mkdir(parents=True, exist_ok=True)
        os.chmod(home, 0o700)
        for kind in ("host", "user"):
            key = home / f"{kind}_key"
            if not key.exists():
                subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)],
                               check=True)
        (home / "authorized_keys").write_text((home / "user_key.pub").read_text())
        os.chmod(home / "authorized_keys", 0o600)
        user = pwd.getpwuid(os.getuid()).pw_name
        self.port = free_port()
        config = home / "sshd_config"
        config.write_text(f"""
Port {self.port}
ListenAddress 127.0.0.1
HostKey {home}/host_key
AuthorizedKeysFile {home}/authorized_keys
PidFile {home}/sshd.pid
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
PermitRootLogin prohibit-password
StrictModes no
UsePAM no
AllowUsers {user}
""")
        if os.getuid() == 0:
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        # Its log goes to a file: a pipe nobody drains fills after a few hundred
        # connections and then every new connection hangs in sshd's write.
        self.log = home / "sshd.log"
        with open(self.log, "w") as log:
            self.process = subprocess.Popen([sshd_bin, "-D", "-e", "-f", str(config)],
                                            stdout=subprocess.DEVNULL, stderr=log)
        self.host = f"{user}@127.0.0.1"
        self.ssh = ["ssh", "-q", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
                    "-o", "UserKnownHostsFile=/dev/null", "-o", "ConnectTimeout=10",
                    "-i", str(home / "user_key"), "-p", str(self.port)]
        self._wait()

    def _wait(self, limit: float = 20.0) -> None:
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SshdError(f"sshd exited with status {self.process.returncode}: "
                                 f"{self.log.read_text()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise SshdError(f"sshd did not listen on port {self.port} within {limit} s")

    @property
    def remote(self) -> dict:
        return {"host": self.host, "ssh": list(self.ssh)}

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
