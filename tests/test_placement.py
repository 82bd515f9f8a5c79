"""Unit tests of the placement engine: per-step decisions, their explanations and errors,
and the plan solvers against hand-computed optima and HiGHS's."""

import json
import math
import random
import subprocess
import sys

import numpy as np
import pytest

from dagster_gravity.placement import (
    Candidate,
    InputData,
    Objective,
    PlacementError,
    PlanStep,
    Requirements,
    brute_force_plan,
    check_plan,
    cost_model,
    place_plan,
    place_step,
    plan_cost,
    plan_lower_bound,
)
from dagster_gravity.placement.problem import _build_problem
from dagster_gravity.placement.solvers import dispatch
from dagster_gravity.placement.solvers.dispatch import _solve
from dagster_gravity.placement.solvers.milp import _solve_milp
from dagster_gravity.placement.solvers.pruning import NARROW, _bound_left_out_edges
from dagster_gravity.topology import Topology
from tests.support.placement import ml_pipelines, ml_topology

GB = 10**9


def topo():
    return Topology.from_dict(
        {
            "sites": [
                {"name": "dc", "region": "us-east", "kind": "onprem",
                 "pools": [{"name": "gpu", "kind": "gpu", "slots": 1, "gpus": 2}, {"name": "cpu", "slots": 2}]},
                {"name": "aws", "region": "us-east-1", "kind": "cloud", "pools": [{"name": "cpu", "slots": 2}]},
                {"name": "eu", "region": "eu-central", "kind": "colo", "pools": [{"name": "cpu", "slots": 2}]},
            ],
            "links": [{"from": "dc", "to": "aws", "bandwidth_gbps": 10, "latency_ms": 2, "usd_per_gb": 0.0, "reverse_usd_per_gb": 0.02}],
            "residency": {"eu": ["eu"], "us": ["dc", "aws"]},
        }
    )


T = topo()


def by_pool(placement):
    return {c.pool: c for c in placement.candidates}


def test_step_goes_to_the_data_and_explains_every_pool():
    events = InputData("raw/events", 5 * GB, ("dc",))
    placement = place_step(T, [events])
    assert placement.site == "dc" and placement.pool == "dc/cpu"  # the GPU pool stays free for GPU steps
    rows = by_pool(placement)
    assert set(rows) == {"dc/gpu", "dc/cpu", "aws/cpu", "eu/cpu"}
    assert rows["dc/cpu"].bytes_moved == 0 and rows["dc/cpu"].transfer_seconds == 0
    link = T.link("dc", "eu")
    assert rows["eu/cpu"].bytes_moved == 5 * GB
    assert rows["eu/cpu"].transfer_seconds == pytest.approx(link.seconds(5 * GB))
    assert rows["eu/cpu"].dollars == pytest.approx(link.dollars(5 * GB))
    assert rows["aws/cpu"].dollars == 0.0  # ingress to the cloud is free on the interconnect
    assert "dc" in placement.reason and "next best" in placement.reason
    table = placement.as_table()
    json.dumps(table)
    assert [r["pool"] for r in table] == [c.pool for c in placement.candidates]


def test_cheapest_replica_is_used_and_transfers_add_up():
    a = InputData("a", 2 * GB, ("dc", "eu"))
    b = InputData("b", 1 * GB, ("eu",))
    rows = by_pool(place_step(T, [a, b]))
    # at aws: 'a' comes over the fast dc->aws link, 'b' from eu over the internet
    expected = T.link("dc", "aws").seconds(2 * GB) + T.link("eu", "aws").seconds(1 * GB)
    assert rows["aws/cpu"].transfer_seconds == pytest.approx(expected)
    assert rows["aws/cpu"].bytes_moved == 3 * GB
    assert rows["eu/cpu"].bytes_moved == 0


def test_residency_failure_names_the_input_and_zone():
    customers = InputData("eu/customers", 10, ("eu",), residency="eu")
    placement = place_step(T, [customers, InputData("big", 50 * GB, ("dc",))])
    assert placement.site == "eu"  # the only site allowed, however big the other input
    rows = by_pool(placement)
    assert not rows["dc/cpu"].feasible and math.isinf(rows["dc/cpu"].score)
    assert rows["dc/cpu"].reason == "residency: input 'eu/customers' may not leave zone 'eu'"
    assert [c.feasible for c in placement.candidates] == [True, False, False, False]


def test_gpu_pin_and_pool_kind_messages():
    rows = by_pool(place_step(T, [], Requirements(gpus=2)))
    assert rows["aws/cpu"].reason == "needs 2 GPUs, pool has 0"
    assert rows["dc/gpu"].feasible
    rows = by_pool(place_step(T, [], Requirements(pin="aws")))
    assert rows["dc/cpu"].reason == "pinned to 'aws'" and rows["aws/cpu"].feasible
    rows = by_pool(place_step(T, [], Requirements(pool_kind="gpu")))
    assert rows["eu/cpu"].reason == "needs pool kind 'gpu', pool is 'cpu'"


def test_a_pinned_steps_reason_names_the_pin_and_a_disabled_pool_is_not_called_unhealthy():
    pinned = place_step(T, [], Requirements(pin="aws"))
    assert "pinned to site 'aws' (op tag gravity/pin)" in pinned.reason, pinned.reason
    assert "the only feasible site" not in pinned.reason
    rows = by_pool(place_step(T, [], healthy={"aws/cpu", "eu/cpu"}, disabled={"dc/cpu"}))
    assert rows["dc/cpu"].reason == "disabled for this run (disabled_pools)"
    assert rows["dc/gpu"].reason == "unhealthy"


def test_infeasible_step_error_lists_every_pool():
    customers = InputData("eu/customers", 10, ("eu",), residency="eu")
    with pytest.raises(PlacementError) as info:
        place_step(T, [customers], Requirements(gpus=1), step="train")
    msg = str(info.value)
    assert "no pool can run step 'train'" in msg
    for pool in ("dc/gpu", "dc/cpu", "aws/cpu", "eu/cpu"):
        assert pool in msg
    assert "eu/cpu: needs 1 GPU, pool has 0" in msg
    assert "dc/gpu: residency: input 'eu/customers' may not leave zone 'eu'" in msg
    assert len(info.value.candidates) == 4 and all(isinstance(c, Candidate) for c in info.value.candidates)


def test_unknown_pin_and_unknown_replica_site():
    with pytest.raises(PlacementError, match="pinned to site 'mars'.*known sites: dc, aws, eu"):
        place_step(T, [], Requirements(pin="mars"))
    with pytest.raises(ValueError, match="input 'x': site 'mars' is not in the topology"):
        place_step(T, [InputData("x", 10, ("mars",))])
    with pytest.raises(ValueError, match="input 'x' has no site"):
        place_step(T, [InputData("x", 10, ())])


def test_unhealthy_excluded_and_wait():
    data = InputData("d", 1 * GB, ("dc",))
    placement = place_step(T, [data], healthy={"aws/cpu", "eu/cpu"})
    assert placement.site == "aws"
    assert by_pool(placement)["dc/cpu"].reason == "unhealthy"
    placement = place_step(T, [data], exclude={"dc/cpu", "dc/gpu"})
    assert placement.site == "aws" and by_pool(placement)["dc/gpu"].reason == "excluded"
    # a long wait for the local slot makes moving the data cheaper (delay scheduling)
    move = T.link("dc", "aws").seconds(1 * GB)
    placement = place_step(T, [data], expected_wait={"dc/cpu": 60.0, "dc/gpu": 60.0})
    assert placement.pool == "aws/cpu"
    assert by_pool(placement)["dc/cpu"].score == pytest.approx(60.0)
    assert by_pool(placement)["aws/cpu"].score == pytest.approx(move)
    # a short wait does not
    assert place_step(T, [data], expected_wait={"dc/cpu": move / 10, "dc/gpu": move / 10}).site == "dc"
    with pytest.raises(ValueError, match="expected_wait"):
        place_step(T, [data], expected_wait={"dc/cpu": -1})


def test_ties_keep_gpus_free_then_follow_topology_order():
    placement = place_step(T, [])
    # a CPU step at equal cost takes a CPU pool; the GPU pool's slot stays free for GPU steps
    assert [c.pool for c in placement.candidates] == ["dc/cpu", "aws/cpu", "eu/cpu", "dc/gpu"]
    assert placement.pool == "dc/cpu"
    assert place_step(T, []) == placement
    data = InputData("d", GB, ("dc",))
    assert place_step(T, [data]).pool == "dc/cpu"
    assert place_step(T, [data], expected_wait={"dc/cpu": 30.0}).pool == "dc/gpu"


def test_objective_parse_and_score():
    assert Objective.parse("time") == Objective(0.0)
    assert Objective.parse("cost").weight == 1.0
    assert Objective.parse(0.25).weight == 0.25
    assert Objective.parse("0.5").weight == 0.5
    for bad in ("fast", 1.5, -0.1, True, None, "nan-ish"):
        with pytest.raises(ValueError, match="objective: got .*expected 'time', 'cost' or a weight between 0 and 1"):
            Objective.parse(bad)
    with pytest.raises(ValueError, match="usd_per_hour"):
        Objective(0.5, usd_per_hour=0)
    o = Objective(0.5, usd_per_hour=3600.0)  # one dollar is worth one second
    assert o.score(10.0, 2.0) == pytest.approx(6.0)


def test_cost_objective_prefers_free_links():
    # 1 GB at aws: time favours the fast interconnect either way, but going dc->eu costs
    # internet egress while aws ingress from dc is free.
    data = InputData("d", 1 * GB, ("dc",))
    rows = by_pool(place_step(T, [data], Requirements(pin=None), objective="cost", exclude={"dc/cpu", "dc/gpu"}))
    assert rows["aws/cpu"].score == 0.0 and rows["eu/cpu"].score > 0


def test_cost_model_is_cached_per_topology():
    assert cost_model(T) is cost_model(T)
    assert cost_model(topo()) is not cost_model(T)


# -- plans ---------------------------------------------------------------------------------


def ml_plan():
    return [
        PlanStep("clean", (InputData("raw/events", 20 * GB, ("dc",)),)),
        PlanStep("customers", (InputData("eu/customers", 5 * GB, ("eu",), residency="eu"),)),
        PlanStep("features", upstream=(("clean", 2 * GB), ("customers", 100 * 10**6))),
        PlanStep("train", upstream=(("features", 2 * GB),), requirements=Requirements(gpus=1)),
        PlanStep("eval", upstream=(("train", 10**8), ("features", 10**8))),
    ]


def test_plan_keeps_compute_with_data_and_respects_residency():
    plan = place_plan(T, ml_plan())
    assert plan.sites == {"clean": "dc", "customers": "eu", "features": "dc", "train": "dc", "eval": "dc"}
    assert plan.pools["train"] == "dc/gpu" and plan.pools["clean"] == "dc/cpu"
    assert plan.exact and plan.method == "exact"
    assert plan.bytes_moved == 100 * 10**6
    assert (plan.bytes_moved, plan.seconds, plan.dollars, plan.score) == pytest.approx(plan_cost(T, ml_plan(), plan.sites))
    best = brute_force_plan(T, ml_plan())
    assert plan.score == pytest.approx(best.score)
    assert not check_plan(T, ml_plan(), plan.sites)


def test_plan_methods_agree_on_a_small_plan():
    steps = ml_plan()
    scores = {m: place_plan(T, steps, method=m).score for m in ("auto", "exact", "heuristic", "milp", "brute-force")}
    assert scores["heuristic"] >= scores["exact"] - 1e-9
    for m in ("auto", "milp", "brute-force"):
        assert scores[m] == pytest.approx(scores["exact"], rel=1e-6)
    assert plan_lower_bound(T, steps) <= scores["exact"] + 1e-6


def test_cost_plan_breaks_ties_toward_moving_nothing():
    # every link is free: under "cost" all plans score $0, and the plan must still keep the
    # steps with their data (the data sit at the *last* site, so "first site" would move them)
    free = Topology.from_dict(
        {
            "sites": [{"name": n, "region": n, "kind": "cloud", "pools": [{"name": "cpu", "slots": 1}]} for n in ("a", "b", "c")],
            "links": [{"from": x, "to": y, "usd_per_gb": 0.0} for x in "abc" for y in "abc" if x != y],
        }
    )
    steps = [
        PlanStep("clean", (InputData("raw", 5 * GB, ("c",)),)),
        PlanStep("features", upstream=(("clean", 2 * GB),)),
        PlanStep("train", upstream=(("features", 1 * GB),)),
    ]
    # (not "milp": HiGHS's tolerances are far above the tie-break)
    for method in ("auto", "exact", "heuristic", "brute-force"):
        plan = place_plan(free, steps, objective="cost", method=method)
        assert plan.dollars == 0.0 and plan.bytes_moved == 0, (method, plan.sites)
        assert set(plan.sites.values()) == {"c"}


def test_plan_residency_of_upstream_output_and_own_output():
    steps = [
        PlanStep("a", (InputData("x", GB, ("dc",)),), output_residency="eu"),
        PlanStep("b", upstream=(("a", GB),)),
    ]
    plan = place_plan(T, steps)
    assert plan.sites == {"a": "eu", "b": "eu"}


def test_plan_infeasible_step_is_named_with_each_site():
    steps = [
        PlanStep("load", (InputData("eu/customers", 10, ("eu",), residency="eu"),), output_residency="eu"),
        PlanStep("train", upstream=(("load", 10),), requirements=Requirements(gpus=1)),
    ]
    with pytest.raises(PlacementError) as info:
        place_plan(T, steps)
    msg = str(info.value)
    assert info.value.step == "train" and "no site can run step 'train'" in msg
    assert "eu: no pool qualifies (eu/cpu: needs 1 GPU, pool has 0)" in msg
    assert "dc: residency: data 'load (upstream output)' may not leave zone 'eu'" in msg


def test_plan_input_errors():
    with pytest.raises(ValueError, match="step key 'a' appears more than once"):
        place_plan(T, [PlanStep("a"), PlanStep("a")])
    with pytest.raises(ValueError, match="reads upstream step 'nope', which is not in the plan"):
        place_plan(T, [PlanStep("a", upstream=(("nope", 1),))])
    with pytest.raises(ValueError, match="method: got 'magic'"):
        place_plan(T, [PlanStep("a")], method="magic")
    assert place_plan(T, []).sites == {}


def test_unhealthy_pools_move_the_plan():
    plan = place_plan(T, ml_plan(), healthy={"dc/gpu", "aws/cpu", "eu/cpu"})
    assert plan.sites["clean"] == "dc" and plan.pools["clean"] == "dc/gpu"  # the only pool left there
    steps = [s for s in ml_plan() if s.key in ("clean", "customers", "features")]
    plan = place_plan(T, steps, healthy={"aws/cpu", "eu/cpu"})
    assert plan.sites["clean"] == "aws" and plan.pools["clean"] == "aws/cpu"


@pytest.mark.slow
def test_placement_does_not_import_dagster():
    code = "import sys, dagster_gravity.placement; print('dagster' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_output_residency_stand_in_is_named_as_an_output():
    # A step that writes EU-resident data: a 0-byte stand-in carries its zone, costs nothing
    # to move, and explanations call it an output, not an input.
    out = InputData("eu/report", 0, ("eu",), residency="eu", role="output")
    placement = place_step(T, [out])
    assert placement.site == "eu" and placement.candidates[0].bytes_moved == 0
    assert "no known input data to move" in placement.reason
    assert "runs in the residency zone of its output eu/report (residency eu)" in placement.reason
    assert by_pool(placement)["dc/cpu"].reason == "residency: output 'eu/report' may not leave zone 'eu'"
    data = InputData("d", GB, ("eu",))
    assert "all inputs are already at eu" in place_step(T, [data, out]).reason


# -- pruning: bounds that rule sites out, then elimination over the sites left --------------


def ml_problem(seed, n_sites=12, n_pipelines=4):
    rng = random.Random(seed)
    topology = ml_topology(rng, n_sites)
    steps = ml_pipelines(rng, topology, n_pipelines)
    return topology, steps, _build_problem(topology, steps, Objective(), None)


def test_left_out_edges_are_bounded_by_the_cheapest_transfer_to_a_site_still_allowed():
    _, _, p = ml_problem(3)
    n, S = p.unary.shape
    rng = np.random.default_rng(0)
    allowed = rng.random((n, S)) < rng.uniform(0.05, 1.0, (n, 1))  # some steps with few sites, some with many
    allowed[np.arange(n), rng.integers(0, S, n)] = True
    edges = np.arange(len(p.edge_u))
    got = np.zeros((n, S))
    _bound_left_out_edges(p, got, allowed, edges)
    expected = np.zeros((n, S))
    far_widths = []
    for e in edges:
        u, v = p.edge_u[e], p.edge_v[e]
        cost = p.edge_cost(e)  # [site of u, site of v]
        if allowed[u].sum() >= allowed[v].sum():  # the end with more sites takes the bound
            expected[u] += np.where(allowed[v][None, :], cost, np.inf).min(axis=1)
            far_widths.append(allowed[v].sum())
        else:
            expected[v] += np.where(allowed[u][:, None], cost, np.inf).min(axis=0)
            far_widths.append(allowed[u].sum())
    assert min(far_widths) <= NARROW < max(far_widths)  # both ways of computing it are used
    np.testing.assert_allclose(got, expected, rtol=1e-12)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_pruning_proves_the_optimum_of_ml_plans(seed, monkeypatch):
    topology, steps, p = ml_problem(seed)
    milp_labels, _, optimal = _solve_milp(p)
    assert optimal
    optimum = p.score(milp_labels)
    labels, exact = _solve(p, "pruned")
    assert exact and p.score(labels) == pytest.approx(optimum, rel=1e-7)
    # `auto` takes the same road once one table over all 12 sites is over its limit
    assert place_plan(topology, steps).method == "exact"
    monkeypatch.setattr(dispatch, "EXACT_TABLE_LIMIT", 12**3)
    plan = place_plan(topology, steps)
    assert plan.exact and plan.method == "exact" and plan.score == pytest.approx(optimum, rel=1e-7)
    assert not check_plan(topology, steps, plan.sites)
    assert place_plan(topology, steps).sites == plan.sites  # deterministic


def test_auto_falls_back_to_the_heuristic_where_the_proof_does_not_fit(monkeypatch):
    topology, steps, p = ml_problem(3)
    optimum = p.score(_solve_milp(p)[0])
    heuristic = place_plan(topology, steps, method="heuristic")
    # no elimination at all: only steps left with one site, and tree-shaped parts, get solved
    monkeypatch.setattr(dispatch, "EXACT_WORK_LIMIT", 0)
    monkeypatch.setattr(dispatch, "EXACT_TABLE_LIMIT", 1)
    plan = place_plan(topology, steps)
    assert not plan.exact and plan.method == "heuristic"
    assert not check_plan(topology, steps, plan.sites)
    # per component the heuristic's plan or the pruned one, whichever is cheaper
    assert optimum - 1e-9 <= plan.score <= heuristic.score + 1e-9


def test_components_over_the_pruning_size_limit_get_the_heuristic(monkeypatch):
    topology, steps, _ = ml_problem(1)
    monkeypatch.setattr(dispatch, "EXACT_TABLE_LIMIT", 12**3)  # too wide to eliminate over all sites
    assert place_plan(topology, steps).exact
    monkeypatch.setattr(dispatch, "PRUNE_MAX_STEPS", 5)  # every pipeline is larger
    plan = place_plan(topology, steps)
    assert not plan.exact and plan.method == "heuristic"
    assert plan.sites == place_plan(topology, steps, method="heuristic").sites
