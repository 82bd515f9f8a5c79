"""The per-step decision: score every pool for one step, choose one and say why."""

from __future__ import annotations

import math
from typing import Collection, Mapping, Sequence

from dagster_gravity.errors import GravityConfigError
from dagster_gravity.placement.feasibility import (
    _check_requirements,
    _requirement_failures,
    _residency_failures,
    _zones_of,
)
from dagster_gravity.placement.model import (
    Candidate,
    InputData,
    Objective,
    OutputTrip,
    Placement,
    PlacementError,
    Requirements,
    _input_costs,
    _output_costs,
    check_link_load,
    cost_model,
    format_bytes,
)
from dagster_gravity.topology import Topology


def place_step(
    topology: Topology,
    inputs: Sequence[InputData],
    requirements: Requirements = Requirements(),
    *,
    objective: Objective = Objective(),
    healthy: Collection[str] | None = None,
    expected_wait: Mapping[str, float] | None = None,
    exclude: Collection[str] = (),
    step: str | None = None,
    outputs: Sequence[OutputTrip] = (),
    link_load: Mapping[tuple[str, str], int] | None = None,
    disabled: Collection[str] = (),
) -> Placement:
    """Choose the pool for one step and explain why.

    Scores every pool: the seconds and dollars to move each input that is not already at
    the pool's site (from its cheapest replica; transfers one after another, so seconds
    add up), plus moving each of ``outputs`` on to the sites its consumers are planned at,
    plus ``expected_wait[pool]`` seconds until a slot frees. ``link_load[(src, dst)]``
    counts the copies already in flight on a directed link: a new one gets its share of the
    bandwidth, 1/(k+1), so its seconds over that link are k+1 times the nominal. The score is
    ``objective.score(transfer_seconds + output_seconds + wait_seconds, dollars)``; the lowest feasible
    score wins, ties broken by fewer bytes moved, then by fewer GPUs left idle (a CPU
    step does not take a GPU pool's slot when a CPU pool is as good), then topology order.

    A pool is infeasible when it is in ``disabled`` (taken out for this run by the
    executor's ``disabled_pools``: said so, not called unhealthy), is not in ``healthy``
    (None means all healthy), is in ``exclude``, fails a requirement (pin, pool kind, GPU count), or its site is outside
    the residency zone of any input. Raises `PlacementError` (with ``.candidates``) when no
    pool is feasible; its message lists every pool and the constraint it fails.
    """
    what = f"step {step!r}" if step else "step"
    objective = Objective.parse(objective)
    _check_requirements(topology, requirements, what)
    cm = cost_model(topology)
    nbytes, seconds, dollars, transfer_score = _input_costs(cm, inputs, objective, link_load=check_link_load(link_load))
    out_bytes, out_seconds, out_dollars, out_score = _output_costs(cm, outputs, objective)
    zones = _zones_of(inputs)
    healthy_set = None if healthy is None else set(healthy)
    exclude_set = set(exclude)
    disabled_set = set(disabled)
    waits = expected_wait or {}
    residency_cache: dict[str, list[str]] = {}
    rows = []
    for i, pool in enumerate(cm.pools):
        s = cm.pool_site[i]
        reasons = _pool_failures(topology, pool, requirements, zones, healthy_set, exclude_set, disabled_set, residency_cache)
        wait = float(waits.get(pool.id, 0.0))
        if wait < 0 or math.isnan(wait):
            raise GravityConfigError(f"expected_wait[{pool.id!r}] is {wait}; expected seconds >= 0")
        feasible = not reasons
        score = float(transfer_score[s] + out_score[s]) + objective.score(wait, 0.0) if feasible else math.inf
        rows.append(
            (
                0 if feasible else 1,
                score,
                int(nbytes[s] + out_bytes[s]),
                pool.gpus - requirements.gpus,
                i,
                Candidate(
                    pool=pool.id,
                    site=pool.site,
                    bytes_moved=int(nbytes[s]),
                    transfer_seconds=float(seconds[s]),
                    wait_seconds=wait,
                    dollars=float(dollars[s] + out_dollars[s]),
                    score=score,
                    feasible=feasible,
                    reason="; ".join(reasons),
                    output_bytes=int(out_bytes[s]),
                    output_seconds=float(out_seconds[s]),
                ),
            )
        )
    rows.sort(key=lambda r: r[:5])
    candidates = tuple(r[5] for r in rows)
    best = candidates[0]
    if not best.feasible:
        lines = "\n".join(f"  {c.pool}: {c.reason}" for c in candidates)
        raise PlacementError(f"no pool can run {what}:\n{lines}", candidates, step=step)
    reason = _explain(best, candidates, objective, inputs, requirements)
    return Placement(pool=best.pool, site=best.site, candidates=candidates, reason=reason)


def _pool_failures(
    topology: Topology, pool, requirements: Requirements, zones, healthy_set, exclude_set, disabled_set, residency_cache
) -> list[str]:
    """Why `pool` may not run the step (empty when it may); residency is the same for every
    pool of a site, so it is worked out once per site in `residency_cache`."""
    reasons = []
    if pool.id in disabled_set:
        reasons.append("disabled for this run (disabled_pools)")
    elif healthy_set is not None and pool.id not in healthy_set:
        reasons.append("unhealthy")
    if pool.id in exclude_set:
        reasons.append("excluded")
    reasons += _requirement_failures(pool, requirements)
    if zones:
        if pool.site not in residency_cache:
            residency_cache[pool.site] = _residency_failures(topology, zones, pool.site)
        reasons += residency_cache[pool.site]
    return reasons


def _explain(
    best: Candidate, candidates: Sequence[Candidate], objective: Objective, inputs: Sequence[InputData],
    requirements: Requirements = Requirements(),
) -> str:
    if best.bytes_moved == 0:
        has_data = any(i.size_bytes > 0 for i in inputs if i.role == "input")
        what = f"all inputs are already at {best.site}" if has_data else "no known input data to move"
    else:
        what = f"moves {format_bytes(best.bytes_moved)} ({best.transfer_seconds:.3g} s, ${best.dollars:.4g})"
    if best.output_bytes:
        what += f", then its outputs' {format_bytes(best.output_bytes)} to their consumers ({best.output_seconds:.3g} s)"
    if best.wait_seconds:
        what += f", waits ~{best.wait_seconds:.3g} s for a slot"
    runner_up = next((c for c in candidates[1:] if c.feasible and c.site != best.site), None)
    if runner_up is None and requirements.pin is not None:
        alt = f"pinned to site {requirements.pin!r} (op tag gravity/pin)"
    elif runner_up is None:
        alt = "the only feasible site"
    else:
        alt = (
            f"next best {runner_up.pool} would move {format_bytes(runner_up.bytes_moved)} "
            f"(score {runner_up.score:.3g} vs {best.score:.3g})"
        )
    outputs = [f"{i.name} (residency {i.residency})" for i in inputs if i.role == "output" and i.residency]
    zone = f"; runs in the residency zone of its output {', '.join(outputs)}" if outputs else ""
    return f"{best.pool}: {what}; {alt}; objective {objective.describe()}{zone}"
