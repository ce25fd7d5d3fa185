"""DESI's status files: ``desi_transfer_status_YYYY.json``, rebuilt from the state.

The original daemon's layout, which DESI's tools read:
``{"NIGHT": {"EXPID": [[stage, success, ms], ...]}}`` with EXPID without leading
zeros, stage 0 rsync (our ``staged``), 1 checksum (``checksummed``; a late file that
failed re-verification in a catch-up makes it 0), 2 backup (a row for every exposure
an archive of the night holds), success 0/1, time in ms since the epoch, newest row
first, compact separators. A night goes in the file of its own year.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import stat
import time
from pathlib import Path
from typing import Any

import scripts.status.reading as reading
from scripts.markers import read_record, valid_night, write_bytes_atomic, write_json_atomic
from scripts.status.model import ExposureStatus, NightStatus, milliseconds

log = logging.getLogger("status")

#: DESI's stage numbers in the status files, by our marker stage.
STATUS_STAGES = {"staged": 0, "checksummed": 1, "backedup": 2}
YEAR_FILE = "desi_transfer_status_{year}.json"
#: What was last written here (hashes) and the state it was built from, per directory.
MANIFEST = ".desitransfer-status.json"
#: Bumped when `night_rows` changes, so rows cached in a year file are recomputed.
ROWS_VERSION = 2
#: A night changed this recently may still be changing: its rows are not reused.
SETTLE_SECONDS = 2.0
#: Status files are read by the web server and DESI's tools.
PUBLIC_MODE = 0o644
#: And their directories traversed (the cron entry's umask would make them 0o750).
PUBLIC_DIR_MODE = 0o755


def public_directory(directory: str | os.PathLike) -> Path:
    """Make `directory` (and its missing parents) and open it to the web server
    (`PUBLIC_DIR_MODE`) when it is the workflow's own; return it."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    info = directory.stat()
    if info.st_uid == os.geteuid() and stat.S_IMODE(info.st_mode) != PUBLIC_DIR_MODE:
        os.chmod(directory, PUBLIC_DIR_MODE)
    return directory


def _newest(*records: dict | None) -> dict | None:
    present = [r for r in records if r is not None]
    return max(present, key=lambda r: str(r.get("time", "")), default=None)


def _stage_row(stage: str, marker: dict | None, failure: dict | None) -> list[int] | None:
    code = STATUS_STAGES[stage]
    marker_ms = milliseconds(marker.get("time")) if marker is not None else None
    failure_ms = milliseconds(failure.get("time")) if failure is not None else None
    if marker_ms is not None and (failure_ms is None or marker_ms >= failure_ms):
        return [code, 0 if marker.get("outcome") == "failed" else 1, marker_ms]
    if failure_ms is not None:
        return [code, 0, failure_ms]
    return None


def _backup_row(night: NightStatus, exposure: ExposureStatus,
                archived: dict[str, dict]) -> list[int] | None:
    if exposure.expid in archived:
        ms = milliseconds(archived[exposure.expid].get("time")) or milliseconds(
            night.stages["backedup"].get("time"))
        return None if ms is None else [STATUS_STAGES["backedup"], 1, ms]
    failure = night.backup_failure()
    if failure is not None and "installed" in exposure.stages:
        ms = milliseconds(failure.get("time"))
        return None if ms is None else [STATUS_STAGES["backedup"], 0, ms]
    return None


def night_rows(night: NightStatus) -> dict[str, list[list[int]]]:
    """DESI's rows for every exposure of a night: EXPID (no leading zeros) → rows.

    One row per stage, the newer of the marker (success 1, or 0 for a verification
    accepted by policy) and the failure record (success 0; for the checksum row a
    failed re-verification in a catch-up counts too); backup rows for every exposure
    an archive holds, at that archive's time, and failed backup rows for the installed
    exposures no archive holds while a backup of the night is failing.
    """
    archived = night.archived()
    out = {}
    for expid in sorted(set(night.exposures) | set(archived)):
        exposure = night.exposures.get(expid) or ExposureStatus(night.stream, night.night, expid)
        failures = exposure.failures
        rows = [_stage_row("staged", exposure.stages.get("staged"), failures.get("staged")),
                _stage_row("checksummed", exposure.stages.get("checksummed"),
                           _newest(failures.get("checksummed"), failures.get("updated"))),
                _backup_row(night, exposure, archived)]
        rows = [r for r in rows if r is not None]
        if rows:
            rows.sort(key=lambda r: (r[2], r[0]), reverse=True)
            out[str(int(expid))] = rows
    return out


def valid_year_data(data: Any) -> bool:
    """Whether `data` has the status file layout (what DESI's page can read)."""
    if not isinstance(data, dict):
        return False
    for night, exposures in data.items():
        # Eight digits: a night that is no date (20261131) is dropped, not the file.
        if not (len(night) == 8 and night.isdigit() and isinstance(exposures, dict)):
            return False
        for expid, rows in exposures.items():
            if not (expid.isdigit() and isinstance(rows, list)):
                return False
            for row in rows:
                if not (isinstance(row, list) and len(row) == 3
                        and all(type(x) is int for x in row)
                        and row[0] in (0, 1, 2) and row[1] in (0, 1)):
                    return False
    return True


def encode_year(data: dict[str, dict]) -> bytes:
    """The file's bytes: nights and exposures in order, compact, as the original wrote."""
    ordered = {n: dict(sorted(data[n].items(), key=lambda kv: int(kv[0]))) for n in sorted(data)}
    return json.dumps(ordered, separators=(",", ":")).encode()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def night_fingerprint(info: reading.NightFiles, newest_allowed: int) -> str | None:
    """What a night's rows depend on, or None while the night may still be changing.

    Markers are written by rename, which changes the night directory's mtime; the
    night-level markers are fingerprinted one by one.
    """
    stamps = [info.directory_mtime, *(m for m, _ in info.files.values())]
    if max(stamps) >= newest_allowed:
        return None
    text = f"{info.directory_mtime}|" + "|".join(
        f"{name}:{m}:{s}" for name, (m, s) in sorted(info.files.items()))
    return hashlib.sha1(text.encode()).hexdigest()


def _keep_copy(path: Path, suffix: str, why: str) -> None:
    copy = path.with_name(path.name + suffix)
    shutil.copy2(path, copy)
    log.warning("%s %s: kept as %s and rebuilt from the state.", path, why, copy)


def _keep_backup(path: Path) -> None:
    """Copy a valid year file to ``.bak`` before it is replaced; a broken one is kept
    as ``.bad`` instead and must not overwrite the last good ``.bak``."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return
    try:
        valid = valid_year_data(json.loads(raw))
    except ValueError:
        valid = False
    if valid:
        write_bytes_atomic(backup_path(path), raw, PUBLIC_MODE)


def _existing_rows(path: Path, written: dict[str, str]) -> dict | None:
    """The year file's data if it is exactly what was last written here; otherwise
    None, after keeping a foreign or broken file aside (``.orig`` once, else ``.bad``)."""
    raw = path.read_bytes() if path.exists() else None
    if raw is None:
        return None
    if written.get(path.name) == _sha256(raw):
        return json.loads(raw)
    try:
        data = json.loads(raw)
    except ValueError:
        data = None
    if not valid_year_data(data):
        _keep_copy(path, ".bad", "is not a valid status file")
    elif path.name in written:
        _keep_copy(path, ".bad", "was changed since this workflow wrote it")
    elif not path.with_name(path.name + ".orig").exists():
        _keep_copy(path, ".orig", "was written by another program (the original"
                   " daemon?); its nights the state does not know are carried over;")
    else:
        _keep_copy(path, ".bad", "was written by another program")
    return None


def _legacy_nights(path: Path) -> dict[str, dict]:
    raw = read_record(path.with_name(path.name + ".orig"))
    return {n: e for n, e in raw.items() if valid_night(n)} if valid_year_data(raw) else {}


def backup_path(path: Path) -> Path:
    """The copy of a year file kept before it is replaced (``.bak``, as DESI's code)."""
    return path.with_name(path.name + ".bak")


def _held_nights(path: Path, year: str) -> dict[str, dict]:
    """What the year file holds now, or when it is not a valid status file (a write cut
    short, an edit), what its ``.bak`` held: history that a lost state must not erase."""
    for candidate in (path, backup_path(path)):
        data = read_record(candidate)
        if valid_year_data(data):
            return {n: e for n, e in data.items() if n.startswith(year) and valid_night(n)}
    return {}


def _year_rows(state: str | os.PathLike, stream: str, year: str,
               index: dict[str, reading.NightFiles], fingerprints: dict[str, str | None],
               existing: dict | None, cached: dict[str, str], held: dict) -> dict:
    """The year's rows: what the file held (and the original daemon's ``.orig``), each
    exposure the state knows replaced by the state's rows. A night or an exposure the
    state no longer has (a lost or partly lost state) keeps its history."""
    rows = {n: dict(e) for n, e in held.items()}
    for night in sorted(n for n in index if n.startswith(year)):
        fingerprint = fingerprints[night]
        if (existing is not None and fingerprint is not None and night in existing
                and cached.get(night) == fingerprint):
            night_data = existing[night]
        else:
            night_data = night_rows(reading.read_night(state, stream, night, index[night]))
        if night_data:
            rows[night] = {**rows.get(night, {}), **night_data}
    return rows


def write_year_files(state: str | os.PathLike, stream: str, directory: str | os.PathLike,
                     settle: float = SETTLE_SECONDS) -> list[Path]:
    """Rebuild the year files of `stream` in `directory` from the state.

    Every year with a night in the state is rebuilt, and never loses a night or an
    exposure it held: the state's rows replace those of the exposures the state knows,
    the others stay (a lost state never erases DESI's history). Before a file is
    replaced it is copied to ``.bak``. A file that is not valid JSON in the layout, or
    that differs from what was last written here (edited by hand), is kept as ``.bad``
    and replaced (its history, or the ``.bak``'s when it is broken, carried over). A
    valid file written by someone else (the original daemon) is kept once as
    ``.orig``; its nights and exposures the state does not know are carried over, so
    DESI's history survives the change. A night's rows are reused from the
    file when neither its markers nor the file changed since it was written (the
    manifest holds the fingerprints), so a rebuild after a run reads only the nights
    that run touched.

    Returns
    -------
    list of Path
        The year files, written or already up to date.
    """
    directory = public_directory(directory)
    newest_allowed = time.time_ns() - int(settle * 1e9)
    index = reading.scan_stream(state, stream, stat=True)
    fingerprints = {n: night_fingerprint(info, newest_allowed) for n, info in index.items()}
    manifest = read_record(directory / MANIFEST) or {}
    if manifest.get("version") != ROWS_VERSION or manifest.get("stream") != stream:
        manifest = {"files": manifest.get("files", {}), "nights": {}}
    written: dict[str, str] = dict(manifest.get("files", {}))
    paths = []
    for year in sorted({night[:4] for night in index}):
        path = directory / YEAR_FILE.format(year=year)
        held = {**_legacy_nights(path), **_held_nights(path, year)}
        existing = _existing_rows(path, written)
        rows = _year_rows(state, stream, year, index, fingerprints, existing,
                          manifest.get("nights", {}), held)
        content = encode_year(rows)
        digest = _sha256(content)
        if existing is None or written.get(path.name) != digest:
            _keep_backup(path)
            write_bytes_atomic(path, content, PUBLIC_MODE)
        written[path.name] = digest
        paths.append(path)
    write_json_atomic(directory / MANIFEST, {
        "version": ROWS_VERSION, "stream": stream, "files": written,
        "nights": {n: f for n, f in fingerprints.items() if f is not None},
        "note": "written by scripts/status: what it last wrote, to tell hand edits apart",
    })
    return paths
