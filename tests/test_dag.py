"""A DAG a person can read (issue #18, item 4): ``snakemake --dag --config night=NIGHT``
draws the pending work of that night and nothing of another; ``--config
exposure=NIGHT/EXPID`` draws that exposure's chain; the first job of every chain is
labelled with its wildcards. Read from the real dot output of real Snakemake runs."""

from __future__ import annotations

import re

from conftest import NIGHT, STREAM, Site

EARLIER = "20261126"  # NIGHT is 20261127
NODE = re.compile(r'^\s*(\d+)\[label = "([^"]*)"', re.MULTILINE)
EDGE = re.compile(r"^\s*(\d+) -> (\d+)", re.MULTILINE)


def dag(site: Site, *args: str) -> tuple[dict[str, dict], set[tuple[str, str]]]:
    """The nodes of ``snakemake --dag ARGS`` (id → rule and the wildcards its label
    shows) and its edges."""
    out = site.run("--dag", *args).stdout
    assert out.lstrip().startswith("digraph"), out[:500]
    nodes = {}
    for node, label in NODE.findall(out):
        rule, *wildcards = label.split("\\n")
        nodes[node] = {"rule": rule, **dict(w.split(": ", 1) for w in wildcards)}
    return nodes, set(EDGE.findall(out))


def chains(nodes: dict[str, dict], edges: set[tuple[str, str]]) -> set[tuple[str, str, str]]:
    """(night, expid, rules) of each exposure's chain, followed from its labelled first
    job along the edges: stage → verify → install."""
    found = set()
    for node, info in nodes.items():
        if info["rule"] != "stage_exposure":
            continue
        rules, current = ["stage_exposure"], node
        while True:
            after = [b for a, b in edges if a == current
                     and nodes[b]["rule"] in ("verify_exposure", "install_exposure")]
            if not after:
                break
            current = after[0]
            rules.append(nodes[current]["rule"])
        assert info["stream"] == STREAM
        found.add((info["night"], info["expid"], " > ".join(rules)))
    return found


def busy_site(site: Site) -> dict[str, list[str]]:
    """Two nights with pending exposures, more than one run's bound; NIGHT's first
    exposure installed. EARLIER is due for its catch-up, NIGHT not yet."""
    site.config["now"] = "2026-11-27T15:00:00Z"
    site.config["exposures_per_run"] = 2
    pending = {EARLIER: [f"{1000 + i:08d}" for i in range(3)],
               NIGHT: [f"{2000 + i:08d}" for i in range(1, 4)]}
    for night, expids in pending.items():
        for expid in expids:
            site.exposure(expid, {"a.fits": b"a"}, night=night)
    site.exposure("00002000", {"a.fits": b"a"}, night=NIGHT)
    installed = site.marker(NIGHT, "00002000", "installed")
    installed.parent.mkdir(parents=True)
    installed.write_text('{"outcome": "installed"}\n')
    return pending


FULL = "stage_exposure > verify_exposure > install_exposure"


def test_the_dag_of_one_night_holds_its_pending_work_and_nothing_else(site):
    pending = busy_site(site)
    for night, other in ((EARLIER, NIGHT), (NIGHT, EARLIER)):
        nodes, edges = dag(site, "--config", f"night={night}")
        # All of the night's pending exposures (not one run's bound of 2), each chain whole.
        assert chains(nodes, edges) == {(night, e, FULL) for e in pending[night]}
        rules = sorted(info["rule"] for info in nodes.values())
        expected = ["all", *["install_exposure"] * 3, *["stage_exposure"] * 3,
                    *["verify_exposure"] * 3]
        if night == EARLIER:  # due: its catch-up waits for its exposures
            expected = sorted([*expected, "catch_up_night"])
        assert rules == expected
        assert not any(other in str(info.values()) for info in nodes.values())
        # Only the first job of a chain shows wildcards: one label per exposure.
        for info in nodes.values():
            if info["rule"] in ("verify_exposure", "install_exposure"):
                assert set(info) == {"rule"}, info


def test_the_dag_of_one_exposure_is_its_chain(site):
    busy_site(site)
    nodes, edges = dag(site, "--config", f"exposure={EARLIER}/00001001")
    assert chains(nodes, edges) == {(EARLIER, "00001001", FULL)}
    assert sorted(info["rule"] for info in nodes.values()) == [
        "all", "install_exposure", "stage_exposure", "verify_exposure"]
    # An installed exposure has no pending work: nothing to draw but the target rule.
    nodes, _ = dag(site, "--config", f"exposure={NIGHT}/00002000")
    assert [info["rule"] for info in nodes.values()] == ["all"]


def test_a_scope_that_names_no_night_is_one_line(site):
    # The checks themselves are unit-tested (tests/test_plan.py); here, how it reads.
    busy_site(site)
    result = site.run("--dag", "--config", "night=20261131", check=False)
    assert result.returncode != 0 and result.stdout == ""
    lines = [line for line in result.stderr.splitlines() if line.startswith("desitransfer:")]
    assert lines == [f"desitransfer: configuration {site.config_file} (--configfile)",
                     f"desitransfer: {site.config_file}: night: '20261131' is no night;"
                     " give YYYYMMDD, a real date"], result.stderr[-2000:]
