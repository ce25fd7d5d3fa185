"""The mountain as a real sshd on loopback: listing and rsync over ssh, and its failures."""

from __future__ import annotations

import socket
import time

from conftest import NIGHT, STREAM, planned_jobs
from loopback_sshd import free_port

from scripts.configuration import ANNOUNCEMENT


def over_ssh(site, sshd, **remote):
    site.config["remote"].update(host=sshd["host"], ssh=sshd["ssh"], **remote)


def test_night_over_ssh_is_installed(site, sshd):
    over_ssh(site, sshd)
    site.exposure("00002000", {"a b.fits": b"a" * 1000, "c.json": b"{}"})
    site.exposure("00002001")
    site.run()
    for expid in ("00002000", "00002001"):
        assert site.record(NIGHT, expid, "checksummed")["outcome"] == "verified"
        assert site.installed(NIGHT, expid).is_dir()
    assert (site.installed(NIGHT, "00002000") / "a b.fits").read_bytes() == b"a" * 1000


def test_listing_is_cached_for_the_parses_of_one_run_only(site, sshd):
    over_ssh(site, sshd, listing_cache=3600)
    site.env["DESITRANSFER_RUN"] = "run-1"  # re-parses of one run (e.g. its Slurm jobs)
    site.exposure("00002010")
    # The run's first parse lists and caches (a preview reads the cache, never writes
    # it): done here as that parse does it.
    from scripts.configuration import get_now, with_defaults
    from scripts.remote import first_night, list_exposures
    from scripts.state_layout import listing_cache_path

    config = with_defaults(dict(site.config))
    list_exposures(config["remote"], str(site.source),
                   first_night(get_now(config), config["lookback_nights"]),
                   cache_file=listing_cache_path(site.state, STREAM), cache_seconds=3600,
                   run_id="run-1")
    assert planned_jobs(site.run("-n").stdout)["stage_exposure"] == 1
    site.exposure("00002011")  # the cached listing does not know it yet
    assert planned_jobs(site.run("-n").stdout)["stage_exposure"] == 1
    site.env["DESITRANSFER_RUN"] = "run-2"  # a later run lists afresh
    assert planned_jobs(site.run("-n").stdout)["stage_exposure"] == 2
    site.exposure("00002012")
    site.env["DESITRANSFER_RUN"] = "run-2"
    site.config["remote"]["listing_cache"] = 0  # no cache at all: every parse lists
    assert planned_jobs(site.run("-n").stdout)["stage_exposure"] == 3
    del site.env["DESITRANSFER_RUN"]  # a run started by hand has an id of its own
    site.exposure("00002013")
    site.config["remote"]["listing_cache"] = 3600
    assert planned_jobs(site.run("-n").stdout)["stage_exposure"] == 4


def test_ssh_to_a_dead_port_is_one_clear_error(site, sshd):
    ssh = list(sshd["ssh"])
    ssh[ssh.index("-p") + 1] = str(free_port())
    site.config["remote"].update(host=sshd["host"], ssh=ssh)
    site.exposure("00002020")
    result = site.run("-n", check=False)
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("desitransfer:")
              and not line.startswith(ANNOUNCEMENT)]
    assert len(errors) == 1 and "cannot reach" in errors[0] and "ssh status 255" in errors[0]


def test_a_mountain_that_never_answers_times_out(site, sshd):
    with socket.socket() as silent:  # accepts TCP connections (backlog), never speaks
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        ssh = list(sshd["ssh"])
        ssh[ssh.index("-p") + 1] = str(silent.getsockname()[1])
        site.config["remote"].update(host=sshd["host"], ssh=ssh, timeout=3)
        site.exposure("00002030")
        start = time.monotonic()
        result = site.run("-n", check=False)
        elapsed = time.monotonic() - start
    assert result.returncode == 1
    assert "timed out after 3 s" in result.stderr
    assert elapsed < 30
