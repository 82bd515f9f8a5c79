"""The whole-plan problem as arrays: a unary cost per (step, site), weighted edges between steps.

Outputs land where their step runs, so placing a plan is a pairwise labelling problem; the
solvers (`dagster_gravity.placement.solvers`) only ever see a `_Problem`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from dagster_gravity.errors import GravityConfigError
from dagster_gravity.placement.feasibility import (
    _check_requirements,
    _requirement_failures,
    _residency_failures,
    _zones_of,
)
from dagster_gravity.placement.model import (
    CostModel,
    InputData,
    Objective,
    PlacementError,
    Requirements,
    _input_costs,
    cost_model,
)
from dagster_gravity.topology import Topology


@dataclass(frozen=True)
class PlanStep:
    key: str
    external_inputs: tuple[InputData, ...] = ()
    upstream: tuple[tuple[str, int], ...] = ()  # (upstream step key, bytes it passes here)
    requirements: Requirements = Requirements()
    output_residency: str | None = None  # zone this step's outputs may not leave


@dataclass
class _Problem:
    """A plan as arrays: unary costs (inf = infeasible) and weighted edges."""

    keys: list[str]
    unary: np.ndarray  # (n_steps, n_sites)
    edge_u: np.ndarray  # upstream step index
    edge_v: np.ndarray  # downstream step index
    edge_bytes: np.ndarray  # float bytes, > 0 (parallel edges merged: bytes summed)
    edge_count: np.ndarray  # transfers merged into the edge (each pays the link latency)
    per_byte: np.ndarray  # (S, S)
    fixed: np.ndarray  # (S, S)
    pool_choice: list[list[str | None]]  # [step][site] -> pool id to use there
    cm: CostModel = field(repr=False)

    def edge_cost(self, e: int) -> np.ndarray:
        """(S, S) cost of edge e, indexed [site of upstream, site of downstream]."""
        return self.edge_bytes[e] * self.per_byte + self.edge_count[e] * self.fixed

    def score(self, labels: np.ndarray) -> float:
        total = float(self.unary[np.arange(len(labels)), labels].sum())
        lu, lv = labels[self.edge_u], labels[self.edge_v]
        moved = lu != lv
        total += float((self.edge_bytes * self.per_byte[lu, lv] + self.edge_count * self.fixed[lu, lv])[moved].sum())
        return total


def _build_problem(topology: Topology, steps: Sequence[PlanStep], objective: Objective, healthy) -> _Problem:
    """The plan as arrays, checking it on the way.

    Raises `GravityConfigError` for bad input (duplicate keys, unknown upstream steps or
    sites, negative sizes) and `PlacementError` naming the first step with no feasible site.
    """
    cm = cost_model(topology)
    per_byte, fixed = cm.plan_matrices(objective)
    index = _step_index(steps)
    n, n_sites = len(steps), len(cm.sites)
    unary = np.zeros((n, n_sites))
    healthy_set = None if healthy is None else set(healthy)
    merged: dict[tuple[int, int], list[float]] = {}  # (u, v) -> [bytes, transfers]
    pool_choice: list[list[str | None]] = []
    req_cache: dict[Requirements, tuple[np.ndarray, list, list]] = {}
    zone_masks: dict[str, np.ndarray] = {}
    allowed = np.zeros((n, n_sites), dtype=bool)
    one_replica: tuple[list[int], list[int], list[float]] = ([], [], [])  # steps, sites, sizes
    for i, step in enumerate(steps):
        what = f"step {step.key!r}"
        req = step.requirements
        _check_requirements(topology, req, what)
        got = req_cache.get(req)
        if got is None:
            got = req_cache[req] = _pools_by_site(cm, req, healthy_set)
        has_pool, chosen, why = got
        zones = _zones_of(step.external_inputs)
        if step.output_residency is not None:
            zones.append((step.output_residency, "output", f"{step.key} (its own output)"))
        _add_upstream(steps, index, i, what, zones, merged)
        _add_external_inputs(cm, step, i, objective, (per_byte, fixed), unary, one_replica)
        mask = has_pool
        for zone, *_ in zones:
            zmask = zone_masks.get(zone)
            if zmask is None:
                members = topology.zone_sites(zone)
                zmask = zone_masks[zone] = np.array([site in members for site in cm.sites])
            mask = mask & zmask
        if not mask.any():
            raise _no_site(topology, cm, step, what, zones, has_pool, why)
        allowed[i] = mask
        pool_choice.append(chosen)
    one_step, one_site, one_size = one_replica
    if one_step:
        # inputs with one replica, all at once: moving from site r costs size*per_byte[r] + fixed[r]
        # (zero at r itself, the diagonal being zero)
        r = np.array(one_site, dtype=np.int64)
        np.add.at(unary, np.array(one_step, dtype=np.int64), np.array(one_size)[:, None] * per_byte[r] + fixed[r])
    unary[~allowed] = math.inf
    pairs = list(merged)
    return _Problem(
        keys=[s.key for s in steps],
        unary=unary,
        edge_u=np.array([u for u, _ in pairs], dtype=np.int64),
        edge_v=np.array([v for _, v in pairs], dtype=np.int64),
        edge_bytes=np.array([merged[k][0] for k in pairs], dtype=float),
        edge_count=np.array([merged[k][1] for k in pairs], dtype=float),
        per_byte=per_byte,
        fixed=fixed,
        pool_choice=pool_choice,
        cm=cm,
    )


def _step_index(steps: Sequence[PlanStep]) -> dict[str, int]:
    index: dict[str, int] = {}
    for i, s in enumerate(steps):
        if s.key in index:
            raise GravityConfigError(f"plan: step key {s.key!r} appears more than once; expected unique keys")
        index[s.key] = i
    return index


def _pools_by_site(cm: CostModel, req: Requirements, healthy_set) -> tuple[np.ndarray, list, list]:
    """Per site: whether a pool there may run a step with `req`, which one to use, and why
    the others may not.

    The pool to use is the qualifying one with the fewest GPUs (do not hold GPUs a step
    does not need).
    """
    n_sites = len(cm.sites)
    chosen: list[str | None] = [None] * n_sites
    why: list[list[str]] = [[] for _ in range(n_sites)]
    best_gpus = [math.inf] * n_sites
    for p_i, pool in enumerate(cm.pools):
        s = cm.pool_site[p_i]
        fails = (["unhealthy"] if healthy_set is not None and pool.id not in healthy_set else []) + _requirement_failures(pool, req)
        if fails:
            why[s].append(f"{pool.id}: {', '.join(fails)}")
        elif pool.gpus < best_gpus[s]:
            best_gpus[s], chosen[s] = pool.gpus, pool.id
    return np.array([c is not None for c in chosen]), chosen, why


def _add_upstream(steps: Sequence[PlanStep], index: dict[str, int], i: int, what: str, zones: list, merged: dict) -> None:
    """Check step i's upstream edges; add their outputs' residency to `zones` and their bytes
    to `merged` (an edge within one step, or of 0 bytes, moves nothing)."""
    for up_key, nbytes in steps[i].upstream:
        if up_key not in index:
            raise GravityConfigError(f"plan: {what} reads upstream step {up_key!r}, which is not in the plan")
        if nbytes < 0:
            raise GravityConfigError(f"plan: {what} reads {nbytes} bytes from {up_key!r}; expected >= 0")
        up = steps[index[up_key]]
        if up.output_residency is not None:
            zones.append((up.output_residency, "output", f"{up_key} (upstream output)"))
        if nbytes > 0 and index[up_key] != i:
            acc = merged.setdefault((index[up_key], i), [0.0, 0])
            acc[0] += float(nbytes)
            acc[1] += 1


def _add_external_inputs(cm: CostModel, step: PlanStep, i: int, objective: Objective, matrices, unary: np.ndarray, one_replica) -> None:
    """Check step i's external inputs and add their transfer costs to ``unary[i]``.

    Inputs with one replica only go to `one_replica` (steps, sites, sizes), to be added for
    the whole plan in one numpy call; those with several need the per-site cheapest replica.
    """
    for item in step.external_inputs:
        if not item.sites:
            raise GravityConfigError(f"input {item.name!r} has no site holding a copy; expected at least one site")
        if item.size_bytes < 0:
            raise GravityConfigError(f"input {item.name!r}: size_bytes is {item.size_bytes}; expected >= 0")
        if item.size_bytes == 0:
            continue
        if len(item.sites) == 1:
            one_replica[0].append(i)
            one_replica[1].append(cm.site_index(item.sites[0], f"input {item.name!r}"))
            one_replica[2].append(float(item.size_bytes))
        else:
            _, _, _, transfer = _input_costs(cm, (item,), objective, matrices)
            unary[i] += transfer


def _no_site(topology: Topology, cm: CostModel, step: PlanStep, what: str, zones, has_pool, why) -> PlacementError:
    """The error for a step no site may run: every site with the constraints it fails."""
    failures = {}
    for s, site in enumerate(cm.sites):
        reasons = [] if has_pool[s] else ["no pool qualifies (" + "; ".join(why[s]) + ")"]
        reasons += _residency_failures(topology, zones, site, what="data")
        failures[site] = reasons
    lines = "\n".join(f"  {site}: {'; '.join(r)}" for site, r in failures.items())
    return PlacementError(f"no site can run {what}:\n{lines}", step=step.key)
