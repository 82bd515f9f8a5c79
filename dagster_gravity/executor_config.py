"""The gravity executor's config: its schema (typed, described, every default declared
once, so Dagster's launchpad validates it before a run starts) and `GravityConfig`, the
parsed form the executor, `gravity plan` and `gravity sites --health` use.

    execution:
      config:
        sites_file: sites.yaml            # default: the GravityTopology resource's, $GRAVITY_SITES, ./sites.yaml
        locality_wait: 300
        zone_outage_wait: 120
        objective: weighted               # time | cost | weighted
        cost_weight: 0.3                  # with weighted: 0 = all seconds, 1 = all dollars
        pools:
          default: {local: {}}
          per_site: {aws-us-east-1: {dask: {scheduler: "tcp://127.0.0.1:8786"}}}
          per_pool: {onprem-dc/gpu: {local: {prestart: 1}}}
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping

from dagster import Enum, EnumValue, Field, Map, Noneable

from dagster_gravity.dagster_internals import RetryMode, get_retries_config, get_tag_concurrency_limits_config
from dagster_gravity.errors import GravityConfigError, short_repr
from dagster_gravity.placement import Objective
from dagster_gravity.pools.settings import backend_selector, with_defaults
from dagster_gravity.step_runner import RESOURCE_LIFETIMES, STEP
from dagster_gravity.topology import Topology

# Every default, once: the schema below and `GravityConfig` both read them from here.
DEFAULTS: dict[str, Any] = {
    "sites_file": None,
    "locality_wait": 300.0,
    "zone_outage_wait": 120.0,
    "objective": "time",
    "cost_weight": 0.5,
    "max_concurrent": None,
    "worker_max_steps": 100,
    "unhealthy_after": 3,
    "disabled_pools": [],
    "resource_lifetime": STEP,
    "pools": {"default": {"local": {}}, "per_site": {}, "per_pool": {}},
}

RESOURCE_LIFETIME = Enum(
    "GravityResourceLifetime",
    [EnumValue(name, description=description) for name, description in RESOURCE_LIFETIMES.items()],
)

OBJECTIVES = Enum(
    "GravityObjective",
    [
        EnumValue("time", description="Fewest seconds: transfer time plus the expected wait for a slot."),
        EnumValue("cost", description="Fewest dollars of egress (ties broken toward fewer seconds)."),
        EnumValue("weighted", description="Both, weighed by cost_weight."),
    ],
)


def _field(name: str, config_type: Any, description: str) -> Field:
    return Field(config_type, default_value=DEFAULTS[name], is_required=False, description=description)


GRAVITY_CONFIG = {
    "sites_file": _field(
        "sites_file",
        Noneable(str),
        "The topology file. Default: the one the job's GravityTopology resource names, else "
        "$GRAVITY_SITES, else sites.yaml in the working directory. A run whose resources name "
        "another file fails before any step runs.",
    ),
    "locality_wait": _field(
        "locality_wait",
        float,
        "The longest a step waits for a slot in a busy compute pool it prefers. Whether to wait "
        "at all is decided by cost: the pool's expected wait (from its running steps' expected "
        "remaining time and the steps queued for it) against moving the data elsewhere. Past "
        "this many seconds the step spills to the best compute pool with a free slot.",
    ),
    "zone_outage_wait": _field(
        "zone_outage_wait",
        float,
        "The longest a step whose data may not leave its residency zone waits, when no compute "
        "pool of that zone is healthy, for one to come back (workers that left may rejoin) before "
        "it fails. Its data is never moved out of the zone meanwhile. 0: fail at once. A zone's own "
        "outage_wait_seconds in the sites file overrides it for that zone.",
    ),
    "objective": _field("objective", OBJECTIVES, "What placement minimises: time, cost, or weighted."),
    "cost_weight": _field(
        "cost_weight",
        float,
        "With objective weighted: the weight w in [0, 1] of dollars against seconds, "
        "score = (1 - w) * seconds + w * dollars * 3600 / 4 ($4 = one hour).",
    ),
    "retries": get_retries_config(),
    "max_concurrent": _field(
        "max_concurrent", Noneable(int), "Most steps in flight at once. Default: the total slots of all compute pools."
    ),
    "tag_concurrency_limits": get_tag_concurrency_limits_config(),
    "worker_max_steps": _field(
        "worker_max_steps", int, "A worker is replaced by a fresh one after running this many steps."
    ),
    "unhealthy_after": _field(
        "unhealthy_after",
        int,
        "Consecutive worker failures (deaths, failed starts) after which a compute pool is marked "
        "unhealthy and gets no more steps in this run.",
    ),
    "disabled_pools": _field(
        "disabled_pools", [str], "Compute pool ids ('site/name') or site names taken out of service for this run."
    ),
    "resource_lifetime": _field(
        "resource_lifetime",
        RESOURCE_LIFETIME,
        "How long a step's resources live in a worker. step: initialised for each step and torn "
        "down when it ends, as under Dagster's multiprocess executor. run: kept by each worker for "
        "later steps of the run that need the same resources (opt-in, for expensive resources).",
    ),
    "pools": Field(
        {
            "default": Field(
                backend_selector(),
                default_value=DEFAULTS["pools"]["default"],
                is_required=False,
                description="The backend and settings of every compute pool unless overridden.",
            ),
            "per_site": Field(
                Map(str, backend_selector(), key_label_name="site"),
                default_value={},
                is_required=False,
                description="site name -> backend and settings, overriding default.",
            ),
            "per_pool": Field(
                Map(str, backend_selector(), key_label_name="pool_id"),
                default_value={},
                is_required=False,
                description="compute pool id 'site/name' -> backend and settings, overriding per_site.",
            ),
        },
        is_required=False,
        description="Which backend runs each compute pool (gravity's own pools of workers, not Dagster's "
        "concurrency pools): local (warm forked workers, the default) or dask "
        "({dask: {scheduler: 'tcp://...'}}). Settings of the same backend merge, the narrower section winning.",
    ),
}


@dataclass
class GravityConfig:
    """The executor config, parsed and checked (what Dagster's schema cannot say)."""

    sites_file: str | None = DEFAULTS["sites_file"]
    locality_wait: float = DEFAULTS["locality_wait"]
    zone_outage_wait: float = DEFAULTS["zone_outage_wait"]
    objective: Objective = field(default_factory=Objective)
    retries: RetryMode = RetryMode.ENABLED
    max_concurrent: int | None = DEFAULTS["max_concurrent"]
    tag_concurrency_limits: list = field(default_factory=list)
    worker_max_steps: int = DEFAULTS["worker_max_steps"]
    unhealthy_after: int = DEFAULTS["unhealthy_after"]
    disabled_pools: list[str] = field(default_factory=list)
    resource_lifetime: str = DEFAULTS["resource_lifetime"]
    pools: Mapping[str, Any] = field(default_factory=lambda: dict(DEFAULTS["pools"]))

    @classmethod
    def from_executor_config(cls, config: Mapping[str, Any]) -> "GravityConfig":
        """From Dagster's processed executor config (defaults already filled in)."""
        if not isinstance(config, Mapping):
            raise GravityConfigError(f"gravity_executor config: got {short_repr(config)}; expected a mapping of settings")
        get = lambda name: config.get(name, DEFAULTS[name])  # noqa: E731
        sites_file = get("sites_file")
        if sites_file is not None and (not isinstance(sites_file, str) or "\0" in sites_file):
            raise GravityConfigError(f"gravity_executor sites_file: got {short_repr(sites_file)}; expected a file path")
        max_concurrent = get("max_concurrent")
        pools = config.get("pools") or {}
        if not isinstance(pools, Mapping):
            raise GravityConfigError(f"gravity_executor pools: got {short_repr(pools)}; expected a mapping with default, per_site, per_pool")
        disabled = get("disabled_pools") or []
        if isinstance(disabled, str) or not isinstance(disabled, (list, tuple)) or not all(isinstance(d, str) for d in disabled):
            raise GravityConfigError(f"gravity_executor disabled_pools: got {short_repr(disabled)}; expected a list of compute pool ids or site names")
        cfg = cls(
            sites_file=sites_file,
            locality_wait=_number("locality_wait", get("locality_wait"), "seconds >= 0"),
            zone_outage_wait=_number("zone_outage_wait", get("zone_outage_wait"), "seconds >= 0"),
            objective=_objective(get("objective"), get("cost_weight")),
            retries=RetryMode.from_config(config.get("retries", {"enabled": {}})),  # type: ignore[arg-type]
            max_concurrent=None if max_concurrent is None else _integer("max_concurrent", max_concurrent, ">= 1"),
            tag_concurrency_limits=list(config.get("tag_concurrency_limits") or []),
            worker_max_steps=_integer("worker_max_steps", get("worker_max_steps"), ">= 1"),
            unhealthy_after=_integer("unhealthy_after", get("unhealthy_after"), ">= 1"),
            disabled_pools=list(disabled),
            resource_lifetime=get("resource_lifetime"),
            pools={**DEFAULTS["pools"], **pools},
        )
        cfg._check()
        return cfg

    def _check(self) -> None:
        for name, value, ok, expected in (
            ("locality_wait", self.locality_wait, self.locality_wait >= 0, "seconds >= 0"),
            ("zone_outage_wait", self.zone_outage_wait, self.zone_outage_wait >= 0, "seconds >= 0"),
            ("worker_max_steps", self.worker_max_steps, self.worker_max_steps >= 1, ">= 1"),
            ("unhealthy_after", self.unhealthy_after, self.unhealthy_after >= 1, ">= 1"),
            ("max_concurrent", self.max_concurrent, self.max_concurrent is None or self.max_concurrent >= 1, ">= 1"),
        ):
            if not ok:
                raise GravityConfigError(f"gravity_executor {name}: got {short_repr(value)}; expected {expected}")

    def pool_settings(self, topology: Topology) -> dict[str, tuple[str, dict[str, Any]]]:
        """pool id -> (backend name, settings with defaults): default, then per_site, then
        per_pool; settings of the same backend merge, another backend replaces them."""
        per_site = self.pools.get("per_site") or {}
        per_pool = self.pools.get("per_pool") or {}
        for section, value in (("per_site", per_site), ("per_pool", per_pool)):
            if not isinstance(value, Mapping):
                raise GravityConfigError(f"gravity_executor pools.{section}: got {short_repr(value)}; expected a mapping of name -> backend")
        for site in per_site:
            if site not in topology.sites:
                raise GravityConfigError(f"gravity_executor pools.per_site: {topology.unknown_site(site)}")
        known_pools = {p.id for p in topology.pools}
        for pool_id in per_pool:
            if pool_id not in known_pools:
                raise GravityConfigError(
                    f"gravity_executor pools.per_pool: compute pool {short_repr(pool_id)} is not in {topology.source}; "
                    f"known compute pools: {', '.join(sorted(known_pools))}"
                )
        for name in self.disabled_pools:
            if name not in known_pools and name not in topology.sites:
                raise GravityConfigError(
                    f"gravity_executor disabled_pools: {short_repr(name)} is neither a compute pool nor a site of "
                    f"{topology.source}; known compute pools: {', '.join(sorted(known_pools))}"
                )
        out = {}
        for pool in topology.pools:
            backend, settings = _selected(self.pools.get("default") or DEFAULTS["pools"]["default"], "gravity_executor pools.default")
            for label, section in ((f"per_site.{pool.site}", per_site.get(pool.site)), (f"per_pool.{pool.id}", per_pool.get(pool.id))):
                if section:
                    name, more = _selected(section, f"gravity_executor pools.{label}")
                    settings = {**settings, **more} if name == backend else more
                    backend = name
            where = f"gravity_executor pools (compute pool {pool.id})"
            try:
                out[pool.id] = (backend, with_defaults(backend, settings))
            except GravityConfigError as exc:
                raise GravityConfigError(f"{where}: {exc}") from None
        return out

    def is_disabled(self, pool_id: str, site: str) -> bool:
        return pool_id in self.disabled_pools or site in self.disabled_pools


def _selected(selector: Any, where: str = "gravity_executor pools") -> tuple[str, dict[str, Any]]:
    """The one backend a Selector value names, and its settings."""
    if not isinstance(selector, Mapping) or len(selector) != 1 or not isinstance(next(iter(selector.values())) or {}, Mapping):
        raise GravityConfigError(
            f"{where}: got {short_repr(selector)}; expected one backend and its settings, such as "
            "{local: {}} or {dask: {scheduler: 'tcp://...'}}"
        )
    ((name, settings),) = selector.items()
    return str(name), dict(settings or {})


def _number(name: str, value: Any, expected: str) -> float:
    """A finite number >= 0 (a NaN wait compares false with everything: delay scheduling would never spill)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise GravityConfigError(f"gravity_executor {name}: got {short_repr(value)}; expected a number of {expected}")
    try:
        number = float(value)
    except ValueError:
        raise GravityConfigError(f"gravity_executor {name}: got {short_repr(value)}; expected a number of {expected}") from None
    if not math.isfinite(number) or number < 0:
        raise GravityConfigError(f"gravity_executor {name}: got {short_repr(value)}; expected a finite number of {expected}")
    return number


def _integer(name: str, value: Any, expected: str) -> int:
    if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, str) and value.strip().lstrip("+-").isdigit())):
        raise GravityConfigError(f"gravity_executor {name}: got {short_repr(value)}; expected an integer {expected}")
    return int(value)


def _objective(name: str, cost_weight: Any) -> Objective:
    if name == "weighted":
        weight = None
        if not isinstance(cost_weight, bool) and isinstance(cost_weight, (int, float)):
            weight = float(cost_weight)
        if weight is None or not 0.0 <= weight <= 1.0:  # NaN is not in [0, 1] either
            raise GravityConfigError(f"gravity_executor cost_weight: got {short_repr(cost_weight)}; expected a weight in [0, 1]")
        return Objective.parse(weight)
    if name not in ("time", "cost"):
        raise GravityConfigError(f"gravity_executor objective: got {short_repr(name)}; expected time, cost or weighted")
    return Objective.parse(name)
