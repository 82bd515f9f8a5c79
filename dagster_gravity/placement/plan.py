"""The whole-plan decision: `place_plan` and its references (`plan_cost`, `check_plan`,
`plan_lower_bound`, `brute_force_plan`), and the `PlanPlacement` they return."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Collection, Mapping, Sequence

import numpy as np

from dagster_gravity.errors import GravityConfigError
from dagster_gravity.placement.feasibility import _requirement_failures
from dagster_gravity.placement.model import Objective
from dagster_gravity.placement.problem import PlanStep, _build_problem, _Problem
from dagster_gravity.placement.solvers.brute_force import _brute_force
from dagster_gravity.placement.solvers.dispatch import _solve
from dagster_gravity.placement.solvers.milp import _lp_bound, _solve_milp
from dagster_gravity.topology import Topology


@dataclass(frozen=True)
class PlanPlacement:
    sites: dict[str, str]  # step key -> site
    pools: dict[str, str]  # step key -> pool id
    bytes_moved: int
    seconds: float  # total transfer seconds, summed over every transfer (not a makespan)
    dollars: float
    score: float
    method: str  # the solver that produced it: exact, heuristic, milp, brute-force
    lower_bound: float | None = None  # a proven lower bound on the score, when computed
    exact: bool = False  # True when `score` is proven optimal


def _result(topology, steps, p: _Problem, labels, objective, method, lower_bound=None, exact=False) -> PlanPlacement:
    sites = {k: p.cm.sites[int(l)] for k, l in zip(p.keys, labels)}
    pools = {k: p.pool_choice[i][int(l)] for i, (k, l) in enumerate(zip(p.keys, labels))}
    nbytes, seconds, dollars, score = _plan_metrics(p, labels, steps, objective)
    return PlanPlacement(sites, pools, nbytes, seconds, dollars, score, method, lower_bound, exact)


def _plan_metrics(p: _Problem, labels: np.ndarray, steps, objective: Objective):
    cm = p.cm
    total_b = total_s = total_d = 0.0
    per_byte, fixed = cm.matrices(objective)
    for i, step in enumerate(steps):
        dst = int(labels[i])
        for item in step.external_inputs:
            size = item.size_bytes
            if size <= 0:
                continue
            srcs = [cm.index[site] for site in item.sites]
            if dst in srcs:
                continue
            src = min(srcs, key=lambda r: size * per_byte[r, dst] + fixed[r, dst])
            total_b += size
            total_s += cm.latency[src, dst] + size * cm.sec_per_byte[src, dst]
            total_d += size * cm.usd_per_byte[src, dst]
    lu, lv = labels[p.edge_u], labels[p.edge_v]
    moved = lu != lv
    nb = p.edge_bytes[moved]
    total_b += nb.sum()
    total_s += (p.edge_count[moved] * cm.latency[lu, lv][moved] + nb * cm.sec_per_byte[lu, lv][moved]).sum()
    total_d += (nb * cm.usd_per_byte[lu, lv][moved]).sum()
    return int(round(total_b)), float(total_s), float(total_d), objective.score(float(total_s), float(total_d))


def place_plan(
    topology: Topology,
    steps: Sequence[PlanStep],
    *,
    objective=Objective(),
    healthy: Collection[str] | None = None,
    method: str = "auto",
) -> PlanPlacement:
    """Choose a site (and pool) for every step of a DAG, minimising the total objective.

    ``method``: ``"auto"`` (exact per connected component - forest DP, or variable
    elimination while its tables stay under `EXACT_TABLE_LIMIT` entries and the plan's
    total work under `EXACT_WORK_LIMIT`, over all sites or over the sites left once those
    that cannot beat a plan in hand are ruled out - else the heuristic for that component),
    ``"exact"`` (always exact, however long it takes), ``"heuristic"`` (spanning-forest DP,
    then expansion and tree-block coordinate descent, everywhere), ``"milp"`` (HiGHS),
    ``"brute-force"``.
    The result's ``exact`` says whether its score is proven optimal.
    Raises `PlacementError` naming the step when a step has no feasible site.
    """
    objective = Objective.parse(objective)
    if method == "brute-force":
        return brute_force_plan(topology, steps, objective=objective, healthy=healthy)
    if method not in ("auto", "exact", "heuristic", "milp"):
        raise GravityConfigError(f"place_plan method: got {method!r}; expected auto, exact, heuristic, milp or brute-force")
    p = _build_problem(topology, steps, objective, healthy)
    if not p.keys:
        return PlanPlacement({}, {}, 0, 0.0, 0.0, 0.0, method, 0.0, True)
    if method == "milp":
        labels, bound, optimal = _solve_milp(p)
        return _result(topology, steps, p, labels, objective, "milp", bound, optimal)
    labels, exact = _solve(p, method)
    return _result(topology, steps, p, labels, objective, "exact" if exact else "heuristic", None, exact)


def plan_cost(topology: Topology, steps: Sequence[PlanStep], sites: Mapping[str, str], objective=Objective()):
    """(bytes moved, seconds, dollars, score) of running each step at ``sites[step.key]``.

    A reference implementation straight from the `Link` objects (independent of the
    solvers' matrices): external inputs move from their cheapest replica for the
    objective; each upstream edge whose two steps run at different sites moves its bytes;
    seconds add up over all transfers. Waits for slots are not counted. Does not check
    feasibility (see `check_plan`).
    """
    objective = Objective.parse(objective)
    where = {}
    for step in steps:
        if step.key not in sites:
            raise GravityConfigError(f"plan_cost: no site given for step {step.key!r}")
        where[step.key] = sites[step.key]
    total_b = 0
    total_s = total_d = 0.0
    for step in steps:
        dst = where[step.key]
        for item in step.external_inputs:
            if item.size_bytes <= 0 or dst in item.sites:
                continue
            options = [topology.link(src, dst) for src in item.sites]
            link = min(options, key=lambda l: objective.score(l.seconds(item.size_bytes), l.dollars(item.size_bytes)))
            total_b += item.size_bytes
            total_s += link.seconds(item.size_bytes)
            total_d += link.dollars(item.size_bytes)
        for up_key, nbytes in step.upstream:
            src = where[up_key]
            if nbytes <= 0 or src == dst or up_key == step.key:
                continue
            link = topology.link(src, dst)
            total_b += nbytes
            total_s += link.seconds(nbytes)
            total_d += link.dollars(nbytes)
    return total_b, total_s, total_d, objective.score(total_s, total_d)


def check_plan(topology: Topology, steps: Sequence[PlanStep], sites: Mapping[str, str], healthy=None) -> list[str]:
    """Every residency / requirement / health violation of an assignment (empty when valid)."""
    by_key = {s.key: s for s in steps}
    healthy_set = None if healthy is None else set(healthy)
    problems = []
    for step in steps:
        site = sites[step.key]
        zones = [(i.residency, i.name) for i in step.external_inputs if i.residency]
        if step.output_residency:
            zones.append((step.output_residency, step.key))
        zones += [(by_key[u].output_residency, u) for u, _ in step.upstream if by_key[u].output_residency]
        for zone, name in zones:
            if not topology.allows(zone, site):
                problems.append(f"{step.key}: at {site}, but {name!r} may not leave zone {zone!r}")
        ok = [
            p
            for p in topology.site(site).pools
            if not _requirement_failures(p, step.requirements) and (healthy_set is None or p.id in healthy_set)
        ]
        if not ok:
            problems.append(f"{step.key}: no healthy pool at {site} meets {step.requirements}")
    return problems


def plan_lower_bound(topology: Topology, steps: Sequence[PlanStep], *, objective=Objective(), healthy=None) -> float:
    """LP relaxation (local polytope) of the plan problem: a lower bound on any plan's score."""
    return _lp_bound(_build_problem(topology, steps, Objective.parse(objective), healthy))


def brute_force_plan(topology: Topology, steps: Sequence[PlanStep], *, objective=Objective(), healthy=None, max_plans: int = 5_000_000) -> PlanPlacement:
    """The optimum by enumerating every assignment of feasible sites (vectorised, chunked).

    Raises `GravityConfigError` (a ValueError) when there are more than ``max_plans`` assignments.
    """
    objective = Objective.parse(objective)
    p = _build_problem(topology, steps, objective, healthy)
    if not p.keys:
        return PlanPlacement({}, {}, 0, 0.0, 0.0, 0.0, "brute-force", 0.0, True)
    labels, score = _brute_force(p, max_plans)
    return _result(topology, steps, p, labels, objective, "brute-force", score, True)
