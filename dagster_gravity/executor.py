"""`gravity_executor`: a Dagster executor that runs every step where its data lives.

It follows Dagster's own multiprocess loop (`ActiveExecution`, as in
`dagster/_core/executor/multiprocess.py`), so retries, `RetryPolicy`, concurrency limits,
Dagster's concurrency pools (`pool=`), dynamic outputs and interruption keep working. Only
the "where and how does this ready step run" part differs:

1. `ActiveExecution` hands out ready steps.
2. `InputLocations` (input_locations.py) finds where each input is: this run's own outputs
   (from the events the workers streamed back), else the upstream asset's latest
   materialization, else the definition's metadata.
3. At run start the whole run is planned (`run_plan.py`, `placement.place_plan`): each
   step gets a planned site, shown as an engine event; the steps not started yet are
   re-planned when a step runs elsewhere than planned or a compute pool's health changes.
4. `placement.place_step` scores every healthy compute pool for a ready step: moving its
   inputs from where they are, moving its outputs on to where their consumers are planned,
   and the pool's expected wait for a slot (`placement.waits`: its running steps' expected
   remaining time and the steps queued for it, from each step's earlier durations,
   `step_durations.py`). A step whose best pool is busy waits for it, re-scored every
   tick, while waiting stays cheaper than moving; when moving becomes cheaper it goes to
   the pool that wins. `locality_wait` caps the wait (then the step spills to the best
   compute pool with a free slot). The decision, its reason, the wait-or-move comparison
   and every candidate's cost are an engine event on the step (placement_events.py).
5. The compute pool's backend (`pools/`) runs the step in a warm worker at that site and
   streams its events back; they are fed to `ActiveExecution` exactly like multiprocess
   children's. A worker that dies mid-step becomes a retryable step failure, unless the
   backend knows the worker is gone (it left the cluster): then the same attempt runs again
   on a live worker, using no retry. A compute pool whose workers keep dying is marked
   unhealthy and its steps fail over (within residency).
6. A step whose residency zone has no healthy compute pool, where one may come back, waits
   up to `zone_outage_wait` for it (zone_outage.py) instead of failing at once.

The config schema is in executor_config.py; the topology a run uses is resolved once, in
the run process, and shipped to every worker (`GravityTopology` in resources.py).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Iterator, Mapping

from dagster import MetadataValue, _check as check, executor

from dagster_gravity.dagster_internals import (
    ActiveExecution,
    ChildProcessCrashException,
    DagsterEvent,
    DagsterExecutionInterruptedError,
    DagsterSubprocessError,
    EngineEventData,
    ExecutionPlan,
    ExecutionStep,
    Executor,
    InstanceConcurrencyContext,
    PlanOrchestrationContext,
    RetryMode,
    SerializableErrorInfo,
    StepDependencyConfig,
    StepFailureData,
    get_run_crash_explanation,
    multiple_process_executor_requirements,
    serializable_error_info_from_exc_info,
)
from dagster_gravity.errors import GravityError
from dagster_gravity.executor_config import GRAVITY_CONFIG, GravityConfig
from dagster_gravity.input_locations import InputLocations, requirements_for
from dagster_gravity.placement import Placement, PlacementError, format_bytes, place_step, transfers_to
from dagster_gravity.placement.simulate import simulate_run
from dagster_gravity.placement.waits import expected_wait, remaining_seconds
from dagster_gravity.placement_events import placement_event, pool_healthy_event, pool_unhealthy_event, unplaceable_events
from dagster_gravity.pools import CRASHED, NOT_STARTED, PoolBackend, StepEnded, StepEvent, StepRequest, create_backends
from dagster_gravity.resources import resolve_run_sites_file
from dagster_gravity.run_summary import RunSummary
from dagster_gravity.step_runner import RunPayload
from dagster_gravity.link_measurements import measured_links, with_measured_links
from dagster_gravity.run_plan import RunPlan, make_run_plan, run_plan_event
from dagster_gravity.step_durations import DurationEstimates, expected_durations, record_durations
from dagster_gravity.topology import Topology, load_topology
from dagster_gravity.zone_outage import (
    ZoneOutage, back_event, back_note, gave_up_event, gave_up_note, wait_limit, waiting_event,
)

log = logging.getLogger(__name__)

POLL_SECONDS = 0.1
# How often a step waiting for its residency zone to come back re-checks health (placement
# is re-scored then, not on every tick of the loop).
ZONE_RECHECK_SECONDS = 0.25
# The run summary's prediction is simulated at run start; beyond this many decisions (a
# few tenths of a second) the run is not held up for it and the summary has no prediction.
PREDICTION_DECISIONS = 5_000
INTERRUPTS = {"DagsterExecutionInterruptedError", "KeyboardInterrupt"}  # longest the loop blocks waiting for workers (interrupt latency)


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
            locality_wait: 300     # the longest a step waits for a busy compute pool
            objective: time          # or cost, or weighted (with cost_weight: 0.3)
            pools:
              default: {local: {}}
              per_site:
                aws-us-east-1: {dask: {scheduler: "tcp://127.0.0.1:8786"}}
    """
    return GravityExecutor(GravityConfig.from_executor_config(init_context.executor_config))


class GravityExecutor(Executor):
    def __init__(self, config: GravityConfig):
        self.config = config

    @property
    def retries(self) -> RetryMode:
        return self.config.retries

    @property
    def step_dependency_config(self) -> StepDependencyConfig:
        return StepDependencyConfig.default()

    def execute(self, plan_context: PlanOrchestrationContext, execution_plan: ExecutionPlan) -> Iterator[DagsterEvent]:
        check.inst_param(plan_context, "plan_context", PlanOrchestrationContext)
        # One topology for the run, or it fails here, before any step runs.
        job_def = plan_context.job.get_definition()
        topology = load_topology(resolve_run_sites_file(self.config.sites_file, job_def, plan_context.run_config))
        # links priced by what earlier runs' copies delivered, where enough were measured
        topology = with_measured_links(topology, measured_links(plan_context.instance, topology.sites))
        with ExitStack() as stack:
            loop = _RunLoop(self, plan_context, execution_plan, topology)
            yield from loop.run(stack)


@dataclass
class _Waiting:
    """A step ActiveExecution handed out that is not yet on a compute pool."""

    step: ExecutionStep
    placement: Placement | None = None
    since: float = field(default_factory=time.monotonic)  # handed out (or put back) at
    waiting_for: str | None = None  # the busy compute pool it chose to wait for
    why_wait: str | None = None  # the comparison that made it wait, said when it is submitted
    exclude: set[str] = field(default_factory=set)
    notes: list[str] = field(default_factory=list)  # what happened before it was submitted
    inputs: list = field(default_factory=list)  # the InputData its latest placement scored
    # The attempt continues after its worker was lost: Dagster has its STEP_START already.
    resumed: bool = False
    lost_workers: int = 0  # workers this attempt has lost (each lets it run again, no retry used)
    outputs: set[tuple[str, str]] = field(default_factory=set)  # dynamic outputs ActiveExecution has seen
    zone_outage: ZoneOutage | None = None  # waiting for its residency zone to come back

    @classmethod
    def again(cls, running: "_Running", note: str) -> "_Waiting":
        """The same attempt of `running`'s step, to be placed again (its worker never ran it,
        or was lost): whether it resumes, and what it has lost and produced, carry over."""
        return cls(
            running.step, notes=[note], resumed=running.resumed, lost_workers=running.lost_workers,
            outputs=running.outputs,
        )


@dataclass
class _Running:
    step: ExecutionStep
    pool_id: str
    site: str
    attempt: int  # Dagster's attempt number (its count of earlier attempts)
    finished: bool = False  # a terminal step event (success/failure/retry) was seen
    retried: bool = False  # ... and it was a retry: this attempt's worker error does not fail the run
    started_at: float = field(default_factory=time.monotonic)
    # (link, expected end) of each input copy its placement implies; they share the links
    # with later copies until they are expected to be done or the step has produced output
    copies: list[tuple[tuple[str, str], float]] = field(default_factory=list)
    resumed: bool = False  # see _Waiting
    lost_workers: int = 0
    outputs: set[tuple[str, str]] = field(default_factory=set)


class _RunLoop:
    """One run's scheduling loop: it owns the run's backends (started and stopped here),
    its placement state and `ActiveExecution`."""

    def __init__(self, executor: GravityExecutor, plan_context, execution_plan, topology: Topology):
        self.ex = executor
        self.config = config = executor.config
        self.plan_context = plan_context
        self.execution_plan = execution_plan
        self.topology = topology
        self.by_pool, self.groups = create_backends(
            topology, config.pool_settings(topology),
            worker_max_steps=config.worker_max_steps, unhealthy_after=config.unhealthy_after,
        )
        self.backends: list[PoolBackend] = [backend for backend, _ in self.groups]
        self.disabled = {p.id for p in topology.pools if config.is_disabled(p.id, p.site)}
        # compute pools whose backend cannot continue an attempt that lost its worker
        self.cannot_resume = {pid for pid, b in self.by_pool.items() if not b.capabilities.resumes_steps}
        total_slots = sum(p.slots for p in topology.pools if p.id not in self.disabled)
        self.limit = config.max_concurrent or max(1, total_slots)
        self.locations = InputLocations(
            plan_context.instance,
            plan_context.job.get_definition(),
            topology,
            partition=plan_context.dagster_run.tags.get("dagster/partition"),
        )
        self.waiting: dict[str, _Waiting] = {}
        self.running: dict[str, _Running] = {}
        self.reported_unhealthy: set[str] = set()
        self.start_failures: dict[str, str] = {}  # pool id -> why its backend did not start
        self.worker_errors: dict[int, SerializableErrorInfo] = {}  # worker pid -> what it raised
        self.stopping = False  # the run was interrupted: running steps are being stopped
        job_name = plan_context.dagster_run.job_name
        self.durations = DurationEstimates(expected_durations(plan_context.instance, job_name))
        self.finished_durations: dict[str, float] = {}  # step key -> seconds, recorded at run end
        self.plan = RunPlan()
        self.planned_healthy: frozenset[str] | None = None  # the healthy pools the plan assumed
        self.replan_reason: str | None = None

    # -- backends ----------------------------------------------------------------------

    def _start_backends(self, stack: ExitStack) -> Iterator[DagsterEvent]:
        """Start every backend (those that fork the run process first); a backend that
        cannot start leaves its compute pools unhealthy. Each started one is stopped when
        the run ends, however it ends."""
        plan_context = self.plan_context
        payload = RunPayload(
            run_id=plan_context.run_id,
            instance_ref=plan_context.instance.get_ref(),
            dagster_run=plan_context.dagster_run,
            run_config=plan_context.run_config,
            recon_job=plan_context.reconstructable_job,
            retry_mode=self.ex.retries,
            sites_file=str(self.topology.source),
            resource_lifetime=self.config.resource_lifetime,
            repository_load_data=self.execution_plan.repository_load_data,
            execution_plan=self.execution_plan,
        )
        # Forked workers must all exist before another backend starts threads (fork safety).
        warm_all = any(not b.capabilities.forks_run_process for b in self.backends)
        for backend, pools in self.groups:
            forks = backend.capabilities.forks_run_process
            try:
                backend.start(payload if forks else payload.without_plan(), pools, warm_all=warm_all and forks)
            except Exception as exc:  # any failure to start: its pools are unhealthy, the run goes on
                error = serializable_error_info_from_exc_info(sys.exc_info())
                for pool in pools:
                    self.start_failures[pool.id] = f"{backend.name} backend failed to start: {exc}"
                yield DagsterEvent.engine_event(
                    plan_context,
                    f"gravity: the {backend.name} backend for compute pools {', '.join(p.id for p in pools)} "
                    f"failed to start; those compute pools are unhealthy: {exc}",
                    EngineEventData.engine_error(error),
                )
                _stop_quietly(backend)
                continue
            stack.callback(backend.stop)

    def _make_plan(self, reason: str | None = None) -> DagsterEvent:
        """Plan the steps that have not started (the whole run at start); started steps are
        fixed where they run."""
        healthy = self.healthy_pools()
        steps = [s for s in self.execution_plan.get_all_steps_in_topo_order() if isinstance(s, ExecutionStep)]
        fixed = dict(self.locations.step_sites)
        self.plan = make_run_plan(steps, self.locations, self.topology, self.config.objective, healthy, fixed)
        self.planned_healthy = frozenset(healthy)
        self.replan_reason = None
        return run_plan_event(self.plan_context, self.plan, reason)

    def _predicted(self) -> dict | None:
        """What the run plan predicts, simulated with slots and expected durations
        (`placement.simulate`), in the run summary's shape; None without a plan."""
        if self.plan.error is not None or not self.plan.steps:
            return None
        durations = {s.key: self.durations.expected(s.key) for s in self.plan.steps}
        try:
            sim = simulate_run(
                self.topology, self.plan.steps, durations, planned_sites=self.plan.sites,
                objective=self.config.objective, healthy=self.healthy_pools(),
                max_decisions=PREDICTION_DECISIONS,
            )
        except GravityError as exc:  # too large, or a step it cannot place (that step says so when it runs)
            log.info("gravity: no prediction for the run summary: %s", exc)
            return None
        return {
            "links": {
                pair: {"bytes": nbytes, "seconds": sim.seconds_per_link[pair], "dollars": sim.dollars_per_link[pair]}
                for pair, nbytes in sim.bytes_per_link.items()
            },
            "steps": dict(sim.pools),
            "makespan_seconds": sim.makespan,
        }

    def _replan_if_diverged(self) -> Iterator[DagsterEvent]:
        if self.replan_reason is None and self.planned_healthy != frozenset(self.healthy_pools()):
            self.replan_reason = "compute pool health changed"
        if self.replan_reason is not None:
            yield self._make_plan(self.replan_reason)

    def _run_start_event(self) -> DagsterEvent:
        pools = {pid: b.name for pid, b in self.by_pool.items() if pid not in self.disabled}
        return DagsterEvent.engine_event(
            self.plan_context,
            f"gravity executor: placing steps on {len(pools)} compute pools of {self.topology.source} "
            f"(pid {os.getpid()})",
            EngineEventData(
                metadata={
                    "pid": MetadataValue.text(str(os.getpid())),
                    "sites_file": MetadataValue.path(str(self.topology.source)),
                    "compute_pools": MetadataValue.json(pools),
                    "disabled_pools": MetadataValue.json(sorted(self.disabled)),
                    "locality_wait": MetadataValue.float(self.config.locality_wait),
                    "expected_step_seconds": MetadataValue.json(self.durations.history),
                    "objective": MetadataValue.text(self.config.objective.describe()),
                }
            ),
        )

    # -- compute pool state ------------------------------------------------------------

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
        """A compute pool's health changed: marked unhealthy, or healthy again (a site
        whose workers had left sees them rejoin)."""
        for pid in self.by_pool:
            if pid in self.disabled or pid in self.start_failures:
                continue
            health = self.by_pool[pid].health(pid)
            if not health.healthy and pid not in self.reported_unhealthy:
                self.reported_unhealthy.add(pid)
                yield pool_unhealthy_event(self.plan_context, pid, health.reason)
            elif health.healthy and pid in self.reported_unhealthy:
                self.reported_unhealthy.discard(pid)
                yield pool_healthy_event(self.plan_context, pid)

    # -- placement ---------------------------------------------------------------------

    def _expected_wait(self, pool_id: str, queued: Mapping[str, list[float]]) -> float:
        """Seconds until a step placed now would get a slot in `pool_id`: its running steps'
        expected remaining time, then the steps already waiting for it."""
        ahead = queued.get(pool_id, [])
        free = self.free_slots(pool_id)
        if free > 0 and not ahead:
            return 0.0
        now = time.monotonic()
        remaining = [
            remaining_seconds(self.durations.expected(r.step.key), now - r.started_at)
            for r in self.running.values() if r.pool_id == pool_id and not r.finished
        ]
        if free == 0 and not remaining:
            # busy with steps this run does not know (another run's): nothing to go by but the default
            slots = self.topology.pool(pool_id).slots
            remaining = [self.durations.default] * slots
        else:
            slots = free + len(remaining)
        return expected_wait(max(1, slots), remaining, ahead)

    def _link_load(self) -> dict[tuple[str, str], int]:
        """How many input copies each directed link is expected to carry now."""
        now = time.monotonic()
        load: dict[tuple[str, str], int] = {}
        for r in self.running.values():
            for link, ends_at in r.copies:
                if ends_at > now:
                    load[link] = load.get(link, 0) + 1
        return load

    def _place(self, w: _Waiting, *, queued: Mapping[str, list[float]] | None = None, spill_from: set[str] = frozenset()) -> Placement:
        """Where `w` should run now: inputs from where they are, outputs on to their consumers'
        planned sites, and each busy compute pool's expected wait (`queued`: the steps already
        waiting per compute pool). With `spill_from`, those pools are excluded instead. Notes
        when the step fails over from a compute pool that would have won had it been healthy."""
        healthy = self.healthy_pools()
        inputs, req, options = self._placement_inputs(w)
        if spill_from:
            return place_step(self.topology, inputs, req, healthy=healthy, exclude=self._excluded(w) | spill_from, **options)
        queued = queued or {}
        waits = {pid: self._expected_wait(pid, queued) for pid in healthy}
        placement = place_step(
            self.topology, inputs, req, healthy=healthy, expected_wait=waits, exclude=self._excluded(w), **options
        )
        unhealthy = {pid for pid in self.by_pool if pid not in healthy and pid not in self.disabled}
        if unhealthy:
            try:
                ideal = place_step(self.topology, inputs, req, healthy=healthy | unhealthy, exclude=self._excluded(w), **options)
            except PlacementError:
                ideal = None
            if ideal is not None and ideal.pool in unhealthy:
                reason = self.unhealthy_reason(ideal.pool)
                note = f"compute pool {ideal.pool} unhealthy ({reason}), failed over to {placement.pool}"
                if note not in w.notes:
                    w.notes.append(note)
        return placement

    def _excluded(self, w: _Waiting) -> set[str]:
        """The compute pools `w` may not go to: those that refused it, and for an attempt that
        resumes after a lost worker, those whose backend cannot resume it."""
        return w.exclude | self.cannot_resume if w.resumed else w.exclude

    def _placement_inputs(self, w: _Waiting) -> tuple[list, object, dict]:
        """What placement needs about `w`: its inputs (and the residency of what it writes),
        its requirements, and the options of `place_step`."""
        step = w.step
        w.inputs = inputs = [*self.locations.inputs_for(step, w.notes), *self.locations.output_residency(step)]
        outputs = self.plan.output_trips(step.key, self.locations.step_sites)
        options = dict(
            objective=self.config.objective, step=step.key, outputs=outputs, link_load=self._link_load(),
            disabled=self.disabled,
        )
        return inputs, requirements_for(step), options

    def _zone_outage(self, w: _Waiting) -> ZoneOutage | None:
        """Why `w` cannot be placed, if it is only that its residency zone has no healthy
        compute pool for now: the zone's pools that are down but may recover, one of which
        would run it. None otherwise (no residency, a wait of 0, nothing that may come back,
        or requirements no pool of the zone meets)."""
        inputs, req, options = self._placement_inputs(w)
        zones = sorted({i.residency for i in inputs if i.residency is not None})
        if not zones:
            return None
        topology = self.topology
        limit, setting = wait_limit(zones, topology.zone_outage_waits, self.config.zone_outage_wait, topology.source)
        if limit <= 0:
            return None
        down: dict[str, str] = {}
        for pid, backend in self.by_pool.items():
            if pid in self.disabled or pid in self.start_failures or pid in self._excluded(w):
                continue
            health = backend.health(pid)
            site = self.topology.pool(pid).site
            if not health.healthy and health.may_recover and all(self.topology.allows(z, site) for z in zones):
                down[pid] = health.reason or "unhealthy"
        if not down:
            return None
        try:  # would one of them run it, were it healthy?
            place_step(self.topology, inputs, req, healthy=self.healthy_pools() | set(down), exclude=self._excluded(w), **options)
        except PlacementError:
            return None
        return ZoneOutage(zones, down, limit, setting)

    def _wait_for_zone(self, w: _Waiting, now: float) -> Iterator[DagsterEvent]:
        """Wait for `w`'s zone (see zone_outage.py) if that is why it cannot be placed;
        sets `w.zone_outage` while it waits, None when it gives up (a note says why)."""
        outage = self._zone_outage(w)
        step_context = self.plan_context.for_step(w.step)
        if outage is None:
            if w.zone_outage is not None:  # what it waited for will not come back now
                w.notes.append(gave_up_note(w.zone_outage, now, limit_reached=False))
                yield gave_up_event(step_context, w.zone_outage, now, limit_reached=False)
                w.zone_outage = None
            return
        if w.zone_outage is None:
            w.zone_outage = outage
            yield waiting_event(step_context, outage)
        w.zone_outage.down = outage.down
        w.zone_outage.checked = now
        if w.zone_outage.waited(now) >= w.zone_outage.limit:
            w.notes.append(gave_up_note(w.zone_outage, now))
            yield gave_up_event(step_context, w.zone_outage, now)
            w.zone_outage = None

    def _dispatch(self) -> Iterator[DagsterEvent]:
        """Place every waiting step (in the order they were handed out) and submit those whose
        best compute pool has a free slot; the others wait for theirs, queued behind the
        steps already waiting for it, or spill once they have waited `locality_wait`."""
        yield from self._replan_if_diverged()
        now = time.monotonic()
        queued: dict[str, list[float]] = {}
        for key in list(self.waiting):
            w = self.waiting[key]
            if w.zone_outage is not None and now - w.zone_outage.checked < ZONE_RECHECK_SECONDS:
                continue  # its zone is down: health is re-checked a few times a second
            try:
                w.placement = placement = self._place(w, queued=queued)
                pool_id = placement.pool
                if w.zone_outage is not None:
                    yield back_event(self.plan_context.for_step(w.step), w.zone_outage, pool_id, placement.site, now)
                    w.notes.append(back_note(w.zone_outage, pool_id, now))
                    w.zone_outage = None
                if self.free_slots(pool_id) > 0 and not queued.get(pool_id):
                    if w.waiting_for == pool_id and w.why_wait:
                        w.notes.append(f"waited {now - w.since:.1f} s: {w.why_wait}")
                    else:
                        if w.waiting_for is not None:  # it waited, then moving became cheaper
                            w.notes.append(f"waited {now - w.since:.1f} s for {w.waiting_for}, then moving won")
                        moved = _move_beats_wait(placement)
                        if moved:
                            w.notes.append(moved)
                    yield from self._submit(w, placement)
                    continue
                if w.waiting_for != pool_id:
                    w.waiting_for, w.why_wait = pool_id, _wait_beats_move(placement)
                waited = now - w.since
                if waited < self.config.locality_wait:
                    queued.setdefault(pool_id, []).append(self.durations.expected(key))
                    continue
                full = {pid for pid in self.by_pool if self.free_slots(pid) <= 0}
                try:
                    spill = self._place(w, spill_from=full)
                except PlacementError:
                    queued.setdefault(pool_id, []).append(self.durations.expected(key))
                    continue  # nowhere else may run it: keep waiting for its compute pool
                w.notes.append(f"waited {waited:.1f} s (locality_wait) for a slot in {pool_id}, spilled to {spill.pool}")
                yield from self._submit(w, spill, waited=waited, spilled_from=pool_id)
            except GravityError as exc:
                # No pool may run it, or a bad op tag, unreadable location metadata, an unknown
                # residency zone: this step's problem, not the run's. Anything else is a bug
                # and fails the run with its traceback. Unless its zone's pools are only down
                # for now: then it waits for them (zone_outage_wait).
                if isinstance(exc, PlacementError):
                    yield from self._wait_for_zone(w, now)
                    if w.zone_outage is not None:
                        continue
                yield from self._fail_unplaceable(w, exc)

    def _submit(self, w: _Waiting, placement: Placement, *, waited: float = 0.0, spilled_from: str | None = None):
        step = w.step
        backend = self.by_pool[placement.pool]
        known_state = self.active.get_known_state()
        attempt = known_state.get_retry_state().get_attempt_count(step.key)
        # The decision is written before the step is handed over, so the event log shows it
        # first and the worker's own writes do not contend with it for the run's event log.
        yield placement_event(self.plan_context.for_step(step), placement, w.notes, waited, spilled_from)
        del self.waiting[step.key]
        copies = transfers_to(self.topology, w.inputs, placement.site, self.config.objective, self._link_load())
        self.running[step.key] = _Running(
            step, placement.pool, placement.site, attempt,
            resumed=w.resumed, lost_workers=w.lost_workers, outputs=w.outputs, copies=_copy_ends(copies),
        )
        self.summary.step_placed(step.key, placement.pool, placement.site, attempt)
        self.locations.step_ran_at(step.key, placement.site)
        planned = self.plan.sites.get(step.key)
        if planned is not None and planned != placement.site:
            self.replan_reason = f"{step.key} runs at {placement.site}, planned at {planned}"
        try:
            backend.submit(placement.pool, StepRequest(step.key, known_state, attempt, resumed=w.resumed))
        except Exception as exc:  # a backend that refuses, for whatever reason: place the step again
            retry = _Waiting.again(self.running.pop(step.key), f"{placement.pool} refused the step ({exc})")
            retry.exclude |= w.exclude | {placement.pool}
            self.waiting[step.key] = retry

    def _fail_unplaceable(self, w: _Waiting, exc: GravityError) -> Iterator[DagsterEvent]:
        del self.waiting[w.step.key]
        explanation, failure = unplaceable_events(self.plan_context.for_step(w.step), exc, w.notes)
        yield explanation
        self.active.handle_event(failure)
        yield failure
        self.active.verify_complete(self.plan_context, w.step.key)

    # -- updates from workers ----------------------------------------------------------

    def _handle_update(self, update) -> Iterator[DagsterEvent]:
        running = self.running.get(update.step_key)
        if running is None or running.attempt != update.attempt:
            # An earlier attempt's late update (its worker's end after the retry was
            # submitted): the worker already wrote its events; ActiveExecution must not see
            # it, or the current attempt would be taken as ended.
            log.debug("gravity: ignoring %r of step %s attempt %s (current: %s)", type(update).__name__,
                      update.step_key, update.attempt, running.attempt if running else None)
            if isinstance(update, StepEvent):
                yield update.event
            return
        if isinstance(update, StepEvent):
            yield from self._handle_event(update, running)
        else:
            yield from self._handle_end(update, running)

    def _handle_event(self, update: StepEvent, running: _Running) -> Iterator[DagsterEvent]:
        event = update.event
        yield event
        # A worker's run-level events (its session's set-up, step_key None) are not the
        # plan's; the step's own events are.
        if event.step_key is not None:
            self.locations.record(event)
            self.summary.observe(event)
            if not self._seen_before(event, running):
                self.active.handle_event(event)
            if event.is_successful_output:
                running.copies = []  # its inputs are in: it no longer shares any link
            if event.is_step_success:
                self.finished_durations[event.step_key] = event.event_specific_data.duration_ms / 1000.0
            if event.is_step_success or event.is_step_failure or event.is_step_up_for_retry:
                running.finished = True
                running.retried = event.is_step_up_for_retry
        if event.is_resource_init_failure and not running.finished:
            # Resources failed to initialise (for the worker's session or for the step):
            # that is the failure of the step that was waiting for them.
            step_context = self.plan_context.for_step(running.step)
            failure = self.ex.log_failure_or_retry_event_after_error(
                step_context, event.engine_event_data.error, self.active.get_known_state()
            )
            yield failure
            self.summary.observe(failure)
            self.active.handle_event(failure)
            running.finished = True
            running.retried = failure.is_step_up_for_retry

    @staticmethod
    def _seen_before(event: DagsterEvent, running: _Running) -> bool:
        """A dynamic output a lost worker had already reported for this attempt: its mapping
        key is ActiveExecution's once (twice, the step would map it twice)."""
        if not event.is_successful_output:
            return False
        handle = event.step_output_data.step_output_handle
        if not handle.mapping_key:
            return False
        seen = (handle.output_name, handle.mapping_key)
        if seen in running.outputs:
            return True
        running.outputs.add(seen)
        return False

    def _handle_end(self, update: StepEnded, running: _Running) -> Iterator[DagsterEvent]:
        del self.running[update.step_key]
        if (
            update.outcome == CRASHED and update.worker_lost and not running.finished and not self.stopping
            and running.lost_workers < self.config.unhealthy_after
        ):
            yield self._resume_elsewhere(running, update)
            return
        if update.error is not None and update.outcome != NOT_STARTED and not running.retried:
            self.worker_errors[update.pid or 0] = update.error
        if update.outcome == NOT_STARTED:
            if self.stopping:  # the run is stopping: nothing more starts
                self.active.mark_abandoned(update.step_key)
                return
            # The worker never ran it: place it again (the pool may now be unhealthy).
            self.waiting[update.step_key] = _Waiting.again(running, f"not started on {update.pool_id}: {update.message}")
            return
        if not running.finished and (update.outcome == CRASHED or update.error is not None):
            yield from self._fail_crashed(running, update)
        self.active.verify_complete(self.plan_context, update.step_key)

    def _resume_elsewhere(self, running: _Running, update: StepEnded) -> DagsterEvent:
        """The backend reports the step's worker gone (it left the cluster), not the step
        failed: the same attempt is placed again, on a live worker (the backend never
        chooses one it knows is gone), and uses no retry. ActiveExecution still has the
        step in flight; the new worker does not write a second STEP_START. Only backends
        that can resume an attempt get it. After `unhealthy_after` lost workers the step
        is taken as the cause: its next loss is a crash, which the RetryPolicy decides."""
        key = running.step.key
        lost = running.lost_workers + 1
        w = _Waiting.again(running, f"resumed after {update.message} (compute pool {update.pool_id})")
        w.resumed, w.lost_workers = True, lost
        self.waiting[key] = w
        return DagsterEvent.engine_event(
            self.plan_context.for_step(running.step),
            f"gravity: {update.message} (compute pool {update.pool_id}); step {key} runs again on a live "
            f"worker as the same attempt, using no retry: the worker was lost, the step did not fail "
            f"(this attempt has lost {lost} worker(s); past unhealthy_after = {self.config.unhealthy_after} "
            "a lost worker counts as a crash, which the RetryPolicy decides)",
            EngineEventData(
                metadata={
                    "gravity/pool_id": MetadataValue.text(update.pool_id),
                    "gravity/worker_lost": MetadataValue.text(update.message),
                    "gravity/lost_workers": MetadataValue.int(lost),
                }
            ),
        )

    def _fail_crashed(self, running: _Running, update: StepEnded) -> Iterator[DagsterEvent]:
        """The step's worker died or failed without the step's own end: a retryable
        failure (a plain failure if the run is stopping: nothing retries then). A crash is
        Dagster's own `ChildProcessCrashException`, as under the multiprocess executor,
        with where it ran in its message."""
        step_context = self.plan_context.for_step(running.step)
        error = update.error
        explanation = update.message
        if error is None:
            where = f"gravity: {update.message} (compute pool {update.pool_id})"
            if update.exit_code is not None:
                where = get_run_crash_explanation(prefix=where + ";", exit_code=update.exit_code)
            explanation = where
            crash = ChildProcessCrashException(update.pid, update.exit_code)
            crash.args = (where,)
            try:
                raise crash
            except ChildProcessCrashException:
                error = serializable_error_info_from_exc_info(sys.exc_info())
        yield DagsterEvent.engine_event(step_context, explanation, EngineEventData.engine_error(error))
        if self.stopping:
            failure = DagsterEvent.step_failure_event(
                step_context=step_context, step_failure_data=StepFailureData(error=error, user_failure_data=None)
            )
        else:
            failure = self.ex.log_failure_or_retry_event_after_error(step_context, error, self.active.get_known_state())
        if failure.is_step_failure and update.error is None:
            self.worker_errors[update.pid or 0] = error
        self.summary.observe(failure)
        self.active.handle_event(failure)
        yield failure

    # -- the loop ----------------------------------------------------------------------

    def _interrupt(self) -> DagsterEvent:
        self.stopping = True
        event = DagsterEvent.engine_event(
            self.plan_context,
            "gravity executor: received termination signal - interrupting running steps",
            EngineEventData.interrupted(list(self.running)),
        )
        self.active.mark_interrupted()
        for backend in self.backends:
            backend.interrupt()
        for key in list(self.waiting):
            del self.waiting[key]
            self.active.mark_abandoned(key)
        return event

    def _poll(self) -> Iterator[DagsterEvent]:
        """Wait briefly for updates from the workers and handle them."""
        timeout = POLL_SECONDS
        # Steps waiting for a slot are re-scored often; those waiting for their zone only
        # re-check a few times a second (ZONE_RECHECK_SECONDS), so they do not spin the loop.
        if any(w.zone_outage is None for w in self.waiting.values()):
            timeout = 0.02
        elif not self.running:
            timeout = min(POLL_SECONDS, max(0.0, self.active.sleep_interval()) or (POLL_SECONDS if self.waiting else 0.01))
        got_any = False
        for backend in self.backends:
            for update in backend.poll(timeout / len(self.backends)):
                got_any = True
                yield from self._handle_update(update)
        if got_any:
            yield from self.unhealthy_events()

    def run(self, stack: ExitStack) -> Iterator[DagsterEvent]:
        plan_context = self.plan_context
        self.summary = RunSummary(self.topology)
        yield self._run_start_event()
        yield from self._start_backends(stack)
        yield self._make_plan()
        predicted = self._predicted()  # the start plan's simulated run, for the summary
        stack.callback(self._record_durations)
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
                    yield self._interrupt()
                if not self.stopping:
                    room = self.limit - len(self.running) - len(self.waiting)
                    if room > 0:
                        for step in active.get_steps_to_execute(limit=room):
                            self.waiting[step.key] = _Waiting(step)
                    yield from active.concurrency_event_iterator(plan_context)
                    yield from self.unhealthy_events()
                    yield from self._dispatch()
                yield from self._poll()
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
            yield self.summary.event(plan_context, predicted)  # what ran until the error
            raise

        # Where each step ran and what moved: on every run, before it ends as failed or interrupted.
        yield self.summary.event(plan_context, predicted)

        # As the multiprocess executor does: a run whose workers raised (a step's resources
        # failed to initialise, a crash that failed its step) fails with those errors;
        # interrupted, it ends as interrupted when those are all interrupts.
        errors = {pid: err for pid, err in self.worker_errors.items() if err}
        if self.stopping and all(err.cls_name in INTERRUPTS for err in errors.values()):
            yield DagsterEvent.engine_event(plan_context, "gravity executor: interrupted all running steps", EngineEventData())
            raise DagsterExecutionInterruptedError()
        if errors:
            raise DagsterSubprocessError(
                "During gravity execution errors occurred in worker processes:\n"
                + "\n".join(f"In process {pid}: {err.to_string()}" for pid, err in errors.items()),
                subprocess_error_infos=list(errors.values()),
            )


    def _record_durations(self) -> None:
        # What a step takes wherever it runs: its duration less the time it spent copying
        # inputs (a step that ran away from its data must not teach that it is slow).
        durations = {}
        for key, seconds in self.finished_durations.items():
            copying = self.summary.steps[key].seconds_in if key in self.summary.steps else 0.0
            durations[key] = max(0.0, seconds - copying)
        try:
            record_durations(self.plan_context.instance, self.plan_context.dagster_run.job_name, durations)
        except Exception:  # history is an estimate: failing to keep it must not fail the run
            log.warning("gravity: could not record step durations", exc_info=True)


def _copy_ends(copies) -> list[tuple[tuple[str, str], float]]:
    """(link, expected end) of copies made one after another from now."""
    now, out = time.monotonic(), []
    for move in copies:
        now += move.seconds
        out.append(((move.src, move.dst), now))
    return out


def _wait_beats_move(placement: Placement) -> str | None:
    """"waiting ~2.1 s for P beats moving 56.7 MB (5.1 s) to Q", for a step that waits."""
    best = placement.candidates[0]
    free = next((c for c in placement.candidates[1:] if c.feasible and c.wait_seconds == 0), None)
    if free is None:
        return f"waiting ~{best.wait_seconds:.2g} s for {best.pool}: no other compute pool has a free slot"
    moves = free.bytes_moved + free.output_bytes
    return (
        f"waiting ~{best.wait_seconds:.2g} s for {best.pool} beats moving {format_bytes(moves)} "
        f"({free.transfer_seconds + free.output_seconds:.2g} s) to {free.pool} (score {best.score:.3g} vs {free.score:.3g})"
    )


def _move_beats_wait(placement: Placement) -> str | None:
    """"moving 1 MB (0.1 s) to Q beats waiting ~30 s for P", when the step moves data
    rather than wait for a busy compute pool that would move less."""
    best = placement.candidates[0]
    moves = best.bytes_moved + best.output_bytes
    busy = [c for c in placement.candidates[1:] if c.feasible and c.wait_seconds > 0 and c.bytes_moved + c.output_bytes < moves]
    if not busy:
        return None
    alt = min(busy, key=lambda c: c.score)
    return (
        f"moving {format_bytes(moves)} ({best.transfer_seconds + best.output_seconds:.2g} s) to {best.pool} beats "
        f"waiting ~{alt.wait_seconds:.2g} s for {alt.pool} (score {best.score:.3g} vs {alt.score:.3g})"
    )


def _stop_quietly(backend: PoolBackend) -> None:
    try:
        backend.stop()
    except Exception:  # it failed to start; its own stop may fail too, and must not hide why
        pass
