"""The benchmark suite: every case beside its baseline, in one run, on this machine.

    .venv/bin/python -m bench.run            # the full suite (about 15 minutes on 2 cores)
    .venv/bin/python -m bench.run --quick    # smaller data, the same cases (a few minutes)
    .venv/bin/python -m bench.run --cases 1,3 --repeat 5

Data are generated under bench/work/ and removed at the end (``--keep`` keeps them for
the next run, which then skips the generation). The table goes to stdout and, with
the machine's description and the load average, to bench/RESULTS.md (``--output``).
See bench/README.md for what each case measures.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shlex
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import common  # noqa: E402
from bench.common import (  # noqa: E402
    BENCH,
    REPO,
    WORK,
    BenchError,
    loadavg,
    machine,
    markdown_table,
    remove_tree,
)

SIZES = {
    # name: (full, quick)
    "nights": (2000, 200),
    "exposures": (100, 100),
    "big_file": (2 * 10**9, 500 * 10**6),
    "exposure_file": (50 * 10**6, 12_500_000),
    "e2e_exposures": (20, 20),
    "e2e_file": (20 * 10**6, 5 * 10**6),
    "overhead_exposures": ((20, 200), (20, 60)),
    # case 5: fresh exposures published for this many seconds, htar hanging as long,
    # backlog nights of this many exposures (3 nights), cron every N seconds
    "fresh_window": (120, 45),
    "fresh_hang": (120, 45),
    "fresh_backlog": (100, 40),
    "fresh_periods": ((10, 60), (10,)),
    # case 6: bytes of exposure data in the 100-night archive (the tarballs as much again)
    "audit_size": (10 * 10**9, 10**9),
    # case 7: bytes of each of the 10 members a tape recall retrieves
    "recall_size": (100 * 10**6, 20 * 10**6),
}


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="smaller data (200 nights, 0.5 GB files, 60 exposures at most)")
    parser.add_argument("--cases", default="1,2,3,4,5,6,7,8,9",
                        help="comma-separated cases to run (default: all)")
    parser.add_argument("--repeat", type=int, default=3,
                        help="runs per measurement, median reported (default 3; cases 1 and"
                             " 2 run at least 5)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the generated data in bench/work for the next run")
    parser.add_argument("--snakefile", type=Path, default=REPO / "Snakefile",
                        help="the workflow to measure (a modified copy, to compare)")
    parser.add_argument("--output", type=Path, default=BENCH / "RESULTS.md",
                        help="where the markdown report goes (default bench/RESULTS.md)")
    parser.add_argument("--audit-size", type=float, metavar="GB",
                        help="case 6: GB of exposure data in the audited archive (default 10,"
                             " 1 with --quick)")
    parser.add_argument("--fresh-periods", metavar="N,N",
                        help="case 5: the cron periods to run (default 10,60; 10 with --quick)")
    opts = parser.parse_args(argv)
    audit_size, fresh_periods = opts.audit_size, opts.fresh_periods
    for name, (full, quick) in SIZES.items():
        setattr(opts, name, quick if opts.quick else full)
    if fresh_periods is not None:
        try:
            opts.fresh_periods = tuple(int(n) for n in fresh_periods.split(","))
        except ValueError:
            parser.error("--fresh-periods: whole seconds, comma-separated (10,60)")
    if audit_size is not None:
        if audit_size <= 0:
            parser.error("--audit-size must be positive")
        opts.audit_size = int(audit_size * 1e9)
    opts.cases = sorted({int(c) for c in opts.cases.split(",") if c.strip()})
    if opts.repeat < 1:
        parser.error("--repeat must be at least 1")
    return opts


class Cases:
    """Runs the chosen cases, collecting rows, notes and load averages."""

    def __init__(self, opts):
        self.opts = opts
        self.rows = []
        self.notes = []
        self.loads = []
        self.failures = []

    def case(self, number: int, title: str, function) -> None:
        if number not in self.opts.cases:
            return
        print(f"case {number}: {title} (load average {loadavg()})", flush=True)
        before, start = loadavg(), time.perf_counter()
        try:
            rows, notes = function()
        except (BenchError, OSError, ValueError, KeyError) as err:
            traceback.print_exc()
            self.failures.append(f"case {number} ({title}) could not be measured: {err}")
            return
        seconds = time.perf_counter() - start
        self.rows += rows
        self.notes += notes
        self.loads.append(f"case {number}: {before} before, {loadavg()} after"
                          f" ({seconds:.0f} s)")
        print(markdown_table(rows), flush=True)


def run_all(opts) -> Cases:
    from bench import (
        audit,
        endtoend,
        freshness,
        metrics,
        planning,
        recall,
        scale,
        sharing,
        verification,
    )

    cases = Cases(opts)
    scale_opts = argparse.Namespace(**vars(opts))
    scale_opts.repeat = max(opts.repeat, 5)
    if {1, 2, 8} & set(opts.cases):
        print(f"preparing the archive state ({opts.nights:,} nights × {opts.exposures}"
              " exposures)", flush=True)
        data = scale.prepare(scale_opts)
        cases.case(1, "no-op run at archive scale", lambda: scale.run_noop(scale_opts, data))
        cases.case(2, "planning a busy night", lambda: scale.run_busy(scale_opts, data))
        cases.case(8, "writing the metrics after a no-op run at archive scale",
                   lambda: metrics.run(scale_opts, data))
        if not opts.keep:
            scale.clean()
    if 3 in opts.cases:
        print("preparing the verification data", flush=True)
        data3 = verification.prepare(opts)
        cases.case(3, "verification throughput and memory",
                   lambda: verification.run(opts, data3))
        if not opts.keep:
            verification.clean()
    cases.case(4, "end to end, and orchestration overhead", lambda: endtoend.run(opts))
    if not opts.keep:
        endtoend.clean()
    cases.case(4, "one shared ssh connection per run against one per command",
               lambda: sharing.run(opts))
    sharing.clean()
    cases.case(5, "freshness: publication to installed under a backup and a backlog",
               lambda: freshness.run(opts))
    freshness.clean()
    cases.case(6, "the archive audit against openssl, 100 nights on tape",
               lambda: audit.run(opts, opts.audit_size))
    if not opts.keep:
        audit.clean()
    cases.case(7, "planning one bounded run over 3,000 pending exposures",
               lambda: planning.run(opts))
    if not opts.keep:
        planning.clean()
    cases.case(9, "a tape recall of 10 members against cat and openssl of the same bytes",
               lambda: recall.run(opts, opts.recall_size))
    recall.clean()
    return cases


def report(opts, cases: Cases, seconds: float, command: str) -> str:
    info = machine()
    lines = [
        "# Benchmark results",
        "",
        f"`{command}` (workflow {common.SNAKEFILE}) on"
        f" {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, {seconds / 60:.1f}"
        f" minutes{' (--quick: smaller data)' if opts.quick else ''}. Medians of"
        f" {opts.repeat} runs (cases 1 and 2: {max(opts.repeat, 5)}), baselines measured in"
        " the same run, interleaved with the contenders. Peak RSS: the largest single"
        " process of the measured child's tree (GNU time's %M), the worst of the runs;"
        " for a workflow run that is Snakemake itself. Ratios: wall time ÷ the"
        " baseline's, or (\"thr.\") throughput ÷ the baseline's.",
        "",
        markdown_table(cases.rows),
        "",
        "## Notes",
        "",
        *[f"- {note}" for note in cases.notes],
        *[f"- **{failure}**" for failure in cases.failures],
        "",
        "## Machine",
        "",
        *[f"- {key}: {value}" for key, value in info.items()],
        f"- load average (1, 5, 15 min) around each case: {'; '.join(cases.loads)}",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    opts = parse(argv)
    command = "python -m bench.run " + shlex.join(argv if argv is not None else sys.argv[1:])
    os.chdir(REPO)
    common.SNAKEFILE = opts.snakefile.resolve()
    WORK.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    try:
        cases = run_all(opts)
    finally:
        if not opts.keep:
            remove_tree(WORK)
    text = report(opts, cases, time.perf_counter() - start, command.strip())
    opts.output.write_text(text)
    print()
    print(text)
    print(f"written to {opts.output}")
    missed = [r for r in cases.rows if r.met == "**NO**"]
    return 1 if cases.failures or missed else 0


if __name__ == "__main__":
    sys.exit(main())
