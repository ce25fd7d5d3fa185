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
from scripts.markers import (
    marker_path,
    read_failure,
    read_record,
    utc_timestamp,
    write_failure,
    write_json_atomic,
    write_marker,
)
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


def write_and_confirm(tape: Tape, stream: Stream, night: str, index: int,
                      members: list[str], expids: list[str]) -> dict:
    """Write archive `index` of the night and confirm both files are in the archive."""
    start = time.monotonic()
    name = archive_name(stream, night, index)
    log.info("Backing up %s to %s/%s (%s)", night, stream.hpss, name, ", ".join(members))
    written = tape.write(name, members)
    after = tape.listing()
    if name not in after or f"{name}.idx" not in after:
        raise BackupError(f"{stream.hpss}/{name} and its .idx are not both in the archive"
                          " after the backup; it will be tried again")
    return {"name": name, "path": f"{stream.hpss}/{name}", "size": after[name],
            "members": written.get("members"), "exposures": sorted(expids),
            "time": utc_timestamp(), "duration": round(time.monotonic() - start, 3)}


def back_up_night(config: dict, stream: Stream, night: str, expids: list[str],
                  held: list[str], threads: int = 2) -> dict:
    """Put `night` on tape for the first time; return the marker record.

    Parameters
    ----------
    expids : list of str
        The installed exposures of the night.
    held : list of str
        Exposures held by policy: named in the record, not archived.

    Raises
    ------
    BackupError
        Any failure: the night is not backed up and the next run tries again.
    """
    tape = Tape(config, stream)
    listing = tape.listing()
    first = archive_name(stream, night, 0)
    if first in listing and f"{first}.idx" in listing:
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
    set_tree_modes(stream.destination / night, DIR_MODE_BACKUP, None)
    index = next_archive_index(stream, night, [], listing)
    archive = write_and_confirm(tape, stream, night, index, [night], expids)
    return {"outcome": "backed up", "archives": [archive], "exposures": sorted(expids),
            "held": held,
            "final_catch_up": {k: final_catch_up[k] for k in ("outcome", "changed_files")}}


def back_up_late_exposures(config: dict, stream: Stream, night: str, expids: list[str],
                           main_marker: Path) -> dict:
    """Archive the exposures installed after their night went to tape.

    They go into the next supplementary archive; the night's record (`main_marker`)
    gains it, so that one record lists every archive of the night.

    Returns
    -------
    dict
        The supplementary archive's record.
    """
    record = read_record(main_marker)
    if record is None:
        raise BackupError(f"{main_marker} is missing: the night's first backup comes first")
    history = record.get("archives", [])
    missing = not_backed_up(expids, history)
    if not missing:
        return {"outcome": "nothing to add", "archives": []}
    tape = Tape(config, stream)
    index = next_archive_index(stream, night, history, tape.listing())
    night_dir = stream.destination / night
    set_tree_modes(night_dir, DIR_MODE_BACKUP, None)
    archive = write_and_confirm(tape, stream, night, index,
                                [f"{night}/{e}" for e in missing], missing)
    record["archives"] = [*history, archive]
    record["exposures"] = sorted({*record.get("exposures", []), *missing})
    write_json_atomic(main_marker, record)
    return {"outcome": "backed up", "supplementary": True, "archives": [archive],
            "exposures": missing}


def run_backup(config: dict, stream: Stream, night: str, marker: Path, expids: list[str],
               held: list[str], threads: int, index: int = 0) -> bool:
    """Run the night's backup (`index` 0) or a supplementary one; write the marker."""
    previous_failure = read_failure(marker) or {}
    start = time.monotonic()
    try:
        if index == 0:
            record = back_up_night(config, stream, night, expids, held, threads)
        else:
            main = marker_path(config["state"], stream.name, night, None, "backedup")
            record = back_up_late_exposures(config, stream, night, expids, main)
    except BackupError as err:
        attempts = previous_failure.get("attempts", 0) + 1
        log.error("Backup of %s failed: %s", night, err)
        write_failure(marker, str(err), attempts)
        return False
    record["duration"] = round(time.monotonic() - start, 3)
    if previous_failure:
        record["previous_failure"] = previous_failure.get("reason")
    write_marker(marker, record)
    return True


if __name__ == "__main__" and "snakemake" in globals():
    sm = snakemake  # noqa: F821 (defined by Snakemake's script preamble)
    joblog.setup(sm.log[0], marker=sm.output[0])
    os.umask(0o027)
    ok = run_backup(sm.config, get_streams(sm.config)[sm.wildcards.stream], sm.wildcards.night,
                    Path(sm.output[0]), sm.params.exposures, sm.params.held, sm.threads,
                    int(sm.wildcards.get("index", 0)))
    sys.exit(0 if ok else 1)
