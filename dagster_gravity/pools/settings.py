"""The settings of each compute pool backend: typed, described, defaults declared once.

The executor config offers them as a `Selector` per pool (`{local: {...}}` or
`{dask: {...}}`), so Dagster (and the launchpad) validates a pool's settings before a run
starts. Fields carry no Dagster default, because a pool's settings are merged from
`pools.default`, then `pools.per_site`, then `pools.per_pool`, and a filled-in default
would override what a broader section said; `with_defaults` applies `DEFAULTS` after the
merge, and backends built directly (tests, `gravity sites --health`) call it too.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

from dagster import Field, Map, Noneable, Selector, Shape

from dagster_gravity.dagster_internals import process_config
from dagster_gravity.errors import GravityConfigError, short_repr

DEFAULTS: dict[str, dict[str, Any]] = {
    "local": {"prestart": 0, "stop_grace_seconds": 10.0, "env": {}, "startup_check": None},
    "dask": {"resources": {}, "connect_timeout_seconds": 10.0, "worker_refresh_seconds": 1.0},
}


def _field(backend: str, name: str, config_type: Any, description: str) -> Field:
    default = DEFAULTS[backend].get(name)
    suffix = f" Default: {default!r}." if name in DEFAULTS[backend] else ""
    return Field(config_type, is_required=name not in DEFAULTS[backend], description=description + suffix)


SETTINGS: dict[str, dict[str, Field]] = {
    "local": {
        "prestart": _field("local", "prestart", int, "Workers forked per compute pool when the run starts (0: on first use)."),
        "stop_grace_seconds": _field(
            "local", "stop_grace_seconds", float,
            "Seconds a worker gets to stop before SIGKILL, after the run's interrupt (a step that "
            "ignores it or is stuck in C code) and at the end of the run.",
        ),
        "env": _field("local", "env", Map(str, str), "Environment variables set in each worker."),
        "startup_check": _field(
            "local", "startup_check", Noneable(str),
            "'module:function' called as f(site, pool_id) in each new worker before it takes steps; "
            "raising marks the start failed.",
        ),
    },
    "dask": {
        "scheduler": _field(
            "dask", "scheduler", str,
            "Address of the Dask scheduler that serves this site's workers, e.g. tcp://10.0.0.5:8786.",
        ),
        "resources": _field(
            "dask", "resources", Map(str, float), "Extra Dask resources each step of the pool needs, e.g. {GPU: 1}."
        ),
        "connect_timeout_seconds": _field(
            "dask", "connect_timeout_seconds", float,
            "Seconds to wait for the scheduler: to connect when the run starts (an unreachable scheduler, or an "
            "address that does not answer as a Dask scheduler, makes its pools unhealthy) and for each later call to it.",
        ),
        "worker_refresh_seconds": _field(
            "dask", "worker_refresh_seconds", float, "How often the list of workers is re-read from the scheduler."
        ),
    },
}

BACKEND_DESCRIPTIONS = {
    "local": "Warm worker processes forked from the run process, per compute pool (the embedded default).",
    "dask": "Dask distributed workers that declare the resource site-<site>.",
}


def backend_selector() -> Selector:
    """One compute pool's backend and its settings, e.g. {dask: {scheduler: 'tcp://...'}}."""
    return Selector(
        {
            name: Field(Shape(fields), is_required=False, description=BACKEND_DESCRIPTIONS[name])
            for name, fields in SETTINGS.items()
        }
    )


def with_defaults(backend: str, settings: Mapping[str, Any]) -> dict[str, Any]:
    """`settings` of `backend` validated against its schema, with the defaults filled in.
    Raises GravityConfigError naming the backend and each bad setting."""
    if backend not in SETTINGS:
        raise GravityConfigError(
            f"compute pool backend {backend!r} is unknown; expected one of {', '.join(sorted(SETTINGS))}"
        )
    if not isinstance(settings, Mapping):
        raise GravityConfigError(f"{backend} pool backend settings: got {short_repr(settings)}; expected a mapping of settings")
    result = process_config(Shape(SETTINGS[backend]), dict(settings))
    if not result.success:
        problems = "; ".join(error.message for error in result.errors or [])
        raise GravityConfigError(f"{backend} pool backend settings {short_repr(dict(settings))}: {problems}")
    values = {**DEFAULTS[backend], **(result.value or {})}
    for name, (ok, expected) in _RANGES[backend].items():
        if not ok(values[name]):
            raise GravityConfigError(f"{backend} pool backend setting {name}: got {short_repr(values[name])}; expected {expected}")
    return values


def _seconds(strict: bool):
    return lambda v: isinstance(v, (int, float)) and math.isfinite(v) and (v > 0 if strict else v >= 0)


def _env(env: Mapping[str, str]) -> bool:
    # os.environ refuses a NUL anywhere and '=' or '' in a name, in the worker, after the fork
    return all(k and "=" not in k and "\0" not in k + v for k, v in env.items())


def _import_path(value: str | None) -> bool:
    module, _, function = (value or "").partition(":")
    return value is None or (bool(module) and function.isidentifier())


# What Dagster's types cannot say: the range of each value.
_RANGES: dict[str, dict[str, tuple[Any, str]]] = {
    "local": {
        "prestart": (lambda v: v >= 0, "an integer >= 0 (workers forked per compute pool when the run starts)"),
        "stop_grace_seconds": (_seconds(strict=False), "a finite number of seconds >= 0"),
        "env": (_env, "variable names without '=' and values without NUL characters"),
        "startup_check": (_import_path, "'module:function'"),
    },
    "dask": {
        "scheduler": (lambda v: bool(v.strip()), "a scheduler address such as tcp://10.0.0.5:8786"),
        "resources": (lambda r: all(_seconds(strict=False)(x) for x in r.values()), "finite amounts >= 0"),
        "connect_timeout_seconds": (_seconds(strict=True), "a finite number of seconds > 0"),
        "worker_refresh_seconds": (_seconds(strict=True), "a finite number of seconds > 0"),
    },
}
