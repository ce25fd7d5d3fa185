"""The design stays easy to see (issue #18): every path under STATE is built by
scripts/state_layout.py, and the rules' jobs never import each other."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from conftest import REPO

from scripts.state_layout import failure_path, marker_path, rule_log_path

#: A path under STATE joined by hand: Path(state, ...), Path(STATE...), f"{STATE}/...".
HAND_JOINED = re.compile(r"""Path\(\s*(state|STATE|config\["state"\])\s*,|\{STATE\}/|"""
                         r"""Path\(\s*(state|STATE)\s*\)\s*/""")
JOBS = {"stage", "verify", "install", "catch_up", "backup", "audit"}


def sources() -> list[Path]:
    return [*REPO.glob("scripts/**/*.py"), *REPO.glob("rules/*.smk"), REPO / "Snakefile"]


def test_no_module_but_the_layout_joins_a_state_path():
    offenders = []
    for path in sources():
        if path.name == "state_layout.py":
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if HAND_JOINED.search(line):
                offenders.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
    assert offenders == []


def test_jobs_never_import_each_other():
    chains = []
    for job in JOBS:
        tree = ast.parse((REPO / "scripts" / f"{job}.py").read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                imported = node.module.removeprefix("scripts.")
                if imported in JOBS:
                    chains.append(f"{job} -> {imported}")
    assert chains == []


def test_the_layout_names_markers_logs_and_failures():
    assert str(marker_path("/s", "S", "20261127", "00001234", "staged")) == \
        "/s/S/20261127/00001234.staged"
    assert str(marker_path("/s", "S", "20261127", None, "backedup.1")) == \
        "/s/S/20261127.backedup.1"
    assert str(failure_path("/s/S/20261127.caughtup")) == "/s/S/20261127.caughtup.failed"
    assert rule_log_path("/s", "S", "20261127", None, "caughtup") == \
        "/s/logs/S/20261127.caughtup.log"
