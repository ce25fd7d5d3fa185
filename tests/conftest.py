"""Fixtures: a synthetic mountain, a real sshd on loopback, and the real workflow.

The workflow runs as users run it: ``snakemake`` in a subprocess on temporary
directories, with the project's profile and a test configuration.
"""

from __future__ import annotations

import http.server
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from loopback_sshd import LoopbackSshd  # noqa: E402

from scripts.markers import marker_path  # noqa: E402
from scripts.mountain import make_exposure  # noqa: E402

SNAKEMAKE = [sys.executable, "-m", "snakemake"]
STREAM = "DESI_SPECTRO_DATA"
NIGHT = "20261127"
NOW = "2026-11-28T16:00:00Z"


#: Fixtures that run the real workflow: a test using one is marked slow.
_WORKFLOW_FIXTURES = {"site", "sshd", "tape", "archive", "installed", "shared"}
#: Modules marked as a whole, by what they start.
_MODULE_MARKERS = {"test_slurm.py": ("slurm", "slow"), "test_status_page.py": ("browser", "slow"),
                   "test_fault_soak.py": ("slow",)}


#: The two tests of minutes, mostly spent waiting (Slurm's one-minute time limit, checked
#: every 30 s; the soak's killed and hung runs): run first, they overlap the rest. Last
#: in the alphabet, the Slurm test ended `make test` alone for minutes on an idle core.
_FIRST = ("test_slurm.py", "test_fault_soak.py")


def pytest_collection_modifyitems(config, items) -> None:
    """Mark each test by what it starts, so `make test-fast` (-m "not slow") runs the
    unit and small integration tests only; `make test` runs everything. The longest
    tests are put first (`_FIRST`); the order is otherwise the files'."""
    for item in items:
        markers = set(_MODULE_MARKERS.get(item.path.name, ()))
        if _WORKFLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            markers.add("slow")
        for marker in sorted(markers):
            item.add_marker(marker)
    items.sort(key=lambda item: item.path.name not in _FIRST)  # stable: False first


def require_tool(name: str) -> str:
    """Path of a system tool the tests need; fail (not skip) with the install command."""
    path = shutil.which(name) or (f"/usr/sbin/{name}" if os.path.exists(f"/usr/sbin/{name}")
                                  else None)
    if path is None:
        pytest.fail(f"{name} is not installed: run `make system-packages` (apt-get install"
                    " rsync openssh-server openssh-client graphviz)", pytrace=False)
    return path


class Site:
    """A temporary mountain + data centre, and a way to run the workflow on it."""

    def __init__(self, root: Path):
        self.root = root
        self.mountain = root / "mountain"
        self.source = self.mountain / "raw"
        self.state = root / "state"
        self.staging = root / "staging"
        self.destination = root / "archive"
        self.config_file = root / "config.yaml"
        self.lock = root / "checksum-running"
        self.source.mkdir(parents=True)
        self.env = dict(os.environ)
        self.config = {
            "state": str(self.state),
            "lookback_nights": 30,
            "now": NOW,
            # One cron invocation is one pass over the lanes here; the watch between
            # cron starts has its own tests (test_watch.py).
            "cron_interval": 0,
            "remote": {
                "host": "local",
                "timeout": 60,
                "transfer_timeout": 120,
                "checksum_lock": str(self.lock),
                "listing_cache": 0,
            },
            "verify": {"max_attempts": 3, "on_failure": "install", "threads": 2},
            "backup": {"backend": "none"},
            "streams": {
                STREAM: {
                    "source": str(self.source),
                    "staging": str(self.staging),
                    "destination": str(self.destination),
                    "hpss": "desi/spectro/data",
                    "checksum_file": "checksum-{exposure}.sha256sum",
                }
            },
        }

    def exposure(self, expid: str, files: dict[str, bytes] | None = None,
                 night: str = NIGHT, **kwargs) -> Path:
        """Make an exposure on the mountain (default: three small files)."""
        files = files if files is not None else {
            f"desi-{expid}.fits.fz": os.urandom(3000),
            f"guide-{expid}.fits.fz": os.urandom(2000),
            f"sky-{expid}.fits.fz": b"sky" * 100,
        }
        return make_exposure(self.mountain, night, expid, files, **kwargs)

    def marker(self, night: str, expid: str | None, stage: str) -> Path:
        return marker_path(self.state, STREAM, night, expid, stage)

    def record(self, night: str, expid: str | None, stage: str) -> dict:
        return json.loads(self.marker(night, expid, stage).read_text())

    def failure(self, night: str, expid: str | None, stage: str) -> dict:
        return json.loads(Path(f"{self.marker(night, expid, stage)}.failed").read_text())

    def installed(self, night: str, expid: str) -> Path:
        return self.destination / night / expid

    def write_config(self) -> Path:
        self.config_file.write_text(yaml.safe_dump(self.config))
        return self.config_file

    def command(self, *args: str) -> list[str]:
        self.write_config()
        # --configfile takes several values: it goes last.
        return [*SNAKEMAKE, "-s", str(REPO / "Snakefile"), "-d", str(self.root), *args,
                "--configfile", str(self.config_file)]

    def run(self, *args: str, check: bool = True,
            timeout: float = 300) -> subprocess.CompletedProcess:
        """Run the workflow to completion; with `check`, fail the test on a non-zero exit."""
        result = subprocess.run(self.command(*args), capture_output=True, text=True,
                                timeout=timeout, cwd=self.root, env=self.env)
        if check and result.returncode != 0:
            pytest.fail(f"workflow failed ({result.returncode}):\n{result.stderr[-6000:]}")
        return result


def planned_jobs(dry_run_output: str) -> dict[str, int]:
    """The job counts of a ``snakemake -n`` run, by rule (from its "Job stats" table)."""
    counts: dict[str, int] = {}
    lines = dry_run_output.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("Job stats:"):
            for row in lines[i + 3:]:
                parts = row.split()
                if len(parts) != 2 or not parts[1].isdigit() or parts[0] == "total":
                    break
                counts[parts[0]] = int(parts[1])
    return counts


@pytest.fixture
def site(tmp_path: Path) -> Site:
    require_tool("rsync")
    return Site(tmp_path)


@pytest.fixture(scope="session")
def sshd(tmp_path_factory) -> dict:
    """A real OpenSSH server on 127.0.0.1 standing in for the mountain host.

    Yields the ``remote`` configuration that reaches it (and its port).
    """
    require_tool("sshd")
    require_tool("ssh")
    server = LoopbackSshd(tmp_path_factory.mktemp("sshd"))
    try:
        yield {**server.remote, "port": server.port, "log": str(server.log)}
    finally:
        server.stop()


class StatusServer:
    """A real HTTP server answering like NERSC's HPSS status endpoint."""

    def __init__(self):
        self.body = b'{"status": "active"}'
        self.requests = 0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's name)
                outer.requests += 1
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(outer.body)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/api/v1.2/status/archive"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def set_status(self, status: str) -> None:
        self.body = json.dumps({"name": "archive", "status": status}).encode()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def status_server():
    server = StatusServer()
    yield server
    server.close()


@pytest.fixture
def tape(site, status_server):
    """Back up with htar to the HPSS emulator over a local directory."""
    root = site.root / "hpss"
    site.env["HPSS_ROOT"] = str(root)
    site.config["backup"] = {
        "backend": "htar",
        "hpss_bin": str(REPO / "tests" / "hpss_emulator"),
        "hpss_status": status_server.url,
        "status_timeout": 5,
        "timeout": 60,
    }
    return root
