"""Run one step of a run inside a warm worker: the code every pool backend's worker shares.

A worker (a forked process of the local backend, a Dask worker, ...) receives a `RunPayload`
once per run and then a step key plus Dagster's `KnownExecutionState` per step. It runs the
step the way Dagster's own multiprocess children do (`execute_plan_iterator` over a one-step
plan, so each step gets its own step context, resources and retry handling), writes the
events to the instance, and yields them so the backend can stream them to the executor.

What a worker builds for a run is kept per run id, so the cost of a step does not grow with
the size of the job and is close to an in-process step:

* the instance, the job definition and the full execution plan are built once;
* a *session* holds one Dagster `PlanExecutionContext` for the run in this worker, the way
  `in_process_executor` holds one for the whole run: resources are initialised and stdout/
  stderr capture is set up once per worker, not per step. Each step still gets its own
  `StepExecutionContext` (`job_context.for_step(step, known_state)`), runs through Dagster's
  own `dagster_event_sequence_for_step` (retries, `RetryRequested`, `Failure`, interrupts)
  and its hooks, and is announced with a LOGS_CAPTURED event so the UI shows its logs;
* a step the session's plan does not hold (a dynamic step resolved after the plan was
  built) runs the way Dagster's multiprocess children run it: a one-step plan through
  `execute_plan_iterator`.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping

from dagster import DagsterInstance, MetadataValue
from dagster._core.definitions.reconstruct import ReconstructableJob
from dagster._core.events import DagsterEvent
from dagster._core.execution.api import (
    ExecuteRunWithPlanIterable,
    create_execution_plan,
    execute_plan_iterator,
)
from dagster._core.execution.compute_logs import create_compute_log_file_key
from dagster._core.execution.context_creation_job import (
    PlanExecutionContextManager,
    create_context_free_log_manager,
)
from dagster._core.execution.plan.execute_plan import _trigger_hook, dagster_event_sequence_for_step
from dagster._core.execution.plan.plan import ExecutionPlan
from dagster._core.execution.plan.state import KnownExecutionState
from dagster._core.execution.plan.step import ExecutionStep
from dagster._core.execution.retries import RetryMode
from dagster._core.instance.ref import InstanceRef
from dagster._core.storage.dagster_run import DagsterRun

from dagster_gravity import runtime
from dagster_gravity.metadata import ENV_SITE


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
            repository_load_data=self.repository_load_data,
        )


def _mapping_signature(known_state: KnownExecutionState | None) -> str:
    if known_state is None or not known_state.dynamic_mappings:
        return ""
    return repr(sorted((k, sorted(v.items())) for k, v in known_state.dynamic_mappings.items()))


_STEP_END = object()  # marks the end of one step's events inside a session


class _Session:
    """One long-lived Dagster execution context for a run inside this worker.

    Wraps Dagster's own `ExecuteRunWithPlanIterable` (context + resources set-up and
    teardown, interrupt capture) around `_serve`, which runs one requested step at a time
    and then yields `_STEP_END`; between steps the generator stays suspended, keeping the
    context and resources alive.
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

    def _serve(self, execution_plan: ExecutionPlan, job_context) -> Iterator[Any]:
        manager = job_context.instance.compute_log_manager
        log_key = manager.build_log_key_for_run(job_context.run_id, create_compute_log_file_key())
        with ExitStack() as capture:
            try:
                log_context = capture.enter_context(manager.capture_logs(log_key))
            except Exception:
                log_context = None
            while self._request is not None:
                step_key, known_state = self._request
                self._request = None
                # An interrupt captured between steps is not cleared: the executor only
                # interrupts a stopping run, so a step queued behind it fails as interrupted
                # as soon as its user code starts (Dagster's `raise_interrupts_as`).
                step = execution_plan.get_step_by_key(step_key)
                if log_context is not None:
                    yield DagsterEvent.capture_logs(job_context, [step_key], log_key, log_context)
                step_context = job_context.for_step(step, known_state)
                events = []
                for event in dagster_event_sequence_for_step(step_context):
                    events.append(event)
                    yield event
                yield from _trigger_hook(step_context, events)
                yield _STEP_END

    def run(self, step_key: str, known_state: KnownExecutionState) -> Iterator[DagsterEvent]:
        """The step's events; sets `alive` False if the session ended instead (set-up failed)."""
        self._request = (step_key, known_state)
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
            if not ended:  # abandoned mid-step: the context is in an unknown state
                self.alive = False
                self.close()

    def close(self) -> None:
        self._request = None
        try:
            self._events.close()  # type: ignore[attr-defined]
        except Exception:
            pass


class _RunCache:
    """What a worker has built for one run: instance, job, full plan (per dynamic state)."""

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
        self.session: _Session | None = None

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

    def session_for(self, step_key: str, known_state: KnownExecutionState) -> _Session | None:
        """The run's session if it can run this step (the step is in its plan)."""
        if self.session is not None and not self.session.alive:
            self.session = None
        if self.session is None:
            plan = self.full_plan(known_state)
            if not isinstance(plan.step_dict_by_key.get(step_key), ExecutionStep):
                return None
            self.session = _Session(self, plan)
        if not isinstance(self.session.plan.step_dict_by_key.get(step_key), ExecutionStep):
            return None
        return self.session

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

    def close(self) -> None:
        if self.session is not None:
            self.session.close()
            self.session = None
        self.instance.dispose()


class StepRunner:
    """Runs steps for a worker at one site, caching per-run state (a few runs at most)."""

    MAX_CACHED_RUNS = 4

    def __init__(self, site: str, pool_id: str | None = None):
        self.site = site
        self.pool_id = pool_id
        self._runs: OrderedDict[str, _RunCache] = OrderedDict()
        # Code that looks at the environment (subprocesses, libraries) sees the site too.
        os.environ[ENV_SITE] = site

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

    def warm(self, payload: RunPayload) -> None:
        """Build the per-run cache ahead of the first step (overlaps with the executor's work)."""
        self._cache(payload)

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
        *,
        announce: bool = False,
    ) -> Iterator[DagsterEvent]:
        """Execute one step; events are written to the instance and yielded."""
        cache = self._cache(payload)
        with runtime.running_at(self.site):
            if announce:
                yield self.worker_started_event(
                    payload,
                    step_key,
                    f'Executing step "{step_key}" in a warm worker at site {self.site}.',
                    {
                        "pid": MetadataValue.text(str(os.getpid())),
                        "gravity/site": MetadataValue.text(self.site),
                        "gravity/pool": MetadataValue.text(self.pool_id or ""),
                    },
                )
            session = cache.session_for(step_key, known_state)
            if session is not None:
                yield from session.run(step_key, known_state)
                if not session.alive:
                    # It could not set up (a resource failed to initialise; the failure event
                    # was just yielded and fails this step). The next step tries a new one.
                    cache.session = None
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
            _, cache = self._runs.popitem()
            cache.close()
