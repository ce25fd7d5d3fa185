"""The cron entry, driven as cron drives it: a subprocess, with a real SMTP server."""

from __future__ import annotations

import email
import fcntl
import os
import socket
import stat
import subprocess
import sys
import time
from email.policy import default
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from conftest import NIGHT, REPO, STREAM
from loopback_sshd import free_port

from scripts.state_layout import listing_cache_path

CRON = [sys.executable, str(REPO / "scripts" / "cron_entry.py")]


class Mailbox:
    """An SMTP server on loopback that keeps what it receives."""

    def __init__(self):
        self.messages: list[email.message.Message] = []

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 (aiosmtpd's name)
        self.messages.append(email.message_from_bytes(envelope.content, policy=default))
        return "250 OK"

    def subjects(self) -> list[str]:
        return [m["Subject"] for m in self.messages]


@pytest.fixture
def mailbox():
    box = Mailbox()
    controller = Controller(box, hostname="127.0.0.1", port=free_port())
    controller.start()
    box.smtp = f"127.0.0.1:{controller.port}"
    yield box
    controller.stop()


def cron(site, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    site.config.setdefault("kill_file", str(site.root / "stop_desi_transfer"))
    return subprocess.run([*CRON, str(site.write_config()), *args], cwd=site.root,
                          capture_output=True, text=True, timeout=timeout, env=site.env)


def cron_log(site) -> str:
    return (site.state / "logs" / "desi_transfer.log").read_text()


def with_alerts(site, mailbox, **extra):
    site.config["alerts"] = {"to": ["desi-alarms@example.org"], "smtp": mailbox.smtp, **extra}


def test_kill_file_stops_at_once(site):
    site.exposure("00004000")
    (site.root / "stop_desi_transfer").touch()
    result = cron(site)
    assert result.returncode == 0 and result.stderr == ""
    assert "stop_desi_transfer detected, not running" in cron_log(site)
    assert not (site.root / ".snakemake").exists()
    assert not site.installed(NIGHT, "00004000").exists()


def test_second_invocation_while_a_run_holds_the_lock_exits_at_once(site):
    site.exposure("00004010")
    (site.state / ".lanes").mkdir(parents=True)
    with open(site.state / ".lanes" / "exposures.lock", "a") as exposures, \
            open(site.state / ".lanes" / "nights.lock", "a") as nights:
        for held in (exposures, nights):  # as running cron entries would
            fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        # The locks stay held until it returns: an entry that waited for them would
        # never return (the timeout fails the test), whatever the machine's load.
        result = cron(site, timeout=60)
    assert result.returncode == 0
    assert "another run holds" in cron_log(site)
    assert not (site.root / ".snakemake").exists()  # no DAG was built
    assert cron(site).returncode == 0  # once released, the next run transfers
    assert site.installed(NIGHT, "00004010").is_dir()



def test_a_preview_through_the_cron_entry_plans_without_writing_the_listing(site):
    """The entry plans each exposure-lane run itself (scripts/next_run.py): for a
    preview it observes as a preview does, so no listing cache, no staging."""
    site.exposure("00004015")
    result = cron(site, "--lane", "exposures", "-n")
    assert result.returncode == 0, result.stderr
    assert "00004015" in cron_log(site)  # Snakemake's dry run planned it
    assert not listing_cache_path(site.state, STREAM).exists()
    assert not site.staging.exists()
    assert cron(site, "--lane", "exposures").returncode == 0  # a real run writes it
    assert listing_cache_path(site.state, STREAM).exists()

def test_run_logs_rotates_and_prunes_and_keeps_files_private(site):
    site.exposure("00004020")
    logs = site.state / "logs"
    logs.mkdir(parents=True)
    (logs / "desi_transfer.log").write_bytes(b"x" * (10 * 2**20 + 1))
    old = site.root / ".snakemake" / "log"
    old.mkdir(parents=True)
    for i in range(60):
        (old / f"2026-01-01T0000{i:02d}.000000.snakemake.log").write_text("")
    result = cron(site)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # cron mails only real problems
    assert (logs / "desi_transfer.log.1").stat().st_size > 10 * 2**20
    assert "run finished" in cron_log(site)
    assert len(list(old.glob("*.snakemake.log"))) == 50
    for path in (site.state / ".lanes" / "exposures.lock", logs / "desi_transfer.log",
                 site.marker(NIGHT, "00004020", "installed")):
        assert stat.S_IMODE(path.stat().st_mode) & 0o022 == 0, path


def test_failure_exits_non_zero_with_a_summary_and_mails_once_then_resolved(site, mailbox):
    data = site.exposure("00004030")
    victim = data / "desi-00004030.fits.fz"
    victim.write_bytes(b"corrupted" + victim.read_bytes()[9:])
    site.config["verify"]["on_failure"] = "hold"
    with_alerts(site, mailbox)
    result = cron(site)
    assert result.returncode == 1
    assert result.stderr.startswith("desitransfer: 1 new problem(s)")
    assert "DESI_SPECTRO_DATA 20261127/00004030: verification: 1 mismatched" in result.stderr
    assert mailbox.subjects() == [
        "[desitransfer] DESI_SPECTRO_DATA 20261127/00004030: verification failed"]
    body = mailbox.messages[0].get_content()
    assert "1 mismatched (desi-00004030.fits.fz)" in body and "What to do" in body
    again = cron(site)  # held: later runs leave it alone...
    assert (again.returncode, again.stderr) == (0, "")  # ...cron mails nothing...
    assert len(mailbox.messages) == 1  # ...and neither do the alerts
    # A person fixes the data at the source and releases the exposure.
    site.exposure("00004030")
    Path(f"{site.marker(NIGHT, '00004030', 'checksummed')}.failed").unlink()
    assert cron(site).returncode == 0
    assert site.installed(NIGHT, "00004030").is_dir()
    assert mailbox.subjects()[1] == \
        "[desitransfer] resolved: DESI_SPECTRO_DATA 20261127/00004030: verification"


def test_unreachable_mountain_mails_after_n_runs_and_when_it_is_back(site, sshd, mailbox):
    site.exposure("00004040")
    dead = list(sshd["ssh"])
    dead[dead.index("-p") + 1] = str(free_port())
    site.config["remote"].update(host=sshd["host"], ssh=dead)
    with_alerts(site, mailbox, unreachable_runs=2)
    first = cron(site)  # one run that cannot list is no problem yet: cron mails nothing
    assert (first.returncode, first.stderr) == (0, "")
    assert mailbox.messages == []
    second = cron(site)  # the second is: news, once
    assert second.returncode == 1 and "cannot reach" in second.stderr
    assert mailbox.subjects() == ["[desitransfer] all streams "
                                  f"{sshd['host']}: listing failed"]
    assert "2 consecutive runs" in mailbox.messages[0].get_content()
    third = cron(site)
    assert (third.returncode, third.stderr) == (0, "")  # already told
    assert len(mailbox.messages) == 1
    site.config["remote"]["ssh"] = sshd["ssh"]
    assert cron(site).returncode == 0
    assert site.installed(NIGHT, "00004040").is_dir()
    assert mailbox.subjects()[-1].startswith("[desitransfer] resolved: all streams")


def test_unreachable_smtp_server_never_fails_the_transfer(site):
    data = site.exposure("00004050")
    (data / "extra.txt").write_text("unlisted")
    site.config["verify"]["max_attempts"] = 1
    site.config["alerts"] = {"to": ["desi-alarms@example.org"],
                             "smtp": f"127.0.0.1:{free_port()}"}
    result = cron(site)
    assert site.installed(NIGHT, "00004050").is_dir()
    assert "cannot send alert" in cron_log(site)
    # The problem (installed although it failed) is news: cron's own mail carries it.
    assert result.returncode == 1
    assert "20261127/00004050: verification: 1 unlisted (extra.txt)" in result.stderr


def test_configuration_error_is_one_line_and_a_mail(site, mailbox):
    with_alerts(site, mailbox)
    site.config["verify"]["on_failure"] = "ignore"
    result = cron(site)
    assert result.returncode == 1
    assert "verify.on_failure: 'ignore' is not one of" in result.stderr
    assert mailbox.subjects() == [f"[desitransfer] all streams {site.config_file}:"
                                  " configuration failed"]


def test_unreadable_configuration_is_one_line(site, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("state: [unclosed\n")
    result = subprocess.run([*CRON, str(bad)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "bad.yaml" in result.stderr


def test_checksum_lock_is_logged_once_per_run_not_as_an_error(site):
    site.exposure("00004060")
    site.lock.write_text("")
    assert cron(site).returncode == 0
    lines = [line for line in cron_log(site).splitlines() if "Checksums are being computed" in line]
    assert len(lines) == 1 and " ERROR " not in lines[0]
    assert not site.installed(NIGHT, "00004060").exists()


def test_hung_rsync_ends_as_a_timed_out_failure(site, sshd):
    site.exposure("00004070")
    site.exposure("00004071", night="20261126")
    # The link check before each rsync is the first remote call: it must time out too.
    site.config["remote"].update(host=sshd["host"], ssh=sshd["ssh"], listing_cache=3600,
                                 transfer_timeout=3, timeout=3)
    # A run plans from a listing made after it started, unless its caller hands it the
    # run id the listing was made for: here the preview and the cron run share one.
    site.env["DESITRANSFER_RUN"] = "hung-rsync"
    # A parse of that run lists over the real sshd and caches the listing (a preview
    # would not write it: previews change nothing).
    from scripts.configuration import get_now, with_defaults
    from scripts.remote import first_night, list_exposures
    from scripts.state_layout import listing_cache_path

    config = with_defaults(dict(site.config))
    stream = config["streams"]["DESI_SPECTRO_DATA"]
    list_exposures(config["remote"], stream["source"],
                   first_night(get_now(config), config["lookback_nights"]),
                   cache_file=listing_cache_path(site.state, "DESI_SPECTRO_DATA"),
                   cache_seconds=3600, run_id="hung-rsync")
    with socket.socket() as silent:  # then the mountain stops answering
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        hung = list(sshd["ssh"])
        hung[hung.index("-p") + 1] = str(silent.getsockname()[1])
        site.config["remote"]["ssh"] = hung
        start = time.monotonic()
        result = cron(site)
        elapsed = time.monotonic() - start
    # A first timed-out attempt is retried by the next run: nothing for cron to mail.
    assert (result.returncode, result.stderr) == (0, "")
    assert " ERROR | Error in rule stage_exposure" in cron_log(site)
    assert elapsed < 60
    for night, expid in ((NIGHT, "00004070"), ("20261126", "00004071")):
        failure = site.failure(night, expid, "staged")
        assert "timed out after 3 s" in failure["reason"] and failure["timed_out"]


def test_ssh_without_batchmode_gets_it(site, sshd):
    ssh = list(sshd["ssh"])
    i = ssh.index("BatchMode=yes")
    del ssh[i - 1:i + 1]
    site.config["remote"].update(host=sshd["host"], ssh=ssh)
    site.exposure("00004080")
    # Without BatchMode ssh could wait for a password; the workflow adds it.
    result = cron(site)
    assert result.returncode == 0, result.stderr
    assert site.installed(NIGHT, "00004080").is_dir()
    assert os.path.exists(site.state / ".listing" / "DESI_SPECTRO_DATA.json")


def test_configuration_refused_by_a_range_ends_in_one_line_and_one_mail(site, mailbox):
    # A value the schema refuses can still break what runs after the refusal (the
    # status rebuild's date arithmetic): the failure path must never raise.
    with_alerts(site, mailbox)
    site.config["lookback_nights"] = 10000000
    result = cron(site)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr and "Traceback" not in cron_log(site)
    refusals = [line for line in result.stderr.splitlines() if "lookback_nights" in line]
    assert len(refusals) == 1 and "maximum of 3660" in refusals[0]
    assert mailbox.subjects() == [f"[desitransfer] all streams {site.config_file}:"
                                  " configuration failed"]


def status_command(site, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "scripts.status", "--config",
                           str(site.config_file), *args], cwd=REPO, capture_output=True,
                          text=True, timeout=120)


def test_a_stale_checksum_lock_is_shown_and_mailed_once_and_still_holds_work_back(
        site, sshd, mailbox):
    # Over ssh, as at the mountain: the lock's age is read by the mountain's clock.
    site.config["remote"].update(host=sshd["host"], ssh=sshd["ssh"],
                                 checksum_lock_max_age=3600)
    site.exposure("00004090")
    site.lock.write_text("")
    three_days = time.time() - 3 * 86400
    os.utime(site.lock, (three_days, three_days))
    with_alerts(site, mailbox)
    first = cron(site)  # news: told once, by cron too
    assert first.returncode == 1 and "checksum lock" in first.stderr
    second = cron(site)
    assert (second.returncode, second.stderr) == (0, "")
    assert not site.installed(NIGHT, "00004090").exists()  # the lock still holds work back
    lock_item = f"{sshd['host']}:{site.lock}"
    assert mailbox.subjects() == [f"[desitransfer] all streams {lock_item}:"
                                  " checksum lock failed"]
    assert "has existed on" in mailbox.messages[0].get_content()
    failures = status_command(site, "--failures")
    assert failures.returncode == 0 and "checksum lock" in failures.stdout
    assert "72.0 h" in failures.stdout
    page = (site.state / "status" / "index.html").read_text()
    assert "checksum-running has existed on" in page
    # A fresh lock (the checksums of tonight being computed) is no problem.
    site.lock.unlink()
    assert cron(site).returncode == 0
    assert site.installed(NIGHT, "00004090").is_dir()
    assert mailbox.subjects()[1:] == [f"[desitransfer] resolved: all streams {lock_item}:"
                                      " checksum lock"]
    site.lock.write_text("")
    site.exposure("00004091")
    assert cron(site).returncode == 0
    assert len(mailbox.messages) == 2 and not site.installed(NIGHT, "00004091").exists()
    assert "checksum lock" not in status_command(site, "--failures").stdout


def test_a_stream_that_lists_no_links_any_more_says_so_once(site, mailbox):
    """The original's "No links found, check connection.": a stream that found links
    before and none at all for alerts.unreachable_runs runs is a problem, mailed once,
    on the page and in --failures; links found again resolve it."""
    with_alerts(site, mailbox, unreachable_runs=2)
    site.exposure("00004900")
    assert cron(site).returncode == 0
    link = site.source / NIGHT / "00004900"
    target = os.readlink(link)
    link.unlink()  # the mountain's links are gone (a lost mount, a cleaned disk)
    expected = f"no links found at {site.source}, check the connection"
    for runs in (1, 2, 3):
        cron(site)
        failures = subprocess.run([sys.executable, "-m", "scripts.status", "--config",
                                   str(site.config_file), "--failures"], cwd=REPO,
                                  capture_output=True, text=True, check=True).stdout
        assert (expected in failures) == (runs >= 2), (runs, failures)
    subjects = [s for s in mailbox.subjects() if "listing" in s]
    assert subjects == [f"[desitransfer] DESI_SPECTRO_DATA local:{site.source}: listing"
                        " failed"], mailbox.subjects()
    assert expected in (site.state / "status" / "index.html").read_text()
    link.symlink_to(target)
    assert cron(site).returncode == 0
    assert [s for s in mailbox.subjects() if "listing" in s][1:] == [
        f"[desitransfer] resolved: DESI_SPECTRO_DATA local:{site.source}: listing"]
