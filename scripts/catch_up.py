"""Catch up a night: pick up files that reached the mountain after their exposure.

Run by rule ``catch_up_night`` from ``catchup_hour`` UTC of the day after the night, and
again by the backup just before a night goes to tape (the original's
``catchup(backup=True)``). A dry-run rsync of the whole night, with itemized output,
says what changed at the source. An installed exposure is never written into: each
changed one is fetched into a side copy in staging (unchanged files copied locally from
the archive), verified whole against the mountain's current checksum file, and only
then swapped in atomically (scripts/archive.py). A copy that does not verify never
replaces a verified one: the archive keeps its bytes, the exposure gets a failure
record saying the mountain's copy changed after installation, and the night goes on.
A whole new exposure in an old night is left to the exposure stages, which the listing
already feeds.
"""

import hashlib
import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scripts.archive import discard, replace
from scripts.commands import run
from scripts.configuration import Stream, get_streams
from scripts.job import run_job
from scripts.links import LinkCheckError, UnsafeLinkError
from scripts.markers import (
    failure_path,
    marker_path,
    next_attempt,
    read_record,
    utc_timestamp,
    write_failure,
    write_json_atomic,
    write_marker,
)
from scripts.rsync import changed_exposures, changed_files, rsync_command
from scripts.stage import fetch, tree_size
from scripts.verify import verify_with_retries

log = logging.getLogger("catch_up")


class CatchUpError(Exception):
    """The catch-up could not run (rsync failed); one line."""


def side_copy(stream: Stream, night: str, expid: str) -> Path:
    """Where a changed exposure is rebuilt and verified before it replaces the archive's."""
    return stream.staging / ".catch-up" / night / expid


def _digest(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def record_update(config: dict, stream: Stream, night: str, expid: str, journal: dict) -> None:
    """Bring the exposure's records up to date after a swap: the installed marker
    describes the new copy, and ``EXPID.updated`` keeps every replaced version's record."""
    installed = marker_path(config["state"], stream.name, night, expid, "installed")
    updated = marker_path(config["state"], stream.name, night, expid, "updated")
    previous = read_record(installed) or {}
    size, files = tree_size(stream.destination_exposure(night, expid))
    history = (read_record(updated) or {}).get("updates", [])
    history.append({"time": journal["time"], "changed_files": journal["changed_files"],
                    "replaced": previous})
    write_marker(updated, {"outcome": "updated", "updates": history})
    write_marker(installed, {**previous, "time": utc_timestamp(), "bytes": size,
                             "files": files, "how": "replaced by a catch-up"})


def finish_interrupted_updates(config: dict, stream: Stream, night: str) -> None:
    """A run killed between a swap and its records left a journal: finish the records
    if the swap happened (the archive holds the journal's checksum file), else drop it."""
    for journal_path in Path(config["state"], stream.name, night).glob("*.updating"):
        expid = journal_path.name.split(".", 1)[0]
        journal = read_record(journal_path) or {}
        checksum = stream.destination_exposure(night, expid) / stream.checksum_name(night, expid)
        if journal and _digest(checksum) == journal.get("checksum_sha256"):
            record_update(config, stream, night, expid, journal)
        journal_path.unlink(missing_ok=True)


def update_exposure(config: dict, stream: Stream, night: str, expid: str, changed: list[str],
                    threads: int) -> dict:
    """Fetch, verify and swap in a changed installed exposure; return its result.

    Raises
    ------
    CatchUpError
        The mountain could not be reached; nothing changed, the next run tries again.
    """
    remote = config["remote"]
    side = side_copy(stream, night, expid)
    archive = stream.destination_exposure(night, expid)
    side.mkdir(parents=True, exist_ok=True)
    try:
        synced = fetch(remote, stream, night, expid, side, delete=True, copy_dest=archive)
    except UnsafeLinkError as err:
        discard(side)
        return failed_update(config, stream, night, expid, str(err))
    except LinkCheckError as err:
        discard(side)
        raise CatchUpError(str(err)) from None
    if not synced.ok:
        discard(side)
        raise CatchUpError(f"rsync problem ({synced.describe()}) detected on catch-up"
                           f" for {night}/{expid}")
    result, attempt, _ = verify_with_retries(config, stream, night, expid, side, threads)
    if not result.ok:
        discard(side)
        return failed_update(config, stream, night, expid,
                             f"the mountain's copy of {night}/{expid} changed after"
                             f" installation and does not verify ({result.reason()});"
                             " the archive keeps the verified copy",
                             **result.to_record())
    journal = {"time": utc_timestamp(), "changed_files": changed,
               "checksum_sha256": _digest(side / stream.checksum_name(night, expid))}
    journal_path = marker_path(config["state"], stream.name, night, expid, "updating")
    write_json_atomic(journal_path, journal)
    replace(side, stream.destination, night, expid)
    record_update(config, stream, night, expid, journal)
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
        return {"outcome": "no data", "changed_files": [], "exposures": {}, "new_exposures": []}
    finish_interrupted_updates(config, stream, night)
    dry = run(rsync_command(remote, f"{stream.source.rstrip('/')}/{night}", str(night_dir),
                            dry_run=True, itemize=True, exposures_only=True,
                            follow_dirlinks=True),
              timeout=remote["transfer_timeout"])
    if not dry.ok and dry.returncode == 23 and "change_dir" in dry.stderr \
            and "No such file or directory" in dry.stderr:
        # The night's links left the mountain after installation: nothing can arrive late.
        log.warning("Night %s is no longer at the mountain (%s): nothing to catch up.",
                    night, stream.source)
        return {"outcome": "not at the mountain", "changed_files": [], "exposures": {},
                "new_exposures": []}
    if not dry.ok:
        raise CatchUpError(f"dry-run rsync of night {night} failed: {dry.describe()}")
    files = changed_files(dry.stdout)
    if not files:
        log.info("No files appear to have changed in %s.", night)
        return {"outcome": "no changes", "changed_files": [], "exposures": {},
                "new_exposures": []}
    exposures = changed_exposures(files)
    installed = [e for e in exposures if (night_dir / e).is_dir()]
    new = [e for e in exposures if e not in installed]
    log.warning("New files detected in %s: %d file(s) in exposure(s) %s", night, len(files),
                ", ".join(exposures))
    results = {expid: update_exposure(config, stream, night, expid,
                                      [f for f in files if f.startswith(f"{expid}/")], threads)
               for expid in installed}
    failed = sorted(e for e, r in results.items() if r["outcome"] != "verified")
    return {"outcome": "failed" if failed else "updated", "changed_files": files,
            "exposures": results, "new_exposures": new, "failed_exposures": failed}


def run_catch_up(config: dict, stream: Stream, night: str, threads: int) -> bool:
    """Catch up `night` and write its marker (or failure record)."""
    marker = marker_path(config["state"], stream.name, night, None, "caughtup")
    start = time.monotonic()
    try:
        record = catch_up_night(config, stream, night, threads)
    except CatchUpError as err:
        log.error("%s, check logs!", err)
        write_failure(marker, str(err), next_attempt(marker))
        return False
    record["duration"] = round(time.monotonic() - start, 3)
    if record["outcome"] == "failed":
        # The archive kept its verified copies: the night goes on to backup, and the
        # failures stay recorded on the exposures and beside the marker for a person.
        reason = f"re-verification failed after catch-up for {night}: " + ", ".join(
            f"{e}: {record['exposures'][e]['reason']}" for e in record["failed_exposures"])
        log.error(reason)
        write_marker(marker, record)
        write_json_atomic(failure_path(marker), {"time": utc_timestamp(), "reason": reason,
                                                 "attempts": 1, "policy": "install"})
        return True
    write_marker(marker, record)
    return True


if __name__ == "__main__":
    from scripts.job import parse_job

    run_job(parse_job(sys.argv[1:]), lambda sm: run_catch_up(
        sm.config, get_streams(sm.config)[sm.wildcards.stream], sm.wildcards.night,
        threads=sm.threads))
