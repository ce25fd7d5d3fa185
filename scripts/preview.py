"""Whether a Snakemake invocation only previews: it must then change nothing.

``snakemake -n``, ``--dag``, ``--rulegraph``, ``--filegraph``, ``--summary``, ``--list``
and ``--lint`` parse the Snakefile like a run. A parse reads the mountain's listing, the
state and HPSS's status; in a preview it writes none of them back (no listing cache, no
HPSS status record, no job configuration, no rename of an unreadable record), so that a
person may look at any time without changing what the next run does. Snakemake
decides on an executor only after the Snakefile is parsed, so the command line is what
tells, read here in one place.
"""

from __future__ import annotations

from collections.abc import Sequence

#: Long options of a Snakemake invocation that runs no job.
PREVIEW_OPTIONS = {
    "--dry-run": "dry-run", "--dryrun": "dry-run", "--dag": "dag", "--d3dag": "dag",
    "--rulegraph": "rulegraph", "--filegraph": "filegraph", "--summary": "summary",
    "--detailed-summary": "summary", "--list": "list", "--list-rules": "list",
    "--list-target-rules": "list", "--lint": "lint", "--list-changes": "list",
    "--print-compilation": "list",
}
#: Those that draw the DAG: without a target they draw one bounded run.
DRAWINGS = {"dag", "rulegraph", "filegraph"}


def preview_kind(argv: Sequence[str]) -> str | None:
    """The kind of preview `argv` asks for ("dry-run", "dag", "lint"...), or None for a
    run. Short flags may be combined (``-np``); ``-n`` is the only short one."""
    for arg in argv[1:]:
        if arg == "--":
            break
        if arg.startswith("--"):
            kind = PREVIEW_OPTIONS.get(arg.split("=", 1)[0])
            if kind:
                return kind
        elif arg.startswith("-") and len(arg) > 1 and arg[1:].isalpha() and "n" in arg:
            return "dry-run"
    return None
