"""Tape proven readable: recall members of the archives on tape and verify them.

    python -m scripts.audit --recall N [--seed S]      by hand (scripts/audit.py)
    python -m scripts.recall ...                       the night lane's daily job

N members are chosen at random (seeded: the seed is logged, and the same seed on the
same state chooses the same members) from the archives the backup records name, each
from an exposure its archive holds as on disk. They are retrieved archive by archive,
as NERSC asks (one ``htar -xf HPSSDIR/ARCHIVE MEMBER...`` per archive, all its members
at once, into a private scratch directory that is removed afterwards; with the ``tar``
backend, read from the tarball itself) together with their exposures' checksum files,
and each member's SHA-256 is compared with its checksum file as it is in the archive
(the one on disk when the archive lacks it). Each problem is one line, ``STREAM
NIGHT/EXPID: FILE: what is wrong``.

Members found bad stay a problem that needs a person
(``STATE/.recall/mismatches.json``, read by scripts/status/problems.py) until a later
recall finds them good: every recall checks them again first. The last recall's
result is ``STATE/.recall/last.json`` (the status page's line). Nothing else is
written: no file of the archive, the tape or the markers.

Choosing is pure (`draw_archives`, `draw_members`); acting is `retrieve` (one archive)
and `recall` (the whole run).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import logging
import os
import random
import shutil
import stat
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scripts.checksum import parse_checksum_file, sha256_file
from scripts.commands import run
from scripts.configuration import Stream, get_streams
from scripts.escaping import printable
from scripts.hpss import BackupError, Member
from scripts.markers import read_record, utc_timestamp, write_json_atomic, write_marker
from scripts.state_layout import (
    FAILED,
    recall_mismatches_path,
    recall_record_path,
    recall_scratch_directory,
    stream_directory,
)
from scripts.tape import Tape
from scripts.tape_contents import by_exposure

log = logging.getLogger("recall")
_CHUNK = 1 << 20
#: The suffix of a scratch directory's lock file (beside it).
_LOCK = ".lock"
#: Problem lines kept in the last recall's record (all are printed).
RECORD_LINES = 50


# --------------------------------------------------------------------------- choosing


@dataclass(frozen=True)
class ArchiveOnTape:
    """An archive a backup record names: the exposures it holds as on disk, and how
    many members it has (the weight of its draw)."""

    stream: str
    night: str
    name: str
    exposures: tuple[str, ...]
    members: int = 1


@dataclass(frozen=True)
class Pick:
    """One member to recall: ``NIGHT/EXPID/FILE`` in `archive` of `stream`."""

    stream: str
    archive: str
    member: str

    @property
    def night(self) -> str:
        return self.member.split("/", 2)[0]

    @property
    def expid(self) -> str:
        return self.member.split("/", 2)[1]

    @property
    def file(self) -> str:
        return self.member.split("/", 2)[2]

    @property
    def key(self) -> str:
        return f"{self.stream}|{self.archive}|{self.member}"


def draw_archives(archives: Sequence[ArchiveOnTape], count: int,
                  rng: random.Random) -> dict[ArchiveOnTape, int]:
    """How many of `count` members to draw from each archive: each draw picks an
    archive with a chance proportional to its members, so that every member on tape
    is about as likely as any other. Archives holding no exposure are never drawn."""
    candidates = [a for a in archives if a.exposures]
    if not candidates or count <= 0:
        return {}
    weights = [max(1, a.members) for a in candidates]
    drawn: dict[ArchiveOnTape, int] = {}
    for archive in rng.choices(candidates, weights=weights, k=count):
        drawn[archive] = drawn.get(archive, 0) + 1
    return drawn


def draw_members(archive: ArchiveOnTape, members: Iterable[Member], count: int,
                 checksum_name: Callable[[str, str], str], rng: random.Random,
                 taken: Iterable[str] = ()) -> list[Pick]:
    """`count` members of `archive` (fewer when it has fewer), at random, among the
    files of the exposures it holds as on disk; checksum files are the reference, not
    drawn; `taken` members are not drawn again."""
    held = by_exposure(members, archive.night)
    skip = set(taken)
    candidates = sorted(
        f"{archive.night}/{expid}/{path}"
        for expid in archive.exposures for path in held.get(expid, {})
        if path != checksum_name(archive.night, expid))
    candidates = [c for c in candidates if c not in skip]
    chosen = rng.sample(candidates, min(count, len(candidates)))
    return [Pick(archive.stream, archive.name, member) for member in sorted(chosen)]


# --------------------------------------------------------------------------- reading the state


def archives_on_tape(state: str | os.PathLike, streams: Iterable[Stream]) -> list[ArchiveOnTape]:
    """Every archive the backup records of `streams` name, in (stream, night, name)
    order, with the exposures each holds as on disk (``outdated`` ones left out)."""
    found = []
    for stream in streams:
        try:
            with os.scandir(stream_directory(state, stream.name)) as entries:
                names = sorted(e.name for e in entries if e.is_file(follow_symlinks=False))
        except (FileNotFoundError, NotADirectoryError):
            continue
        for name in names:
            night, _, stage = name.partition(".")
            if stage != "backedup" or not (len(night) == 8 and night.isdigit()):
                continue
            record = read_record(stream_directory(state, stream.name) / name) or {}
            archives = record.get("archives")
            for archive in archives if isinstance(archives, list) else []:
                if not isinstance(archive, dict) or not isinstance(archive.get("name"), str):
                    continue
                outdated = set(archive.get("outdated") or [])
                exposures = tuple(sorted(str(e) for e in archive.get("exposures") or []
                                         if str(e) not in outdated))
                members = archive.get("members")
                found.append(ArchiveOnTape(stream.name, night, archive["name"], exposures,
                                           members if isinstance(members, int) else 1))
    return found


def read_mismatches(state: str | os.PathLike) -> dict[str, dict]:
    """The members found bad by a recall and not found good since: key → record."""
    members = (read_record(recall_mismatches_path(state)) or {}).get("members")
    return dict(members) if isinstance(members, dict) else {}


# --------------------------------------------------------------------------- retrieving


@dataclass
class Recall:
    """The running totals and problem lines of one recall."""

    seed: int
    members: int = 0
    archives: int = 0
    bytes: int = 0
    lines: list[str] = field(default_factory=list)
    #: Pick.key → what is wrong (checked and bad) or None (checked and good).
    checked: dict[str, str | None] = field(default_factory=dict)

    def problem(self, pick: Pick, what: str, out) -> None:
        line = f"{pick.stream} {pick.night}/{pick.expid}: {pick.file}: {what}"
        self.lines.append(line)
        self.checked[pick.key] = what
        if out is not None:
            out.write(printable(line) + "\n")
            out.flush()


@contextlib.contextmanager
def private_scratch(root: Path) -> Iterator[Path]:
    """A new private (``0o700``) directory under `root` for one archive's members,
    removed when the block ends.

    `root` is made private too; one that is a symbolic link or belongs to another
    user is refused (another user of the group must not see or redirect what is
    recalled). The directory's lock (``recall-XXXX.lock`` beside it, held while it
    is in use) tells a recall running now (the night lane's, one by hand) from the
    leftovers of a killed one, which are removed first (`sweep_scratch`).
    """
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    info = os.lstat(root)
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
        raise BackupError(f"recall scratch {root} is not a directory of its own (a link?):"
                          " remove it")
    if info.st_uid != os.getuid():
        raise BackupError(f"recall scratch {root} belongs to another user: remove it or set"
                          " backup.recall_scratch")
    if stat.S_IMODE(info.st_mode) != 0o700:
        os.chmod(root, 0o700)
    sweep_scratch(root)
    handle, lock = tempfile.mkstemp(prefix="recall-", suffix=_LOCK, dir=root)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX)  # before the directory exists: never unlocked
        top = Path(lock.removesuffix(_LOCK))
        os.mkdir(top, 0o700)
        try:
            yield top
        finally:
            remove_tree(top)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(lock)
        os.close(handle)


def sweep_scratch(root: Path) -> None:
    """Remove the scratch directories of killed recalls: those whose lock no process
    holds, and any without a lock (a live one has it from before it exists to after
    it is gone)."""
    for lock in root.glob(f"recall-*{_LOCK}"):
        try:
            handle = os.open(lock, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            continue
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if os.fstat(handle).st_ino != os.lstat(lock).st_ino:
                continue  # swept and its name taken again meanwhile
            remove_tree(Path(str(lock).removesuffix(_LOCK)))
            lock.unlink(missing_ok=True)
        except OSError:  # BlockingIOError: a recall running now
            continue
        finally:
            os.close(handle)
    for top in root.glob("recall-*"):
        if (not top.name.endswith(_LOCK) and top.is_dir() and not top.is_symlink()
                and not Path(f"{top}{_LOCK}").exists()):
            remove_tree(top)


def remove_tree(top: Path) -> None:
    """Remove a scratch tree, whatever modes htar restored in it (``0o2550``)."""
    if top.is_symlink() or not top.exists():
        top.unlink(missing_ok=True)
        return
    for directory, dirs, _ in os.walk(top):
        for name in dirs:
            path = os.path.join(directory, name)
            if not os.path.islink(path):
                os.chmod(path, 0o700)
    os.chmod(top, 0o700)
    shutil.rmtree(top)


def _digests_from_listing(data: bytes | None) -> dict[str, str] | None:
    if data is None:
        return None
    return parse_checksum_file(data.decode("utf-8", errors="surrogateescape")).entries


def _read_small(path: Path) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return None


@contextlib.contextmanager
def extracted(tape: Tape, archive: str, names: list[str], scratch_root: Path
              ) -> Iterator[tuple[Path | None, str | None]]:
    """``htar -xf HPSSDIR/ARCHIVE NAME...`` into a private scratch directory: (the
    directory, None), or (None, why) when htar failed. The directory is removed
    afterwards, whatever happens."""
    with private_scratch(scratch_root) as scratch:
        command = [os.path.join(tape.backup["hpss_bin"], "htar"), "-xf",
                   f"{tape.stream.hpss}/{archive}", *names]
        result = run(command, timeout=tape.backup["timeout"], cwd=scratch)
        if result.ok:
            yield scratch, None
        else:
            yield None, result.describe()


def read_from_tarball(path: Path, members: set[str], listings: set[str], threads: int = 1
                      ) -> tuple[dict[str, tuple[str, int]], dict[str, bytes]]:
    """The tar backend: the SHA-256 and size of `members` and the bytes of `listings`
    (checksum files), read from the tarball at `path`.

    `tarfile` walks the headers only (it seeks over the data); each wanted member's
    data is then read once, straight from the file into the hashing buffer (through
    tarfile's own reader it is copied twice: a third of the speed), `threads` members
    at a time (positioned reads of the one descriptor; hashlib drops the GIL). Raises
    BackupError for a tarball that cannot be read or is cut short.
    """
    wanted = set(members) | set(listings)
    where: dict[str, tuple[int, int]] = {}
    try:
        with open(path, "rb", buffering=0) as raw:
            with tarfile.open(fileobj=raw, mode="r:") as tar:
                for info in tar:
                    if info.isreg() and info.name in wanted:
                        where[info.name] = (info.offset_data, info.size)
                        wanted.discard(info.name)
                        if not wanted:
                            break
                    tar.members.clear()
            order = sorted(where.items(), key=lambda item: item[1])  # the tape's order
            read = [(name, offset, size, name in listings) for name, (offset, size) in order]
            found = _map(lambda job: _hash_range(raw.fileno(), *job[1:]), read, threads)
    except (tarfile.TarError, EOFError, OSError) as err:
        raise BackupError(f"cannot read {path}: {err}") from None
    digests, texts = {}, {}
    for (name, _, size, _), (digest, kept) in zip(read, found, strict=True):
        if kept is None:
            raise BackupError(f"cannot read {path}: cut short in the data of {name}")
        if name in listings:
            texts[name] = bytes(kept)
        if name in members:
            digests[name] = (digest, size)
    return digests, texts


def _hash_range(fd: int, offset: int, size: int, keep: bool
                ) -> tuple[str, bytearray | None]:
    """SHA-256 of `size` bytes of `fd` from `offset` (positioned reads: the descriptor's
    offset is not shared state), and those bytes when `keep`; (digest, None) when
    the file ends first."""
    digest, kept = hashlib.sha256(), bytearray()
    buffer = bytearray(min(_CHUNK, max(size, 1)))
    view = memoryview(buffer)
    done = 0
    while done < size:
        count = os.preadv(fd, [view[:min(size - done, len(buffer))]], offset + done)
        if not count:
            return digest.hexdigest(), None
        digest.update(view[:count])
        if keep:
            kept += view[:count]
        done += count
    return digest.hexdigest(), kept


def _map(function: Callable, items: list, threads: int) -> list:
    """`function` of each item, in order, on up to `threads` threads (each hash is
    one core's work: the members of an archive are hashed side by side)."""
    if threads <= 1 or len(items) <= 1:
        return [function(item) for item in items]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=min(threads, len(items))) as pool:
        return list(pool.map(function, items))


def retrieve(tape: Tape, stream: Stream, archive: str, picks: list[Pick],
             scratch_root: Path, result: Recall, out, threads: int = 1) -> None:
    """Recall `picks` (all of one archive) with their checksum files, in one go, and
    verify each against its exposure's checksum file, hashing `threads` members at a
    time."""
    listings = {f"{p.night}/{p.expid}/{stream.checksum_name(p.night, p.expid)}"
                for p in picks}
    members = {p.member for p in picks}
    digests: dict[str, tuple[str, int]] = {}
    texts: dict[str, bytes] = {}
    start = time.monotonic()
    if tape.backup["backend"] == "tar":
        try:
            digests, texts = read_from_tarball(tape.directory / archive, members, listings,
                                               threads)
        except BackupError as err:
            for pick in picks:
                result.problem(pick, f"cannot be recalled from {archive}: {err}", out)
            return
    else:
        with extracted(tape, archive, sorted(members | listings), scratch_root) as (top, why):
            if top is None:
                for pick in picks:
                    result.problem(pick, f"cannot be recalled from {archive}: {why}", out)
                return
            for name in listings:
                data = _read_small(top / name)
                if data is not None:
                    texts[name] = data
            files = [name for name in sorted(members)
                     if (top / name).is_file() and not (top / name).is_symlink()]
            hashed = _map(lambda name: (sha256_file(top / name), (top / name).stat().st_size),
                          files, threads)
            digests.update(zip(files, hashed, strict=True))
    result.archives += 1
    for pick in picks:
        listing = f"{pick.night}/{pick.expid}/{stream.checksum_name(pick.night, pick.expid)}"
        checksum_file = listing.rsplit("/", 1)[1]
        entries = _digests_from_listing(texts.get(listing))
        where = f"{checksum_file} in {archive}"
        if entries is None:  # not in the archive: the one on disk
            entries = _digests_from_listing(
                _read_small(stream.destination_exposure(pick.night, pick.expid)
                            / checksum_file))
            where = f"{checksum_file} on disk ({checksum_file} is not in {archive})"
        found = digests.get(pick.member)
        result.members += 1
        if found is None:
            result.problem(pick, f"not recalled from {archive}: it is not in the archive",
                           out)
            continue
        result.bytes += found[1]
        if entries is None:
            result.problem(pick, f"recalled from {archive}, but {checksum_file} is neither in"
                                 " the archive nor on disk", out)
        elif pick.file not in entries:
            result.problem(pick, f"recalled from {archive}, but not listed in {where}", out)
        elif entries[pick.file] != found[0]:
            result.problem(pick, f"content recalled from {archive} differs from {where}",
                           out)
        else:
            result.checked[pick.key] = None
    log.info("recalled %d member(s) of %s/%s in %.1f s", len(picks), stream.hpss, archive,
             time.monotonic() - start)


# --------------------------------------------------------------------------- the whole recall


def choose(config: dict, streams: dict[str, Stream], count: int, seed: int,
           again: Iterable[Pick] = ()) -> tuple[list[Pick], list[str]]:
    """The members of a recall: `again` first (members to check again), then `count`
    drawn with `seed`. Returns them in retrieval order (by archive) and the lines of
    the archives whose member lists could not be read."""
    rng = random.Random(seed)
    archives = archives_on_tape(config["state"], streams.values())
    picks = [p for p in again if p.stream in streams]
    errors = []
    for archive, number in sorted(draw_archives(archives, count, rng).items(),
                                  key=lambda item: (item[0].stream, item[0].night,
                                                    item[0].name)):
        stream = streams[archive.stream]
        try:
            members = Tape(config, stream).member_list(archive.name)
        except BackupError as err:
            errors.append(f"{stream.name} {archive.night}: backup archive {archive.name}"
                          f" cannot be listed: {err}")
            continue
        picks += draw_members(archive, members, number, stream.checksum_name, rng,
                              taken=[p.member for p in picks if p.archive == archive.name])
    unique = {p.key: p for p in picks}
    return sorted(unique.values(), key=lambda p: (p.stream, p.archive, p.member)), errors


def recall(config: dict, count: int, seed: int, out=None,
           streams: dict[str, Stream] | None = None, by: str = "by hand",
           threads: int | None = None) -> Recall:
    """Recall `count` members (and those found bad before), verify them, record the
    result (``last.json``, ``mismatches.json``); return it. Problem lines go to `out`
    as they are found. Members are hashed `threads` at a time (default:
    ``verify.threads``, as the audit's files)."""
    threads = threads or config["verify"]["threads"]
    state = config["state"]
    streams = streams if streams is not None else get_streams(config)
    start = time.monotonic()
    before = read_mismatches(state)
    again = [Pick(r["stream"], r["archive"], r["member"]) for r in before.values()
             if isinstance(r, dict) and {"stream", "archive", "member"} <= set(r)]
    picks, errors = choose(config, streams, count, seed, again)
    log.info("recall of %d member(s) (%d found bad before), seed %d", len(picks),
             len(again), seed)
    result = Recall(seed)
    for line in errors:
        result.lines.append(line)
        if out is not None:
            out.write(printable(line) + "\n")
    scratch = recall_scratch_directory(config)
    by_archive: dict[tuple[str, str], list[Pick]] = {}
    for pick in picks:
        by_archive.setdefault((pick.stream, pick.archive), []).append(pick)
    for (name, archive), members in by_archive.items():
        stream = streams[name]
        retrieve(Tape(config, stream), stream, archive, members, scratch, result, out,
                 threads)
    seconds = time.monotonic() - start
    record_result(state, result, seconds, by, before)
    return result


def record_result(state: str | os.PathLike, result: Recall, seconds: float, by: str,
                  before: dict[str, dict]) -> None:
    """Write the last recall's result and the members that stay bad."""
    now = utc_timestamp()
    mismatches = dict(before)
    for key, what in result.checked.items():
        if what is None:
            mismatches.pop(key, None)
        else:
            stream, archive, member = key.split("|", 2)
            previous = mismatches.get(key, {})
            mismatches[key] = {"stream": stream, "archive": archive, "member": member,
                               "reason": what, "since": previous.get("since", now),
                               "time": now, "seed": result.seed}
    write_json_atomic(recall_mismatches_path(state), {"members": mismatches})
    write_json_atomic(recall_record_path(state), {
        "time": now, "seed": result.seed, "by": by, "members": result.members,
        "archives": result.archives, "bytes": result.bytes, "seconds": round(seconds, 3),
        "problems": len(result.lines), "lines": result.lines[:RECORD_LINES],
        "outcome": "problems" if result.lines else "ok"})


def summary(result: Recall, seconds: float) -> str:
    rate = result.bytes / seconds / 1e6 if seconds > 0 else 0.0
    return (f"recall: seed {result.seed}: {result.members} members from {result.archives}"
            f" archives, {result.bytes} bytes in {seconds:.1f} s ({rate:.0f} MB/s),"
            f" {len(result.lines)} problems")


def daily_seed(day: str) -> int:
    """The seed of a day's recall: the day itself, so a day's recall can be repeated
    (``--recall N --seed DAY``)."""
    return int(dt.datetime.strptime(day, "%Y%m%d").strftime("%Y%m%d"))


def run_daily_recall(config: dict, day: str, marker: Path, threads: int = 1) -> bool:
    """The night lane's job: recall ``backup.recall_per_day`` members, hashing
    `threads` at a time (the rule's, ``verify.threads``); the day's marker records the
    outcome. Members found bad need a person (``mismatches.json``), so
    the day's recall is done either way: the next is tomorrow's."""
    count = config["backup"]["recall_per_day"]
    start = time.monotonic()
    result = recall(config, count, daily_seed(day), by="daily", threads=threads)
    seconds = time.monotonic() - start
    for line in result.lines:
        log.error("%s", line)
    log.info("%s", summary(result, seconds))
    write_marker(marker, {"day": day, "seed": result.seed, "members": result.members,
                          "archives": result.archives, "bytes": result.bytes,
                          "problems": len(result.lines),
                          "outcome": "problems" if result.lines else "ok",
                          "duration": round(seconds, 3)})
    for failed in marker.parent.glob(f"*.recalled{FAILED}"):
        failed.unlink(missing_ok=True)  # an earlier day's failed recall: this one ran
    return True


if __name__ == "__main__":
    from scripts.job import parse_job, run_job

    os.umask(0o027)
    run_job(parse_job(sys.argv[1:]), lambda sm: run_daily_recall(
        sm.config, sm.wildcards.day, Path(sm.output[0]), sm.threads))
