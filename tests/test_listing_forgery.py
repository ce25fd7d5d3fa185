"""No name at the mountain can invent or alias an exposure (issue #10).

The listing is NUL-terminated: a directory whose name holds a newline followed by
``NIGHT/EXPID``-looking text, a link named ``EXPID\\r`` or a name with bytes that are
not UTF-8 is malformed (reported, escaped so that it prints on one line), never an
exposure. Unit tests of `parse_listing` on crafted output, then the real ``find``
behind the real workflow, locally and over a real sshd.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from conftest import NIGHT, STREAM

from scripts.remote import (
    CACHE_FORMAT,
    LOCK_LINE,
    list_exposures,
    parse_listing,
    printable_path,
)
from scripts.state_layout import listing_cache_path

SOURCE = "/data/dts/exposures/raw"
EPOCH = "1795917545.0000000000"


def record(path: str | bytes) -> bytes:
    """One record as GNU find's ``-printf '%T@ %p\\0'`` writes it."""
    return EPOCH.encode() + b" " + os.fsencode(path) + b"\0"


def listing_of(*paths: str | bytes, first: str = "20261101"):
    output = b"".join(record(p) for p in paths)
    # Both forms parse the same: the raw bytes, and the text `commands.run` makes.
    as_text = parse_listing(output.decode("utf-8", errors="replace"), SOURCE, first)
    as_bytes = parse_listing(output, SOURCE, first)
    assert as_text.exposures == as_bytes.exposures
    assert len(as_text.malformed) == len(as_bytes.malformed)
    return as_bytes


# Names that the newline-separated listing turned into, or aliased to, an exposure.
FORGED = {
    "newline then NIGHT/EXPID": f"{SOURCE}/x\n20261127/00009999",
    "newline then a stamped line": f"{SOURCE}/x\n1.0 20261127/00009999",
    "newline then a full path": f"{SOURCE}/x\n{EPOCH} {SOURCE}/20261127/00009999",
    "carriage return then NIGHT/EXPID": f"{SOURCE}/x\r20261127/00009999",
    "trailing carriage return": f"{SOURCE}/20261127/00009999\r",
    "trailing newline": f"{SOURCE}/20261127/00009999\n",
    "CRLF": f"{SOURCE}/x\r\n20261127/00009999",
    "vertical tab": f"{SOURCE}/x\v20261127/00009999",
    "form feed": f"{SOURCE}/x\f20261127/00009999",
    "unicode line separator": f"{SOURCE}/x\u202820261127/00009999",
    "next line (NEL)": f"{SOURCE}/x\x8520261127/00009999",
    "fullwidth digits": f"{SOURCE}/20261127/０００９９９９",
    "arabic-indic digits": f"{SOURCE}/20261127/٠٠٠٠٩٩٩٩",
    "terminal escape": f"{SOURCE}/20261127/\x1b[2K00009999",
    "tab": f"{SOURCE}/20261127/\t00009999",
}


@pytest.mark.parametrize("name", FORGED.values(), ids=list(FORGED))
def test_a_crafted_name_is_malformed_never_an_exposure(name):
    listing = listing_of(f"{SOURCE}/20261127/00001234", name)
    assert listing.exposures == [("20261127", "00001234")]
    assert list(listing.published) == ["20261127/00001234"]
    assert len(listing.malformed) == 1
    shown = listing.malformed[0]
    assert shown.isascii() and shown.isprintable(), shown
    assert shown.startswith(SOURCE + "/")


def test_bytes_that_are_not_utf8_are_malformed_and_shown_escaped():
    bad = os.fsencode(SOURCE) + b"/\xff\n20261127/00009999"
    listing = listing_of(bad, os.fsencode(SOURCE) + b"/20261127/0000999\xe9")
    assert listing.exposures == []
    assert listing.malformed == [f"{SOURCE}/\\xff\\n20261127/00009999",
                                 f"{SOURCE}/20261127/0000999\\xe9"]
    # As `commands.run` decodes it (errors="replace"): still malformed, still printable.
    text = parse_listing(record(bad).decode("utf-8", errors="replace"), SOURCE, "20261101")
    assert text.exposures == [] and text.malformed == [f"{SOURCE}/\\ufffd\\n20261127/00009999"]


def test_escaped_names_are_unambiguous_and_one_line():
    assert printable_path("a\nb") == "a\\nb"
    assert printable_path("a\rb") == "a\\rb"
    assert printable_path("a\\nb") == "a\\\\nb"  # a real backslash is not a newline
    assert printable_path("\x1b[31m\x7f") == "\\x1b[31m\\x7f"
    assert printable_path("é\u2028") == "\\xe9\\u2028"
    assert printable_path("x\udcff") == "x\\xff"  # surrogateescape'd byte 0xff
    assert printable_path("20261127/00001234 ok") == "20261127/00001234 ok"


def test_a_link_cannot_pose_as_the_lock_or_come_from_elsewhere():
    listing = listing_of(f"{SOURCE}/{LOCK_LINE}", f"/elsewhere/{NIGHT}/00001234",
                         f"{SOURCE}/../raw/{NIGHT}/00001234")
    assert not listing.locked and listing.exposures == []
    assert len(listing.malformed) == 3


def test_a_record_without_its_terminator_or_stamp_is_not_trusted():
    # The old newline format, and a truncated last record: nothing in them is an exposure.
    old = f"{EPOCH} {SOURCE}/{NIGHT}/00001234\n{EPOCH} {SOURCE}/{NIGHT}/00001235\n"
    listing = parse_listing(old, SOURCE, "20261101")
    assert listing.exposures == [] and len(listing.malformed) == 1
    truncated = f"{EPOCH} {SOURCE}/{NIGHT}/00001234\0{EPOCH} {SOURCE}/{NIGHT}/0000123"
    listing = parse_listing(truncated, SOURCE, "20261101")
    assert listing.exposures == [(NIGHT, "00001234")]
    assert listing.malformed == [f"{EPOCH} {SOURCE}/{NIGHT}/0000123"]
    bare = parse_listing(f"{SOURCE}/{NIGHT}/00001234\0", SOURCE, "20261101")
    assert bare.exposures == [] and bare.malformed == [f"{SOURCE}/{NIGHT}/00001234"]


def test_the_lock_record_is_nul_terminated_too():
    assert parse_listing(f"{LOCK_LINE}\0", SOURCE, "20261101").locked
    assert not parse_listing(f"{LOCK_LINE}\n", SOURCE, "20261101").locked


# --- the listing cache: JSON, readable, and an older format is only a cache miss ------

LOCAL = {"host": "local", "ssh": ["ssh"], "timeout": 30, "checksum_lock": "/nonexistent"}


def real_mountain(root: Path) -> Path:
    """A source with one good link and one crafted name, listed by the real find."""
    source = root / "raw"
    (source / NIGHT).mkdir(parents=True)
    (source / NIGHT / "00001234").symlink_to("/dev/null")
    (source / "x\n20261127").mkdir()
    (source / "x\n20261127" / "00009999").symlink_to("/dev/null")
    return source


def test_the_cache_is_readable_json_with_escaped_names(tmp_path):
    source = real_mountain(tmp_path)
    cache = tmp_path / "cache.json"
    listing = list_exposures(LOCAL, str(source), "20261101", cache, 3600)
    assert listing.exposures == [(NIGHT, "00001234")]
    text = cache.read_text()
    assert text.isascii() and "\\\\n20261127" in text
    data = json.loads(text)
    assert data["format"] == CACHE_FORMAT and data["malformed"] == listing.malformed
    # A fresh cache is used: a link published since is not seen until it expires.
    (source / NIGHT / "00001235").symlink_to("/dev/null")
    assert list_exposures(LOCAL, str(source), "20261101", cache, 3600) == listing


@pytest.mark.parametrize("content", [
    None,  # the old format: no "format" key, and it may hold a phantom exposure
    "[1, 2]",
    '{"format": 2, "key": null}',
    "not json",
    "BAD_TYPES",
])
def test_an_old_or_damaged_cache_is_a_miss(tmp_path, content):
    source = real_mountain(tmp_path)
    cache = tmp_path / "cache.json"
    key = {"host": "local", "source": str(source), "lock": "/nonexistent",
           "first_night": "20261101"}
    old = {"key": key, "epoch": time.time(), "locked": False, "published": {},
           "exposures": [[NIGHT, "00001234"], [NIGHT, "00009999"]],
           "malformed": [f"{source}/x"]}
    if content is None:
        cache.write_text(json.dumps(old))
    elif content == "BAD_TYPES":
        cache.write_text(json.dumps({**old, "format": CACHE_FORMAT, "exposures": [["x"]]}))
    else:
        cache.write_text(content)
    listing = list_exposures(LOCAL, str(source), "20261101", cache, 3600)
    assert listing.exposures == [(NIGHT, "00001234")]
    assert json.loads(cache.read_text())["format"] == CACHE_FORMAT


# --- the real workflow on a mountain with crafted names ----------------------------

PHANTOMS = ("00009999", "00009998", "00009997", "00009996", "00001002")


def forge(site) -> None:
    """Real exposures 00001000 and 00001001, and crafted names around them.

    Each crafted name, listed one per line, parsed as NIGHT/00009996..00009999 or
    aliased 00001001 (to other data) or 00001002 (not published at all).
    """
    site.exposure("00001000")
    site.exposure("00001001")
    evil = site.exposure("00005555", {"evil.fits": b"not the real data"}, publish=False)
    source = os.fsencode(site.source)
    made = [
        (b"x\n" + NIGHT.encode(), b"00009999"),
        (b"x\n1.0 " + NIGHT.encode(), b"00009998"),
        (b"\xff\n" + NIGHT.encode(), b"00009997"),  # not UTF-8, then a newline
        (b"x\r" + NIGHT.encode(), b"00009996"),
        (NIGHT.encode(), b"00001001\r"),            # an alias of a real exposure
        (NIGHT.encode(), b"00001002\r"),            # an alias of nothing
        (NIGHT.encode(), b"\x1b[2K00001003"),       # a terminal escape
    ]
    for directory, link in made:
        os.makedirs(os.path.join(source, directory), exist_ok=True)
        os.symlink(os.fsencode(evil), os.path.join(source, directory, link))


def assert_only_real_exposures(site, result) -> None:
    for expid in ("00001000", "00001001"):
        assert site.record(NIGHT, expid, "checksummed")["outcome"] == "verified"
        assert sorted(p.name for p in site.installed(NIGHT, expid).iterdir()) == [
            f"checksum-{expid}.sha256sum", f"desi-{expid}.fits.fz",
            f"guide-{expid}.fits.fz", f"sky-{expid}.fits.fz"]
    for expid in PHANTOMS:
        assert not (site.staging / NIGHT / expid).exists()
        assert not site.installed(NIGHT, expid).exists()
        assert not list((site.state / STREAM / NIGHT).glob(f"{expid}.*")), expid
    assert not list(site.destination.rglob("evil.fits"))
    cache = json.loads(listing_cache_path(site.state, STREAM).read_text())
    assert cache["exposures"] == [[NIGHT, "00001000"], [NIGHT, "00001001"]]
    assert len(cache["malformed"]) == 7
    # Reported on one line each, escaped: no control character reaches the log.
    warnings = [line for line in result.stderr.splitlines() if "Malformed symlink" in line]
    assert len(warnings) == 7, result.stderr
    assert sum("\\n" + NIGHT in line for line in warnings) == 3
    assert any("\\x1b[2K00001003" in line for line in warnings)
    assert not any(c in result.stderr for c in "\r\x1b\ufffd")


def test_crafted_names_invent_nothing_locally(site):
    forge(site)
    result = site.run()
    assert_only_real_exposures(site, result)


def test_crafted_names_invent_nothing_over_ssh(site, sshd):
    site.config["remote"].update(host=sshd["host"], ssh=sshd["ssh"])
    forge(site)
    result = site.run()
    assert_only_real_exposures(site, result)
