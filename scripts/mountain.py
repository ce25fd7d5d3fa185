"""A synthetic mountain: exposures, checksum files and the published symlinks.

Used by ``make demo``, the tests and the benchmarks. The layout is the mountain's:
the data live in ``ROOT/data/NIGHT/EXPID/`` and a finished exposure is published as
the symlink ``ROOT/raw/NIGHT/EXPID`` (the stream's ``source`` is ``ROOT/raw``).

    python -m scripts.mountain ROOT --nights 3 --exposures 4 --files 3 --size 2M
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import os
import random
import sys
from pathlib import Path


def checksum_line(name: str, digest: str) -> str:
    """One line of a ``sha256sum`` file for `name` (text mode, two spaces)."""
    return f"{digest}  {name}\n"


def make_exposure(
    root: str | os.PathLike,
    night: str,
    expid: str,
    files: dict[str, bytes],
    checksum_name: str | None = None,
    publish: bool = True,
) -> Path:
    """Write an exposure's files and checksum file; publish its symlink.

    Returns
    -------
    Path
        The exposure's data directory.
    """
    root = Path(root)
    data = root / "data" / night / expid
    data.mkdir(parents=True, exist_ok=True)
    lines = []
    for name, content in files.items():
        path = data / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        lines.append(checksum_line(name, hashlib.sha256(content).hexdigest()))
    checksum_name = checksum_name or f"checksum-{expid}.sha256sum"
    (data / checksum_name).write_text("".join(lines))
    if publish:
        publish_exposure(root, night, expid)
    return data


def publish_exposure(root: str | os.PathLike, night: str, expid: str) -> Path:
    """Create the symlink ``ROOT/raw/NIGHT/EXPID`` that says the exposure is complete."""
    link = Path(root, "raw", night, expid)
    link.parent.mkdir(parents=True, exist_ok=True)
    if not link.is_symlink():
        link.symlink_to(Path("..", "..", "data", night, expid))
    return link


def exposure_files(expid: str, count: int, size: int, rng: random.Random) -> dict[str, bytes]:
    """Synthetic files named like DESI's (desi-, guide-, sky-, fibermap-, ...)."""
    prefixes = ["desi", "guide", "sky", "fibermap", "focus", "etc", "coordinates", "pm"]
    names = [f"{prefixes[i % len(prefixes)]}-{expid}{'' if i < len(prefixes) else f'-{i}'}"
             f".fits.fz" for i in range(count)]
    return {name: rng.randbytes(size) for name in names}


def make_mountain(root: str | os.PathLike, nights: list[str], exposures: int, files: int,
                  size: int, first_expid: int = 100000, seed: int = 42) -> list[tuple[str, str]]:
    """Fill `root` with `exposures` exposures per night; return (night, expid) pairs."""
    rng = random.Random(seed)
    made = []
    expid = first_expid
    for night in nights:
        for _ in range(exposures):
            e = f"{expid:08d}"
            make_exposure(root, night, e, exposure_files(e, files, size, rng))
            made.append((night, e))
            expid += 1
    return made


def recent_nights(count: int, today: dt.date | None = None) -> list[str]:
    """The `count` nights before `today` (UTC), oldest first."""
    today = today or dt.datetime.now(dt.UTC).date()
    return [(today - dt.timedelta(days=d)).strftime("%Y%m%d") for d in range(count, 0, -1)]


def parse_size(text: str) -> int:
    """``2M`` → 2097152; plain numbers are bytes."""
    units = {"K": 2**10, "M": 2**20, "G": 2**30}
    text = text.strip().upper()
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Make a synthetic mountain.")
    parser.add_argument("root", help="directory of the mountain (source is ROOT/raw)")
    parser.add_argument("--nights", type=int, default=3, help="recent nights to make")
    parser.add_argument("--exposures", type=int, default=4, help="exposures per night")
    parser.add_argument("--files", type=int, default=3, help="data files per exposure")
    parser.add_argument("--size", default="1M", help="bytes per file (K, M, G suffixes)")
    parser.add_argument("--malformed", action="store_true",
                        help="also publish a malformed link, to show it is skipped")
    args = parser.parse_args(argv)
    made = make_mountain(args.root, recent_nights(args.nights), args.exposures, args.files,
                         parse_size(args.size))
    if args.malformed:
        bad = Path(args.root, "raw", made[-1][0], "not-an-exposure")
        if not bad.is_symlink():
            bad.symlink_to(".")
    print(f"{args.root}: {len(made)} exposures in {args.nights} nights, "
          f"{args.files} files of {args.size} each")
    return 0


if __name__ == "__main__":
    sys.exit(main())
