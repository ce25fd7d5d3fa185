"""One failure path (#11): every failure leaves a record, shows on the page, and reaches a
person exactly once. The real workflow, the cron entry and a real SMTP server (aiosmtpd);
real file systems for a full disk (a small tmpfs)."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import test_cron_entry
from conftest import NIGHT, REPO, STREAM
from test_cron_entry import cron, cron_log, with_alerts

from scripts.alerts import message
from scripts.configuration import describe_validation_error
from scripts.escaping import printable
from scripts.rsync import root_cause

OLDER = "20261126"
mailbox = test_cron_entry.mailbox  # the real SMTP server fixture
NOW_BACKUP_OF_OLDER = "2026-11-28T16:00:00Z"  # OLDER's backup due, NIGHT's catch-up only


@contextlib.contextmanager
def tmpfs(path: Path, size: str):
    """A real, small file system at `path` (tmpfs: a full disk, and chattr +i, on any
    kernel from 6.0; the tests run as root, as CI does)."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs",
                              str(path)], capture_output=True, text=True)
    assert mounted.returncode == 0, f"cannot mount a tmpfs (run as root): {mounted.stderr}"
    try:
        yield path
    finally:
        subprocess.run(["chattr", "-R", "-i", str(path)], capture_output=True)
        subprocess.run(["umount", "-l", str(path)], check=True)


def immutable(path: Path) -> None:
    """chattr +i: not even root may create a file in `path` (EPERM)."""
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["chattr", "+i", str(path)], check=True)


def status_failures(site) -> list[dict]:
    result = subprocess.run([sys.executable, "-m", "scripts.status", "--config",
                             str(site.config_file), "--failures", "--json"], cwd=REPO,
                            capture_output=True, text=True, timeout=120, check=True)
    return json.loads(result.stdout)


def page_problems(site) -> set[tuple[str, str, str]]:
    """(stream, item, stage) of every row of the page's "Needs a person" table."""
    import html.parser

    rows, cells = [], []

    class Rows(html.parser.HTMLParser):
        inside = False

        def handle_starttag(self, tag, attrs):
            if tag == "tr" and "problem" in (dict(attrs).get("class") or ""):
                self.inside = True
                cells.clear()
            elif tag == "td" and self.inside:
                cells.append("")

        def handle_endtag(self, tag):
            if tag == "tr" and self.inside:
                rows.append(tuple(cells[:3]))
                self.inside = False

        def handle_data(self, data):
            if self.inside and cells:
                cells[-1] += data

    Rows().feed((site.state / "status" / "index.html").read_text())
    return set(rows)


def subject_problems(mailbox) -> set[tuple[str, str, str]]:
    """(stream, item, stage) of every alert mail, from its subject."""
    out = set()
    for subject in mailbox.subjects():
        head, _, stage = subject.removeprefix("[desitransfer] ").rpartition(": ")
        if head.startswith("resolved"):
            continue
        stream, _, item = head.partition(" ") if not head.startswith("all streams") else (
            "all streams", "", head.removeprefix("all streams "))
        out.add((stream, item, stage.removesuffix(" failed")))
    return out


# --------------------------------------------------------------------------- 1. any bytes


def test_names_with_any_bytes_are_safe_in_mail_page_status_files_and_logs(site, mailbox):
    """A file name that is not UTF-8 inside an exposure, and a carriage return in a link
    name: the mail is sent, the ledger saved, the page and the status files written."""
    data = site.exposure("00007000")
    with open(os.fsencode(data) + b"/bad-\xff\x1b.fits", "wb") as f:  # unlisted: fails
        f.write(b"written by a camera with a bad byte")
    (site.source / NIGHT / "0000\r7001").symlink_to(data)  # malformed: a CR in a link name
    site.config["verify"].update(max_attempts=1, on_failure="hold")
    with_alerts(site, mailbox)
    result = cron(site)
    assert result.returncode == 1, result.stderr
    subjects = mailbox.subjects()
    assert len(subjects) == 2 and not any("\r" in s or "\n" in s for s in subjects), subjects
    assert f"[desitransfer] {STREAM} {NIGHT}/00007000: verification failed" in subjects
    # Escaped (the listing reads text with universal newlines: the CR shows as \n).
    assert any(s.endswith(f"{NIGHT}/0000\\n7001: listing failed") for s in subjects), subjects
    body = next(m for m in mailbox.messages if "00007000" in m["Subject"]).get_content()
    assert "bad-\\xff\\x1b.fits" in body
    ledger = json.loads((site.state / ".alerts" / "sent.json").read_text())
    assert len(ledger["sent"]) == 2
    page = (site.state / "status" / "index.html").read_text()
    assert "bad-\\xff\\x1b.fits" in page and "\x1b" not in page
    assert (site.state / "status" / "desi_transfer_status_2026.json").is_file()
    for log in [site.state / "logs" / "desi_transfer.log",
                *(site.state / "logs").rglob("*.log")]:
        assert "Logging error" not in log.read_text(errors="replace"), log
    assert cron(site).returncode == 0  # held: left alone, and nothing mailed again
    assert len(mailbox.messages) == 2


def test_mail_headers_never_carry_control_characters():
    alerts = {"to": ["desi\r\nBcc: x@example.org"], "from": "a@b\n", "smtp": "localhost:25"}
    mail = message(alerts, "subject\r\nX-Forged: yes \udcff", "body \udcff\n")
    headers = mail.as_bytes().split(b"\r\n\r\n")[0].split(b"\r\n")
    assert [h.split(b":")[0] for h in headers if not h.startswith((b" ", b"\t"))] == [
        b"Subject", b"From", b"To", b"Content-Type", b"Content-Transfer-Encoding",
        b"MIME-Version"]
    assert mail["Subject"] == "subject\\r\\nX-Forged: yes \\xff"
    assert printable("a\rb\udcffc×") == "a\\rb\\xffc×"


# --------------------------------------------------------------------------- 3. root cause


def test_staging_into_a_full_file_system_says_so(site):
    site.exposure("00007100", {"desi-00007100.fits.fz": os.urandom(3_000_000)})
    site.config["verify"]["max_attempts"] = 1
    with tmpfs(site.staging, "1m"):
        result = site.run(check=False)
        assert result.returncode != 0
        failure = site.failure(NIGHT, "00007100", "staged")
    assert failure["reason"].startswith(
        f"no space left on device (staging, {site.staging}/{NIGHT}/00007100/"), failure
    assert "Broken pipe" not in failure["reason"]
    # A full disk is the environment's: the exposure is not held, a person is told.
    assert failure["environment"] and failure["exhausted"] and not failure.get("held")
    assert [p["stage"] for p in status_failures(site)] == ["staging"]


def test_root_cause_of_captured_rsync_output():
    # Captured from rsync 3.5.0 here: into a 1 MB tmpfs, into a read-only tmpfs, into an
    # immutable directory; and rsync's own stall timeout.
    full = ('rsync: [receiver] write failed on "/s/x/big": No space left on device (28)\n'
            "rsync error: error in file IO (code 11) at receiver.c(657) [receiver=3.5.0]\n"
            "rsync: [sender] write error: Broken pipe (32)\n")
    assert root_cause(full) == ("no space left on device (staging, /s/x/big)", True)
    read_only = 'rsync: [Receiver] mkdir "/ro/x" failed: Read-only file system (30)\n'
    assert root_cause(read_only) == ("read-only file system (staging, /ro/x)", True)
    mountain = 'rsync: [sender] send_files failed to open "/m/f": Permission denied (13)\n'
    assert root_cause(mountain) == ("permission denied (at the mountain, /m/f)", False)
    assert root_cause("[receiver] io timeout after 3 seconds -- exiting\n")[0] == (
        "timed out after 3 s without data (rsync --timeout)")
    assert root_cause("rsync error: some files/attrs were not transferred (code 23)") is None


# --------------------------------------------------------------------------- 4. staging policy


def test_an_exposure_that_cannot_be_staged_is_held_mailed_once_and_its_night_goes_on(
        site, mailbox):
    site.exposure("00007200")
    site.exposure("00007201")
    site.config["now"] = "2026-11-28T21:00:00Z"  # catch-up and backup due
    site.config["backup"] = {"backend": "tar", "archive": str(site.root / "tape"),
                             "hpss_status": ""}
    site.config["verify"]["max_attempts"] = 2
    with_alerts(site, mailbox)
    with tmpfs(site.staging, "64m"):
        immutable(site.staging / NIGHT / "00007201")  # rsync gets EPERM for this one only
        first_run = cron(site)  # within its retries: no news, nothing for cron to mail
        assert (first_run.returncode, first_run.stderr) == (0, "")
        first = site.failure(NIGHT, "00007201", "staged")
        assert first["reason"].startswith("operation not permitted (staging, ")
        assert not first.get("held") and mailbox.messages == []  # retried first
        assert not site.marker(NIGHT, None, "backedup").exists()  # the night waits
        assert cron(site).returncode == 1
        held = site.failure(NIGHT, "00007201", "staged")
        assert held["held"] and held["exhausted"] and held["attempts"] == 2
        assert mailbox.subjects() == [
            f"[desitransfer] {STREAM} {NIGHT}/00007201: staging failed"]
        assert cron(site).returncode == 0  # the night goes on without it
        record = site.record(NIGHT, None, "backedup")
        assert record["held"] == ["00007201"] and record["exposures"] == ["00007200"]
        assert site.marker(NIGHT, None, "caughtup").exists()
        assert len(mailbox.messages) == 1
        # A person fixes it and releases the exposure: it goes to tape with the next
        # supplementary archive, and the problem is resolved.
        subprocess.run(["chattr", "-i", str(site.staging / NIGHT / "00007201")], check=True)
        Path(f"{site.marker(NIGHT, '00007201', 'staged')}.failed").unlink()
        assert cron(site).returncode == 0, cron_log(site)[-3000:]
    assert site.installed(NIGHT, "00007201").is_dir()
    archives = site.record(NIGHT, None, "backedup")["archives"]
    assert [a["exposures"] for a in archives] == [["00007200"], ["00007201"]]
    assert mailbox.subjects()[-1] == (
        f"[desitransfer] resolved: {STREAM} {NIGHT}/00007201: staging")


# --------------------------------------------------------------------------- 5. catch-up


@pytest.mark.parametrize("when", ["morning", "final"])
def test_a_late_file_that_fails_reverification_is_an_exposure_failure(site, mailbox, when):
    """In the morning catch-up, or in the final catch-up the backup runs first."""
    data = site.exposure("00007300")
    site.config["backup"] = {"backend": "tar", "archive": str(site.root / "tape"),
                             "hpss_status": ""}
    # Installed before the catch-up; for the final one, caught up before the backup.
    site.config["now"] = "2026-11-28T12:00:00Z" if when == "morning" else NOW_BACKUP_OF_OLDER
    site.run()
    late = data / "desi-00007300.fits.fz"
    late.write_bytes(os.urandom(3000))  # changed after installation; the checksum is not
    os.utime(late, (late.stat().st_atime, late.stat().st_mtime + 60))
    site.config["now"] = NOW_BACKUP_OF_OLDER if when == "morning" else "2026-11-28T21:00:00Z"
    site.config["verify"]["max_attempts"] = 1
    with_alerts(site, mailbox)
    told = cron(site)  # the archive keeps the verified copy; cron is told once
    assert told.returncode == 1 and "1 new problem" in told.stderr, told.stderr
    assert f"{NIGHT}/00007300: catch-up" in told.stderr
    failure = site.failure(NIGHT, "00007300", "updated")
    assert "does not verify" in failure["reason"]
    assert mailbox.subjects() == [f"[desitransfer] {STREAM} {NIGHT}/00007300: catch-up failed"]
    rows = json.loads((site.state / "status" / "desi_transfer_status_2026.json").read_text())
    checksum_row = next(r for r in rows[NIGHT]["7300"] if r[0] == 1)
    assert checksum_row[1] == 0  # DESI's status file says the checksum failed
    assert (STREAM, f"{NIGHT}/00007300", "catch-up") in page_problems(site)
    assert [p["item"] for p in status_failures(site)] == [f"{NIGHT}/00007300"]
    if when == "final":  # the night went to tape all the same, with the verified copy
        assert site.record(NIGHT, None, "backedup")["exposures"] == ["00007300"]
    again = cron(site)
    assert (again.returncode, again.stderr) == (0, "")  # no news the second time
    assert len(mailbox.messages) == 1


# --------------------------------------------------------------------------- 6. one of each


def test_one_failure_of_each_kind_one_mail_each_page_and_command_agree(site, tape, mailbox):
    """stage, verify, install, catch-up, backup, listing and configuration: the mails,
    the page's "Needs a person" and --failures list the same problems; a second run
    mails nothing."""
    site.config["verify"].update(max_attempts=1, on_failure="hold")
    late = site.exposure("00007400", night=OLDER)               # catch-up, then backup
    site.exposure("00007401")                                   # staging
    bad = site.exposure("00007402")                             # verification
    (bad / "desi-00007402.fits.fz").write_bytes(b"corrupted")
    site.exposure("00007403")                                   # install
    site.destination.mkdir()
    (site.destination / NIGHT).write_text("not a directory")    # install cannot make the night
    with tmpfs(site.staging, "64m"):
        immutable(site.staging / NIGHT / "00007401")
        site.config["now"] = "2026-11-27T12:00:00Z"             # nothing due at night level
        site.run(check=False)
        (late / "desi-00007400.fits.fz").write_bytes(b"changed after installation")
        site.config["now"] = NOW_BACKUP_OF_OLDER
        site.env["HTAR_FAIL_EXIT"] = "70"                       # every htar fails
        site.run(check=False)
        site.config["alerts"] = {"unreachable_runs": 1}
        site.source.rename(site.source.with_name("moved"))      # the listing fails
        assert cron(site).returncode == 1
        with_alerts(site, mailbox, unreachable_runs=1)
        site.config["verify"]["on_failure"] = "ignore"          # refused
        assert cron(site).returncode == 1
    expected = {
        (STREAM, f"{NIGHT}/00007401", "staging"),
        (STREAM, f"{NIGHT}/00007402", "verification"),
        (STREAM, f"{NIGHT}/00007403", "install"),
        (STREAM, f"{OLDER}/00007400", "catch-up"),
        (STREAM, OLDER, "backup"),
        ("all streams", "local", "listing"),
        ("all streams", str(site.config_file), "configuration"),
    }
    assert len(mailbox.messages) == len(expected)
    assert subject_problems(mailbox) == expected
    assert page_problems(site) == expected
    assert {(p["stream"], p["item"], p["stage"]) for p in status_failures(site)} == expected
    cron(site)
    assert len(mailbox.messages) == len(expected)


# --------------------------------------------------------------------------- 7. the schema


@pytest.mark.parametrize("backup, alerts, expected", [
    ({"backend": "tar"}, {}, "backup.archive: is required when backup.backend is tar"),
    ({"backend": "htar", "archive": "/tape"}, {},
     "backup.archive: is used only when backup.backend is tar"),
    ({"backend": "htar", "hpss_bin": ""}, {}, "backup.hpss_bin: is required when"),
    ({"backend": "none"}, {"to": ["a@example.org"], "smtp": "mail:99999"},
     "alerts.smtp: must be HOST:PORT (port 1-65535) when alerts.to has recipients"),
    ({"backend": "none"}, {"to": ["a@example.org"], "from": "nobody"},
     "alerts.from: must be an e-mail address"),
])
def test_key_combinations_are_one_line(backup, alerts, expected):
    config = {"state": "/s", "remote": {"host": "local"}, "backup": backup, "alerts": alerts,
              "streams": {STREAM: {"source": "/m", "staging": "/g", "destination": "/d",
                                   "hpss": "h", "checksum_file": "c"}}}
    line = describe_validation_error(config, ["site.yaml"])
    assert line is not None and expected in line and "\n" not in line, line
    assert describe_validation_error({**config, "backup": {"backend": "none"},
                                      "alerts": {"smtp": "mail:99999"}}, ["x"]) is None


# --------------------------------------------------------------------------- switches


def test_version_and_debug(site):
    import tomllib

    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    shown = subprocess.run([sys.executable, str(REPO / "scripts" / "cron_entry.py"), "-V"],
                           capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0 and shown.stdout == f"desitransfer-workflow {version}\n"
    site.exposure("00007500")
    result = cron(site, "--debug")
    assert result.returncode == 0, result.stderr
    assert f"starting (desitransfer-workflow {version})" in cron_log(site)
    stage_log = (site.state / "logs" / STREAM / NIGHT / "00007500.staged.log").read_text()
    assert f"stage_exposure {STREAM}/{NIGHT}/00007500 (desitransfer-workflow {version}," \
           " debug)" in stage_log
    assert " DEBUG running: rsync --recursive" in stage_log and " DEBUG exited 0 in " in \
        stage_log
    page = (site.state / "status" / "index.html").read_text()
    assert f'<span id="version">{version}</span>' in page
    assert "median of 1 · p95" in page  # the latency card: published → installed


def test_latency_from_publication_to_installed(tmp_path, capsys):
    from scripts.markers import marker_path, write_marker
    from scripts.status import latency_summary, main, read_night

    state = tmp_path / "state"
    for i, minutes in enumerate([1, 2, 3, 4, 30]):
        expid = f"{7600 + i:08d}"
        write_marker(marker_path(state, STREAM, NIGHT, expid, "staged"), {
            "published": "2026-11-28T02:00:00Z", "outcome": "staged"})
        write_marker(marker_path(state, STREAM, NIGHT, expid, "installed"), {
            "time": f"2026-11-28T02:{minutes:02d}:00Z"})
    write_marker(marker_path(state, STREAM, NIGHT, "00007700", "staged"), {
        "outcome": "staged"})  # no publication time: not counted
    summary = latency_summary(read_night(state, STREAM, NIGHT).exposures.values())
    assert (summary.count, summary.median, summary.p95, summary.worst) == (5, 180, 1800, 1800)
    assert summary.worst_exposure == f"{NIGHT}/00007604"
    config = tmp_path / "config.yaml"
    config.write_text(json.dumps({"state": str(state), "now": "2026-11-28T16:00:00Z",
                                  "remote": {"host": "local"}, "streams": {STREAM: {}}}))
    assert main(["--config", str(config), "--latency", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["p95_seconds"] == 1800
    main(["--config", str(config)])
    assert "(5 exposures): median 3.0 min, p95 30.0 min, worst 30.0 min" in \
        capsys.readouterr().out
