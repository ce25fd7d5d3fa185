"""E-mail alerts: one mail per problem until it is resolved, then a short "resolved".

The cron entry calls `send_alerts` after each run. Problems are read from the state
(failure records, the listing's malformed links) plus what the cron entry saw itself
(the mountain unreachable, a configuration error). A ledger in ``STATE/.alerts/`` remembers
what was mailed, so the same problem is never mailed every few minutes. An unreachable
SMTP server is logged and never fails the transfer.
"""

from __future__ import annotations

import getpass
import json
import logging
import os
import smtplib
import socket
from dataclasses import dataclass
from email.message import EmailMessage
from email.policy import SMTP
from pathlib import Path

from scripts.markers import FAILED, read_record, utc_timestamp, write_json_atomic

log = logging.getLogger("desitransfer.alerts")


@dataclass(frozen=True)
class Problem:
    """Something a person must look at."""

    stream: str
    item: str      # NIGHT/EXPID, NIGHT, a link path, the host, or the config file
    stage: str     # verification, install, backup, catch-up, listing, configuration
    reason: str
    action: str    # what to do, for the mail's body

    @property
    def key(self) -> str:
        return "|".join((self.stream, self.item, self.stage, self.reason))

    def subject(self) -> str:
        return f"[desitransfer] {self.stream} {self.item}: {self.stage} failed"


ACTIONS = {
    "checksummed": ("verification",
                    "The exposure failed SHA-256 verification after every retry. Compare the"
                    " files with the mountain's copy; with on_failure: hold, fix the data and"
                    " remove the .failed record to release it."),
    "installed": ("install",
                  "The exposure could not be installed. Read the rule log under STATE/logs and"
                  " resolve the conflict it names; the next run retries."),
    "backedup": ("backup",
                 "The night's backup to tape failed; the next run retries. If it keeps failing,"
                 " check HPSS (hsi ls) and the htar output in the rule log."),
    "caughtup": ("catch-up",
                 "The morning catch-up of late files failed or re-verification found a mismatch."
                 " Read the rule log under STATE/logs."),
}


def _needs_a_person(stage: str, record: dict) -> bool:
    if stage == "checksummed":
        return bool(record.get("held") or record.get("policy") or record.get("exhausted"))
    return stage in ("installed", "backedup", "caughtup") or stage.startswith("backedup.")


def state_problems(state: Path, streams: list[str]) -> list[Problem]:
    """Failure records that need a person, and malformed links, for every stream."""
    problems = []
    for stream in streams:
        top = state / stream
        if not top.is_dir():
            continue
        for path in sorted(top.rglob(f"*{FAILED}")):
            name = path.name[: -len(FAILED)]
            item, _, stage = name.partition(".")
            record = read_record(path) or {}
            if not _needs_a_person(stage, record):
                continue
            if path.parent != top:  # exposure-level: NIGHT/EXPID
                item = f"{path.parent.name}/{item}"
            label, action = ACTIONS.get(stage.split(".")[0], (stage, "Read the rule log."))
            problems.append(Problem(stream, item, label, record.get("reason", "unknown"),
                                    action))
        listing = read_record(state / ".listing" / f"{stream}.json") or {}
        for link in listing.get("malformed", []):
            problems.append(Problem(stream, link, "listing", "malformed symlink",
                                    "A link on the mountain is not SOURCE/NIGHT/EXPID; it is"
                                    " skipped. Fix or remove it at the mountain."))
    return problems


def default_sender() -> str:
    return f"{getpass.getuser()}@{socket.getfqdn()}"


def send_mail(alerts: dict, subject: str, body: str) -> bool:
    """Send one mail; log and return False when the SMTP server cannot take it."""
    # One-line subjects: the default 78-column folding splits them oddly in mail clients.
    message = EmailMessage(policy=SMTP.clone(max_line_length=998))
    message["Subject"] = subject
    message["From"] = alerts.get("from") or default_sender()
    message["To"] = ", ".join(alerts["to"])
    message.set_content(body)
    host, _, port = str(alerts.get("smtp", "localhost:25")).partition(":")
    try:
        with smtplib.SMTP(host, int(port or 25), timeout=30) as smtp:
            smtp.send_message(message)
    except (OSError, smtplib.SMTPException) as err:
        log.error("cannot send alert %r through %s: %s", subject, alerts.get("smtp"), err)
        return False
    return True


def send_alerts(state: Path, alerts: dict, problems: list[Problem]) -> dict[str, int]:
    """Mail new problems and resolutions; remember what was mailed.

    Returns
    -------
    dict
        Counts of mails sent: ``{"new": n, "resolved": m}``.
    """
    ledger_path = state / ".alerts" / "sent.json"
    ledger = read_record(ledger_path) or {}
    current = {p.key: p for p in problems}
    sent = {"new": 0, "resolved": 0}
    if not alerts.get("to"):
        return sent
    for key, problem in current.items():
        if key in ledger:
            continue
        body = (f"Stream: {problem.stream}\nItem: {problem.item}\nStage: {problem.stage}\n"
                f"Reason: {problem.reason}\n\nWhat to do: {problem.action}\n\n"
                f"You get one mail per problem, and one when it is resolved.\n")
        if send_mail(alerts, problem.subject(), body):
            ledger[key] = {"time": utc_timestamp(), "subject": problem.subject()}
            sent["new"] += 1
    for key in [k for k in ledger if k not in current]:
        stream, item, stage, reason = key.split("|", 3)
        subject = f"[desitransfer] resolved: {stream} {item}: {stage}"
        body = f"Resolved: {reason}\nFirst reported {ledger[key]['time']}.\n"
        if send_mail(alerts, subject, body):
            del ledger[key]
            sent["resolved"] += 1
    write_json_atomic(ledger_path, ledger)
    return sent


def count_unreachable(state: Path, unreachable: bool) -> int:
    """Consecutive runs that could not reach the mountain, this one included."""
    path = state / ".alerts" / "unreachable.json"
    count = (read_record(path) or {}).get("runs", 0) + 1 if unreachable else 0
    write_json_atomic(path, {"runs": count, "time": utc_timestamp()})
    return count


def listing_failures(state: Path, streams: list[str], since: float) -> list[str]:
    """Reasons of listing failures recorded by this run (after `since`, epoch seconds)."""
    reasons = []
    for stream in streams:
        path = state / ".listing" / f"{stream}.json{FAILED}"
        try:
            if os.stat(path).st_mtime >= since:
                reasons.append((read_record(path) or {}).get("reason", "unknown"))
        except FileNotFoundError:
            continue
    return reasons


def load_ledger(state: Path) -> dict:
    """What has been mailed and not yet resolved (for the status page and tests)."""
    return json.loads((state / ".alerts" / "sent.json").read_text())
