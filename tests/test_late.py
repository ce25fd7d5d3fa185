"""Late data (#20, item 2): an exposure published at the mountain more than
``alerts.late_after`` seconds ago and not installed, and a night whose backup is more
than ``alerts.backup_late_after`` seconds late, are late: in the metrics, on the page,
in ``--failures``, and mailed once. The real cron entry and a real SMTP server; the
decisions on hand-made input."""

from __future__ import annotations

import datetime as dt
import html.parser
import os

import test_cron_entry
from conftest import NIGHT, NOW, STREAM
from test_cron_entry import cron, with_alerts
from test_metrics import metrics, value
from test_one_failure_path import status_failures

from scripts.alerts import subject
from scripts.status.late import late_backups, late_exposures
from scripts.status.problems import Problem

mailbox = test_cron_entry.mailbox  # the real SMTP server fixture
NOW_EPOCH = dt.datetime.fromisoformat(NOW.replace("Z", "+00:00")).timestamp()


def test_late_is_more_than_late_after_since_publication_and_not_installed():
    published = {(NIGHT, "00000001"): NOW_EPOCH - 1801,   # late
                 (NIGHT, "00000002"): NOW_EPOCH - 1800,   # exactly late_after: not yet
                 (NIGHT, "00000003"): NOW_EPOCH - 7200,   # installed: never late
                 ("20261126", "00000004"): NOW_EPOCH - 86400}
    late = late_exposures(STREAM, published, {NIGHT: {"00000003"}}, NOW_EPOCH, 1800)
    assert [(e.night, e.expid, e.seconds) for e in late] == [
        ("20261126", "00000004", 86400), (NIGHT, "00000001", 1801)]


def test_a_night_is_late_a_day_after_its_backup_was_due():
    # NIGHT's backup is due at 20 UTC the day after: 2026-11-28T20:00:00Z.
    due = dt.datetime(2026, 11, 28, 20, tzinfo=dt.UTC).timestamp()
    assert late_backups(STREAM, [NIGHT], due + 86400, 20, 86400) == []
    late = late_backups(STREAM, [NIGHT, "20261126"], due + 86401, 20, 86400)
    assert [(n.night, n.seconds) for n in late] == [("20261126", 86401 + 86400),
                                                    (NIGHT, 86401)]


def test_a_late_problem_mails_as_late_not_as_failed():
    problem = Problem(STREAM, NIGHT, "00000001", "late", "published 31 min ago", "", "",
                      "find why", "record")
    assert subject(problem) == f"[desitransfer] {STREAM} {NIGHT}/00000001: late data"


def published(site, expid: str, seconds_before_now: float) -> None:
    """Date the exposure's link at the mountain (its own mtime: the publication)."""
    when = NOW_EPOCH - seconds_before_now
    os.utime(site.source / NIGHT / expid, (when, when), follow_symlinks=False)


def late_rows(site) -> list[tuple[str, ...]]:
    """The cells of the page's "Late data" table."""
    rows: list[list[str]] = []

    class Rows(html.parser.HTMLParser):
        inside = False

        def handle_starttag(self, tag, attrs):
            if tag == "tr" and "late" in (dict(attrs).get("class") or "").split():
                self.inside = True
                rows.append([])
            elif tag == "td" and self.inside:
                rows[-1].append("")

        def handle_endtag(self, tag):
            if tag == "tr":
                self.inside = False

        def handle_data(self, data):
            if self.inside and rows and rows[-1]:
                rows[-1][-1] += data

    Rows().feed((site.state / "status" / "index.html").read_text())
    return [tuple(r) for r in rows]


def test_an_exposure_that_cannot_be_staged_is_late_everywhere_and_mailed_once(site, mailbox):
    for expid in ("00009000", "00009001"):  # neither can be staged: a link loop inside
        data = site.exposure(expid)
        (data / "loop").symlink_to("loop")
    site.exposure("00009002")  # installed: never late
    published(site, "00009000", 31 * 60)
    published(site, "00009001", 29 * 60)  # not late yet
    published(site, "00009002", 31 * 60)
    with_alerts(site, mailbox)
    for _ in range(2):
        cron(site)
        samples = metrics(site)
        assert value(samples, "desitransfer_exposures_late", stream=STREAM) == 1
        assert value(samples, "desitransfer_problems", stream=STREAM, kind="late data") == 1
        rows = late_rows(site)
        assert [(r[0], r[1]) for r in rows] == [(STREAM, f"{NIGHT}/00009000")], rows
        assert "published at the mountain 31.0 min ago" in rows[0][3]
        late = [p for p in status_failures(site) if p["stage"] == "late data"]
        assert [p["item"] for p in late] == [f"{NIGHT}/00009000"]
        assert "alerts.late_after: 1800 s" in late[0]["reason"]
    assert site.installed(NIGHT, "00009002").is_dir()
    subjects = mailbox.subjects()
    assert subjects.count(f"[desitransfer] {STREAM} {NIGHT}/00009000: late data") == 1
    assert not any("00009001: late" in s or "00009002" in s for s in subjects), subjects
    # Both held exposures are mailed for their staging, once each: 3 mails in two runs.
    assert len(subjects) == 3, subjects
