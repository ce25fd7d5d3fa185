"""Bring a night's installed exposures up to date with the mountain: the work of the
catch-up job (scripts/catch_up.py) and of the backup's final catch-up just before a night
goes to tape (scripts/backup.py), which share it here.

A dry-run rsync of the night's installed, not held exposures, with itemized output,
says what changed at the source. An installed exposure is never written into: each
changed one is fetched into a side copy in staging (unchanged files copied locally from
the archive), verified whole against the mountain's current checksum file, and only
then swapped in atomically (scripts/archive.py). A copy that does not verify never
replaces a verified one: the archive keeps its bytes, the exposure gets a failure
record saying the mountain's copy changed after installation, and the night goes on.
A whole new exposure in an old night is left to the exposure stages, which the listing
already feeds.
"""

import logging
import os
from pathlib import Path

from scripts.archive import identity, replace
from scripts.configuration import Stream
from scripts.copies import fetch, staging_role, tree_size, verify_with_retries
from scripts.links import LinkCheckError, UnreadableExposureError, UnsafeLinkError
from scripts.markers import (
    marker_path,
    next_attempt,
    read_failure,
    read_record,
    utc_timestamp,
    write_failure,
    write_json_atomic,
    write_marker,
)
from scripts.own_dirs import Pinned, UnsafeDirectoryError, pinned, remove, remove_pinned
from scripts.remote import run_remote
from scripts.rsync import changed_exposures, changed_files, rsync_command
from scripts.state_layout import night_directory
from scripts.targets import scan_night

log = logging.getLogger("catch_up")


class CatchUpError(Exception):
    """The catch-up could not run (rsync failed); one line."""


def side_copy_parts(night: str, expid: str) -> list[str]:
    """Where, below staging, a changed exposure is rebuilt and verified before it
    replaces the archive's: ``STAGING/.catch-up/NIGHT/EXPID``, opened by descriptor
    (scripts/own_dirs.py), so that a link planted there never leads into the archive."""
    return [".catch-up", night, expid]


def clear_policy_failure(config: dict, stream: Stream, night: str, expid: str,
                         when: str) -> None:
    """The exposure now verifies: a verification failure accepted by policy
    (``on_failure: install``) is cleared, so that no problem is listed and DESI's row
    turns green; the checksummed marker keeps the old record and failure as history."""
    checksummed = marker_path(config["state"], stream.name, night, expid, "checksummed")
    previous = read_record(checksummed)
    failure = read_failure(checksummed)
    if (previous or {}).get("outcome") != "failed" and failure is None:
        return
    previous = dict(previous or {})
    history = [*previous.pop("history", []), {"marker": previous, "failure": failure}]
    kept = {k: v for k, v in previous.items() if k not in ("accepted_by_policy", "reason")}
    write_marker(checksummed, {**kept, "time": when, "outcome": "verified",
                               "how": "verified by a catch-up", "history": history})
    log.info("%s/%s verifies now: its verification failure (installed by policy) is"
             " cleared; its record keeps the history", night, expid)


def record_update(config: dict, stream: Stream, night: str, expid: str, journal: dict,
                  how: str = "replaced by a catch-up") -> None:
    """Bring the exposure's records up to date after a swap: the installed marker
    describes the new copy, ``EXPID.updated`` keeps every replaced version's record,
    and a verification failure accepted by policy is cleared (the copy verified)."""
    installed = marker_path(config["state"], stream.name, night, expid, "installed")
    updated = marker_path(config["state"], stream.name, night, expid, "updated")
    previous = read_record(installed) or {}
    size, files = tree_size(stream.destination_exposure(night, expid))
    history = (read_record(updated) or {}).get("updates", [])
    history.append({"time": journal["time"], "changed_files": journal["changed_files"],
                    "replaced": previous})
    write_marker(updated, {"outcome": "updated", "updates": history})
    clear_policy_failure(config, stream, night, expid, journal["time"])
    write_marker(installed, {**previous, "time": utc_timestamp(), "bytes": size,
                             "files": files, "how": how,
                             "verification": "verified"})


def swapped(archive: Path, journal: dict) -> bool:
    """Whether the swap a journal announced happened: the archive's exposure is the
    very directory the journal names (``st_dev``/``st_ino``), whatever its files say."""
    wanted = journal.get("identity")
    if not isinstance(wanted, list) or len(wanted) != 2:
        return False
    try:
        return list(identity(archive)) == wanted
    except FileNotFoundError:
        return False


def finish_interrupted_updates(config: dict, stream: Stream, night: str) -> None:
    """A run killed between a swap and its records left a journal: finish the records
    if the swap happened (the archive holds the journal's directory), else drop it."""
    for journal_path in night_directory(config["state"], stream.name, night).glob("*.updating"):
        expid = journal_path.name.split(".", 1)[0]
        journal = read_record(journal_path) or {}
        if journal and swapped(stream.destination_exposure(night, expid), journal):
            record_update(config, stream, night, expid, journal)
        journal_path.unlink(missing_ok=True)


def update_exposure(config: dict, stream: Stream, night: str, expid: str, changed: list[str],
                    threads: int, how: str = "replaced by a catch-up") -> dict:
    """Fetch, verify and swap in a changed installed exposure; return its result.

    `how` goes into the new installed record (a catch-up, or a person's retry).

    Raises
    ------
    CatchUpError
        The mountain could not be reached, or the side copy is not safely ours;
        nothing changed, the next run tries again.
    """
    try:
        remove(stream.staging, side_copy_parts(night, expid), staging_role(stream))
        with pinned(stream.staging, side_copy_parts(night, expid), create=True,
                    role=staging_role(stream)) as side:
            return update_in(config, stream, night, expid, changed, threads, side, how)
    except UnsafeDirectoryError as err:
        raise CatchUpError(str(err)) from None


def update_in(config: dict, stream: Stream, night: str, expid: str, changed: list[str],
              threads: int, side: Pinned, how: str = "replaced by a catch-up") -> dict:
    """`update_exposure` in the pinned side copy `side`."""
    remote = config["remote"]
    archive = stream.destination_exposure(night, expid)
    try:
        synced = fetch(remote, stream, night, expid, side, delete=True, copy_dest=archive)
    except (UnsafeLinkError, UnreadableExposureError) as err:
        remove_pinned(side)
        return failed_update(config, stream, night, expid, str(err))
    except LinkCheckError as err:
        remove_pinned(side)
        raise CatchUpError(str(err)) from None
    if not synced.ok:
        remove_pinned(side)
        raise CatchUpError(f"rsync problem ({synced.describe()}) detected on catch-up"
                           f" for {night}/{expid}")
    try:
        result, attempt, _ = verify_with_retries(config, stream, night, expid, side, threads)
    except UnsafeLinkError as err:
        remove_pinned(side)
        return failed_update(config, stream, night, expid, str(err))
    if not result.ok:
        remove_pinned(side)
        return failed_update(config, stream, night, expid,
                             f"the mountain's copy of {night}/{expid} changed after"
                             f" installation and does not verify ({result.reason()});"
                             " the archive keeps the verified copy",
                             **result.to_record())
    journal = {"time": utc_timestamp(), "changed_files": changed}
    journal_path = marker_path(config["state"], stream.name, night, expid, "updating")

    def write_journal(new: tuple[int, int]) -> None:
        # Written before the swap, naming the directory that is swapped in: a run
        # killed at any line after it tells from the file system what happened.
        write_json_atomic(journal_path, {**journal, "identity": list(new)})

    replace(side, stream.destination, night, expid, before_swap=write_journal)
    record_update(config, stream, night, expid, journal, how)
    journal_path.unlink(missing_ok=True)
    log.info("%s/%s updated from the mountain: %d changed file(s) verified and swapped in",
             night, expid, len(changed))
    return {"outcome": "verified", "attempt": attempt, "changed_files": changed}


def failed_update(config: dict, stream: Stream, night: str, expid: str, reason: str,
                  **details) -> dict:
    """Record on the exposure that its catch-up failed; the archive was not touched."""
    marker = marker_path(config["state"], stream.name, night, expid, "updated")
    attempts = next_attempt(marker)
    log.critical("%s", reason)
    write_failure(marker, reason, attempts, stage="catch-up", **details)
    return {"outcome": "failed", "reason": reason, **details}


def catch_up_night(config: dict, stream: Stream, night: str, threads: int = 2) -> dict:
    """Bring the night's installed exposures up to date with the mountain.

    Returns
    -------
    dict
        The record: ``outcome`` ("no changes", "updated", "failed" or "no data"),
        ``changed_files``, per-exposure results, and new exposures left to the
        exposure stages.

    Raises
    ------
    CatchUpError
        When the dry run or a fetch fails.
    """
    remote = config["remote"]
    night_dir = stream.destination / night
    if not night_dir.is_dir():
        log.warning("No data from %s installed yet, nothing to catch up.", night)
        return {"outcome": "no data", "changed_files": [], "exposures": {}}
    finish_interrupted_updates(config, stream, night)
    held = scan_night(config["state"], stream.name, night).held
    exposures = installed_exposures(night_dir, held)
    if not exposures:
        log.info("No installed exposure of %s to catch up (held: %s).", night,
                 ", ".join(sorted(held)) or "none")
        return {"outcome": "no changes", "changed_files": [], "exposures": {}}
    # Only the installed exposures that are not held: a held one (links that lead
    # outside, a loop, an unreadable directory) is out of its night, and the dry run
    # (which follows the night's published links) must never follow its links.
    dry = run_remote(rsync_command(remote, f"{stream.source.rstrip('/')}/{night}",
                                   str(night_dir), dry_run=True, itemize=True,
                                   exposures=exposures, follow_dirlinks=True),
                     timeout=remote["transfer_timeout"])
    if not dry.ok and dry.returncode == 23 and "change_dir" in dry.stderr \
            and "No such file or directory" in dry.stderr:
        # The night's links left the mountain after installation: nothing can arrive late.
        log.warning("Night %s is no longer at the mountain (%s): nothing to catch up.",
                    night, stream.source)
        return {"outcome": "not at the mountain", "changed_files": [], "exposures": {},
}
    if not dry.ok:
        raise CatchUpError(f"dry-run rsync of night {night} failed: {dry.describe()}")
    files = changed_files(dry.stdout)
    if not files:
        log.info("No files appear to have changed in %s.", night)
        return {"outcome": "no changes", "changed_files": [], "exposures": {},
}
    changed = changed_exposures(files)
    log.warning("New files detected in %s: %d file(s) in exposure(s) %s", night, len(files),
                ", ".join(changed))
    results = {expid: update_exposure(config, stream, night, expid,
                                      [f for f in files if f.startswith(f"{expid}/")], threads)
               for expid in changed if expid in exposures}
    failed = sorted(e for e, r in results.items() if r["outcome"] != "verified")
    return {"outcome": "failed" if failed else "updated", "changed_files": files,
            "exposures": results, "failed_exposures": failed}


def installed_exposures(night_dir: Path, held: set[str]) -> list[str]:
    """The exposure directories of the installed night, held ones left out, sorted."""
    with os.scandir(night_dir) as entries:
        return sorted(e.name for e in entries
                      if len(e.name) == 8 and e.name.isascii() and e.name.isdigit()
                      and e.name not in held and e.is_dir(follow_symlinks=False))
