"""The planning decisions (scripts/plan.py) on hand-made observations: no file, no
command, milliseconds each (issue #18)."""

from __future__ import annotations

import datetime as dt

from scripts.configuration import with_defaults
from scripts.plan import NightStage, Observation, StreamObservation, make_plan
from scripts.remote import Listing
from scripts.targets import NightState

S = "DESI_SPECTRO_DATA"
NOW = dt.datetime(2026, 11, 28, 16, 0, tzinfo=dt.UTC)  # NIGHT due for catch-up and backup
NIGHT = "20261127"


def config(**changes) -> dict:
    base = {"state": "/nonexistent", "streams": {}, "exposures_per_run": 3,
            "backup": {"backend": "htar", "hpss_status": "http://x"},
            "catchup_hour": 14, "backup_hour": 15}
    return with_defaults({**base, **changes})


def listing(*items: tuple[str, str], locked: bool = False) -> Listing:
    return Listing(exposures=sorted(items), locked=locked)


def seen(items, installed=(), held=(), caught_up=(), backups=None, marker_nights=(),
         error=None) -> StreamObservation:
    if items is None:
        return StreamObservation(None, error)
    nights = {}
    for night, _ in [*items, *installed, *held]:
        nights.setdefault(night, NightState())
    for night, expid in installed:
        nights[night].installed.add(expid)
    for night, expid in held:
        nights[night].held.add(expid)
    return StreamObservation(listing(*items), nights=nights, marker_nights=tuple(marker_nights),
                             caught_up=frozenset(caught_up), backups=backups or {})


def observation(hpss=None, now=NOW, **streams) -> Observation:
    return Observation(now, streams or {S: seen([])}, hpss)


def test_nothing_pending():
    plan = make_plan(config(), observation(), "exposures")
    assert plan.exposures == () and plan.pending == 0 and not plan.draining


def test_a_new_night_is_staged_and_its_stages_wait_until_it_is_due():
    items = [("20261128", f"{i:08d}") for i in range(2)]
    plan = make_plan(config(), observation(**{S: seen(items)}), None)
    assert plan.exposures == tuple((S, n, e) for n, e in items)
    assert plan.night_stages == ()  # 20261128 is not due before 2026-11-29


def test_a_backlog_larger_than_one_run_drains_newest_night_first():
    items = [("20261120", "00000001"), ("20261127", "00000002"), ("20261127", "00000003"),
             ("20261126", "00000004"), ("20261125", "00000005")]
    plan = make_plan(config(), observation(**{S: seen(items)}), "exposures")
    assert [e for _, _, e in plan.exposures] == ["00000002", "00000003", "00000004"]
    assert plan.pending == 5 and plan.draining
    assert make_plan(config(), observation(**{S: seen(items)}), None).pending == 5
    assert len(make_plan(config(), observation(**{S: seen(items)}), None).exposures) == 5


def test_a_night_with_a_held_exposure_goes_on_without_it():
    items = [(NIGHT, "00000001"), (NIGHT, "00000002")]
    obs = observation(**{S: seen(items, installed=[(NIGHT, "00000001")],
                                 held=[(NIGHT, "00000002")])})
    plan = make_plan(config(), obs, "nights")
    assert plan.exposures == ()
    assert [s.stage for s in plan.night_stages] == ["caughtup", "backedup"]
    assert plan.held == ((S, NIGHT, "00000002"),)
    assert obs.night_expids(S, NIGHT) == ["00000001"]


def test_the_night_lane_waits_for_a_night_still_transferring():
    items = [(NIGHT, "00000001"), (NIGHT, "00000002")]
    obs = observation(**{S: seen(items, installed=[(NIGHT, "00000001")])})
    plan = make_plan(config(), obs, "nights")
    assert plan.night_stages == ()
    assert plan.waiting == ((S, NIGHT, "waiting for 1 exposure(s) to be installed"),)
    # A run of everything plans the night's stages after the exposure (Snakemake orders).
    assert len(make_plan(config(), obs, None).night_stages) == 2


def test_a_night_whose_links_left_the_mountain_runs_from_the_state():
    obs = observation(**{S: seen([], installed=[(NIGHT, "00000001")],
                                 marker_nights=[NIGHT])})
    plan = make_plan(config(), obs, "nights")
    assert plan.night_stages == (NightStage(S, NIGHT, "caughtup", True),
                                 NightStage(S, NIGHT, "backedup", True))


def test_hpss_down_defers_the_backups_not_the_catch_up():
    items = [(NIGHT, "00000001")]
    stream = seen(items, installed=items)
    first = make_plan(config(), observation(**{S: stream}), "nights")
    assert first.wants_hpss
    plan = make_plan(config(), observation(hpss=(False, "HPSS is down"), **{S: stream}),
                     "nights")
    assert [s.stage for s in plan.night_stages] == ["caughtup"]
    assert [(s.stage, why) for s, why in plan.deferred] == [
        ("backedup", "HPSS is down")]


def test_a_checksum_lock_plans_nothing():
    obs = Observation(NOW, {S: StreamObservation(listing((NIGHT, "00000001"), locked=True))})
    plan = make_plan(config(), obs, None)
    assert plan.locked and plan.exposures == () and plan.night_stages == ()


def test_a_late_exposure_after_the_night_went_to_tape_gets_a_supplementary_archive():
    items = [(NIGHT, "00000001"), (NIGHT, "00000002")]
    history = [{"exposures": ["00000001"]}]
    obs = observation(**{S: seen(items, installed=items, caught_up=[NIGHT],
                                 backups={NIGHT: history})})
    plan = make_plan(config(), obs, "nights")
    assert plan.night_stages == (NightStage(S, NIGHT, "backedup.1"),)
    done = observation(**{S: seen(items, installed=items, caught_up=[NIGHT],
                                  backups={NIGHT: [{"exposures": ["00000001", "00000002"]}]})})
    assert make_plan(config(), done, "nights").night_stages == ()


def test_two_streams_and_one_that_cannot_be_listed():
    other = "DESI_SPECTRO_OTHER"
    obs = observation(**{S: seen([(NIGHT, "00000001")]),
                         other: seen(None, error="desitransfer: stream other: no route")})
    plan = make_plan(config(), obs, "exposures")
    assert plan.exposures == ((S, NIGHT, "00000001"),)
    assert plan.unlisted == {other: "desitransfer: stream other: no route"}
    both = observation(**{S: seen([(NIGHT, "00000001")]), other: seen([(NIGHT, "00000009")])})
    assert {s for s, _, _ in make_plan(config(), both, None).exposures} == {S, other}


def test_a_bounded_drawing_leaves_out_the_nights_still_transferring():
    items = [(NIGHT, "00000001"), (NIGHT, "00000002")]
    obs = observation(**{S: seen(items, installed=[(NIGHT, "00000001")])})
    plan = make_plan(config(), obs, None, bounded=True)
    assert plan.exposures == ((S, NIGHT, "00000002"),) and plan.night_stages == ()


def test_describe_says_what_each_lane_does():
    from scripts.plan import describe

    items = [(NIGHT, "00000001"), (NIGHT, "00000002"), ("20261120", "00000003")]
    stream = seen(items, installed=[(NIGHT, "00000001")], held=[(NIGHT, "00000002")])
    obs = observation(hpss=(False, "HPSS status is 'down'"), **{S: stream})
    lines = describe({"exposures": make_plan(config(exposures_per_run=1), obs, "exposures"),
                      "nights": make_plan(config(), obs, "nights")})
    assert lines == [
        "exposures lane: 1 exposure(s) this run, 0 more pending",
        f"  {S} 20261120: 1 exposure(s) (00000003)",
        "nights lane: 1 stage(s) this run",
        f"  {S} {NIGHT} caughtup: due",
        f"  {S} {NIGHT} backedup: deferred: HPSS status is 'down'",
        f"  {S} 20261120: waiting for 1 exposure(s) to be installed",
        f"held: 1 exposure(s): {S} {NIGHT}/00000002",
    ]


def test_a_scope_restricts_the_plan_to_one_night_or_one_exposure():
    items = [("20261126", "00000001"), ("20261126", "00000002"), (NIGHT, "00000003"),
             (NIGHT, "00000004")]
    obs = observation(**{S: seen(items, installed=[(NIGHT, "00000004")],
                                 held=[("20261126", "00000002")])})
    night = make_plan(config(night=20261126), obs, None)  # --config gives a number
    assert night.exposures == ((S, "20261126", "00000001"),) and night.pending == 1
    assert night.held == ((S, "20261126", "00000002"),)
    assert [(s.night, s.stage) for s in night.night_stages] == [
        ("20261126", "caughtup"), ("20261126", "backedup")]
    one = make_plan(config(exposure=f"{NIGHT}/00000003"), obs, None)
    assert one.exposures == ((S, NIGHT, "00000003"),) and one.night_stages == ()
    assert one.held == ()
    # In the exposure lane the bound still holds; the scope narrows what it takes.
    lane = make_plan(config(night=NIGHT, exposures_per_run=1), obs, "exposures")
    assert lane.exposures == ((S, NIGHT, "00000003"),) and not lane.draining


def test_a_scope_must_name_a_real_night_or_exposure():
    import pytest

    from scripts.plan import Scope, ScopeError, get_scope

    assert get_scope({}) == Scope() and not get_scope({})
    assert get_scope({"night": 20261127}) == Scope("20261127")
    assert get_scope({"exposure": "20261127/00000003"}) == Scope("20261127", "00000003")
    for bad in ({"night": "20261131"}, {"night": 2026113}, {"exposure": "20260230/00000001"},
                {"exposure": "20261127/123"}, {"exposure": "20261127"},
                {"night": "20261127", "exposure": "20261127/00000003"}):
        with pytest.raises(ScopeError):
            get_scope(bad)


def test_nothing_pending_in_any_lane():
    items = [(NIGHT, "00000001")]
    done = observation(**{S: seen(items, installed=items, caught_up=[NIGHT],
                                  backups={NIGHT: [{"exposures": ["00000001"]}]})})
    for lane in ("exposures", "nights", None):
        plan = make_plan(config(), done, lane)
        assert (plan.exposures, plan.night_stages, plan.deferred, plan.waiting) == (
            (), (), (), ()), lane
        assert not plan.wants_hpss and not plan.draining


def test_an_impossible_date_in_the_listing_is_skipped():
    from scripts.remote import parse_listing

    source = "/mountain/raw"
    text = "".join(f"1790000000 {source}/{link}\0" for link in (
        "20261131/00000001", f"{NIGHT}/00000002", "20260230/00000003"))
    parsed = parse_listing(text, source, "20261001")
    assert parsed.exposures == [(NIGHT, "00000002")]
    assert parsed.malformed == ["/mountain/raw/20261131/00000001",
                                "/mountain/raw/20260230/00000003"]
    # A listing made by other code (not the parser) with such a night: skipped, no crash.
    forged = observation(**{S: seen([("20261131", "00000001"), (NIGHT, "00000002")])})
    for lane in ("exposures", "nights", None):
        plan = make_plan(config(), forged, lane)
        assert all(n == NIGHT for _, n, _ in plan.exposures)
        assert all(s.night == NIGHT for s in plan.night_stages)
        assert all(n == NIGHT for _, n, _ in plan.waiting)


def test_an_impossible_date_in_the_state_is_skipped(tmp_path):
    from scripts.configuration import Stream
    from scripts.observe import observe_stream
    from scripts.state_layout import marker_path

    bad = marker_path(tmp_path, S, "20261131", "00000001", "installed")
    bad.parent.mkdir(parents=True)
    bad.write_text("{}")
    good = marker_path(tmp_path, S, "20261126", "00000002", "installed")
    good.parent.mkdir(parents=True)
    good.write_text("{}")
    cfg = config(state=str(tmp_path), backup={"backend": "none"})
    stream = Stream(S, "/mountain/raw", tmp_path / "staging", tmp_path / "archive",
                    "desi/spectro/data", "checksum-{exposure}.sha256sum")
    seen_ = observe_stream(cfg, stream, listing(), NOW, "20261101", "nights", preview=True)
    assert seen_.marker_nights == ("20261126",) and "20261131" not in seen_.nights
    plan = make_plan(cfg, Observation(NOW, {S: seen_}), "nights")
    assert [(s.night, s.stage, s.from_state) for s in plan.night_stages] == [
        ("20261126", "caughtup", True)]
    # A hand-made observation that holds the impossible night: skipped, no crash.
    forged = observation(**{S: seen([], installed=[("20261131", "00000001")],
                                    marker_nights=["20261131"])})
    assert make_plan(config(), forged, "nights").night_stages == ()
