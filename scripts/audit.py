"""Audit the archive, read-only: do the bytes, modes, state and backup records agree?

    python -m scripts.audit [--config CONFIG] [--night NIGHT] [--stream NAME] [--threads N]
                            [--read-tape]
    python -m scripts.audit [--config CONFIG] [--stream NAME] --recall N [--seed S]

With ``--recall N``, the tape is proven readable instead (scripts/recall.py): N members
chosen at random (``--seed``, logged, repeats a recall) are retrieved from the archives
on tape, archive by archive (``htar -xf`` into a private scratch directory, removed
afterwards; the tarball itself with the ``tar`` backend), and verified against their
exposures' checksum files; one line per problem, exit 0 only when every member
matches. Its result is recorded for the status page (``STATE/.recall``).

For every installed exposure of every stream (or of one night, or one stream):

* its files verify against its checksum file (mismatched, listed but missing, present
  but not listed are each a problem);
* files are ``0o440``; the exposure's directories ``0o2550`` once its night's backup
  record names it (before, ``0o2750`` or already ``0o2550``: a backup under way or a
  lost state); the night directory likewise, ``0o2550`` once
  the night has a backup record; a symbolic link anywhere in the archive is a problem;
* a night directory holds 8-digit exposure directories and nothing else (an
  interrupted install's ``.EXPID.installing``, an rsync temporary, a stray file are
  problems); the top of the archive holds night directories and the workflow's own
  ``.desitransfer*`` workspace;
* an ``.installed`` marker whose exposure directory is missing is a problem (an
  exposure directory without a marker is audited like the others);
* every archive a backup record names is in the archive directory with its index
  (``hsi ls -l`` on HPSS), its index (``htar -tvf``, or the tar backend's ``.idx``)
  holds each exposure the record lists, and the newest archive listing an exposure
  holds it as it is on disk, file by file (name and size);
* with the tar backend, the tarball is read once, front to back: each member in the
  index with its size and SHA-256, and hashing to the exposure's checksum file. On
  HPSS, without a tape recall: the archive's size must be at least what the members
  in its index need.

Each problem is one line on stdout, ``STREAM NIGHT/EXPID: what is wrong`` (names
escaped, so no raw control character or undecodable byte reaches the terminal),
written as soon as it is found; a summary goes to stderr. The exit status is 0 when
everything holds, 1 when a problem was found, 2 for a bad configuration or argument.

Nothing is ever written (a recall writes its scratch copy, removed at once, and its
result record under ``STATE/.recall``): no chmod, no marker, no cache. One exposure is
held in memory at a time; its files are hashed by `verify_exposure` with ``--threads`` threads.
"""

from __future__ import annotations

import argparse
import io
import os
import stat
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from scripts.archive import WORKSPACE
from scripts.checksum import VerificationResult, verify_exposure
from scripts.configuration import (
    ConfigurationError,
    Stream,
    announce_configuration,
    describe_validation_error,
    expand_paths,
    find_configuration,
    get_streams,
    load_yaml,
    require_state,
    with_defaults,
)
from scripts.hpss import BackupError, Member, is_consistency_member, minimal_tar_size
from scripts.markers import marker_path, read_record
from scripts.permissions import DIR_MODE, DIR_MODE_BACKUP, FILE_MODE
from scripts.state_layout import night_directory, stream_directory
from scripts.tape import Tape
from scripts.tape_contents import by_exposure, differences, exposure_on_disk
from scripts.tar_archive import scan_tar

#: Problems about the exposure directory itself, rather than one file in it.
EXPOSURE = ""
#: Escapes as Python's repr writes them; other control characters become \xNN.
_ESCAPES = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


# --------------------------------------------------------------------------- output


def printable(text: str) -> str:
    r"""`text` with every character a terminal could act on escaped.

    Backslashes are doubled; newlines, returns and tabs become ``\n``, ``\r`` and ``\t``;
    bytes that were not UTF-8 (``os`` decodes them to lone surrogates) become ``\xNN``;
    other control, format and separator characters become ``\xNN``, ``\uNNNN`` or
    ``\UNNNNNNNN``. The result is one printable line.
    """
    if text.isascii() and text.isprintable() and "\\" not in text:
        return text
    out = []
    for char in text:
        code = ord(char)
        if char in _ESCAPES:
            out.append(_ESCAPES[char])
        elif 0xDC80 <= code <= 0xDCFF:  # surrogateescape: one undecodable byte
            out.append(f"\\x{code - 0xDC00:02x}")
        elif char.isprintable():
            out.append(char)
        elif code < 0x100:
            out.append(f"\\x{code:02x}")
        elif code < 0x10000:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    return "".join(out)


@dataclass
class Audit:
    """Where problem lines go, and the running totals of one audit."""

    out: TextIO
    threads: int = 2
    exposures: int = 0
    bytes: int = 0
    problems: int = 0
    #: Set when the audit is interrupted: a tape archive being read stops at its next member.
    stopping: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def problem(self, stream: Stream, item: str, what: str) -> None:
        """Write one problem line at once (cron and operators see it as it is found)."""
        with self._lock:  # a tape archive is read beside the next night's exposures
            self.problems += 1
            self.out.write(printable(f"{stream.name} {item}: {what}") + "\n")
            self.out.flush()

    def read(self, count: int) -> None:
        """Count `count` bytes read."""
        with self._lock:
            self.bytes += count

    def summary(self, seconds: float) -> str:
        rate = self.bytes / seconds / 1e6 if seconds > 0 else 0.0
        return (f"audit: {self.exposures} exposures audited, {self.bytes} bytes read in"
                f" {seconds:.1f} s ({rate:.0f} MB/s), {self.problems} problems")


# --------------------------------------------------------------------------- one exposure


@dataclass
class Findings:
    """The problems of one exposure, by path relative to it (`EXPOSURE` for itself)."""

    paths: dict[str, list[str]] = field(default_factory=dict)

    def add(self, path: str, what: str) -> None:
        self.paths.setdefault(path, []).append(what)

    def lines(self) -> Iterator[str]:
        """One line per path, the exposure's own first."""
        for path in sorted(self.paths):
            what = "; ".join(self.paths[path])
            yield what if path == EXPOSURE else f"{path}: {what}"


def link_target(path: str) -> str:
    """What a symbolic link points at, for a message."""
    try:
        return os.readlink(path)
    except OSError as err:
        return f"? ({err.strerror})"


def _mode_problem(info: os.stat_result, expected: int | tuple[int, ...]) -> str | None:
    allowed = expected if isinstance(expected, tuple) else (expected,)
    mode = stat.S_IMODE(info.st_mode)
    if mode in allowed:
        return None
    return f"mode {mode:#o}, expected {' or '.join(f'{m:#o}' for m in allowed)}"


def directory_modes(on_tape: bool) -> tuple[int, ...]:
    """The modes a directory may have: 0o2550 once a backup record names it; before,
    0o2750 or already 0o2550 (locked for a backup not yet recorded: a backup in progress,
    or a state that was lost)."""
    return (DIR_MODE_BACKUP,) if on_tape else (DIR_MODE, DIR_MODE_BACKUP)


def check_tree(directory: Path, dir_mode: tuple[int, ...], findings: Findings) -> None:
    """Record the modes and entry types below `directory` that are not as installed.

    Links are reported, never followed; other non-regular files likewise.
    """
    pending = [""]
    while pending:
        relative = pending.pop()
        try:
            with os.scandir(directory / relative if relative else directory) as entries:
                children = list(entries)
        except OSError as err:
            findings.add(relative, f"cannot be listed ({err.strerror})")
            continue
        for entry in children:
            path = f"{relative}/{entry.name}" if relative else entry.name
            try:
                info = entry.stat(follow_symlinks=False)
            except OSError as err:
                findings.add(path, f"cannot be examined ({err.strerror})")
                continue
            if stat.S_ISLNK(info.st_mode):
                findings.add(path, f"symbolic link to {link_target(entry.path)}")
                continue
            if stat.S_ISDIR(info.st_mode):
                pending.append(path)
                wrong = _mode_problem(info, dir_mode)
            elif stat.S_ISREG(info.st_mode):
                wrong = _mode_problem(info, FILE_MODE)
            else:
                wrong = "neither a regular file nor a directory"
            if wrong:
                findings.add(path, wrong)


def add_verification(result: VerificationResult, findings: Findings) -> None:
    """Turn `verify_exposure`'s lists into findings, one per file."""
    checksum = result.checksum_name
    if result.checksum_file_missing:
        error = result.checksum_error
        why = f"unreadable ({error})" if error else "missing"
        findings.add(EXPOSURE, f"checksum file {checksum} {why}: {len(result.unlisted)}"
                               " files cannot be verified")
        return
    for number, _ in result.malformed:
        findings.add(checksum, f"line {number} is malformed")
    for name in result.unsafe:
        findings.add(checksum, f"lists an unsafe name {name}")
    for name in result.mismatched:
        note = result.errors.get(name)
        findings.add(name, f"cannot be verified ({note})" if note
                     else f"content differs from {checksum}")
    for name in result.missing:
        findings.add(name, f"listed in {checksum} but missing")
    for name in result.unlisted:
        findings.add(name, f"present but not listed in {checksum}")


def audit_exposure(audit: Audit, stream: Stream, night: str, expid: str,
                   backed_up: bool) -> None:
    """Check one installed exposure's modes and bytes; report what is wrong."""
    directory = stream.destination_exposure(night, expid)
    dir_mode = directory_modes(backed_up)
    findings = Findings()
    try:
        wrong = _mode_problem(os.lstat(directory), dir_mode)
    except OSError as err:
        wrong = f"cannot be examined ({err.strerror})"
    if wrong:
        findings.add(EXPOSURE, f"directory {wrong}")
    try:
        result = verify_exposure(directory, stream.checksum_name(night, expid), audit.threads)
    except (OSError, ValueError) as err:
        findings.add(EXPOSURE, f"cannot be verified ({err})")
    else:
        audit.read(result.bytes)
        add_verification(result, findings)
    check_tree(directory, dir_mode, findings)
    audit.exposures += 1
    for line in findings.lines():
        audit.problem(stream, f"{night}/{expid}", line)


# --------------------------------------------------------------------------- one night


def eight_digits(name: str) -> bool:
    """Whether `name` can be a NIGHT or an EXPID."""
    return len(name) == 8 and name.isdigit()


def installed_markers(state: Path, stream: Stream, night: str) -> set[str]:
    """EXPIDs of the night with an ``.installed`` marker."""
    suffix = ".installed"
    try:
        with os.scandir(night_directory(state, stream.name, night)) as entries:
            names = [entry.name for entry in entries]
    except (FileNotFoundError, NotADirectoryError):
        return set()
    return {name[:8] for name in names
            if name.endswith(suffix) and eight_digits(name[:-len(suffix)])}


def night_entries(audit: Audit, stream: Stream, night: str) -> tuple[set[str], set[str]]:
    """List the night directory: (exposure directories, every entry name).

    Anything but an 8-digit directory is reported, in name order.
    """
    exposures, names = set(), set()
    with os.scandir(stream.destination / night) as listing:
        entries = sorted(listing, key=lambda entry: entry.name)
    for entry in entries:
        names.add(entry.name)
        if entry.is_symlink():
            audit.problem(stream, night, f"{entry.name} is a symbolic link to"
                                         f" {link_target(entry.path)}")
        elif entry.is_dir(follow_symlinks=False) and eight_digits(entry.name):
            exposures.add(entry.name)
        else:
            audit.problem(stream, night, f"unexpected {_kind(entry)} {entry.name}"
                                         f"{_hint(entry.name)}")
    return exposures, names


def _kind(entry: os.DirEntry) -> str:
    if entry.is_dir(follow_symlinks=False):
        return "directory"
    return "file" if entry.is_file(follow_symlinks=False) else "special file"


def _hint(name: str) -> str:
    if name.startswith(".") and name.endswith(".installing"):
        return " (an interrupted install's copy: compare it with the exposure, then remove it)"
    return ""


def backup_record(audit: Audit, state: Path, stream: Stream,
                  night: str) -> tuple[dict | None, set[str]]:
    """The night's backup record (None when there is none) and the EXPIDs it names."""
    path = marker_path(state, stream.name, night, None, "backedup")
    if not path.exists():
        return None, set()
    record = read_record(path)
    archives = record.get("archives") if record else None
    if not isinstance(archives, list) or not all(isinstance(a, dict) for a in archives):
        audit.problem(stream, night, f"backup record {path} is unreadable or has no"
                                     " list of archives")
        return {"archives": []}, set()
    return record, {str(e) for a in archives for e in a.get("exposures", [])}


def audit_night(audit: Audit, state: Path, stream: Stream, night: str) -> dict | None:
    """Audit one night's directory and exposures; return its backup record, if any."""
    record, backed_up = backup_record(audit, state, stream, night)
    markers = installed_markers(state, stream, night)
    directory = stream.destination / night
    try:
        info = os.lstat(directory)
    except FileNotFoundError:
        if markers:
            audit.problem(stream, night, f"night directory {directory} is missing, but"
                                         f" {len(markers)} exposures have .installed markers")
        return record
    except OSError as err:
        audit.problem(stream, night, f"night directory cannot be examined ({err.strerror})")
        return record
    if stat.S_ISLNK(info.st_mode):
        audit.problem(stream, night, f"night directory is a symbolic link to"
                                     f" {link_target(str(directory))}")
        return record
    if not stat.S_ISDIR(info.st_mode):
        audit.problem(stream, night, f"{directory} is not a directory")
        return record
    wrong = _mode_problem(info, directory_modes(record is not None))
    if wrong:
        audit.problem(stream, night, f"night directory {wrong}")
    try:
        exposures, names = night_entries(audit, stream, night)
    except OSError as err:
        audit.problem(stream, night, f"night directory cannot be listed ({err.strerror})")
        return record
    for expid in sorted(exposures | markers):
        if expid in exposures:
            audit_exposure(audit, stream, night, expid, expid in backed_up)
        elif expid not in names:
            audit.problem(stream, f"{night}/{expid}", "has an .installed marker but its"
                                                      " exposure directory is missing")
    return record


# --------------------------------------------------------------------------- one stream


def destination_nights(audit: Audit, stream: Stream) -> set[str]:
    """Night directories at the top of the archive; report anything else there."""
    nights = set()
    try:
        entries = os.scandir(stream.destination)
    except FileNotFoundError:
        return nights  # nothing installed yet; markers without it are reported per night
    except OSError as err:
        audit.problem(stream, str(stream.destination), f"cannot be listed ({err.strerror})")
        return nights
    with entries:
        for entry in sorted(entries, key=lambda entry: entry.name):
            if entry.name.startswith(WORKSPACE):  # the workflow's own, never a night
                continue
            if eight_digits(entry.name):
                nights.add(entry.name)  # audit_night reports one that is not a directory
            elif entry.is_symlink():
                audit.problem(stream, entry.name, f"symbolic link to {link_target(entry.path)}"
                                                  " at the top of the archive")
            else:
                audit.problem(stream, entry.name, f"unexpected {_kind(entry)} at the top"
                                                  " of the archive")
    return nights


def state_nights(state: Path, stream: Stream) -> set[str]:
    """Nights with a directory of markers or a night-level marker in the state."""
    try:
        with os.scandir(stream_directory(state, stream.name)) as entries:
            return {entry.name[:8] for entry in entries if eight_digits(entry.name[:8])}
    except (FileNotFoundError, NotADirectoryError):
        return set()


def archive_duties(record: dict) -> dict[str, str]:
    """EXPID → the archive that must hold it as it is on disk: the newest of the
    record's archives that lists it (an older one may hold an older version)."""
    newest = {}
    for archive in record.get("archives", []):
        for expid in archive.get("exposures", []):
            newest[str(expid)] = str(archive.get("name"))
    return newest


@dataclass
class TapeView:
    """One stream's archive directory as the audit sees it: the backend, and the
    directory's listing (None when it could not be listed: said once)."""

    tape: Tape
    listing: dict[str, int] | None
    read: bool = True  # read the archives' bytes (always with the tar backend)


def tape_view(audit: Audit, tape: Tape, stream: Stream, read_tape: bool) -> TapeView:
    """List the stream's archive directory once (``hsi ls -l`` on HPSS)."""
    read = read_tape or tape.backup["backend"] == "tar"
    try:
        return TapeView(tape, tape.listing(), read)
    except BackupError as err:
        audit.problem(stream, tape.location, f"the backup archives cannot be listed: {err}")
        return TapeView(tape, None, read)


def audit_backup(audit: Audit, view: TapeView, stream: Stream, night: str,
                 record: dict) -> None:
    """Check each archive of the night's backup record against the archive directory,
    its own index, its bytes (tar backend) and the exposures on disk."""
    duties = archive_duties(record)
    for archive in record.get("archives", []):
        name = str(archive.get("name"))
        listed = {str(expid) for expid in archive.get("exposures", [])}
        if listed:
            mine = {expid for expid in listed if duties.get(expid) == name}
            audit_archive(audit, view, stream, night, name, listed, mine)


def audit_archive(audit: Audit, view: TapeView, stream: Stream, night: str, name: str,
                  listed: set[str], mine: set[str]) -> None:
    """Check one archive of a night's record.

    * the archive and its index are in the archive directory;
    * its index (``htar -tvf`` on HPSS, ``NAME.idx`` with the tar backend) holds every
      exposure the record says it holds;
    * the exposures it must hold as on disk (`mine`) are there file by file: name and
      size, and with the tar backend the SHA-256 of the bytes read from the tarball
      against the exposure's checksum file;
    * with the tar backend, the tarball read front to back holds exactly what its
      index lists (a truncated or altered tarball); on HPSS, the archive is at least
      as large as its members need (a truncated one).
    """
    tape = view.tape
    present = None
    if view.listing is not None:
        present = name in view.listing
        if not present:
            audit.problem(stream, night, f"backup archive {name} is missing from"
                                         f" {tape.location}")
        if f"{name}.idx" not in view.listing:
            audit.problem(stream, night, f"backup archive {name} has no {name}.idx in"
                                         f" {tape.location}")
    try:
        members = tape.member_list(name)
    except BackupError as err:
        audit.problem(stream, night, f"backup archive {name} cannot be listed: {err}")
        return
    held = by_exposure(members, night)
    for expid in sorted(listed - set(held)):
        audit.problem(stream, f"{night}/{expid}", f"the backup record says {name} holds"
                                                  " it, but that archive does not")
    if present is False:
        return  # its index alone says nothing of what is on tape
    if present and view.listing is not None and tape.backup["backend"] == "htar":
        need = minimal_tar_size(members)
        if view.listing[name] < need:
            audit.problem(stream, night, f"backup archive {name} is {view.listing[name]}"
                                         f" bytes on tape, fewer than the {need} its"
                                         " members need: truncated")
    if view.read:
        read = read_archive(audit, tape, stream, night, name, members)
        if read is None:
            return  # unreadable: said; its index alone would compare as if intact
        held = by_exposure(read, night)
    for expid in sorted(mine & set(held)):
        checksum = stream.checksum_name(night, expid)
        disk = exposure_on_disk(stream.destination_exposure(night, expid), checksum)
        if disk is None:
            continue  # the exposure's own audit says it is missing
        for path, what in differences(disk, held[expid], name, checksum):
            audit.problem(stream, f"{night}/{expid}", f"{path}: {what}")


class _Interrupted(Exception):
    """The audit was interrupted while a tape archive was being read."""


def read_archive(audit: Audit, tape: Tape, stream: Stream, night: str, name: str,
                 indexed: list[Member]) -> list[Member] | None:
    """Read a tarball once, front to back, hashing every member; report where it
    differs from its index. Returns its members with the digests of their bytes, or
    None when it cannot be read to its end."""
    expected = {member.name: member for member in indexed}
    found: list[Member] = []
    try:
        with tape.read(name) as raw:
            for member in scan_tar(raw):
                if is_consistency_member(member.name):
                    continue  # htar's own, not in its listing
                found.append(member)
                audit.read(member.size)
                if audit.stopping.is_set():
                    raise _Interrupted  # out of the stream at once (hsi is ended)
                entry = expected.pop(member.name, None)
                if entry is None:
                    audit.problem(stream, night, f"backup archive {name}: {member.name}:"
                                                 " in the tarball but not in its .idx")
                elif entry.size != member.size or entry.sha256 not in (None, member.sha256):
                    audit.problem(stream, night, f"backup archive {name}: {member.name}:"
                                                 " differs from its .idx (size or SHA-256)")
    except BackupError as err:
        audit.problem(stream, night, f"backup archive {name} cannot be read: {err}")
        return None
    except _Interrupted:
        return None  # the summary says the rest was not audited
    for member in sorted(expected):
        audit.problem(stream, night, f"backup archive {name}: {member}: listed in its"
                                     " .idx but not in the tarball")
    return found


def audit_stream(audit: Audit, config: dict, stream: Stream, night: str | None = None,
                 read_tape: bool = False) -> None:
    """Audit every night of `stream` (or only `night`), oldest first."""
    state = Path(config["state"])
    if night is not None:
        nights = {night}
        on_disk = os.path.lexists(stream.destination / night)
        if not on_disk and night not in state_nights(state, stream):
            print(f"audit: {stream.name} {night}: nothing installed or recorded for this"
                  " night", file=sys.stderr)
    else:
        nights = destination_nights(audit, stream) | state_nights(state, stream)
    tape = None if config["backup"]["backend"] == "none" else Tape(config, stream)
    view = None
    unchecked = 0
    # With more than one thread, a night's tape archives are read (one stream) while
    # the next night's exposures are hashed: both reads at once, one night apart at most.
    with ThreadPoolExecutor(max_workers=1) as tape_reader:
        reading = None
        try:
            for each in sorted(nights):
                record = audit_night(audit, state, stream, each)
                if record is not None and tape is not None:
                    view = view or tape_view(audit, tape, stream, read_tape)
                    if reading is not None:
                        reading.result()
                    reading = None
                    if audit.threads > 1:
                        reading = tape_reader.submit(audit_backup, audit, view, stream,
                                                     each, record)
                    else:
                        audit_backup(audit, view, stream, each, record)
                elif record is not None:
                    unchecked += 1
            if reading is not None:
                reading.result()
        except BaseException:
            audit.stopping.set()
            raise
    if unchecked:
        print(f"audit: {stream.name}: backup.backend is none, so the backup records of"
              f" {unchecked} nights were not checked against their archives", file=sys.stderr)


# --------------------------------------------------------------------------- command


def load_configuration(path: str | os.PathLike) -> dict:
    """Read, validate and complete the configuration, as the workflow does (paths
    expanded); its state directory must exist (an audit of nothing is no good audit).

    Raises
    ------
    ConfigurationError
        With one line naming the file and the fix.
    """
    raw = load_yaml(path)
    error = describe_validation_error(raw, [str(path)])
    if error is not None:
        raise ConfigurationError(error)
    try:
        config = expand_paths(with_defaults(raw))
    except ConfigurationError as err:
        raise ConfigurationError(f"{path}: {err}") from None
    require_state(config, path)
    return config


def select_streams(config: dict, name: str | None) -> list[Stream]:
    """The configured streams, or the one named; `ConfigurationError` if unknown."""
    streams = get_streams(config)
    if name is None:
        return list(streams.values())
    if name not in streams:
        raise ConfigurationError(f"--stream {name}: not configured (streams:"
                                 f" {', '.join(sorted(streams))})")
    return [streams[name]]


def parse_arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m scripts.audit",
        description="Audit the archive without changing it: checksums, modes, stray"
                    " entries, markers and backup records. One line per problem on"
                    " stdout; exit 0 when everything holds, 1 otherwise.")
    parser.add_argument("--config", help="configuration file (default: $DESITRANSFER_CONFIG,"
                                          " else config.yaml beside the Snakefile)")
    parser.add_argument("--night", help="audit this night only (YYYYMMDD)")
    parser.add_argument("--stream", help="audit this stream only")
    parser.add_argument("--threads", type=int,
                        help="files hashed in parallel (default: verify.threads)")
    parser.add_argument("--read-tape", action="store_true",
                        help="with the htar backend, also read every archive's bytes from"
                             " HPSS (hsi get: a recall from tape) and check them against"
                             " the checksum files, as the tar backend's always are")
    parser.add_argument("--recall", type=int, metavar="N",
                        help="retrieve N members chosen at random from the archives on tape"
                             " and verify them against their checksum files")
    parser.add_argument("--seed", type=int,
                        help="the seed of --recall's random choice (default: a new one,"
                             " printed: the same seed on the same state repeats a recall)")
    return parser.parse_args(argv)


def argument_error(args: argparse.Namespace) -> str | None:
    if args.night is not None and not eight_digits(args.night):
        return f"--night {args.night}: expected YYYYMMDD"
    if args.threads is not None and args.threads < 1:
        return f"--threads {args.threads}: expected at least 1"
    if args.recall is not None and args.recall < 1:
        return f"--recall {args.recall}: expected a number of members, at least 1"
    if args.seed is not None and args.recall is None:
        return "--seed: only with --recall N"
    if args.recall is not None and (args.night or args.read_tape):
        return "--recall: not with --night or --read-tape"
    return None


def recall_main(config: dict, streams: list[Stream], count: int, seed: int | None,
                threads: int | None = None) -> int:
    """``--recall N``: recall N members, verify them; 0 only when every member matches."""
    from scripts.recall import recall, summary

    if config["backup"]["backend"] == "none":
        print("audit: --recall: backup.backend is none: there is no tape to recall from",
              file=sys.stderr)
        return 2
    seed = seed if seed is not None else int.from_bytes(os.urandom(4), "big")
    print(f"audit: recall of {count} members, seed {seed} (--seed {seed} repeats it)",
          file=sys.stderr)
    start = time.monotonic()
    result = recall(config, count, seed, out=sys.stdout,
                    streams={stream.name: stream for stream in streams}, threads=threads)
    print(summary(result, time.monotonic() - start), file=sys.stderr)
    if not result.members and not result.lines:
        print("audit: --recall: no archive on tape holds an exposure yet", file=sys.stderr)
    return 1 if result.lines else 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the audit; return 0 (all holds), 1 (problems) or 2 (bad input)."""
    args = parse_arguments(argv)
    try:
        error = argument_error(args)
        if error:
            raise ConfigurationError(error)
        path, origin = find_configuration(args.config)
        announce_configuration([path], origin)
        config = load_configuration(path)
        streams = select_streams(config, args.stream)
    except ConfigurationError as err:
        print(f"audit: {err}", file=sys.stderr)
        return 2
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(errors="backslashreplace")
    if args.recall is not None:
        try:
            return recall_main(config, streams, args.recall, args.seed, args.threads)
        except BackupError as err:  # the scratch directory refused
            print(f"audit: --recall: {err}", file=sys.stderr)
            return 2
    audit = Audit(sys.stdout, threads=args.threads or config["verify"]["threads"])
    start = time.monotonic()
    try:
        for stream in streams:
            audit_stream(audit, config, stream, args.night, args.read_tape)
    except KeyboardInterrupt:
        print(f"{audit.summary(time.monotonic() - start)} (interrupted: the rest was not"
              " audited)", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (`| head`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    print(audit.summary(time.monotonic() - start), file=sys.stderr)
    return 1 if audit.problems else 0


if __name__ == "__main__":
    sys.exit(main())
