"""Case 3: hashing throughput and memory of the verifier against the usual tools.

Data: one large file (2 GB) and one exposure of 40 files of 50 MB with its
``sha256sum`` file. The files are generated once and then read from the page cache
(the machine has far more memory than the data): the measurement is the hashing, and
the disk's own O_DIRECT read rate is reported beside it to say when the disk would
be the limit instead.

Contenders, on one core and on all cores (several streams):
``openssl dgst -sha256`` (the baseline), ``sha256sum`` / ``sha256sum -c``, ours
(``scripts.checksum.sha256_file`` and ``verify_exposure(directory, name, threads)``) and
the original daemon's ``hashlib.sha256(open(f, 'rb').read())``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import subprocess
import time
from pathlib import Path

from bench.common import PYTHON, WORK, Row, measure, remove_tree, verdict

ROOT = WORK / "verify"
EXPID = "00000001"
CHECKSUM = f"checksum-{EXPID}.sha256sum"
FILES = 40
GB = 1e9


def _write_random(path: Path, size: int, block: bytes, counter: list[int]) -> str:
    """Write `size` bytes (a random block, each copy made unique); return its sha256."""
    digest = hashlib.sha256()
    with open(path, "wb") as f:
        left = size
        while left > 0:
            counter[0] += 1
            chunk = counter[0].to_bytes(8, "little") + block[8:]
            chunk = chunk[:left]
            f.write(chunk)
            digest.update(chunk)
            left -= len(chunk)
    return digest.hexdigest()


def prepare(opts) -> dict:
    big_size = opts.big_file
    file_size = opts.exposure_file
    stamp = ROOT / f".made-{big_size}-{file_size}"
    exposure = ROOT / "exposure" / EXPID
    if not stamp.exists():
        remove_tree(ROOT)
        exposure.mkdir(parents=True)
        start = time.perf_counter()
        block = os.urandom(16 << 20)
        counter = [0]
        _write_random(ROOT / "big.fits", big_size, block, counter)
        lines = []
        for i in range(FILES):
            name = f"desi-{EXPID}-{i:02d}.fits.fz"
            lines.append(f"{_write_random(exposure / name, file_size, block, counter)}"
                         f"  {name}\n")
        (exposure / CHECKSUM).write_text("".join(lines))
        stamp.write_text("")
        print(f"  generated {(big_size + FILES * file_size) / GB:.1f} GB in "
              f"{time.perf_counter() - start:.0f} s", flush=True)
    names = sorted(p.name for p in exposure.iterdir() if p.name != CHECKSUM)
    # sha256sum -c on two streams: the checksum file split in two, kept outside the
    # exposure (a file inside it would be "unlisted" for our verifier).
    lines = (exposure / CHECKSUM).read_text().splitlines(keepends=True)
    halves = []
    for k in range(2):
        half = ROOT / f"half-{k}.sha256sum"
        half.write_text("".join(lines[k::2]))
        halves.append(half)
    return {"big": ROOT / "big.fits", "exposure": exposure, "names": names,
            "halves": halves, "big_size": big_size, "exposure_size": FILES * file_size}


def _streams(tool: str, groups: list[list[str]]) -> list[str]:
    """A shell running one `tool` process per group in parallel, failing if any fails."""
    parts = [f"{tool} {' '.join(map(shlex.quote, g))} >/dev/null & p{i}=$!"
             for i, g in enumerate(groups)]
    waits = " && ".join(f"wait $p{i}" for i in range(len(groups)))
    return ["sh", "-c", "; ".join(parts) + "; " + waits]


def disk_read_rate(path: Path) -> float | None:
    """Sequential read with O_DIRECT (bypassing the page cache), bytes per second."""
    start = time.perf_counter()
    result = subprocess.run(["dd", f"if={path}", "of=/dev/null", "bs=4M", "iflag=direct"],
                            capture_output=True)
    if result.returncode != 0:
        return None
    return path.stat().st_size / (time.perf_counter() - start)


def run(opts, data: dict) -> tuple[list[Row], list[str]]:
    cores = os.cpu_count() or 1
    big, exposure, names = str(data["big"]), data["exposure"], data["names"]
    files = [str(exposure / n) for n in names]
    groups = [files[k::cores] for k in range(cores)]
    halves = [str(h) for h in data["halves"]]
    hasher = [PYTHON, "-m", "bench.hasher"]
    gb_big = data["big_size"] / GB
    gb_exp = data["exposure_size"] / GB
    single = f"1 file of {gb_big:.1f} GB"
    many = f"{FILES} × {data['exposure_size'] / FILES / 1e6:.0f} MB"
    # (row, command, cwd, bytes, python: time from the child's own report)
    contenders = [
        (Row("3 verify", f"{single}: `openssl dgst -sha256` (baseline)"),
         ["openssl", "dgst", "-sha256", big], None, False),
        (Row("3 verify", f"{single}: `sha256sum`"), ["sha256sum", big], None, False),
        (Row("3 verify", f"{single}: ours `sha256_file`"), [*hasher, "ours-file", big],
         None, True),
        (Row("3 verify", f"{single}: original, whole file in memory"),
         [*hasher, "whole-file", big], None, True),
        (Row("3 verify", f"{many}: `openssl dgst -sha256`, 1 stream (baseline)"),
         ["openssl", "dgst", "-sha256", *files], None, False),
        (Row("3 verify", f"{many}: `openssl dgst -sha256`, {cores} streams"),
         _streams("openssl dgst -sha256", groups), None, False),
        (Row("3 verify", f"{many}: `sha256sum -c`, 1 stream"),
         ["sha256sum", "-c", "--quiet", CHECKSUM], exposure, False),
        (Row("3 verify", f"{many}: `sha256sum -c`, 2 streams"),
         _streams("sha256sum -c --quiet", [[h] for h in halves]), exposure, False),
        (Row("3 verify", f"{many}: ours `verify_exposure`, threads=1"),
         [*hasher, "ours-exposure", str(exposure), CHECKSUM, "1"], None, True),
        (Row("3 verify", f"{many}: ours `verify_exposure`, threads={cores}"),
         [*hasher, "ours-exposure", str(exposure), CHECKSUM, str(cores)], None, True),
        (Row("3 verify", f"{many}: original, whole files, 1 thread"),
         [*hasher, "whole-exposure", "1", *files], None, True),
        (Row("3 verify", f"{many}: original, whole files, {cores} threads"),
         [*hasher, "whole-exposure", str(cores), *files], None, True),
    ]
    hashing: dict[int, list[float]] = {i: [] for i in range(len(contenders))}
    # Warm the page cache once (and check every tool agrees the data is intact).
    for path in [big, *files]:
        with open(path, "rb") as f:
            while f.read(16 << 20):
                pass
    for _ in range(opts.repeat):
        for i, (row, command, cwd, python) in enumerate(contenders):
            sample = measure(command, cwd=cwd)
            row.walls.append(sample.wall)
            row.rss.append(sample.rss_mb)
            hashing[i].append(json.loads(sample.stdout)["seconds"] if python
                              else sample.wall)
    from statistics import median

    for i, (row, _, _, _) in enumerate(contenders):
        size = gb_big if i < 4 else gb_exp
        row.throughput = size / median(hashing[i])
    base_single, base_many = contenders[0][0], contenders[4][0]
    for i, (row, _, _, _) in enumerate(contenders):
        base = base_single if i < 4 else base_many
        if row is not base:
            row.ratio = f"{row.throughput / base.throughput:.2f}× thr."
    ours_single = contenders[2][0]
    ours_one = contenders[8][0]
    ours_all = contenders[9][0]
    ours_single.target = "≥ 0.9× thr., < 100 MB"
    ours_single.met = verdict(ours_single.throughput >= 0.9 * base_single.throughput
                              and ours_single.peak < 100)
    ours_one.target = "< 100 MB"
    ours_one.met = verdict(ours_one.peak < 100)
    ours_all.target = "≥ 1.7× thr., < 100 MB"
    ours_all.met = verdict(ours_all.throughput >= 1.7 * base_many.throughput
                           and ours_all.peak < 100)
    rate = disk_read_rate(data["big"])
    openssl_all = contenders[5][0]
    notes = [
        "Case 3: GB/s = 10⁹ bytes per second of hashing, from the page cache (data"
        " smaller than memory, read once before timing). Python contenders are timed"
        " inside their process (interpreter start-up excluded: the verifier runs in a"
        " job process already started), command-line tools by process wall time. Peak"
        " RSS is the largest process of each fresh child (GNU time).",
        f"Case 3: what the machine gave to {cores} streams at the time: openssl"
        f" {openssl_all.throughput / base_many.throughput:.2f}× its single stream; ours"
        f" with {cores} threads reached {ours_all.throughput / ours_one.throughput:.2f}× its"
        f" single thread and {ours_all.throughput / openssl_all.throughput:.2f}× openssl's"
        f" {cores} streams. Below {cores}× for all tools means other load took CPU"
        " (see the load average).",
    ]
    if rate:
        per_core = ours_one.throughput * GB
        bound = ("faster than" if rate > ours_all.throughput * GB else
                 "slower than") + f" our {cores}-thread rate"
        notes.append(f"Case 3: the disk reads {rate / GB:.2f} GB/s sequentially with"
                     f" O_DIRECT (dd, bs=4M), {rate / per_core:.1f}× one core's hashing and"
                     f" {bound}: with a cold cache, verification is bounded by"
                     f" {'the CPU' if rate > ours_all.throughput * GB else 'the disk'}.")
    return [c[0] for c in contenders], notes


def clean() -> None:
    remove_tree(ROOT)
