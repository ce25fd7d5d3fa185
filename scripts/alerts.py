"""E-mail alerts: one mail per problem until it is resolved, then a short "resolved".

The cron entry calls `send_alerts` after each run with the problems of
`scripts.status.problems.all_problems` — the same list the status page shows and
``python -m scripts.status --failures`` prints. A ledger in ``STATE/.alerts/sent.json``
remembers what was mailed, so the same problem is never mailed every few minutes. An
unreachable SMTP server is logged and never fails the transfer.

Every text in a mail is printable (`scripts.escaping.printable`): a file name with a
byte that is not UTF-8 or a carriage return can neither crash the mail nor add a header.
"""

from __future__ import annotations

import getpass
import logging
import smtplib
import socket
from email.message import EmailMessage
from email.policy import SMTP
from pathlib import Path

from scripts.escaping import printable, printable_lines
from scripts.markers import read_record, utc_timestamp, write_json_atomic
from scripts.state_layout import ledger_path
from scripts.status.problems import STATE_STAGES, Problem

log = logging.getLogger("desitransfer.alerts")

#: The ledger's layout; a ledger of another version is started afresh.
LEDGER_VERSION = 2
FOOTER = "You get one mail per problem, and one when it is resolved."


def default_sender() -> str:
    return f"{getpass.getuser()}@{socket.getfqdn()}"


def header(text: str) -> str:
    """A header value: printable, one line (no control character survives)."""
    return printable(text).strip()


def subject(problem: Problem) -> str:
    what = problem.label if problem.stage in STATE_STAGES else f"{problem.label} failed"
    return header(f"[desitransfer] {problem.stream} {problem.item}: {what}")


def body(problem: Problem) -> str:
    fields = [("Stream", problem.stream), ("Item", problem.item), ("Stage", problem.label),
              ("Reason", problem.reason), ("Attempts", problem.attempts),
              ("Since", problem.time)]
    lines = [f"{name}: {printable(value)}" for name, value in fields if value not in ("", None)]
    lines += ["", f"What to do: {printable(problem.action)}.",
              f"Record: {printable(problem.record)}", "", FOOTER]
    return "\n".join(lines) + "\n"


def message(alerts: dict, subject_line: str, text: str) -> EmailMessage:
    """The mail: headers printable and one line, the body UTF-8."""
    # One-line subjects: the default 78-column folding splits them oddly in mail clients.
    mail = EmailMessage(policy=SMTP.clone(max_line_length=998))
    mail["Subject"] = header(subject_line)
    mail["From"] = header(alerts.get("from") or default_sender())
    mail["To"] = ", ".join(header(a) for a in alerts["to"])
    mail.set_content(printable_lines(text), charset="utf-8")
    return mail


def send_mail(alerts: dict, subject_line: str, text: str) -> bool:
    """Send one mail; log and return False when the SMTP server cannot take it."""
    mail = message(alerts, subject_line, text)
    host, _, port = str(alerts.get("smtp", "localhost:25")).partition(":")
    try:
        with smtplib.SMTP(host, int(port or 25), timeout=30) as smtp:
            smtp.send_message(mail)
    except (OSError, smtplib.SMTPException) as err:
        log.error("cannot send alert %r through %s: %s", mail["Subject"], alerts.get("smtp"), err)
        return False
    return True




def read_ledger(state: str | Path) -> dict[str, dict]:
    """What has been mailed and not yet resolved: problem key → what was sent."""
    record = read_record(ledger_path(state)) or {}
    if record and record.get("version") != LEDGER_VERSION:
        log.info("alert ledger of an older version: problems still there are mailed once more")
        return {}
    return dict(record.get("sent", {}))


def send_alerts(state: str | Path, alerts: dict, problems: list[Problem]) -> dict[str, int]:
    """Mail new problems and resolutions; remember what was mailed.

    Returns
    -------
    dict
        Counts of mails sent: ``{"new": n, "resolved": m}``.
    """
    sent = {"new": 0, "resolved": 0}
    if not alerts.get("to"):
        return sent
    ledger = read_ledger(state)
    current = {p.key: p for p in problems}
    try:
        for key, problem in current.items():
            if key not in ledger and send_mail(alerts, subject(problem), body(problem)):
                ledger[key] = {"time": utc_timestamp(), "subject": subject(problem),
                               "reason": problem.reason, "what": f"{problem.stream}"
                               f" {problem.item}: {problem.label}"}
                sent["new"] += 1
        for key in [k for k in ledger if k not in current]:
            entry = ledger[key]
            text = (f"Resolved: {entry.get('reason', '?')}\n"
                    f"First reported {entry.get('time', '?')}.\n")
            if send_mail(alerts, f"[desitransfer] resolved: {entry.get('what', key)}", text):
                del ledger[key]
                sent["resolved"] += 1
    finally:
        write_json_atomic(ledger_path(state), {"version": LEDGER_VERSION, "sent": ledger})
    return sent
