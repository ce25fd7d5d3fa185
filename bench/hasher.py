"""The Python contenders of case 3, each run in a fresh process so that its peak RSS is its own.

    python -m bench.hasher ours-file FILE
    python -m bench.hasher ours-exposure DIRECTORY CHECKSUM_NAME THREADS
    python -m bench.hasher whole-file FILE...              (the original's approach)
    python -m bench.hasher whole-exposure THREADS FILE...

Prints one JSON line: the seconds spent hashing (interpreter start-up excluded: in the
workflow the verifier runs in a job process that is already up) and the bytes hashed.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def whole(path: str) -> str:
    """The original daemon's way: read the whole file into memory, then hash it."""
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def main(argv: list[str]) -> int:
    from scripts.checksum import sha256_file, verify_exposure

    kind, args = argv[0], argv[1:]
    start = time.perf_counter()
    if kind == "ours-file":
        sha256_file(args[0])
        size = os.path.getsize(args[0])
    elif kind == "ours-exposure":
        result = verify_exposure(args[0], args[1], threads=int(args[2]))
        if not result.ok:
            print(result.reason(), file=sys.stderr)
            return 1
        size = result.bytes
    elif kind == "whole-file":
        for path in args:
            whole(path)
        size = sum(os.path.getsize(p) for p in args)
    elif kind == "whole-exposure":
        with ThreadPoolExecutor(max_workers=int(args[0])) as pool:
            list(pool.map(whole, args[1:]))
        size = sum(os.path.getsize(p) for p in args[1:])
    else:
        print(f"unknown contender {kind}", file=sys.stderr)
        return 2
    print(json.dumps({"seconds": time.perf_counter() - start, "bytes": size}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
