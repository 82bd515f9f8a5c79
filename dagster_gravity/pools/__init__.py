"""Compute pool backends behind one small protocol (`pools.base.PoolBackend`).

A backend is chosen per pool in the executor config (`pools: {default: {backend: local},
per_site: {<site>: {backend: dask, scheduler: ...}}}`) and created here by name. Built-in
names are loaded lazily so that `local` never imports Dask; other packages can add a
backend with `register_backend`.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, Mapping

from dagster_gravity.pools.base import (
    COMPLETED,
    CRASHED,
    NOT_STARTED,
    PoolBackend,
    PoolHealth,
    StepEnded,
    StepEvent,
    StepRequest,
    StepUpdate,
    Submission,
)

# name -> "module:attribute" of a factory called as factory(settings, worker_max_steps=...,
# unhealthy_after=...) and returning a PoolBackend.
_BACKENDS: dict[str, str | Callable[..., PoolBackend]] = {
    "local": "dagster_gravity.pools.local:LocalBackend",
    "dask": "dagster_gravity.pools.dask:DaskBackend",
}


def register_backend(name: str, factory: str | Callable[..., PoolBackend]) -> None:
    _BACKENDS[name] = factory


def backend_names() -> list[str]:
    return sorted(_BACKENDS)


def create_backend(
    name: str, settings: Mapping[str, Any], *, worker_max_steps: int, unhealthy_after: int
) -> PoolBackend:
    factory = _BACKENDS.get(name)
    if factory is None:
        raise ValueError(f"pool backend {name!r} is unknown; expected one of {', '.join(backend_names())}")
    if isinstance(factory, str):
        module_name, _, attr = factory.partition(":")
        try:
            factory = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            raise ValueError(f"pool backend {name!r} could not be loaded from {module_name}: {exc}") from exc
    return factory(dict(settings), worker_max_steps=worker_max_steps, unhealthy_after=unhealthy_after)


__all__ = [
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
    "register_backend",
    "backend_names",
]
