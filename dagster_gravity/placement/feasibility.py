"""Which sites and pools may run a step: requirements (pin, pool kind, GPUs) and residency.

Shared by the per-step decision, the plan problem and `check_plan`, so that all three
refuse the same things with the same words.
"""

from __future__ import annotations

from typing import Sequence

from dagster_gravity.placement.model import InputData, PlacementError, Requirements
from dagster_gravity.topology import Topology


def _zones_of(inputs: Sequence[InputData]) -> list[tuple[str, str, str]]:
    """(zone, role, name) for every input with a residency zone."""
    return [(i.residency, i.role, i.name) for i in inputs if i.residency is not None]


def _residency_failures(
    topology: Topology, zones: Sequence[tuple[str, str, str]], site: str, what: str | None = None
) -> list[str]:
    out = []
    for zone, role, name in zones:
        if not topology.allows(zone, site):
            out.append(f"residency: {what or role} {name!r} may not leave zone {zone!r}")
    return out


def _requirement_failures(pool, req: Requirements) -> list[str]:
    out = []
    if req.pin is not None and pool.site != req.pin:
        out.append(f"pinned to {req.pin!r}")
    if req.pool_kind is not None and pool.kind != req.pool_kind:
        out.append(f"needs pool kind {req.pool_kind!r}, pool is {pool.kind!r}")
    if pool.gpus < req.gpus:
        out.append(f"needs {req.gpus} GPU{'s' if req.gpus != 1 else ''}, pool has {pool.gpus}")
    return out


def _check_requirements(topology: Topology, req: Requirements, what: str) -> None:
    if req.pin is not None and req.pin not in topology.sites:
        raise PlacementError(
            f"{what} is pinned to site {req.pin!r}, which is not in the topology {topology.source}; "
            f"known sites: {', '.join(topology.sites)}",
            step=what,
        )
