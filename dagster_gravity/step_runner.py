"""Run one step of a run inside a warm worker: the code every pool backend's worker shares.

A worker (a forked process of the local backend, a Dask worker, ...) receives a `RunPayload`
once per run and then a step key plus Dagster's `KnownExecutionState` per step. It runs the
step the way Dagster's own multiprocess children do (`execute_plan_iterator` over a one-step
plan, so each step gets its own step context, resources and retry handling), writes the
events to the instance, and yields them so the backend can stream them to the executor.

What a worker builds for a run is kept per run id, so the cost of a step does not grow with
the size of the job and is close to an in-process step:

* the instance, the job definition and the full execution plan are built once;
* a *session* is a Dagster `PlanExecutionContext` built on a one-step plan, so it
  initialises only the resources that step needs, as Dagster's multiprocess children do (a
  worker never initialises the resources of steps that run elsewhere, and a resource that
  fails to initialise fails only the steps that need it). By default (`resource_lifetime:
  step`) each step gets a new session that is ended when the step ends: its resources are
  torn down then, and teardown errors are events of that step, exactly as under the
  multiprocess executor. With `resource_lifetime: run` (opt-in, for expensive resources) a
  session is kept per run and *set of resource keys* and reused by later steps with the
  same set. Either way each step gets its own `StepExecutionContext`
  (`job_context.for_step(step, known_state)`), runs through Dagster's own
  `dagster_event_sequence_for_step` (retries, `RetryRequested`, `Failure`, interrupts) and
  its hooks, and is announced with a LOGS_CAPTURED event so the UI shows its logs;
* stdout/stderr capture (the compute log manager's process-wide redirect and its `tail -F`
  children) is held per run, and by at most one run of the process at a time: a run that
  needs it takes it from the run that held it (which closes its capture first), so
  redirects never stack and never unwind out of order;
* a step no session plan holds (a dynamic step resolved after the plan was built) runs the
  way Dagster's multiprocess children run it: a one-step plan through `execute_plan_iterator`.

A run's cache lives until the backend says the run ended (`StepRunner.close_run`: sessions
torn down, resources released, capture closed) or, as a safety net, until newer runs evict
it (`MAX_CACHED_RUNS`).
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping

from dagster import DagsterInstance

from dagster_gravity.dagster_internals import (
    DagsterEvent,
    DagsterRun,
    ExecuteRunWithPlanIterable,
    ExecutionPlan,
    ExecutionStep,
    InstanceRef,
    KnownExecutionState,
    LOG_RECORD_EVENT_ATTR,
    PlanExecutionContextManager,
    ReconstructableJob,
    RetryMode,
    create_compute_log_file_key,
    create_context_free_log_manager,
    create_execution_plan,
    dagster_event_sequence_for_step,
    execute_plan_iterator,
    get_required_resource_keys_to_init,
    trigger_hook,
)
from dagster_gravity import runtime


# How long a step's resources live in a worker.
STEP = "step"  # initialised for each step and torn down when it ends: Dagster's multiprocess semantics
RUN = "run"  # opt-in: kept per worker, run and set of resource keys, torn down when the run ends
RESOURCE_LIFETIMES = {
    STEP: "initialised for each step and torn down when it ends, as under Dagster's multiprocess "
    "executor (teardown errors are events of that step)",
    RUN: "initialised once per worker, run and set of resource keys, reused by later steps on that "
    "worker and torn down when the run ends (for expensive resources; teardown errors are then "
    "logged by the worker, not events of a step)",
}


@dataclass
class RunPayload:
    """Everything a worker needs to run any step of one run. Picklable.

    `execution_plan` is an optimisation for workers that share memory with the executor
    (forked local workers): they start with the plan the run already built. Backends that
    ship the payload across the network set it to None and the worker builds it once.
    """

    run_id: str
    instance_ref: InstanceRef
    dagster_run: DagsterRun
    run_config: Mapping[str, Any]
    recon_job: ReconstructableJob
    retry_mode: RetryMode
    sites_file: str | None = None  # the topology file the executor resolved for the run
    resource_lifetime: str = STEP  # STEP or RUN: see RESOURCE_LIFETIMES
    repository_load_data: Any = None
    execution_plan: ExecutionPlan | None = field(default=None, repr=False)

    def without_plan(self) -> "RunPayload":
        return RunPayload(
            run_id=self.run_id,
            instance_ref=self.instance_ref,
            dagster_run=self.dagster_run,
            run_config=self.run_config,
            recon_job=self.recon_job,
            retry_mode=self.retry_mode,
            sites_file=self.sites_file,
            resource_lifetime=self.resource_lifetime,
            repository_load_data=self.repository_load_data,
        )


def _mapping_signature(known_state: KnownExecutionState | None) -> str:
    if known_state is None or not known_state.dynamic_mappings:
        return ""
    return repr(sorted((k, sorted(v.items())) for k, v in known_state.dynamic_mappings.items()))


_STEP_END = object()  # marks the end of one step's events inside a session


class _NoStepStart(logging.Filter):
    """Keeps a resumed attempt's STEP_START out of the event log: the attempt's first worker
    wrote it before it was lost, and Dagster counts one start per attempt."""

    def filter(self, record: logging.LogRecord) -> bool:
        event = getattr(record, LOG_RECORD_EVENT_ATTR, None)
        return getattr(event, "event_type_value", None) != "STEP_START"


class _Session:
    """A Dagster execution context for one step, or for some steps of a run, in this worker.

    Wraps Dagster's own `ExecuteRunWithPlanIterable` (context + resources set-up and
    teardown, interrupt capture) around `_serve`, which runs one requested step at a time
    and then yields `_STEP_END`; between steps the generator stays suspended, keeping the
    context and resources alive. `plan` is a one-step plan: resources are those its step
    (and, with run-scoped resources, every later step with the same resource keys) needs.
    `finish` ends it: resources are torn down and the teardown's events yielded.
    """

    def __init__(self, cache: "_RunCache", plan: ExecutionPlan):
        self.cache = cache
        self.plan = plan
        self._request: tuple[str, KnownExecutionState] | None = None
        payload = cache.payload
        self._events = iter(
            ExecuteRunWithPlanIterable(
                execution_plan=plan,
                iterator=self._serve,
                execution_context_manager=PlanExecutionContextManager(
                    job=cache.job,
                    execution_plan=plan,
                    run_config=payload.run_config,
                    dagster_run=payload.dagster_run,
                    instance=cache.instance,
                    retry_mode=payload.retry_mode.for_inner_plan(),
                ),
            )
        )
        self.alive = True
        self.running = False

    def _serve(self, execution_plan: ExecutionPlan, job_context) -> Iterator[Any]:
        while self._request is not None:
            step_key, known_state, resumed = self._request
            self._request = None
            # An interrupt captured between steps is not cleared: the executor only
            # interrupts a stopping run, so a step queued behind it fails as interrupted
            # as soon as its user code starts (Dagster's `raise_interrupts_as`).
            step = execution_plan.get_step_by_key(step_key)
            log_key, log_context = self.cache.take_capture()
            if log_context is not None:
                yield DagsterEvent.capture_logs(job_context, [step_key], log_key, log_context)
            step_context = job_context.for_step(step, known_state)
            if resumed:
                step_context.log.addFilter(_NoStepStart())
            events = []
            for event in dagster_event_sequence_for_step(step_context):
                events.append(event)
                yield event
            yield from trigger_hook(step_context, events)
            yield _STEP_END

    def run(self, step_key: str, known_state: KnownExecutionState, resumed: bool = False) -> Iterator[DagsterEvent]:
        """The step's events; sets `alive` False if the session ended instead (set-up failed).
        `resumed`: see `StepRunner.run_step`."""
        self._request = (step_key, known_state, resumed)
        self.running = True
        ended = False
        try:
            for item in self._events:
                if item is _STEP_END:
                    ended = True
                    return
                yield item
            ended = True
            self.alive = False
        finally:
            self.running = False
            if not ended:  # abandoned mid-step: the context is in an unknown state
                self.alive = False
                self.close()

    def finish(self) -> Iterator[DagsterEvent]:
        """End the session now, as a step's own process would end: its resources are torn
        down (context managers' exits run) and the events of the teardown (a teardown
        failure, for one) are yielded with the step's."""
        self._request = None
        try:
            for item in self._events:
                if item is not _STEP_END:
                    yield item
        finally:
            self.alive = False

    def close(self) -> None:
        self._request = None
        try:
            self._events.close()  # type: ignore[attr-defined]
        except Exception:
            pass


# The run whose compute-log capture is open in this process (at most one: the compute log
# manager redirects the process's stdout/stderr file descriptors, which do not nest safely
# across runs that end in any order).
_CAPTURE_LOCK = threading.RLock()
_capture_owner: "_RunCache | None" = None


class _RunCache:
    """What a worker has built for one run: instance, job, full plan, sessions, log capture."""

    def __init__(self, payload: RunPayload):
        self.payload = payload
        self.instance = DagsterInstance.from_ref(payload.instance_ref)
        job = payload.recon_job
        if payload.repository_load_data is not None:
            job = job.with_repository_load_data(payload.repository_load_data)
        self.job = job
        self.plan: ExecutionPlan | None = payload.execution_plan
        self.plan_signature = _mapping_signature(self.plan.known_state) if self.plan else None
        self.log_manager = create_context_free_log_manager(self.instance, payload.dagster_run)
        self.sessions: dict[frozenset[str], _Session] = {}  # resource keys -> session
        self._resource_keys: dict[str, frozenset[str]] = {}  # step key -> its resource keys
        self._capture: ExitStack | None = None
        self._log_key: list[str] | None = None
        self._log_context: Any = None
        self.closed = False

    # -- compute-log capture -------------------------------------------------------------

    def take_capture(self) -> tuple[Any, Any]:
        """(log key, log context) of this run's capture, opened now if needed; the capture
        of another run of this process is closed first, so captures never stack."""
        global _capture_owner
        with _CAPTURE_LOCK:
            if _capture_owner is not None and _capture_owner is not self:
                _capture_owner.release_capture()
            if self._capture is None:
                manager = self.instance.compute_log_manager
                key = manager.build_log_key_for_run(self.payload.run_id, create_compute_log_file_key())
                stack = ExitStack()
                try:
                    self._log_context = stack.enter_context(manager.capture_logs(key))
                except Exception:
                    stack.close()
                    return None, None
                self._capture, self._log_key = stack, key
                _capture_owner = self
            return self._log_key, self._log_context

    def release_capture(self) -> None:
        global _capture_owner
        with _CAPTURE_LOCK:
            stack, self._capture, self._log_context = self._capture, None, None
            if _capture_owner is self:
                _capture_owner = None
            if stack is not None:
                try:
                    stack.close()
                except Exception:
                    pass

    # -- plans and sessions --------------------------------------------------------------

    def full_plan(self, known_state: KnownExecutionState | None) -> ExecutionPlan:
        if self.plan is None:
            self.plan = create_execution_plan(
                job=self.job,
                run_config=self.payload.run_config,
                known_state=known_state,
                repository_load_data=self.payload.repository_load_data,
            )
            self.plan_signature = _mapping_signature(known_state)
        return self.plan

    def resource_keys(self, step_key: str, plan: ExecutionPlan) -> frozenset[str]:
        """The resources Dagster would initialise for `step_key` alone (transitively, hooks
        included): what a session for this step sets up."""
        keys = self._resource_keys.get(step_key)
        if keys is None:
            keys = frozenset(get_required_resource_keys_to_init(plan, self.job.get_definition()))
            self._resource_keys[step_key] = keys
        return keys

    def session_for(self, step_key: str, known_state: KnownExecutionState) -> _Session | None:
        """The session to run this step in, or None if no plan holds the step. Resources per
        step (the default): a new session, ended after the step. Per run: the session for
        this step's resource keys, kept for later steps."""
        full = self.full_plan(known_state)
        if not isinstance(full.step_dict_by_key.get(step_key), ExecutionStep):
            return None
        plan = self.plan_for(step_key, known_state)
        if self.payload.resource_lifetime == STEP:
            return _Session(self, plan)
        keys = self.resource_keys(step_key, plan)
        session = self.sessions.get(keys)
        if session is not None and not session.alive:
            del self.sessions[keys]
            session = None
        if session is None:
            session = _Session(self, plan)
            self.sessions[keys] = session
        elif not isinstance(session.plan.step_dict_by_key.get(step_key), ExecutionStep):
            return None  # a step resolved after that session's plan was built
        return session

    def drop_session(self, session: _Session) -> None:
        for keys, held in list(self.sessions.items()):
            if held is session:
                del self.sessions[keys]

    def plan_for(self, step_key: str, known_state: KnownExecutionState) -> ExecutionPlan:
        """A one-step plan for `step_key`, cut out of the cached full plan.

        The full plan is rebuilt only when dynamic outputs resolved since it was built (the
        step is then not in it yet); everything else reuses it.
        """
        signature = _mapping_signature(known_state)
        plan = self.plan
        if plan is None or (
            step_key not in plan.step_dict_by_key and signature != self.plan_signature
        ):
            plan = create_execution_plan(
                job=self.job,
                run_config=self.payload.run_config,
                known_state=known_state,
                repository_load_data=self.payload.repository_load_data,
            )
            self.plan, self.plan_signature = plan, signature
        step = plan.step_dict_by_key.get(step_key)
        if not isinstance(step, ExecutionStep):
            # Fall back to Dagster's own subsetting (validates and raises a clear error).
            return create_execution_plan(
                job=self.job,
                run_config=self.payload.run_config,
                step_keys_to_execute=[step_key],
                known_state=known_state,
                repository_load_data=self.payload.repository_load_data,
            )
        return ExecutionPlan(
            plan.step_dict,
            {step_key: step.handle},
            {},
            [step.handle],
            known_state,
            artifacts_persisted=plan.artifacts_persisted,
            step_dict_by_key=plan.step_dict_by_key,
            executor_name=plan.executor_name,
            repository_load_data=plan.repository_load_data,
        )

    def busy(self) -> bool:
        return any(session.running for session in self.sessions.values())

    def close(self) -> None:
        """Tear down every session (newest first), then the capture and the instance.

        A session that is running a step right now (another thread) is left to the step's
        own end: `StepRunner.run_step` closes the cache after it when `closed` is set.
        """
        self.closed = True
        for keys in reversed(list(self.sessions)):
            session = self.sessions[keys]
            if session.running:
                return
            del self.sessions[keys]
            session.close()
        self.release_capture()
        self.instance.dispose()


class StepRunner:
    """Runs steps for a worker at one site, caching per-run state until the run ends.

    The backend calls `close_run(run_id)` when a run ends; `MAX_CACHED_RUNS` only bounds
    what a worker holds if that call never arrives (a lost executor).
    """

    MAX_CACHED_RUNS = 4

    def __init__(self, site: str, pool_id: str | None = None):
        self.site = site
        self.pool_id = pool_id
        self._runs: OrderedDict[str, _RunCache] = OrderedDict()

    def _cache(self, payload: RunPayload) -> _RunCache:
        cache = self._runs.get(payload.run_id)
        if cache is None:
            cache = _RunCache(payload)
            self._runs[payload.run_id] = cache
            while len(self._runs) > self.MAX_CACHED_RUNS:
                _, old = self._runs.popitem(last=False)
                old.close()
        else:
            self._runs.move_to_end(payload.run_id)
        return cache

    def close_run(self, run_id: str) -> bool:
        """Close what this worker holds for `run_id` (sessions and their resources, log
        capture, instance) and forget it. True if it held anything."""
        cache = self._runs.pop(run_id, None)
        if cache is None:
            return False
        cache.close()
        return True

    def cached_run_ids(self) -> list[str]:
        return list(self._runs)

    def warm(self, payload: RunPayload) -> None:
        """Build the per-run cache ahead of the first step (overlaps with the executor's work)."""
        self._cache(payload)

    def open_capture(self, payload: RunPayload) -> None:
        """Open the run's stdout/stderr capture now (it is kept for the run), so the
        processes it starts exist before a step's own processes are counted."""
        self._cache(payload).take_capture()

    def worker_started_event(
        self, payload: RunPayload, step_key: str, message: str, metadata: Mapping[str, Any]
    ) -> DagsterEvent:
        """A STEP_WORKER_STARTED event for `step_key`, written to the run's instance through
        this worker's log manager for the run (built once per run, like the rest of the cache)."""
        cache = self._cache(payload)
        return DagsterEvent.step_worker_started(
            cache.log_manager,
            payload.dagster_run.job_name,
            message=message,
            metadata=dict(metadata),
            step_key=step_key,
        )

    def run_step(
        self,
        payload: RunPayload,
        step_key: str,
        known_state: KnownExecutionState,
        resumed: bool = False,
    ) -> Iterator[DagsterEvent]:
        """Execute one step; events are written to the instance and yielded.

        `resumed`: this attempt already started on a worker that was lost; its STEP_START is
        still yielded (it marks where the step's own work begins) but not written again."""
        cache = self._cache(payload)
        with runtime.running_at(self.site, payload.sites_file):
            session = cache.session_for(step_key, known_state)
            own_session = False
            if session is None and resumed:
                # Only a session's step context can hold back the STEP_START: one just for it.
                session, own_session = _Session(cache, cache.plan_for(step_key, known_state)), True
            if session is not None:
                try:
                    yield from session.run(step_key, known_state, resumed)
                    if (payload.resource_lifetime == STEP or own_session) and session.alive:
                        yield from session.finish()
                finally:
                    if not session.alive:
                        # It could not set up (a resource failed to initialise; the failure
                        # event was just yielded and fails this step). The next step of the
                        # same resources tries a new one.
                        cache.drop_session(session)
                    if cache.closed:  # the run ended while this step ran: finish closing
                        cache.close()
                return
            plan = cache.plan_for(step_key, known_state)
            yield from execute_plan_iterator(
                plan,
                cache.job,
                payload.dagster_run,
                run_config=payload.run_config,
                retry_mode=payload.retry_mode.for_inner_plan(),
                instance=cache.instance,
            )

    def close(self) -> None:
        while self._runs:
            _, cache = self._runs.popitem()  # newest first
            cache.close()
