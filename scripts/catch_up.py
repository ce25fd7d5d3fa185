"""Catch up a night: pick up files that reached the mountain after their exposure.

Run by rule ``catch_up_night`` from ``catchup_hour`` UTC of the day after the night, and
again by the backup just before a night goes to tape (the original's
``catchup(backup=True)``). A dry-run rsync of the whole night, with itemized output,
says what changed at the source; only the changed *installed* exposures are unlocked,
synced, locked again and re-verified. A whole new exposure in an old night is left to
the exposure stages, which the listing already feeds.
"""

import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scripts import joblog
from scripts.commands import run
from scripts.configuration import Stream, get_streams
from scripts.markers import (
    failure_path,
    marker_path,
    read_failure,
    utc_timestamp,
    write_failure,
    write_json_atomic,
    write_marker,
)
from scripts.permissions import lock_tree, unlock_tree
from scripts.rsync import changed_exposures, changed_files, rsync_command
from scripts.stage import fetch
from scripts.verify import verify_with_retries

log = logging.getLogger("catch_up")


class CatchUpError(Exception):
    """The catch-up could not run (rsync failed); one line."""


def catch_up_night(config: dict, stream: Stream, night: str, threads: int = 2) -> dict:
    """Sync late files into the night's installed exposures and re-verify them.

    Returns
    -------
    dict
        The record: ``outcome`` ("no changes", "updated", "failed" or "no data"),
        ``changed_files``, per-exposure re-verification results, and new exposures
        left to the exposure stages.

    Raises
    ------
    CatchUpError
        When the dry run or a sync fails.
    """
    remote = config["remote"]
    night_dir = stream.destination / night
    if not night_dir.is_dir():
        log.warning("No data from %s installed yet, nothing to catch up.", night)
        return {"outcome": "no data", "changed_files": [], "exposures": {}, "new_exposures": []}
    dry = run(rsync_command(remote, f"{stream.source.rstrip('/')}/{night}", str(night_dir),
                            dry_run=True, itemize=True, exposures_only=True),
              timeout=remote["transfer_timeout"])
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
    results = {}
    for expid in installed:
        directory = night_dir / expid
        unlock_tree(directory)
        try:
            synced = fetch(remote, stream, night, expid, directory, delete=False)
        finally:
            lock_tree(directory)
        if not synced.ok:
            raise CatchUpError(f"rsync problem ({synced.describe()}) detected on catch-up"
                               f" for {night}/{expid}")
        result, attempt = verify_with_retries(config, stream, night, expid, directory,
                                              "destination", threads)
        results[expid] = {"outcome": "verified" if result.ok else "failed",
                          "attempt": attempt, **({} if result.ok else result.to_record()),
                          **({} if result.ok else {"reason": result.reason()})}
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
        write_failure(marker, str(err), (read_failure(marker) or {}).get("attempts", 0) + 1)
        return False
    record["duration"] = round(time.monotonic() - start, 3)
    if record["outcome"] == "failed":
        # The data is in the archive already (as the original): the night goes on to
        # backup, and the failure stays recorded beside the marker for a person.
        reason = f"re-verification failed after catch-up for {night}: " + ", ".join(
            f"{e}: {record['exposures'][e]['reason']}" for e in record["failed_exposures"])
        log.error(reason)
        write_marker(marker, record)
        write_json_atomic(failure_path(marker), {"time": utc_timestamp(), "reason": reason,
                                                 "attempts": 1, "policy": "install"})
        return True
    write_marker(marker, record)
    return True


if __name__ == "__main__" and "snakemake" in globals():
    sm = snakemake  # noqa: F821 (defined by Snakemake's script preamble)
    joblog.setup(sm.log[0], marker=sm.output[0])
    ok = run_catch_up(sm.config, get_streams(sm.config)[sm.wildcards.stream],
                      sm.wildcards.night, threads=sm.threads)
    sys.exit(0 if ok else 1)
