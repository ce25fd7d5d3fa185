"""What the state says: per night, what is staged, verified, installed, failed.

    python -m scripts.status [--config config.yaml] [--nights 10] [--night NIGHT]
                             [--failures] [--json]

Reads the marker files only (the state is the truth), one directory per night, so it
stays fast however large the archive grows.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from scripts.configuration import ConfigurationError, load_yaml
from scripts.markers import EXPOSURE_STAGES, FAILED, NIGHT_STAGES, read_record


@dataclass
class ExposureStatus:
    night: str
    expid: str
    stages: dict[str, dict] = field(default_factory=dict)    # stage -> marker record
    failures: dict[str, dict] = field(default_factory=dict)  # stage -> failure record


@dataclass
class NightStatus:
    stream: str
    night: str
    exposures: dict[str, ExposureStatus] = field(default_factory=dict)
    stages: dict[str, dict] = field(default_factory=dict)
    failures: dict[str, dict] = field(default_factory=dict)

    def count(self, stage: str) -> int:
        return sum(stage in e.stages for e in self.exposures.values())

    def bytes(self) -> int:
        return sum(e.stages.get("installed", {}).get("bytes", 0) for e in self.exposures.values())

    def failure_count(self) -> int:
        return len(self.failures) + sum(len(e.failures) for e in self.exposures.values())


def read_night(state: Path, stream: str, night: str) -> NightStatus:
    """Collect the markers and failure records of one night."""
    status = NightStatus(stream, night)
    for stage in NIGHT_STAGES:
        for suffix, target in (("", status.stages), (FAILED, status.failures)):
            record = read_record(state / stream / f"{night}.{stage}{suffix}")
            if record is not None:
                target[stage] = record
    directory = state / stream / night
    if directory.is_dir():
        for entry in os.scandir(directory):
            expid, _, rest = entry.name.partition(".")
            stage, _, failed = rest.partition(".")
            if len(expid) != 8 or not expid.isdigit() or stage not in EXPOSURE_STAGES:
                continue
            exposure = status.exposures.setdefault(expid, ExposureStatus(night, expid))
            record = read_record(entry.path) or {}
            (exposure.failures if failed else exposure.stages)[stage] = record
    return status


def list_nights(state: Path, stream: str) -> list[str]:
    """Nights with any marker for `stream`, newest first."""
    directory = state / stream
    if not directory.is_dir():
        return []
    nights = {e.name[:8] for e in os.scandir(directory) if e.name[:8].isdigit()}
    return sorted(nights, reverse=True)


def needs_a_person(night: NightStatus) -> list[tuple[str, str, dict]]:
    """(item, stage, failure record) for failures that exhausted their retries or hold."""
    out = []
    for stage, failure in night.failures.items():
        out.append((night.night, stage, failure))
    for expid, exposure in sorted(night.exposures.items()):
        for stage, failure in exposure.failures.items():
            if failure.get("held") or failure.get("policy") or failure.get("exhausted") \
                    or failure.get("attempts", 0) >= 3:
                out.append((f"{night.night}/{expid}", stage, failure))
    return out


def summary_rows(nights: list[NightStatus]) -> list[dict]:
    return [{
        "stream": n.stream, "night": n.night, "exposures": len(n.exposures),
        "bytes": n.bytes(), "verified": n.count("checksummed"),
        "installed": n.count("installed"),
        "caught_up": "caughtup" in n.stages, "backed_up": "backedup" in n.stages,
        "failures": n.failure_count(),
    } for n in nights]


def format_table(rows: list[dict]) -> str:
    if not rows:
        return "(nothing recorded yet)"
    headers = list(rows[0])
    cells = [[str(r[h]) for h in headers] for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Show the transfer status from the state.")
    parser.add_argument("--config", default="config.yaml", help="configuration file")
    parser.add_argument("--nights", type=int, default=10, help="how many recent nights")
    parser.add_argument("--night", help="the exposures of one night")
    parser.add_argument("--failures", action="store_true", help="what needs a person")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    args = parser.parse_args(argv)
    try:
        config = load_yaml(args.config)
    except ConfigurationError as err:
        print(f"status: {err}", file=sys.stderr)
        return 2
    state = Path(config["state"])
    nights = []
    for stream in config.get("streams", {}):
        chosen = [args.night] if args.night else list_nights(state, stream)[: args.nights]
        nights += [read_night(state, stream, n) for n in chosen]
    if args.night:
        rows = [{"stream": n.stream, "night": n.night, "expid": e.expid,
                 **{s: e.stages.get(s, {}).get("time", "") for s in EXPOSURE_STAGES},
                 "failure": "; ".join(f"{s}: {f.get('reason', '')}" for s, f in
                                      e.failures.items())}
                for n in nights for e in sorted(n.exposures.values(), key=lambda e: e.expid)]
    elif args.failures:
        rows = [{"stream": n.stream, "item": item, "stage": stage,
                 "attempts": f.get("attempts", ""), "reason": f.get("reason", "")}
                for n in nights for item, stage, f in needs_a_person(n)]
    else:
        rows = summary_rows(nights)
    if args.json:
        json.dump(rows if not args.night else [asdict(n) for n in nights] and rows,
                  sys.stdout, indent=1)
        print()
    else:
        print(format_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
