"""Back up a finished night to tape (HPSS ``htar``) or to a tar archive directory.

Run by rule ``back_up_night`` from ``backup_hour`` UTC of the day after the night, once
the night is caught up and its exposures are installed. The archive of a night is
``HPSSDIR/NAME.tar`` with ``NAME = <hpss with / replaced by _>_NIGHT`` (the original's
naming, e.g. ``desi/spectro/data/desi_spectro_data_20261128.tar``).

1. List HPSSDIR (``hsi -O FILE ls -l``): if the night's ``.tar`` and ``.tar.idx`` are
   both there and nothing is recorded, the night is adopted as backed up.
2. Otherwise a final catch-up, user-write removed from the night's directories
   (``0o2550``), and ``htar -cvhf HPSSDIR/NAME.tar -H crc:verify=all NIGHT`` from the
   destination.
3. Backed up only if htar exited 0 *and* a fresh listing shows both files.

An archive is never overwritten: exposures installed after their night went to tape
go into a supplementary archive ``NAME.1.tar``, ``NAME.2.tar``, …, and the record lists
every archive with the exposures it holds.
"""

import logging
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scripts import joblog
from scripts.catch_up import CatchUpError, catch_up_night
from scripts.commands import run
from scripts.configuration import Stream, get_streams
from scripts.hpss import BackupError, hsi_list, htar_command
from scripts.markers import marker_path, read_failure, utc_timestamp, write_failure, write_marker
from scripts.permissions import DIR_MODE_BACKUP, set_tree_modes
from scripts.tar_archive import list_archives, write_archive
from scripts.targets import not_backed_up

log = logging.getLogger("backup")


def archive_base(stream: Stream, night: str) -> str:
    """``desi_spectro_data_20261128`` for hpss ``desi/spectro/data``."""
    return f"{stream.hpss.strip('/').replace('/', '_')}_{night}"


def archive_name(stream: Stream, night: str, index: int) -> str:
    """The night's archive (index 0) or its index-th supplementary archive."""
    suffix = "" if index == 0 else f".{index}"
    return f"{archive_base(stream, night)}{suffix}.tar"


def next_archive_index(stream: Stream, night: str, history: list[dict],
                       listing: dict[str, int]) -> int:
    """The first archive index at or after the recorded ones that is free on tape.

    A ``.tar`` without its ``.idx`` (a failed earlier attempt) is left for a person:
    never overwritten.
    """
    index = len(history)
    while True:
        name = archive_name(stream, night, index)
        if name not in listing and f"{name}.idx" not in listing:
            return index
        log.warning("%s is already in the archive without a record: left untouched",
                    name)
        index += 1


class Tape:
    """The configured backend: list the archive directory, write one archive."""

    def __init__(self, config: dict, stream: Stream):
        self.backup = config["backup"]
        self.stream = stream
        if self.backup["backend"] == "tar":
            self.directory = Path(self.backup["archive"]).absolute() / stream.hpss

    def listing(self) -> dict[str, int]:
        if self.backup["backend"] == "tar":
            return list_archives(self.directory)
        return hsi_list(self.backup["hpss_bin"], self.stream.hpss, self.backup["timeout"])

    def write(self, name: str, members: list[str]) -> dict:
        cwd = self.stream.destination
        if self.backup["backend"] == "tar":
            return write_archive(self.directory, name, cwd, members)
        command = htar_command(self.backup["hpss_bin"], f"{self.stream.hpss}/{name}", members)
        result = run(command, timeout=self.backup["timeout"], cwd=cwd)
        if not result.ok:
            raise BackupError(f"HTAR backup failed ({result.describe()}); command was:"
                              f" {' '.join(command)}")
        if result.stderr.strip():
            log.warning("htar exited 0 but wrote to stderr: %s", result.stderr.strip()[-500:])
        return {"members": sum(1 for line in result.stdout.splitlines()
                               if line.startswith("HTAR: a "))}


def back_up_night(config: dict, stream: Stream, night: str, history: list[dict],
                  expids: list[str], held: list[str], threads: int = 2) -> dict:
    """Put `night` on tape; return the marker record.

    Parameters
    ----------
    history : list of dict
        The archives already recorded for the night (empty the first time).
    expids : list of str
        The installed exposures the night's archives must hold.
    held : list of str
        Exposures held by policy, named in the record, not archived.

    Raises
    ------
    BackupError
        Any failure: the night is not backed up and the next run tries again.
    """
    tape = Tape(config, stream)
    start = time.monotonic()
    listing = tape.listing()
    first = archive_name(stream, night, 0)
    if not history and first in listing and f"{first}.idx" in listing:
        log.info("Backup of %s already complete (%s and its .idx are in %s): adopted.",
                 night, first, stream.hpss)
        return {"outcome": "adopted", "archives": [{
            "name": first, "path": f"{stream.hpss}/{first}", "size": listing[first],
            "exposures": sorted(expids), "time": utc_timestamp(), "adopted": True}],
            "exposures": sorted(expids), "held": held}
    try:
        final_catch_up = catch_up_night(config, stream, night, threads)
    except CatchUpError as err:
        raise BackupError(f"final catch-up before backup failed: {err}") from None
    missing = not_backed_up(expids, history)
    if not missing:
        log.info("Every exposure of %s is already on tape.", night)
        return {"outcome": "backed up", "archives": history,
                "exposures": sorted(expids), "held": held}
    index = next_archive_index(stream, night, history, listing)
    name = archive_name(stream, night, index)
    night_dir = stream.destination / night
    set_tree_modes(night_dir, DIR_MODE_BACKUP, None)
    members = [night] if index == 0 and not history else [f"{night}/{e}" for e in missing]
    log.info("Backing up %s to %s/%s (%d exposure(s))", night, stream.hpss, name, len(missing))
    written = tape.write(name, members)
    after = tape.listing()
    if name not in after or f"{name}.idx" not in after:
        raise BackupError(f"{stream.hpss}/{name} and its .idx are not both in the archive"
                          " after the backup; it will be tried again")
    archive = {"name": name, "path": f"{stream.hpss}/{name}", "size": after[name],
               "members": written.get("members"), "exposures": sorted(missing),
               "time": utc_timestamp(), "duration": round(time.monotonic() - start, 3)}
    return {"outcome": "backed up", "archives": [*history, archive],
            "exposures": sorted({*expids, *(e for a in history for e in a["exposures"])}),
            "held": held, "supplementary": index > 0,
            "final_catch_up": {k: final_catch_up[k] for k in ("outcome", "changed_files")}}


def run_backup(config: dict, stream: Stream, night: str, history: list[dict],
               expids: list[str], held: list[str], threads: int) -> bool:
    marker = marker_path(config["state"], stream.name, night, None, "backedup")
    # Snakemake removes a marker before re-running its job: the history came in
    # through params, and a failure record keeps it for the next attempt.
    history = history or (read_failure(marker) or {}).get("archives", [])
    start = time.monotonic()
    try:
        record = back_up_night(config, stream, night, history, expids, held, threads)
    except BackupError as err:
        attempts = (read_failure(marker) or {}).get("attempts", 0) + 1
        log.error("Backup of %s failed: %s", night, err)
        write_failure(marker, str(err), attempts, archives=history)
        return False
    record["duration"] = round(time.monotonic() - start, 3)
    write_marker(marker, record)
    return True


if __name__ == "__main__" and "snakemake" in globals():
    sm = snakemake  # noqa: F821 (defined by Snakemake's script preamble)
    joblog.setup(sm.log[0])
    os.umask(0o027)
    ok = run_backup(sm.config, get_streams(sm.config)[sm.wildcards.stream], sm.wildcards.night,
                    sm.params.history, sm.params.exposures, sm.params.held, sm.threads)
    sys.exit(0 if ok else 1)
