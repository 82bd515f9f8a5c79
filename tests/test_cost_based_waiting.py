"""Waiting for a busy compute pool against moving the data: the expected wait (from step
durations recorded by earlier runs) decides, and each placement says which won and by what.

Pure parts (`placement.waits`, output trips in `place_step`, the duration history) are
tested directly; the executor's rule on real runs of tests/support/jobs.py's
`wait_or_move_job`: two steps read 300 MB at alpha, whose one usable slot the first holds.
"""

from __future__ import annotations

import math
import re

import pytest
from dagster import DagsterInstance, DagsterEventType

from dagster_gravity.placement import InputData, OutputTrip, place_step
from dagster_gravity.placement.waits import DEFAULT_STEP_SECONDS, expected_wait, remaining_seconds
from dagster_gravity.step_durations import DurationEstimates, expected_durations, record_durations, step_family
from dagster_gravity.topology import Topology
from tests.support import jobs
from tests.support.executor_runs import engine_messages, placements


# -- placement.waits ---------------------------------------------------------------------

def test_a_free_slot_means_no_wait_and_a_full_pool_waits_for_its_first_end():
    assert expected_wait(2, [3.0]) == 0.0
    assert expected_wait(2, [3.0, 5.0]) == 3.0
    assert expected_wait(1, [4.0]) == 4.0


def test_steps_queued_ahead_take_the_slots_that_free_first():
    # slots free at 3 and 5; the queued 4 s step takes the one at 3 (ends at 7): next is 5
    assert expected_wait(2, [3.0, 5.0], [4.0]) == 5.0
    # a second queued 1 s step takes 5 (ends at 6): next is 6
    assert expected_wait(2, [3.0, 5.0], [4.0, 1.0]) == 6.0
    assert expected_wait(1, [], [2.0, 2.0]) == 4.0


def test_remaining_time_shrinks_then_grows_once_a_step_overruns():
    assert remaining_seconds(10.0, 4.0) == 6.0
    assert remaining_seconds(10.0, 9.99) == pytest.approx(0.1)
    assert remaining_seconds(10.0, 40.0) == 10.0  # overdue: a quarter of what it has run


def test_a_pool_without_slots_is_refused():
    with pytest.raises(ValueError, match="slots is 0"):
        expected_wait(0, [])


# -- output trips --------------------------------------------------------------------------

TWO_SITES = """
sites:
  - {name: a, region: ra, kind: onprem, pools: [{name: cpu, kind: cpu, slots: 1}]}
  - {name: b, region: rb, kind: cloud, pools: [{name: cpu, kind: cpu, slots: 1}]}
links:
  - {from: a, to: b, bandwidth_gbps: 0.8, latency_ms: 1, usd_per_gb: 0.0}
"""


@pytest.fixture
def two_sites(tmp_path) -> Topology:
    path = tmp_path / "sites.yaml"
    path.write_text(TWO_SITES)
    return Topology.from_yaml(path)


def test_an_outputs_trip_to_its_consumers_site_outweighs_a_smaller_input(two_sites):
    small_at_a = [InputData("small", 10_000_000, ("a",))]
    assert place_step(two_sites, small_at_a).site == "a"
    # its 100 MB output is needed at b, where its consumers are planned: running at b moves 10 MB, not 100
    trips = [OutputTrip("step.result", 100_000_000, ("b",))]
    placement = place_step(two_sites, small_at_a, outputs=trips)
    assert placement.site == "b", placement.reason
    at_a = next(c for c in placement.candidates if c.site == "a")
    assert at_a.output_bytes == 100_000_000 and at_a.output_seconds == pytest.approx(0.001 + 1.0)
    assert "next best a/cpu" in placement.reason


def test_a_busy_pools_expected_wait_decides_between_waiting_and_moving(two_sites):
    big_at_a = [InputData("big", 500_000_000, ("a",))]  # 5 s to b
    assert place_step(two_sites, big_at_a, expected_wait={"a/cpu": 2.0}).site == "a"
    assert place_step(two_sites, big_at_a, expected_wait={"a/cpu": 8.0}).site == "b"


# -- duration history ----------------------------------------------------------------------

def test_durations_are_learned_per_job_and_step_and_dynamic_copies_share_theirs():
    with DagsterInstance.ephemeral() as instance:
        assert expected_durations(instance, "job") == {}
        record_durations(instance, "job", {"train": 10.0, "square[3]": 2.0})
        record_durations(instance, "job", {"train": 20.0, "square[4]": math.nan})
        got = expected_durations(instance, "job")
        assert got["train"] == pytest.approx(13.0)  # 0.7 * 10 + 0.3 * 20
        assert got["square"] == 2.0 and step_family("square[4]") == "square"
        assert expected_durations(instance, "other_job") == {}
        estimates = DurationEstimates(got)
        assert estimates.expected("square[9]") == 2.0 and estimates.expected("unseen") == DEFAULT_STEP_SECONDS


def test_an_unreadable_history_entry_starts_again():
    with DagsterInstance.ephemeral() as instance:
        instance.daemon_cursor_storage.set_cursor_values({"gravity/step-seconds/job": "not json"})
        assert expected_durations(instance, "job") == {}
        record_durations(instance, "job", {"train": 3.0})
        assert expected_durations(instance, "job") == {"train": 3.0}


# -- the executor's rule on real runs ------------------------------------------------------

def _placed(result):
    placed = placements(result)
    assert set(placed) == {"mid_left", "mid_right"}
    return placed


def test_with_no_history_a_step_waits_first_then_moves_once_the_running_step_overruns(gravity):
    # The step at alpha holds its slot until the other has started elsewhere. Unknown, it is
    # expected to take DEFAULT_STEP_SECONDS (0.5 s): waiting wins at first; past that, its
    # expected remaining time is a quarter of what it has run, so moving 300 MB (2.43 s) wins
    # once it has run ~9.7 s.
    result = gravity.run("wait_or_move_job", disabled_pools=["alpha/gpu"], locality_wait=60.0)
    assert result.success
    placed = _placed(result)
    moved = next(p for p in placed.values() if p["gravity/site"] != "alpha")
    assert "gravity/spilled_from" not in moved  # it did not wait out the locality_wait cap
    found = re.search(r"waited ([\d.]+) s for alpha/cpu, then moving won; moving 300 MB \(2\.4 s\) "
                      r"to beta/cpu beats waiting ~([\d.]+) s for alpha/cpu", moved["message"])
    assert found, moved["message"]
    waited, wait_beaten = float(found.group(1)), float(found.group(2))
    assert 8.0 < waited < 30.0 and 2.4 <= wait_beaten < 4.0, moved["message"]
    # the run recorded both steps' durations for the next run
    history = expected_durations(gravity.instance, "wait_or_move_job")
    assert set(history) == {"mid_left", "mid_right"}


def test_a_short_recorded_duration_makes_waiting_beat_moving(gravity):
    (gravity.store / jobs.DELAY_HOLD).write_text("0.5")
    record_durations(gravity.instance, "wait_or_move_job", {"mid_left": 0.5, "mid_right": 0.5})
    result = gravity.run("wait_or_move_job", disabled_pools=["alpha/gpu"], locality_wait=60.0)
    assert result.success
    placed = _placed(result)
    assert [p["gravity/site"] for p in placed.values()] == ["alpha", "alpha"]
    waited = [p["message"] for p in placed.values() if "beats moving" in p["message"]]
    assert len(waited) == 1 and re.search(r"waiting ~0\.[1-5]\d* s for alpha/cpu beats moving 300 MB", waited[0]), placed


def test_the_run_plan_is_an_engine_event_at_run_start(gravity):
    result = gravity.run("wait_or_move_job", disabled_pools=["alpha/gpu"], locality_wait=60.0)
    plan = next(
        e for e in result.all_events
        if e.event_type == DagsterEventType.ENGINE_EVENT and "gravity/planned_sites" in (e.event_specific_data.metadata or {})
    )
    planned = plan.event_specific_data.metadata["gravity/planned_sites"].value
    assert planned == {"mid_left": "alpha", "mid_right": "alpha"}  # the plan knows no slots
    assert "run plan for 2 steps" in plan.message
    # one step ran elsewhere than planned: the rest was re-planned around it
    assert any("re-planned" in m for m in engine_messages(result))


# -- the simulated run ---------------------------------------------------------------------

def _two_readers(size: int):
    from dagster_gravity.placement import PlanStep

    data = InputData("data", size, ("a",))
    return [PlanStep("left", (data,)), PlanStep("right", (data,))]


def test_the_simulation_waits_for_a_short_step_and_moves_past_a_long_one(two_sites):
    from dagster_gravity.placement.simulate import simulate_run

    steps = _two_readers(500_000_000)  # 5 s to move to b; a has one slot
    short = simulate_run(two_sites, steps, {"left": 1.0, "right": 1.0})
    assert set(short.pools.values()) == {"a/cpu"} and short.bytes_moved == 0
    assert short.makespan == pytest.approx(2.0)  # the second waited 1 s rather than move for 5 s
    long = simulate_run(two_sites, steps, {"left": 60.0, "right": 60.0})
    assert sorted(long.pools.values()) == ["a/cpu", "b/cpu"]
    assert long.bytes_per_link == {("a", "b"): 500_000_000}
    assert long.makespan == pytest.approx(60.0 + 500_000_000 / 1e8 + 0.001)


def test_the_location_blind_simulation_moves_what_it_does_not_find(two_sites):
    from dagster_gravity.placement import PlanStep
    from dagster_gravity.placement.simulate import simulate_run

    at_b = InputData("at_b", 100_000_000, ("b",))
    steps = [PlanStep("only", (at_b,))]
    assert simulate_run(two_sites, steps, {"only": 1.0}).bytes_moved == 0
    blind = simulate_run(two_sites, steps, {"only": 1.0}, rule="blind")
    assert blind.pools == {"only": "a/cpu"} and blind.bytes_per_link == {("b", "a"): 100_000_000}


def test_a_run_too_large_to_simulate_is_refused_by_its_decision_budget(two_sites):
    from dagster_gravity.placement import PlanStep
    from dagster_gravity.placement.simulate import SimulationTooLarge, simulate_run

    steps = [PlanStep(f"s{i}", (InputData("data", 1_000, ("a",)),)) for i in range(50)]
    assert len(simulate_run(two_sites, steps, max_decisions=1_000).pools) == 50
    with pytest.raises(SimulationTooLarge, match="more than 10 placement decisions"):
        simulate_run(two_sites, steps, max_decisions=10)


# -- shared links ---------------------------------------------------------------------------

def test_copies_in_flight_on_a_link_share_its_bandwidth_so_waiting_can_win(two_sites):
    big_at_a = [InputData("big", 500_000_000, ("a",))]  # 5 s to b on an idle link
    assert place_step(two_sites, big_at_a, expected_wait={"a/cpu": 8.0}).site == "b"
    # two copies already on a->b: a third gets a third of it, 15 s, so waiting 8 s wins
    shared = place_step(two_sites, big_at_a, expected_wait={"a/cpu": 8.0}, link_load={("a", "b"): 2})
    assert shared.site == "a", shared.reason
    at_b = next(c for c in shared.candidates if c.site == "b")
    assert at_b.transfer_seconds == pytest.approx(0.001 + 15.0)
    # the load of the reverse link changes nothing
    assert place_step(two_sites, big_at_a, expected_wait={"a/cpu": 8.0}, link_load={("b", "a"): 5}).site == "b"


def test_a_transfer_comes_from_the_replica_whose_link_is_less_loaded(tmp_path):
    from dagster_gravity.placement import transfers_to

    path = tmp_path / "sites.yaml"
    path.write_text(
        "sites:\n"
        "  - {name: a, region: ra, kind: onprem, pools: [{name: cpu, slots: 1}]}\n"
        "  - {name: b, region: rb, kind: onprem, pools: [{name: cpu, slots: 1}]}\n"
        "  - {name: c, region: rc, kind: onprem, pools: [{name: cpu, slots: 1}]}\n"
        "links:\n"
        "  - {from: a, to: c, bandwidth_gbps: 0.8, latency_ms: 0}\n"
        "  - {from: b, to: c, bandwidth_gbps: 0.4, latency_ms: 0}\n"
    )
    topology = Topology.from_yaml(path)
    data = [InputData("data", 100_000_000, ("a", "b"))]
    (idle,) = transfers_to(topology, data, "c")
    assert (idle.src, idle.seconds) == ("a", pytest.approx(1.0))
    (busy,) = transfers_to(topology, data, "c", link_load={("a", "c"): 2})  # a->c at a third: 3 s; b->c 2 s
    assert (busy.src, busy.dst, busy.seconds) == ("b", "c", pytest.approx(2.0))
    assert transfers_to(topology, data, "a") == []


@pytest.mark.parametrize(
    "link_load, expected",
    [
        ({("a",): 1}, "expected a (source site, destination site) pair"),
        ({("a", "b"): -1}, "expected a whole number of transfers >= 0"),
        ({("a", "b"): 1.5}, "expected a whole number of transfers >= 0"),
        ({("a", "mars"): 1}, "mars"),
    ],
)
def test_a_bad_link_load_is_refused_naming_it(two_sites, link_load, expected):
    from dagster_gravity.errors import GravityConfigError

    with pytest.raises(GravityConfigError, match=re.escape(expected)):
        place_step(two_sites, [InputData("big", 500_000_000, ("a",))], link_load=link_load)


def test_the_simulation_shares_a_link_between_copies_that_overlap(tmp_path):
    from dagster_gravity.placement import PlanStep, Requirements
    from dagster_gravity.placement.simulate import simulate_run

    path = tmp_path / "sites.yaml"
    path.write_text(TWO_SITES.replace("{name: a, region: ra, kind: onprem, pools: [{name: cpu, kind: cpu, slots: 1}]}",
                                      "{name: a, region: ra, kind: onprem, pools: [{name: cpu, kind: cpu, slots: 2}]}"))
    topology = Topology.from_yaml(path)
    # two steps pinned to a, each reading 100 MB from b: alone a copy is 1 s (+1 ms)
    steps = [PlanStep(k, (InputData(f"{k}.in", 100_000_000, ("b",)),), requirements=Requirements(pin="a")) for k in ("x", "y")]
    run = simulate_run(topology, steps, {"x": 1.0, "y": 1.0})
    assert run.bytes_per_link == {("b", "a"): 200_000_000}
    # the second copy starts while the first is in flight: it gets half the link, 2 s
    assert run.seconds_per_link[("b", "a")] == pytest.approx((0.001 + 1.0) + (0.001 + 2.0))
    assert run.makespan == pytest.approx(0.001 + 2.0 + 1.0)


def test_the_simulation_copies_an_object_into_a_site_once_however_many_steps_read_it(tmp_path):
    from dagster_gravity.placement import PlanStep, Requirements
    from dagster_gravity.placement.simulate import simulate_run

    path = tmp_path / "sites.yaml"
    path.write_text(TWO_SITES.replace("{name: a, region: ra, kind: onprem, pools: [{name: cpu, kind: cpu, slots: 1}]}",
                                      "{name: a, region: ra, kind: onprem, pools: [{name: cpu, kind: cpu, slots: 2}]}"))
    topology = Topology.from_yaml(path)
    shared = InputData("shared", 100_000_000, ("b",))  # 1 s (+1 ms) from b to a
    # x and y start together at a and read the same object: one copy, which y waits for
    steps = [PlanStep(k, (shared,), requirements=Requirements(pin="a")) for k in ("x", "y")]
    run = simulate_run(topology, steps, {"x": 1.0, "y": 1.0})
    assert run.bytes_per_link == {("b", "a"): 100_000_000}
    assert run.makespan == pytest.approx(0.001 + 1.0 + 1.0)
    # z runs after x at a, when the copy is there: nothing moves for it
    later = [*steps, PlanStep("z", (shared,), (("x", 1),), requirements=Requirements(pin="a"))]
    run = simulate_run(topology, later, {"x": 1.0, "y": 1.0, "z": 1.0})
    assert run.bytes_per_link == {("b", "a"): 100_000_000}
    assert run.makespan == pytest.approx(0.001 + 1.0 + 1.0 + 1.0)
    # an upstream output read by two steps at the other site moves once too
    fan = [PlanStep("p", (), requirements=Requirements(pin="b")),
           *(PlanStep(k, (), (("p", 50_000_000),), requirements=Requirements(pin="a")) for k in ("q", "r"))]
    run = simulate_run(topology, fan, {"p": 1.0, "q": 1.0, "r": 1.0})
    assert run.bytes_per_link == {("b", "a"): 50_000_000}
