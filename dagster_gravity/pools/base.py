"""The pool-backend protocol: how the executor starts pools, runs steps on them and hears back.

A backend owns one or more pools (from the topology) and runs steps in workers at each
pool's site. The executor drives it from its single-threaded `ActiveExecution` loop:

    backend.capabilities                # what the executor may rely on (BackendCapabilities)
    backend.start(run, pools, warm_all=False)  # once per run; may warm workers in the background
    backend.free_slots(pool_id)         # a slot now? (delay scheduling waits for one)
    backend.submit(pool_id, request)    # hand over a step; returns at once
    backend.poll(timeout)               # the updates since the last poll (events, ends)
    backend.health(pool_id)             # PoolHealth: unhealthy pools get no more steps
    backend.interrupt()                 # the run is being stopped: interrupt running steps
    backend.stop()                      # end of run: stop every worker, leave nothing behind
    backend.probe(pools, timeout_s)     # outside a run (`gravity sites --health`): each pool's health

Every submitted step attempt ends with exactly one `StepEnded`, whatever happens to its
worker, and a worker takes no other step until that end has been reported:
`outcome` says whether it ran to completion, crashed mid-step (the executor turns that into
a retryable step failure; or, when `worker_lost` says the backend knows the worker is gone,
runs the same attempt again elsewhere without a retry, on backends that declare
`resumes_steps`), or never started (the executor places it again elsewhere).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, Sequence, Union, runtime_checkable

if TYPE_CHECKING:
    from dagster_gravity.dagster_internals import DagsterEvent, KnownExecutionState

    from dagster_gravity.step_runner import RunPayload
    from dagster_gravity.topology import Pool


@dataclass(frozen=True)
class StepRequest:
    step_key: str
    known_state: "KnownExecutionState"
    # Dagster's count of the step's previous attempts: which attempt this is. Every update
    # about it carries the same number, so an update of an earlier attempt (its end can
    # arrive after the retry was submitted) is never taken for the current one.
    attempt: int = 0
    # The attempt continues on a new worker after its worker was lost (`StepEnded.worker_lost`):
    # Dagster already has its STEP_START, so the worker does not write another one.
    resumed: bool = False


@dataclass(frozen=True)
class Submission:
    """What a backend tells the executor about where a submitted step went."""

    pool_id: str
    worker: str  # a human-readable worker id, e.g. "pid 1234" or a Dask worker address
    pid: int | None = None


@dataclass(frozen=True)
class StepEvent:
    """A Dagster event the worker produced (already written to the instance)."""

    step_key: str
    event: "DagsterEvent"
    attempt: int = 0


COMPLETED = "completed"  # the worker ran the step to its end (success or failure events sent)
CRASHED = "crashed"  # the worker died or failed mid-step: a retryable failure
NOT_STARTED = "not_started"  # the step never began (worker could not start): place it again


@dataclass(frozen=True)
class StepEnded:
    step_key: str
    outcome: str  # COMPLETED, CRASHED or NOT_STARTED
    pool_id: str
    message: str = ""
    pid: int | None = None
    exit_code: int | None = None
    error: Any = None  # a SerializableErrorInfo when the worker reported one
    attempt: int = 0
    # CRASHED because the backend knows the worker is gone (it left the cluster), not because
    # the step failed: the executor runs the attempt again elsewhere without using a retry.
    worker_lost: bool = False


StepUpdate = Union[StepEvent, StepEnded]


@dataclass(frozen=True)
class BackendCapabilities:
    """What a backend declares about itself, so the executor never checks its name.

    forks_run_process: its workers are forked from the run's own process. They share its
    memory, so they get the run's execution plan as it is (others get the payload without
    it and build it once); and in a run that mixes backends, all of them must be forked
    (`start(..., warm_all=True)`) before another backend starts threads (fork safety).
    """

    forks_run_process: bool = False
    # Its workers can continue an attempt whose worker was lost (`StepRequest.resumed`)
    # without writing a second STEP_START; only such backends get a resumed attempt.
    resumes_steps: bool = False


@dataclass(frozen=True)
class PoolHealth:
    healthy: bool
    reason: str = ""
    workers: int = 0
    busy: int = 0
    consecutive_failures: int = 0
    detail: str = ""  # for a healthy pool: what was checked (`probe`)
    # For an unhealthy pool: whether it may become healthy again during the run (a site whose
    # workers left may see them return); a step whose zone has no healthy pool waits only for
    # such pools (`zone_outage_wait`). A pool marked unhealthy for good says False.
    may_recover: bool = False


@runtime_checkable
class PoolBackend(Protocol):
    name: str
    capabilities: BackendCapabilities

    def start(self, run: "RunPayload", pools: Sequence["Pool"], *, warm_all: bool = False) -> None:
        """Take the run's compute pools. `warm_all`: start every worker now (see
        BackendCapabilities.forks_run_process); backends that do not fork ignore it."""

    def free_slots(self, pool_id: str) -> int: ...

    def submit(self, pool_id: str, request: StepRequest) -> Submission: ...

    def poll(self, timeout: float) -> list[StepUpdate]: ...

    def health(self, pool_id: str) -> PoolHealth: ...

    def interrupt(self) -> None: ...

    def stop(self) -> None: ...

    def probe(self, pools: Sequence["Pool"], timeout_s: float) -> dict[str, PoolHealth]:
        """Outside a run: each pool's health as far as it can be told without one, within
        `timeout_s`, leaving nothing running."""
