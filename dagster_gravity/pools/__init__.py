"""Compute pool backends behind one small protocol (`pools.base.PoolBackend`).

A backend is chosen per compute pool in the executor config (`pools: {default: {local: {}},
per_site: {<site>: {dask: {scheduler: ...}}}}`, typed in `pools.settings`) and created here
by name. Backends are loaded lazily so that `local` never imports Dask.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, Mapping

from dagster_gravity.errors import GravityConfigError
from dagster_gravity.pools.base import (
    COMPLETED,
    CRASHED,
    NOT_STARTED,
    BackendCapabilities,
    PoolBackend,
    PoolHealth,
    StepEnded,
    StepEvent,
    StepRequest,
    StepUpdate,
    Submission,
)

if TYPE_CHECKING:
    from dagster_gravity.topology import Pool, Topology

# name -> "module:attribute" of a factory called as factory(settings, worker_max_steps=...,
# unhealthy_after=...) and returning a PoolBackend. Names match `pools.settings.SETTINGS`.
_BACKENDS: dict[str, str] = {
    "local": "dagster_gravity.pools.local:LocalBackend",
    "dask": "dagster_gravity.pools.dask:DaskBackend",
}


def backend_names() -> list[str]:
    return sorted(_BACKENDS)


def create_backend(
    name: str, settings: Mapping[str, Any], *, worker_max_steps: int, unhealthy_after: int
) -> PoolBackend:
    path = _BACKENDS.get(name)
    if path is None:
        raise GravityConfigError(f"compute pool backend {name!r} is unknown; expected one of {', '.join(backend_names())}")
    module_name, _, attr = path.partition(":")
    factory = getattr(importlib.import_module(module_name), attr)
    # with_defaults (in the factory) names a non-mapping; None means no settings
    settings = {} if settings is None else dict(settings) if isinstance(settings, Mapping) else settings
    return factory(settings, worker_max_steps=worker_max_steps, unhealthy_after=unhealthy_after)


def group_pools(
    topology: "Topology", settings_by_pool: Mapping[str, tuple[str, dict]]
) -> list[tuple[str, dict, list["Pool"]]]:
    """The topology's compute pools grouped by (backend name, settings): each group is
    served by one backend instance, as in a run."""
    groups: dict[tuple[str, str], tuple[str, dict, list]] = {}
    for pool in topology.pools:
        name, settings = settings_by_pool[pool.id]
        groups.setdefault((name, repr(sorted(settings.items()))), (name, settings, []))[2].append(pool)
    return list(groups.values())


def create_backends(
    topology: "Topology", settings_by_pool: Mapping[str, tuple[str, dict]], *, worker_max_steps: int, unhealthy_after: int
) -> tuple[dict[str, PoolBackend], list[tuple[PoolBackend, list["Pool"]]]]:
    """One backend per group of compute pools (`group_pools`): pool id -> backend, and the
    groups, those whose backend forks the run process first (they must fork before other
    backends start threads)."""
    by_pool: dict[str, PoolBackend] = {}
    groups = []
    for name, settings, pools in group_pools(topology, settings_by_pool):
        backend = create_backend(name, settings, worker_max_steps=worker_max_steps, unhealthy_after=unhealthy_after)
        groups.append((backend, pools))
        by_pool.update({pool.id: backend for pool in pools})
    groups.sort(key=lambda group: not group[0].capabilities.forks_run_process)
    return by_pool, groups


__all__ = [
    "BackendCapabilities",
    "COMPLETED",
    "CRASHED",
    "NOT_STARTED",
    "PoolBackend",
    "PoolHealth",
    "StepEnded",
    "StepEvent",
    "StepRequest",
    "StepUpdate",
    "Submission",
    "create_backend",
    "create_backends",
    "group_pools",
    "backend_names",
]
