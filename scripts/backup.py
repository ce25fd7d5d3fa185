"""Back up a finished night to tape (HPSS ``htar``) or to a tar archive directory.

Run by rule ``back_up_night`` from ``backup_hour`` UTC of the day after the night, once
the night is caught up and its exposures are installed. The archive of a night is
``HPSSDIR/NAME.tar`` with ``NAME = <hpss with / replaced by _>_NIGHT`` (the original's
naming, e.g. ``desi/spectro/data/desi_spectro_data_20261128.tar``).

1. List HPSSDIR (``hsi -O FILE ls -l``). Archives of the night that are complete there
   (``.tar`` *and* ``.tar.idx``) but in no record are adopted: their exposures are read
   from their member lists (``htar -tvf``, or the tar backend's index), never assumed,
   and compared with the exposures on disk, file by file (name and size; SHA-256 with
   the tar backend). An exposure the archive holds in another version (written before
   a catch-up swapped in a new one) is recorded ``outdated`` there, not as on tape.
   Exposures they lack, or hold outdated, go into the next supplementary archive, on
   the next run.
2. Otherwise a final catch-up, user-write removed from the night's directories
   (``0o2550``), and ``htar -cvhf HPSSDIR/NAME.tar -H crc:verify=all NIGHT`` from the
   destination. A ``.tar`` left without its ``.idx`` by a failed attempt is written
   again under the same name (htar overwrites it); a complete archive never is.
3. Backed up only if htar exited 0 *and* a fresh listing shows both files *and* the
   archive's member list (``htar -tvf``, or the tar backend's index) is, name for name
   and size for size, the files that were meant to go in. htar's exit 70 ("HTAR
   SUCCESSFUL" with members skipped) is a failure. The record's exposures are those
   htar reports it archived.

Exposures installed after their night went to tape go into a supplementary archive
``NAME.1.tar``, ``NAME.2.tar``, …; the night's record lists every archive with the
exposures it holds.
"""

import logging
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scripts.configuration import Stream, get_streams
from scripts.hpss import (
    BackupError,
    Member,
)
from scripts.job import run_job
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
from scripts.permissions import DIR_MODE_BACKUP, set_tree_modes
from scripts.tape import Tape
from scripts.tape_contents import (
    by_exposure,
    differences,
    exposure_on_disk,
    files_to_archive,
    member_list_differences,
)
from scripts.targets import not_backed_up
from scripts.updates import CatchUpError, catch_up_night

log = logging.getLogger("backup")


def archive_base(stream: Stream, night: str) -> str:
    """``desi_spectro_data_20261128`` for hpss ``desi/spectro/data``."""
    return f"{stream.hpss.strip('/').replace('/', '_')}_{night}"


def archive_name(stream: Stream, night: str, index: int) -> str:
    """The night's archive (index 0) or its index-th supplementary archive."""
    suffix = "" if index == 0 else f".{index}"
    return f"{archive_base(stream, night)}{suffix}.tar"


def exposures_in(members: list[str], night: str) -> set[str]:
    """The exposures of `night` an archive holds, from its member paths.

    Parameters
    ----------
    members : list of str
        Member paths as stored in the archive, relative to the destination
        (``20261127/00001234/desi-00001234.fits.fz``; a leading ``./`` is allowed).
    night : str
        ``YYYYMMDD``.

    Returns
    -------
    set of str
        The 8-digit EXPIDs with at least one member *below* ``NIGHT/EXPID/``: an
        exposure is held when its files are. A bare directory entry (``NIGHT/EXPID/``)
        holds no data and does not count; other nights and other names never do.
    """
    held = set()
    for member in members:
        while member.startswith("./"):
            member = member[2:]
        parts = member.split("/", 2)
        if (len(parts) == 3 and parts[0] == night and parts[2].strip("/")
                and len(parts[1]) == 8 and parts[1].isdigit() and parts[1].isascii()):
            held.add(parts[1])
    return held


def archive_complete(listing: dict[str, int], name: str) -> bool:
    """Both the archive and its index are in the archive directory."""
    return name in listing and f"{name}.idx" in listing


def plan_archives(stream: Stream, night: str, history: list[dict],
                  listing: dict[str, int]) -> tuple[list[str], int]:
    """What is on tape for `night` beyond its record, and where the next archive goes.

    Pure: it reads the archive directory's listing only.

    Returns
    -------
    (list of str, int)
        The complete archives of the night (index 0, 1, … in order, up to the first
        index neither recorded nor complete) that no record in `history` lists: to
        adopt. And that first index: the next archive to write. Its name is free, or
        holds a ``.tar`` without its ``.idx`` (a failed attempt, written again under
        the same name); a complete archive is never overwritten.
    """
    recorded = {archive.get("name") for archive in history}
    found, index = [], 0
    while True:
        name = archive_name(stream, night, index)
        if name in recorded:
            pass
        elif archive_complete(listing, name):
            found.append(name)
        else:
            return found, index
        index += 1


def outdated_exposures(stream: Stream, night: str, name: str,
                       held: dict[str, dict[str, Member]]) -> dict[str, list[str]]:
    """The exposures archive `name` holds in a version other than the one on disk.

    An archive written before a catch-up swapped in a new version of an exposure
    lacks its late files (or holds other sizes or bytes). An exposure whose directory
    is not on disk is not outdated: there is nothing else to archive.

    Returns
    -------
    dict
        EXPID → the differences, one line per file (for the log).
    """
    outdated = {}
    for expid, files in sorted(held.items()):
        checksum = stream.checksum_name(night, expid)
        disk = exposure_on_disk(stream.destination_exposure(night, expid), checksum)
        if disk is None:
            continue
        found = differences(disk, files, name, checksum)
        if found:
            outdated[expid] = [f"{path}: {what}" for path, what in found]
    return outdated


def adopt_archive(tape: Tape, stream: Stream, night: str, name: str,
                  listing: dict[str, int]) -> dict:
    """The record of a complete archive found on tape without one, from its members.

    The exposures it holds as they are on disk are recorded as on tape; those it holds
    in another version are recorded ``outdated`` and left for the next supplementary
    archive.
    """
    files = tape.member_list(name)
    held = by_exposure(files, night)
    outdated = outdated_exposures(stream, night, name, held)
    current = sorted(set(held) - set(outdated))
    log.info("%s/%s is on tape with its .idx and in no record: adopted, holding %d"
             " exposure(s) of %s (%s).", stream.hpss, name, len(current), night,
             ", ".join(current) or "none")
    for expid, found in outdated.items():
        log.warning("%s/%s holds %s/%s as it was before it changed on disk (%s): it goes"
                    " into the night's next supplementary archive.", stream.hpss, name,
                    night, expid, "; ".join(found[:5]) + ("; …" if len(found) > 5 else ""))
    record = {"name": name, "path": f"{stream.hpss}/{name}", "size": listing[name],
              "members": len(files), "exposures": current, "time": utc_timestamp(),
              "adopted": True}
    if outdated:
        record["outdated"] = sorted(outdated)
    return record


def write_and_confirm(tape: Tape, stream: Stream, night: str, index: int,
                      members: list[str], expids: list[str], listing: dict[str, int]) -> dict:
    """Write archive `index` of the night and confirm both files are in the archive.

    The record's exposures are those the archive holds by htar's (or tar's) own
    account of what it wrote, not `expids`.
    """
    start = time.monotonic()
    name = archive_name(stream, night, index)
    if name in listing:
        log.warning("%s/%s is on tape without its .idx (an earlier attempt failed):"
                    " writing it again.", stream.hpss, name)
    log.info("Backing up %s to %s/%s (%s)", night, stream.hpss, name, ", ".join(members))
    meant = files_to_archive(stream.destination, members)
    files = tape.write(name, members)
    after = tape.listing()
    if not archive_complete(after, name):
        raise BackupError(f"{stream.hpss}/{name} and its .idx are not both in the archive"
                          " after the backup; it will be tried again")
    check_member_list(tape, stream, name, meant)
    held = exposures_in(files, night)
    absent = sorted(set(expids) - held)
    if absent:
        log.error("%s/%s does not hold %s although they were to be archived; they are"
                  " not recorded as on tape.", stream.hpss, name, ", ".join(absent))
    return {"name": name, "path": f"{stream.hpss}/{name}", "size": after[name],
            "members": len(files), "exposures": sorted(held),
            "time": utc_timestamp(), "duration": round(time.monotonic() - start, 3)}


def check_member_list(tape: Tape, stream: Stream, name: str, meant: dict[str, int]) -> None:
    """The archive just written holds exactly the files meant to go in (names and
    sizes), by its own index (``htar -tvf``, or the tar backend's ``.idx``).

    Raises
    ------
    BackupError
        It does not: the night is not backed up. The archive stays (complete on
        tape, it is never overwritten); the next run adopts it from its members, file
        by file, and what it lacks goes into the next supplementary archive.
    """
    found = member_list_differences(meant, tape.member_list(name))
    if found:
        for line in found:
            log.error("%s/%s: %s", stream.hpss, name, line)
        raise BackupError(f"{stream.hpss}/{name} does not hold what was meant to go in"
                          f" ({len(found)} file(s): {found[0]}"
                          + (", …" if len(found) > 1 else "") + ")")


def held_by(archives: list[dict]) -> list[str]:
    """Every exposure the `archives` hold, sorted."""
    return sorted({e for archive in archives for e in archive.get("exposures", [])})


def back_up_night(config: dict, stream: Stream, night: str, expids: list[str],
                  held: list[str], threads: int = 2) -> dict:
    """Put `night` on tape for the first time, or adopt what is there; return the record.

    Parameters
    ----------
    expids : list of str
        The installed exposures of the night.
    held : list of str
        Exposures held by policy: named in the record, not archived.

    Returns
    -------
    dict
        The night's record. When archives of the night are already complete on tape,
        ``outcome`` is "adopted" and the record lists what their members hold; the
        exposures of `expids` they lack (``not_on_tape``) go into the next
        supplementary archive on the next run.

    Raises
    ------
    BackupError
        Any failure: the night is not backed up and the next run tries again.
    """
    tape = Tape(config, stream)
    listing = tape.listing()
    found, index = plan_archives(stream, night, [], listing)
    if found:
        archives = [adopt_archive(tape, stream, night, name, listing) for name in found]
        set_tree_modes(stream.destination / night, DIR_MODE_BACKUP, None)  # as if written
        record = {"outcome": "adopted", "archives": archives,
                  "exposures": held_by(archives), "held": held}
        missing = not_backed_up(expids, archives)
        if missing:
            record["not_on_tape"] = missing
            log.warning("Backup of %s adopted from %s, which lack(s) %s: they go into the"
                        " next supplementary archive (%s).", night, ", ".join(found),
                        ", ".join(missing), archive_name(stream, night, index))
        return record
    try:
        final_catch_up = catch_up_night(config, stream, night, threads)
    except CatchUpError as err:
        raise BackupError(f"final catch-up before backup failed: {err}") from None
    set_tree_modes(stream.destination / night, DIR_MODE_BACKUP, None)
    archive = write_and_confirm(tape, stream, night, index, [night], expids, listing)
    return {"outcome": "backed up", "archives": [archive],
            "exposures": archive["exposures"], "held": held,
            "final_catch_up": {k: final_catch_up[k] for k in ("outcome", "changed_files")}}


def back_up_late_exposures(config: dict, stream: Stream, night: str, expids: list[str],
                           main_marker: Path) -> dict:
    """Archive the exposures of the night that no archive holds yet.

    They go into the next supplementary archive; the night's record (`main_marker`)
    gains it, so that one record lists every archive of the night. A complete
    supplementary archive found on tape without a record (state lost after it was
    written) is adopted first, from its members.

    Returns
    -------
    dict
        The supplementary stage's record: the archives it wrote or adopted.
    """
    record = read_record(main_marker)
    if record is None:
        raise BackupError(f"{main_marker} is missing: the night's first backup comes first")
    tape = Tape(config, stream)
    listing = tape.listing()
    found, index = plan_archives(stream, night, record.get("archives", []), listing)
    adopted = [adopt_archive(tape, stream, night, name, listing) for name in found]
    history = [*record.get("archives", []), *adopted]
    missing = not_backed_up(expids, history)
    written = []
    if missing:
        set_tree_modes(stream.destination / night, DIR_MODE_BACKUP, None)
        written.append(write_and_confirm(tape, stream, night, index,
                                         [f"{night}/{e}" for e in missing], missing,
                                         listing))
    if not adopted and not written:
        return {"outcome": "nothing to add", "archives": []}
    record["archives"] = [*history, *written]
    record["exposures"] = held_by(record["archives"])
    left = not_backed_up(expids, record["archives"])
    if left:
        record["not_on_tape"] = left
    else:
        record.pop("not_on_tape", None)
    write_json_atomic(main_marker, record)
    return {"outcome": "backed up" if written else "adopted", "supplementary": True,
            "archives": [*adopted, *written], "exposures": held_by([*adopted, *written])}


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
        log.error("Backup of %s failed: %s", night, err)
        write_failure(marker, str(err), next_attempt(marker))
        return False
    record["duration"] = round(time.monotonic() - start, 3)
    if previous_failure:
        record["previous_failure"] = previous_failure.get("reason")
    write_marker(marker, record)
    return True


if __name__ == "__main__":
    from scripts.job import parse_job

    os.umask(0o027)
    run_job(parse_job(sys.argv[1:]), lambda sm: run_backup(
        sm.config, get_streams(sm.config)[sm.wildcards.stream], sm.wildcards.night,
        Path(sm.output[0]), sm.params.exposures, sm.params.held, sm.threads,
        int(sm.wildcards.get("index", 0))))
