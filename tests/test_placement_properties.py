"""Property tests: on random small plans (<= 7 steps x 4 sites) the solver never violates
residency or requirements, and its plan costs exactly the brute-force optimum; the bounds
that rule sites out are what enumeration says, and never rule out an optimal plan."""

import itertools
import random

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dagster_gravity.placement import (
    InputData,
    Objective,
    PlacementError,
    brute_force_plan,
    check_plan,
    place_plan,
    place_step,
    plan_cost,
)
from dagster_gravity.placement.problem import _build_problem
from dagster_gravity.placement.solvers.dispatch import _solve
from dagster_gravity.placement.solvers.forest import _min_marginals
from dagster_gravity.placement.solvers.graph import _adjacency
from dagster_gravity.placement.solvers.heuristic import _spanning_forest
from dagster_gravity.placement.solvers.pruning import PRUNE_ROUNDS, _Pruning
from tests.support.placement import random_plan, random_topology

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

instances = st.tuples(
    st.integers(0, 2**32 - 1),  # seed
    st.integers(1, 4),  # sites
    st.integers(1, 7),  # steps
    st.sampled_from([0.0, 0.3, 1.0]),  # objective weight
)


def build(seed, n_sites, n_steps):
    rng = random.Random(seed)
    topology = random_topology(rng, n_sites)
    return topology, random_plan(rng, topology, n_steps)


def close(a, b):
    return a == pytest.approx(b, rel=1e-9, abs=1e-12)


@SETTINGS
@given(instances, st.sampled_from(["auto", "heuristic"]))
def test_plan_is_feasible_and_auto_is_optimal(instance, method):
    seed, n_sites, n_steps, weight = instance
    topology, steps = build(seed, n_sites, n_steps)
    objective = Objective(weight)
    try:
        best = brute_force_plan(topology, steps, objective=objective)
    except PlacementError as exc:
        with pytest.raises(PlacementError) as info:
            place_plan(topology, steps, objective=objective, method=method)
        assert info.value.step == exc.step and info.value.step in {s.key for s in steps}
        return
    plan = place_plan(topology, steps, objective=objective, method=method)
    assert set(plan.sites) == {s.key for s in steps}
    assert check_plan(topology, steps, plan.sites) == []
    for key, pool in plan.pools.items():
        assert topology.pool(pool).site == plan.sites[key]
    # the solver's own accounting matches the reference cost function
    got = plan_cost(topology, steps, plan.sites, objective)
    assert close(plan.score, got[3]) and plan.bytes_moved == got[0]
    optimum = plan_cost(topology, steps, best.sites, objective)[3]
    if method == "auto":
        assert plan.exact
        assert close(got[3], optimum)
    else:
        assert got[3] >= optimum - 1e-9 * max(1.0, optimum)


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(1, 3), st.integers(1, 4), st.sampled_from([0.0, 0.5, 1.0]))
def test_brute_force_matches_plain_enumeration(seed, n_sites, n_steps, weight):
    """The vectorised brute force against itertools over every assignment, scored by
    plan_cost and checked by check_plan (no shared code with the solvers' matrices)."""
    topology, steps = build(seed, n_sites, n_steps)
    objective = Objective(weight)
    keys = [s.key for s in steps]
    valid = []
    for combo in itertools.product(topology.site_names, repeat=len(steps)):
        sites = dict(zip(keys, combo))
        if not check_plan(topology, steps, sites):
            valid.append(plan_cost(topology, steps, sites, objective)[3])
    if not valid:
        with pytest.raises(PlacementError):
            brute_force_plan(topology, steps, objective=objective)
        return
    best = brute_force_plan(topology, steps, objective=objective)
    assert close(plan_cost(topology, steps, best.sites, objective)[3], min(valid))


@SETTINGS
@given(st.integers(0, 2**32 - 1), st.integers(1, 4), st.sampled_from([0.0, 0.5, 1.0]))
def test_place_step_picks_the_cheapest_feasible_pool(seed, n_sites, weight):
    rng = random.Random(seed)
    topology = random_topology(rng, n_sites)
    steps = random_plan(rng, topology, 3)
    step = steps[-1]
    inputs = list(step.external_inputs) + [
        InputData(f"extra{i}", rng.randint(0, 10**10), tuple(rng.sample(topology.site_names, 1))) for i in range(2)
    ]
    waits = {p.id: rng.choice([0.0, 0.0, 5.0, 100.0]) for p in topology.pools}
    try:
        placement = place_step(topology, inputs, step.requirements, objective=Objective(weight), expected_wait=waits)
    except PlacementError as exc:
        assert all(not c.feasible and c.reason for c in exc.candidates)
        return
    best = placement.candidates[0]
    assert best.feasible and best.pool == placement.pool
    feasible = [c for c in placement.candidates if c.feasible]
    assert all(best.score <= c.score for c in feasible)
    assert all(not c.feasible for c in placement.candidates[len(feasible):])
    zones = {i.residency for i in inputs if i.residency}
    for zone in zones:
        assert topology.allows(zone, placement.site)
    pool = topology.pool(placement.pool)
    assert pool.gpus >= step.requirements.gpus
    assert step.requirements.pin in (None, pool.site)
    # the score is what the links say: each missing input from its cheapest replica
    objective = Objective(weight)
    expected = objective.score(waits[pool.id], 0.0)
    for item in inputs:
        if item.size_bytes and pool.site not in item.sites:
            expected += min(
                objective.score(topology.link(s, pool.site).seconds(item.size_bytes), topology.link(s, pool.site).dollars(item.size_bytes))
                for s in item.sites
            )
    assert close(best.score, expected)


def every_plan(p, edges=None):
    """Every assignment of sites (rows) and its score (inf where infeasible), counting only
    `edges` (all by default)."""
    n, S = p.unary.shape
    plans = np.array(list(itertools.product(range(S), repeat=n)), dtype=np.int64).reshape(-1, n)
    score = p.unary[np.arange(n), plans].sum(axis=1)
    for e in range(len(p.edge_u)) if edges is None else edges:
        score = score + p.edge_cost(e)[plans[:, p.edge_u[e]], plans[:, p.edge_v[e]]]
    return plans, score


def problem(instance):
    seed, n_sites, n_steps, weight = instance
    topology, steps = build(seed, n_sites, n_steps)
    try:
        return _build_problem(topology, steps, Objective(weight), None)
    except PlacementError:
        return None


@SETTINGS
@given(instances)
def test_min_marginals_are_the_cheapest_forest_plan_through_each_site(instance):
    p = problem(instance)
    if p is None:
        return
    n, S = p.unary.shape
    nodes = np.arange(n)
    forest = _spanning_forest(p, nodes)
    plans, _ = every_plan(p, forest)
    # the cost of v's own tree: its steps' unary costs and its edges
    tree_of = list(range(n))
    for e in forest:
        a, b = tree_of[p.edge_u[e]], tree_of[p.edge_v[e]]
        tree_of = [a if t == b else t for t in tree_of]
    expected = np.zeros((n, S))
    for v in range(n):
        mine = [w for w in range(n) if tree_of[w] == tree_of[v]]
        score = p.unary[mine, plans[:, mine]].sum(axis=1)
        for e in forest:
            if tree_of[p.edge_u[e]] == tree_of[v]:
                score = score + p.edge_cost(e)[plans[:, p.edge_u[e]], plans[:, p.edge_v[e]]]
        expected[v] = [score[plans[:, v] == s].min() for s in range(S)]
    np.testing.assert_allclose(_min_marginals(p, p.unary, forest, nodes), expected, rtol=1e-9, atol=1e-12)


@SETTINGS
@given(instances, st.integers(0, 2**32 - 1))
def test_pruning_keeps_every_optimal_plan_and_the_pruned_solve_is_optimal(instance, start_seed):
    p = problem(instance)
    if p is None:
        return
    n = len(p.keys)
    plans, score = every_plan(p)
    best = score.min()
    labels, exact = _solve(p, "pruned")
    assert exact and close(p.score(labels), best)
    # started from any feasible plan, ruling sites out keeps every optimal plan
    feasible = np.nonzero(np.isfinite(score))[0]
    start = plans[feasible[random.Random(start_seed).randrange(len(feasible))]]
    adj = _adjacency(p)
    state = _Pruning(p, adj, list(range(n)), _spanning_forest(p, np.arange(n)), start)
    state.prune(np.ones(state.n_comps, dtype=bool), PRUNE_ROUNDS)
    assert state.allowed[np.arange(n), state.labels].all()
    assert p.score(state.labels) <= p.score(start) + 1e-9 * max(1.0, abs(p.score(start)))
    for plan in plans[score <= best + 1e-9 * max(1.0, abs(best))]:
        assert state.allowed[np.arange(n), plan].all(), (plan, state.allowed)
