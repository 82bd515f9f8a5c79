"""`gravity_executor`: a Dagster executor that runs every step where its data lives.

It follows Dagster's own multiprocess loop (`ActiveExecution`, as in
`dagster/_core/executor/multiprocess.py`), so retries, `RetryPolicy`, concurrency limits,
pools, dynamic outputs and interruption keep working. Only the "where and how does this
ready step run" part differs:

1. `ActiveExecution` hands out ready steps.
2. `_Locator` finds where each input is: this run's own outputs (from the events the
   workers streamed back), else the upstream asset's latest materialization
   (`dagster_gravity.locations.latest_location`), else the definition's metadata.
3. `placement.place_step` scores every healthy pool; the decision, its reason and every
   candidate's cost are an engine event on the step.
4. Delay scheduling: a pool with no free slot is scored with an expected wait of
   `locality_wait` seconds (the longest the step will wait for it). If it still wins
   (moving the data elsewhere would cost more), the step waits up to `locality_wait`
   for a slot there, then spills to the next-best pool that has one, and says so.
5. The pool's backend (`pools/`) runs the step in a warm worker at that site and streams
   its events back; they are fed to `ActiveExecution` exactly like multiprocess children's.
   A worker that dies mid-step becomes a retryable step failure; a pool whose workers keep
   dying is marked unhealthy and its steps fail over (within residency) to the next pool.
"""

from __future__ import annotations

import os
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterator, Mapping

from dagster import (
    Any as ConfigAny,
    Field,
    MetadataValue,
    Noneable,
    Permissive,
    _check as check,
    executor,
)
from dagster._core.definitions.executor_definition import multiple_process_executor_requirements
from dagster._core.errors import DagsterExecutionInterruptedError
from dagster._core.events import DagsterEvent, DagsterEventType, EngineEventData, StepFailureData
from dagster._core.execution.context.system import PlanOrchestrationContext
from dagster._core.execution.plan.active import ActiveExecution
from dagster._core.execution.plan.instance_concurrency_context import InstanceConcurrencyContext
from dagster._core.execution.plan.plan import ExecutionPlan
from dagster._core.execution.plan.step import ExecutionStep
from dagster._core.execution.retries import RetryMode, get_retries_config
from dagster._core.execution.step_dependency_config import StepDependencyConfig
from dagster._core.execution.tags import get_tag_concurrency_limits_config
from dagster._core.executor.base import Executor
from dagster._utils.error import SerializableErrorInfo, serializable_error_info_from_exc_info

from dagster_gravity import metadata as md
from dagster_gravity.errors import GravityConfigError, GravityError
from dagster_gravity.placement import (
    InputData,
    Objective,
    Placement,
    PlacementError,
    Requirements,
    format_bytes,
    place_step,
)
from dagster_gravity.pools import (
    CRASHED,
    NOT_STARTED,
    PoolBackend,
    StepEnded,
    StepEvent,
    StepRequest,
    create_backend,
)
from dagster_gravity.step_runner import RunPayload
from dagster_gravity.topology import Topology, default_sites_path

DEFAULT_LOCALITY_WAIT = 3.0
DEFAULT_WORKER_MAX_STEPS = 100
DEFAULT_UNHEALTHY_AFTER = 3
POLL_SECONDS = 0.1  # longest the loop blocks waiting for workers (interrupt latency)
# An input whose site is known but size is not counts as one byte: moving it costs a link's
# latency, so among otherwise equal pools the step goes to the data.
UNKNOWN_SIZE = 1

GRAVITY_CONFIG = {
    "sites_file": Field(
        Noneable(str),
        default_value=None,
        description="The topology file. Default: $GRAVITY_SITES, else sites.yaml in the working directory.",
    ),
    "locality_wait": Field(
        float,
        default_value=DEFAULT_LOCALITY_WAIT,
        description="Delay scheduling: seconds a step waits for a slot in its best pool before "
        "spilling to the next-best pool that has one.",
    ),
    "objective": Field(
        ConfigAny,
        default_value="time",
        description="What placement minimises: 'time', 'cost', or a weight in [0, 1] between them.",
    ),
    "retries": get_retries_config(),
    "max_concurrent": Field(
        Noneable(int),
        default_value=None,
        description="Most steps in flight at once. Default: the total slots of all pools.",
    ),
    "tag_concurrency_limits": get_tag_concurrency_limits_config(),
    "worker_max_steps": Field(
        int,
        default_value=DEFAULT_WORKER_MAX_STEPS,
        description="A worker is replaced by a fresh one after running this many steps.",
    ),
    "unhealthy_after": Field(
        int,
        default_value=DEFAULT_UNHEALTHY_AFTER,
        description="Consecutive worker failures (deaths, failed starts) after which a pool is "
        "marked unhealthy and gets no more steps in this run.",
    ),
    "disabled_pools": Field(
        [str],
        default_value=[],
        description="Pool ids ('site/name') or site names taken out of service for this run.",
    ),
    "pools": Field(
        {
            "default": Field(
                Permissive({"backend": Field(str, default_value="local")}),
                default_value={"backend": "local"},
                description="Backend and settings for every pool unless overridden.",
            ),
            "per_site": Field(
                Permissive(),
                default_value={},
                description="site name -> {backend: ..., <settings>} overriding the default.",
            ),
            "per_pool": Field(
                Permissive(),
                default_value={},
                description="pool id 'site/name' -> {backend: ..., <settings>}; overrides per_site.",
            ),
        },
        is_required=False,
        description="Which backend runs each pool: local (warm forked workers, the default) or "
        "dask (`{backend: dask, scheduler: 'tcp://...'}`).",
    ),
}


@dataclass
class GravityConfig:
    sites_file: str | None = None
    locality_wait: float = DEFAULT_LOCALITY_WAIT
    objective: Any = "time"
    retries: RetryMode = RetryMode.ENABLED
    max_concurrent: int | None = None
    tag_concurrency_limits: list = field(default_factory=list)
    worker_max_steps: int = DEFAULT_WORKER_MAX_STEPS
    unhealthy_after: int = DEFAULT_UNHEALTHY_AFTER
    disabled_pools: list[str] = field(default_factory=list)
    pools: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_executor_config(cls, config: Mapping[str, Any]) -> "GravityConfig":
        cfg = cls(
            sites_file=config.get("sites_file"),
            locality_wait=float(config.get("locality_wait", DEFAULT_LOCALITY_WAIT)),
            objective=config.get("objective", "time"),
            retries=RetryMode.from_config(config.get("retries", {"enabled": {}})),  # type: ignore
            max_concurrent=config.get("max_concurrent"),
            tag_concurrency_limits=list(config.get("tag_concurrency_limits") or []),
            worker_max_steps=int(config.get("worker_max_steps", DEFAULT_WORKER_MAX_STEPS)),
            unhealthy_after=int(config.get("unhealthy_after", DEFAULT_UNHEALTHY_AFTER)),
            disabled_pools=list(config.get("disabled_pools") or []),
            pools=config.get("pools") or {},
        )
        cfg.validate()
        return cfg

    def validate(self) -> None:
        if self.locality_wait < 0:
            raise GravityConfigError(f"gravity_executor locality_wait: got {self.locality_wait}; expected seconds >= 0")
        try:
            Objective.parse(self.objective)
        except ValueError as exc:
            raise GravityConfigError(f"gravity_executor {exc}") from None
        if self.worker_max_steps < 1:
            raise GravityConfigError(f"gravity_executor worker_max_steps: got {self.worker_max_steps}; expected >= 1")
        if self.unhealthy_after < 1:
            raise GravityConfigError(f"gravity_executor unhealthy_after: got {self.unhealthy_after}; expected >= 1")
        if self.max_concurrent is not None and self.max_concurrent < 1:
            raise GravityConfigError(f"gravity_executor max_concurrent: got {self.max_concurrent}; expected >= 1")
        self._check_pool_sections()

    def _check_pool_sections(self) -> None:
        """Each `pools` entry is a mapping of backend settings (not a bare backend name)."""
        shape = "a mapping such as {backend: dask, scheduler: 'tcp://127.0.0.1:8786'} or {backend: local}"
        pools = self.pools or {}
        if not isinstance(pools, Mapping):
            raise GravityConfigError(f"gravity_executor pools: got {pools!r}; expected a mapping with default, per_site, per_pool")
        default = pools.get("default")
        if default is not None and not isinstance(default, Mapping):
            raise GravityConfigError(f"gravity_executor pools.default: got {default!r}; expected {shape}")
        for section, of_what in (("per_site", "site name"), ("per_pool", "pool id 'site/name'")):
            entries = pools.get(section) or {}
            if not isinstance(entries, Mapping):
                raise GravityConfigError(
                    f"gravity_executor pools.{section}: got {entries!r}; expected a mapping of {of_what} -> {shape}"
                )
            for name, entry in entries.items():
                if not isinstance(entry, Mapping):
                    raise GravityConfigError(
                        f"gravity_executor pools.{section}.{name}: got {entry!r}; expected {shape}"
                    )

    def topology_path(self) -> Path:
        return Path(self.sites_file) if self.sites_file else default_sites_path()

    def pool_settings(self, topology: Topology) -> dict[str, tuple[str, dict[str, Any]]]:
        """pool id -> (backend name, settings): default, then per_site, then per_pool."""
        self._check_pool_sections()
        default = dict(self.pools.get("default") or {"backend": "local"})
        per_site = dict(self.pools.get("per_site") or {})
        per_pool = dict(self.pools.get("per_pool") or {})
        for site in per_site:
            if site not in topology.sites:
                raise GravityConfigError(
                    f"gravity_executor pools.per_site: {topology.unknown_site(site)}"
                )
        known_pools = {p.id for p in topology.pools}
        for pool_id in per_pool:
            if pool_id not in known_pools:
                raise GravityConfigError(
                    f"gravity_executor pools.per_pool: pool {pool_id!r} is not in {topology.source}; "
                    f"known pools: {', '.join(sorted(known_pools))}"
                )
        for name in self.disabled_pools:
            if name not in known_pools and name not in topology.sites:
                raise GravityConfigError(
                    f"gravity_executor disabled_pools: {name!r} is neither a pool nor a site of "
                    f"{topology.source}; known pools: {', '.join(sorted(known_pools))}"
                )
        out = {}
        for pool in topology.pools:
            merged = {**default, **(per_site.get(pool.site) or {}), **(per_pool.get(pool.id) or {})}
            backend = str(merged.pop("backend", "local"))
            out[pool.id] = (backend, merged)
        return out

    def is_disabled(self, pool_id: str, site: str) -> bool:
        return pool_id in self.disabled_pools or site in self.disabled_pools


@executor(
    name="gravity",
    config_schema=GRAVITY_CONFIG,
    requirements=multiple_process_executor_requirements(),
)
def gravity_executor(init_context) -> "GravityExecutor":
    """Runs each step in a warm worker at the site that holds its inputs.

    Example run config::

        execution:
          config:
            sites_file: sites.yaml
            locality_wait: 3
            objective: time          # or cost, or 0.3
            pools:
              default: {backend: local}
              per_site:
                aws-us-east-1: {backend: dask, scheduler: "tcp://127.0.0.1:8786"}
    """
    return GravityExecutor(GravityConfig.from_executor_config(init_context.executor_config))


# --------------------------------------------------------------------------------------
# Where inputs are
# --------------------------------------------------------------------------------------


@dataclass
class _OutputLocation:
    site: str
    replicas: tuple[str, ...] = ()
    size_bytes: int = 0
    residency: str | None = None
    error: str | None = None  # its metadata could not be read: placing a consumer fails


def read_location(meta: Mapping[str, Any], what: str) -> dict[str, Any]:
    """`metadata.read_location`, with an error that names the data and the bad value."""
    try:
        return md.read_location(meta)
    except (TypeError, ValueError):
        raw = md.plain_value(meta.get(md.SIZE_BYTES))
        raise GravityConfigError(
            f"{what}: metadata {md.SIZE_BYTES} is {raw!r}; expected a whole number of bytes"
        ) from None


def _location_from_metadata(meta: Mapping[str, Any], default_site: str, what: str) -> _OutputLocation:
    try:
        loc = read_location(meta, what)
    except GravityConfigError as exc:
        return _OutputLocation(default_site, error=str(exc))
    site = loc["site"] or default_site
    replicas = tuple(r for r in loc["replicas"] if r != site)
    return _OutputLocation(site, replicas, int(loc["size_bytes"] or 0), loc["residency"])


class _Locator:
    """Where each input of a step is: this run's outputs first, then the instance."""

    def __init__(self, instance, job_def, dagster_run, topology: Topology):
        self.instance = instance
        self.topology = topology
        self.job_def = job_def
        self.asset_layer = job_def.asset_layer
        self.partition = dagster_run.tags.get("dagster/partition")
        self.step_sites: dict[str, str] = {}  # step key -> site it ran at (last attempt)
        self.outputs: dict[tuple[str, str], _OutputLocation] = {}  # (step, output) -> where
        self.assets: dict[Any, _OutputLocation] = {}  # asset key -> where (this run)
        # asset key -> (input, notes about sites it names that the topology does not know)
        self._instance_cache: dict[Any, tuple[InputData | None, list[str]]] = {}

    def record(self, event: DagsterEvent) -> None:
        step_key = event.step_key
        site = self.step_sites.get(step_key or "")
        if site is None:
            return
        if event.event_type == DagsterEventType.ASSET_MATERIALIZATION:
            mat = event.step_materialization_data.materialization
            what = f"asset {mat.asset_key.to_user_string()!r} materialized by step {step_key!r}"
            self.assets[mat.asset_key] = _location_from_metadata(mat.metadata, site, what)
        elif event.event_type == DagsterEventType.HANDLED_OUTPUT:
            data = event.event_specific_data
            what = f"output {data.output_name!r} of step {step_key!r}"
            self.outputs[(step_key, data.output_name)] = _location_from_metadata(data.metadata, site, what)
        elif event.event_type == DagsterEventType.STEP_OUTPUT:
            data = event.step_output_data
            key = (step_key, data.step_output_handle.output_name)
            if key not in self.outputs:
                what = f"output {key[1]!r} of step {step_key!r}"
                self.outputs[key] = _location_from_metadata(data.metadata, site, what)

    def inputs_for(self, step: ExecutionStep, notes: list[str] | None = None) -> list[InputData]:
        """Where each input of `step` is. Sites the topology does not know are dropped (and
        said so in `notes`); an input left with no known site counts as unknown location.
        Raises GravityConfigError for location metadata that cannot be read."""
        notes = [] if notes is None else notes
        inputs: list[InputData | None] = []
        for step_input in step.step_inputs:
            asset_key = self._asset_key(step, step_input.name)
            handles = list(step_input.get_step_output_handle_dependencies())
            if asset_key is not None and asset_key in self.assets:
                loc = self.assets[asset_key]
                if loc.residency is None:
                    loc = replace(loc, residency=self._definition_residency(asset_key))
                inputs.append(self._input(asset_key.to_user_string(), loc, notes))
                continue
            in_run = [self.outputs.get((h.step_key, h.output_name)) for h in handles]
            if handles and all(in_run):
                for h, loc in zip(handles, in_run):
                    name = f"{h.step_key}.{h.output_name}"
                    if h.mapping_key:
                        name += f"[{h.mapping_key}]"
                    inputs.append(self._input(name, loc, notes))  # type: ignore[arg-type]
                continue
            if handles and any(h.step_key in self.step_sites for h in handles):
                # Produced in this run without output events we could read: where it ran.
                for h in handles:
                    site = self.step_sites.get(h.step_key)
                    if site:
                        inputs.append(InputData(f"{h.step_key}.{h.output_name}", UNKNOWN_SIZE, (site,), None))
                continue
            if asset_key is not None:
                inputs.append(self._from_instance(asset_key, notes))
        known = [i for i in inputs if i is not None]
        for item in known:
            if item.residency is not None:
                self._zone_sites(item.residency, f"input {item.name!r}")
        return known

    def output_residency(self, step: ExecutionStep) -> list[InputData]:
        """The residency zones of the assets the step writes, as placement constraints.

        Each is a 0-byte `InputData` held by every site of the zone: it moves nothing and
        costs nothing, but `place_step` only keeps pools inside the zone, so a step whose
        output may not leave zone eu runs in eu (the IO manager would refuse the write
        anywhere else).
        """
        out = []
        for output in step.step_outputs:
            asset_key = self.output_asset_key(step, output.name)
            if asset_key is None:
                continue
            zone = self._definition_residency(asset_key)
            if zone is None:
                continue
            name = asset_key.to_user_string()
            sites = tuple(sorted(self._zone_sites(zone, f"asset {name!r}")))
            out.append(InputData(name, 0, sites, zone, role="output"))
        return out

    def _zone_sites(self, zone: str, what: str) -> frozenset[str]:
        try:
            return self.topology.zone_sites(zone)
        except KeyError:
            raise GravityConfigError(
                f"{what}: {md.RESIDENCY} is {zone!r}, which is not a residency zone of "
                f"{self.topology.source}; known zones: {', '.join(self.topology.zones) or '(none)'}"
            ) from None

    def _asset_key(self, step: ExecutionStep, input_name: str):
        try:
            return self.asset_layer.get_asset_key_for_node_input(step.node_handle, input_name)
        except Exception:
            return None

    def output_asset_key(self, step: ExecutionStep, output_name: str):
        try:
            return self.asset_layer.get_asset_key_for_node_output(step.node_handle, output_name)
        except Exception:
            return None

    def _definition_residency(self, asset_key) -> str | None:
        if not self.asset_layer.has(asset_key):
            return None
        zone = md.plain_value((self.asset_layer.get(asset_key).metadata or {}).get(md.RESIDENCY))
        return str(zone) if zone else None

    def _known_sites(self, name: str, sites, notes: list[str]) -> tuple[str, ...]:
        """`sites` without those the topology does not know (old or misspelt site names)."""
        kept: list[str] = []
        for i, site in enumerate(sites):
            if site in self.topology.sites:
                if site not in kept:
                    kept.append(site)
                continue
            note = (
                f"{name}: {'site' if i == 0 else 'replica'} {site!r} is not in "
                f"{Path(self.topology.source).name}; ignored"
            )
            if note not in notes:
                notes.append(note)
        return tuple(kept)

    def _located(self, name: str, size: int, sites, residency: str | None, notes: list[str]) -> InputData | None:
        """An input at its known sites; if none is known, anywhere in its zone (size
        unknown), or None (location unknown: it does not steer placement)."""
        known = self._known_sites(name, sites, notes)
        if known:
            return InputData(name, int(size or UNKNOWN_SIZE), known, residency)
        if residency:
            # Where it is is unknown but its zone is not: it may be anywhere in the zone, and
            # the step may not run outside it.
            return InputData(name, 0, tuple(sorted(self._zone_sites(residency, f"input {name!r}"))), residency)
        return None

    def _input(self, name: str, loc: _OutputLocation, notes: list[str]) -> InputData | None:
        if loc.error:
            raise GravityConfigError(f"input {name}: {loc.error}")
        return self._located(name, loc.size_bytes, (loc.site, *loc.replicas), loc.residency, notes)

    def _from_instance(self, asset_key, notes: list[str] | None = None) -> InputData | None:
        if asset_key not in self._instance_cache:
            own_notes: list[str] = []
            self._instance_cache[asset_key] = (self._read_instance(asset_key, own_notes), own_notes)
        found, own_notes = self._instance_cache[asset_key]
        if notes is not None:
            notes.extend(n for n in own_notes if n not in notes)
        return found

    def _read_instance(self, asset_key, notes: list[str]) -> InputData | None:
        from dagster_gravity.locations import latest_location

        definition_metadata = None
        partition = None
        if self.asset_layer.has(asset_key):
            node = self.asset_layer.get(asset_key)
            definition_metadata = node.metadata
            if node.partitions_def is not None:
                partition = self.partition
        name = asset_key.to_user_string()
        try:
            loc = latest_location(self.instance, asset_key, partition=partition, definition_metadata=definition_metadata)
        except (TypeError, ValueError):
            # Unreadable location metadata (its latest materialization's or its definition's).
            raise GravityConfigError(
                f"input asset {name!r}: its location metadata cannot be read; expected "
                f"{md.SIZE_BYTES} to be a whole number of bytes ({sys.exc_info()[1]})"
            ) from None
        if loc is None:
            return None
        sites = ((loc.site,) if loc.site else ()) + tuple(loc.replicas or ())
        return self._located(name, loc.size_bytes, sites, loc.residency, notes)


def place_with_outputs(
    topology: Topology,
    inputs: list[InputData],
    outputs: list[InputData],
    requirements: Requirements,
    **kwargs,
) -> Placement:
    """`place_step` over the step's inputs plus its outputs' residency (`output_residency`:
    0-byte stand-ins with role "output", which placement names as outputs)."""
    return place_step(topology, [*inputs, *outputs], requirements, **kwargs)


def requirements_for(step: ExecutionStep) -> Requirements:
    tags = step.tags or {}
    gpus = tags.get(md.TAG_GPU)
    try:
        gpus = int(gpus) if gpus not in (None, "") else 0
    except ValueError:
        raise GravityConfigError(
            f"step {step.key!r}: op tag {md.TAG_GPU!r} is {gpus!r}; expected a whole number of GPUs"
        ) from None
    return Requirements(gpus=gpus, pin=tags.get(md.TAG_PIN) or None, pool_kind=tags.get(md.TAG_POOL) or None)


# --------------------------------------------------------------------------------------
# The executor
# --------------------------------------------------------------------------------------


@dataclass
class _Waiting:
    """A step ActiveExecution handed out that is not yet on a pool."""

    step: ExecutionStep
    since: float = field(default_factory=time.monotonic)
    placement: Placement | None = None
    decided_at: float = 0.0
    exclude: set[str] = field(default_factory=set)
    notes: list[str] = field(default_factory=list)  # what happened before it was submitted


@dataclass
class _Running:
    step: ExecutionStep
    pool_id: str
    site: str
    finished: bool = False  # a terminal step event (success/failure/retry) was seen


class WorkerCrashedError(Exception):
    """A worker died while running a step (killed, out of memory, segfault, ...)."""


class GravityExecutor(Executor):
    def __init__(self, config: GravityConfig):
        self.config = config
        self._retries = config.retries
        self._objective = Objective.parse(config.objective)

    @property
    def retries(self) -> RetryMode:
        return self._retries

    @property
    def step_dependency_config(self) -> StepDependencyConfig:
        return StepDependencyConfig.default()

    # -- setup -----------------------------------------------------------------------

    def _backends(self, topology: Topology) -> tuple[dict[str, PoolBackend], list[tuple[PoolBackend, list]]]:
        """One backend instance per (backend name, settings) group; pool id -> backend.

        Groups come local first: `execute` starts them in this order. In a run that mixes
        local pools with other backends (whose clients start threads, e.g. Dask's IO loop),
        every local worker is prestarted, so each is forked before any such thread exists
        (see the fork-safety note in `pools/local.py`).
        """
        groups: dict[tuple[str, str], tuple[PoolBackend, list]] = {}
        by_pool: dict[str, PoolBackend] = {}
        settings = self.config.pool_settings(topology)
        names = {name for name, _ in settings.values()}
        mixed = "local" in names and len(names) > 1
        all_slots = max((p.slots for p in topology.pools), default=0)
        for pool in topology.pools:
            name, opts = settings[pool.id]
            if mixed and name == "local":
                opts = {**opts, "prestart": max(int(opts.get("prestart") or 0), all_slots)}
            key = (name, repr(sorted(opts.items())))
            if key not in groups:
                backend = create_backend(
                    name,
                    opts,
                    worker_max_steps=self.config.worker_max_steps,
                    unhealthy_after=self.config.unhealthy_after,
                )
                groups[key] = (backend, [])
            groups[key][1].append(pool)
            by_pool[pool.id] = groups[key][0]
        ordered = sorted(groups.values(), key=lambda group: group[0].name != "local")
        return by_pool, ordered

    # -- the loop --------------------------------------------------------------------

    def execute(self, plan_context: PlanOrchestrationContext, execution_plan: ExecutionPlan) -> Iterator[DagsterEvent]:
        check.inst_param(plan_context, "plan_context", PlanOrchestrationContext)
        topology = Topology.from_yaml(self.config.topology_path())
        by_pool, groups = self._backends(topology)
        disabled = {p.id for p in topology.pools if self.config.is_disabled(p.id, p.site)}
        total_slots = sum(p.slots for p in topology.pools if p.id not in disabled)
        limit = self.config.max_concurrent or max(1, total_slots)

        payload = RunPayload(
            run_id=plan_context.run_id,
            instance_ref=plan_context.instance.get_ref(),
            dagster_run=plan_context.dagster_run,
            run_config=plan_context.run_config,
            recon_job=plan_context.reconstructable_job,
            retry_mode=self.retries,
            repository_load_data=execution_plan.repository_load_data,
            execution_plan=execution_plan,
        )
        yield DagsterEvent.engine_event(
            plan_context,
            f"gravity executor: placing steps on {len(topology.pools) - len(disabled)} pools of "
            f"{topology.source} (pid {os.getpid()})",
            EngineEventData(
                metadata={
                    "pid": MetadataValue.text(str(os.getpid())),
                    "sites_file": MetadataValue.path(str(topology.source)),
                    "pools": MetadataValue.json(
                        {pid: by_pool[pid].name for pid in by_pool if pid not in disabled}
                    ),
                    "disabled_pools": MetadataValue.json(sorted(disabled)),
                    "locality_wait": MetadataValue.float(self.config.locality_wait),
                    "objective": MetadataValue.text(self._objective.describe()),
                }
            ),
        )

        loop = _Loop(self, plan_context, execution_plan, topology, by_pool, disabled, limit)
        with ExitStack() as stack:
            started: list[PoolBackend] = []

            def stop_all():
                for backend in started:
                    backend.stop()

            stack.callback(stop_all)
            for backend, pools in groups:
                try:
                    backend.start(payload if backend.name == "local" else payload.without_plan(), pools)
                except Exception as exc:  # a backend that cannot start: its pools are unhealthy
                    error = serializable_error_info_from_exc_info(sys.exc_info())
                    for pool in pools:
                        loop.start_failures[pool.id] = f"{backend.name} backend failed to start: {exc}"
                    yield DagsterEvent.engine_event(
                        plan_context,
                        f"gravity: the {backend.name} backend for {', '.join(p.id for p in pools)} "
                        f"failed to start; those pools are unhealthy: {exc}",
                        EngineEventData.engine_error(error),
                    )
                    try:
                        backend.stop()
                    except Exception:
                        pass
                    continue
                started.append(backend)
            yield from loop.run(stack)


class _Loop:
    """One run's scheduling loop (kept apart from the executor so state is per run)."""

    def __init__(self, executor: GravityExecutor, plan_context, execution_plan, topology, by_pool, disabled, limit):
        self.ex = executor
        self.config = executor.config
        self.plan_context = plan_context
        self.execution_plan = execution_plan
        self.topology = topology
        self.by_pool = by_pool
        self.backends = list({id(b): b for b in by_pool.values()}.values())
        self.disabled = disabled
        self.limit = limit
        self.locator = _Locator(
            plan_context.instance, plan_context.job.get_definition(), plan_context.dagster_run, topology
        )
        self.waiting: dict[str, _Waiting] = {}
        self.running: dict[str, _Running] = {}
        self.reported_unhealthy: set[str] = set()
        self.start_failures: dict[str, str] = {}  # pool id -> why its backend did not start
        self.stopping = False  # the run was interrupted: running steps are being stopped

    # -- pool state ------------------------------------------------------------------

    def is_healthy(self, pool_id: str) -> bool:
        if pool_id in self.disabled or pool_id in self.start_failures:
            return False
        return self.by_pool[pool_id].health(pool_id).healthy

    def unhealthy_reason(self, pool_id: str) -> str:
        if pool_id in self.start_failures:
            return self.start_failures[pool_id]
        return self.by_pool[pool_id].health(pool_id).reason

    def healthy_pools(self) -> set[str]:
        return {pid for pid in self.by_pool if self.is_healthy(pid)}

    def free_slots(self, pool_id: str) -> int:
        return self.by_pool[pool_id].free_slots(pool_id) if self.is_healthy(pool_id) else 0

    def unhealthy_events(self) -> Iterator[DagsterEvent]:
        for pid in self.by_pool:
            if pid in self.reported_unhealthy or pid in self.disabled or pid in self.start_failures:
                continue
            health = self.by_pool[pid].health(pid)
            if not health.healthy:
                self.reported_unhealthy.add(pid)
                yield DagsterEvent.engine_event(
                    self.plan_context,
                    f"gravity: pool {pid} marked unhealthy ({health.reason}); its steps fail over",
                    EngineEventData(
                        metadata={
                            "gravity/pool": MetadataValue.text(pid),
                            "gravity/reason": MetadataValue.text(health.reason),
                        }
                    ),
                )

    # -- placement -------------------------------------------------------------------

    def _waits(self, healthy: set[str]) -> dict[str, float]:
        """A full pool's expected wait: at most the locality wait, then we spill anyway."""
        return {pid: self.config.locality_wait for pid in healthy if self.free_slots(pid) <= 0}

    def _place(self, w: _Waiting, *, spill_from: set[str] = frozenset()) -> Placement:
        healthy = self.healthy_pools()
        step = w.step
        inputs = self.locator.inputs_for(step, w.notes)
        outputs = self.locator.output_residency(step)
        req = requirements_for(step)
        if spill_from:
            return place_with_outputs(
                self.topology, inputs, outputs, req, objective=self.ex._objective, healthy=healthy,
                exclude=set(w.exclude) | set(spill_from), step=step.key,
            )
        placement = place_with_outputs(
            self.topology, inputs, outputs, req, objective=self.ex._objective, healthy=healthy,
            expected_wait=self._waits(healthy), exclude=w.exclude, step=step.key,
        )
        unhealthy = {pid for pid in self.by_pool if pid not in healthy and pid not in self.disabled}
        if unhealthy:
            # Would an unhealthy pool have been chosen? Then say this is a failover.
            try:
                ideal = place_with_outputs(
                    self.topology, inputs, outputs, req, objective=self.ex._objective,
                    healthy=healthy | unhealthy, exclude=w.exclude, step=step.key,
                )
            except PlacementError:
                ideal = None
            if ideal is not None and ideal.pool in unhealthy:
                reason = self.unhealthy_reason(ideal.pool)
                w.notes.append(f"pool {ideal.pool} unhealthy ({reason}), failed over to {placement.pool}")
        return placement

    def _dispatch(self) -> Iterator[DagsterEvent]:
        """Place waiting steps and submit the ones whose pool has a free slot."""
        now = time.monotonic()
        for key in list(self.waiting):
            w = self.waiting[key]
            try:
                if w.placement is None or not self.is_healthy(w.placement.pool):
                    w.placement = self._place(w)
                    w.decided_at = now
                pool_id = w.placement.pool
                if self.free_slots(pool_id) > 0:
                    yield from self._submit(w, w.placement)
                    continue
                waited = now - w.decided_at
                if waited < self.config.locality_wait:
                    continue
                full = {pid for pid in self.by_pool if self.free_slots(pid) <= 0}
                try:
                    spill = self._place(w, spill_from=full)
                except PlacementError:
                    continue  # nowhere else may run it: keep waiting for its pool
                w.notes.append(
                    f"waited {waited:.1f} s for a slot in {pool_id}, spilled to {spill.pool}"
                )
                yield from self._submit(w, spill, waited=waited, spilled_from=pool_id)
            except PlacementError as exc:
                yield from self._fail_unplaceable(w, exc)
            except ValueError as exc:
                # GravityConfigError and the like: a bad op tag, unreadable location metadata,
                # an unknown residency zone. It is this step's problem, not the run's.
                yield from self._fail_unplaceable(w, exc)

    def _submit(self, w: _Waiting, placement: Placement, *, waited: float = 0.0, spilled_from: str | None = None):
        step = w.step
        backend = self.by_pool[placement.pool]
        known_state = self.active.get_known_state()
        attempt = known_state.get_retry_state().get_attempt_count(step.key)
        # The decision is written before the step is handed over, so the event log shows it
        # first and the worker's own writes do not contend with it for the run's event log.
        yield self._placement_event(step, placement, w.notes, waited, spilled_from)
        del self.waiting[step.key]
        self.running[step.key] = _Running(step, placement.pool, placement.site)
        self.locator.step_sites[step.key] = placement.site
        try:
            backend.submit(placement.pool, StepRequest(step.key, known_state, attempt))
        except Exception as exc:  # a backend that refuses: place the step again
            del self.running[step.key]
            retry = _Waiting(step)
            retry.exclude.add(placement.pool)
            retry.notes.append(f"{placement.pool} refused the step ({exc})")
            self.waiting[step.key] = retry

    def _placement_event(self, step, placement: Placement, notes, waited, spilled_from) -> DagsterEvent:
        chosen = next(c for c in placement.candidates if c.pool == placement.pool)
        rows = placement.as_table()
        metadata: dict[str, Any] = {
            "gravity/site": MetadataValue.text(placement.site),
            "gravity/pool": MetadataValue.text(placement.pool),
            "gravity/reason": MetadataValue.text(placement.reason),
            "gravity/bytes_moved": MetadataValue.int(int(chosen.bytes_moved)),
            "gravity/transfer_seconds": MetadataValue.float(float(chosen.transfer_seconds)),
            "gravity/dollars": MetadataValue.float(float(chosen.dollars)),
            "gravity/candidates": MetadataValue.json(rows),
            "gravity/candidates_table": MetadataValue.md(_markdown_table(rows)),
        }
        if spilled_from:
            metadata["gravity/waited_seconds"] = MetadataValue.float(round(waited, 3))
            metadata["gravity/spilled_from"] = MetadataValue.text(spilled_from)
        failovers = [n for n in notes if "failed over" in n]
        if failovers:
            metadata["gravity/failover"] = MetadataValue.text("; ".join(failovers))
        if notes:
            metadata["gravity/notes"] = MetadataValue.text("; ".join(notes))
        moved = (
            f"moves {format_bytes(chosen.bytes_moved)}" if chosen.bytes_moved else "no data moves"
        )
        message = f"gravity: step {step.key} -> {placement.pool} ({moved}). {placement.reason}"
        if notes:
            message += " | " + "; ".join(notes)
        return DagsterEvent.engine_event(
            self.plan_context.for_step(step), message, EngineEventData(metadata=metadata)
        )

    def _fail_unplaceable(self, w: _Waiting, exc: ValueError) -> Iterator[DagsterEvent]:
        """No pool may run the step (requirements, residency, health), or what placement
        needs to know about it is invalid (op tags, location metadata): fail it clearly."""
        del self.waiting[w.step.key]
        step_context = self.plan_context.for_step(w.step)
        if isinstance(exc, PlacementError):
            message = (
                f"gravity: cannot place step {w.step.key!r}; data is not moved out of its zone "
                f"and no healthy pool meets its requirements.\n{exc}"
            )
        else:
            message = f"gravity: cannot place step {w.step.key!r}: {exc}"
        if w.notes:
            message += "\n" + "\n".join(w.notes)
        error = SerializableErrorInfo(message=message, stack=[], cls_name=type(exc).__name__)
        rows = [
            {"pool": c.pool, "site": c.site, "feasible": c.feasible, "reason": c.reason}
            for c in getattr(exc, "candidates", ())
        ]
        yield DagsterEvent.engine_event(
            step_context,
            error.message,
            EngineEventData(
                metadata={"gravity/candidates": MetadataValue.json(rows)} if rows else {},
                error=error,
            ),
        )
        failure = DagsterEvent.step_failure_event(
            step_context=step_context,
            step_failure_data=StepFailureData(error=error, user_failure_data=None),
        )
        self.active.handle_event(failure)
        yield failure
        self.active.verify_complete(self.plan_context, w.step.key)

    # -- events from workers ---------------------------------------------------------

    def _handle_update(self, update) -> Iterator[DagsterEvent]:
        if isinstance(update, StepEvent):
            event = update.event
            running = self.running.get(update.step_key)
            yield event
            # A worker's run-level events (its session's set-up, step_key None) are not the
            # plan's; the step's own events are.
            if event.step_key is not None:
                self.locator.record(event)
                self.active.handle_event(event)
                if running is not None and (event.is_step_success or event.is_step_failure or event.is_step_up_for_retry):
                    running.finished = True
            if event.is_resource_init_failure and running is not None and not running.finished:
                # Resources failed to initialise (for the worker's session or for the step):
                # that is the failure of the step that was waiting for them.
                step_context = self.plan_context.for_step(running.step)
                failure = self.ex.log_failure_or_retry_event_after_error(
                    step_context, event.engine_event_data.error, self.active.get_known_state()
                )
                yield failure
                self.active.handle_event(failure)
                running.finished = True
            return

        assert isinstance(update, StepEnded)
        running = self.running.pop(update.step_key, None)
        if running is None:
            return
        if update.outcome == NOT_STARTED:
            if self.stopping:  # the run is stopping: nothing more starts
                self.active.mark_abandoned(update.step_key)
                return
            # The worker never ran it: place it again (the pool may now be unhealthy).
            w = _Waiting(running.step)
            w.notes.append(f"not started on {update.pool_id}: {update.message}")
            self.waiting[update.step_key] = w
            return
        if not running.finished and (update.outcome == CRASHED or update.error is not None):
            step_context = self.plan_context.for_step(running.step)
            if update.error is not None:
                error = update.error
            else:
                try:
                    raise WorkerCrashedError(
                        f"gravity: {update.message} (pool {update.pool_id}, exit code {update.exit_code})"
                    )
                except WorkerCrashedError:
                    error = serializable_error_info_from_exc_info(sys.exc_info())
            yield DagsterEvent.engine_event(
                step_context,
                f"gravity: {update.message}" if update.outcome == CRASHED else update.message,
                EngineEventData.engine_error(error),
            )
            if self.stopping:  # interrupted: a failure, not a retry the stopping run won't run
                failure = DagsterEvent.step_failure_event(
                    step_context=step_context,
                    step_failure_data=StepFailureData(error=error, user_failure_data=None),
                )
            else:
                failure = self.ex.log_failure_or_retry_event_after_error(
                    step_context, error, self.active.get_known_state()
                )
            self.active.handle_event(failure)
            yield failure
        self.active.verify_complete(self.plan_context, update.step_key)

    # -- main loop -------------------------------------------------------------------

    def run(self, stack: ExitStack) -> Iterator[DagsterEvent]:
        plan_context = self.plan_context
        instance_concurrency_context = stack.enter_context(
            InstanceConcurrencyContext(plan_context.instance, plan_context.dagster_run)
        )
        self.active = active = stack.enter_context(
            ActiveExecution(
                self.execution_plan,
                retry_mode=self.ex.retries,
                max_concurrent=self.limit,
                tag_concurrency_limits=self.config.tag_concurrency_limits,
                instance_concurrency_context=instance_concurrency_context,
                step_dependency_config=self.ex.step_dependency_config,
            )
        )
        try:
            while (not self.stopping and not active.is_complete) or self.running:
                if not self.stopping and active.check_for_interrupts():
                    self.stopping = True
                    yield DagsterEvent.engine_event(
                        plan_context,
                        "gravity executor: received termination signal - interrupting running steps",
                        EngineEventData.interrupted(list(self.running)),
                    )
                    active.mark_interrupted()
                    for backend in self.backends:
                        backend.interrupt()
                    for key in list(self.waiting):
                        del self.waiting[key]
                        active.mark_abandoned(key)

                if not self.stopping:
                    room = self.limit - len(self.running) - len(self.waiting)
                    if room > 0:
                        for step in active.get_steps_to_execute(limit=room):
                            self.waiting[step.key] = _Waiting(step)
                    yield from active.concurrency_event_iterator(plan_context)
                    yield from self.unhealthy_events()
                    yield from self._dispatch()

                timeout = POLL_SECONDS
                if self.waiting:
                    timeout = 0.02
                elif not self.running:
                    timeout = min(POLL_SECONDS, max(0.0, active.sleep_interval()) or 0.01)
                got_any = False
                for backend in self.backends:
                    updates = backend.poll(timeout if len(self.backends) == 1 else timeout / len(self.backends))
                    for update in updates:
                        got_any = True
                        yield from self._handle_update(update)
                if got_any:
                    yield from self.unhealthy_events()
                yield from active.plan_events_iterator(plan_context)
        except Exception:
            if self.running:
                yield DagsterEvent.engine_event(
                    plan_context,
                    "gravity executor: unexpected error while steps were running - interrupting them",
                    EngineEventData(
                        metadata={"steps_interrupted": MetadataValue.text(str(list(self.running)))},
                        error=serializable_error_info_from_exc_info(sys.exc_info()),
                    ),
                )
                for backend in self.backends:
                    backend.interrupt()
            raise

        if self.stopping:
            yield DagsterEvent.engine_event(
                plan_context,
                "gravity executor: interrupted all running steps",
                EngineEventData(),
            )
            raise DagsterExecutionInterruptedError()


def _markdown_table(rows: list[dict]) -> str:
    head = "| pool | site | bytes moved | transfer s | wait s | $ | score | feasible / why not |\n"
    head += "|---|---|---|---|---|---|---|---|\n"
    lines = []
    for r in rows:
        score = "-" if r["score"] is None else f"{r['score']:.4g}"
        why = "yes" if r["feasible"] else f"no: {r['reason']}"
        lines.append(
            f"| {r['pool']} | {r['site']} | {format_bytes(r['bytes_moved'])} | {r['transfer_seconds']:.4g} "
            f"| {r['wait_seconds']:.4g} | {r['dollars']:.4g} | {score} | {why} |"
        )
    return head + "\n".join(lines)
