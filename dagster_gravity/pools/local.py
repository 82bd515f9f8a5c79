"""The embedded default pool backend: warm worker processes per site, on this machine.

Each pool of the topology gets up to `slots` worker processes. A worker is *forked* from the
executor's process, which has already imported Dagster and the code location and built the
run's execution plan, so a new worker costs milliseconds instead of the ~1.3 s a spawned
`import dagster` costs (measured in benchmarks/executor_overhead.py). A worker then runs
many steps, one at a time, each with its own step context (`step_runner.StepRunner`), and
is recycled after `worker_max_steps` steps and whenever it dies.

Why fork is safe here: the executor forks from its main thread; the child never touches
the parent's instance (it opens its own from the instance ref) and leaves through
`os._exit`, so no parent finalizer runs twice. Workers die with their parent
(PR_SET_PDEATHSIG, and EOF on their pipe), so a killed run leaves no orphans.

Threads are the caveat. With only local pools the executor process runs no threads of
ours, so a fork never copies a lock some other thread holds. A run that mixes local pools
with the Dask backend has the Dask client's IO-loop thread in it: the executor then starts
every backend that forks the run process first, with `warm_all` (every worker forked at
once; `BackendCapabilities.forks_run_process`), so they fork before that thread exists. A worker forked later in such a run (replacing one that
died, failed to start, or was recycled after `worker_max_steps`) forks while it runs.
CPython re-initialises its own locks in the child (import lock, logging) and the child
never uses the client, but a lock that thread held inside another library at that moment
stays held in the child, which would hang on it if it took that lock. That risk is not
handled; to avoid it entirely keep local and Dask pools in separate runs (and a high
`worker_max_steps` at least avoids recycling forks).

Wire protocol on each worker's duplex pipe (pickled tuples between our own processes):
  parent -> worker: ("step", step_key, attempt, known_state) | ("stop",)
  worker -> parent: ("ready", pid) | ("start_failed", error_info)
                    | ("event", DagsterEvent) | ("done", step_key, attempt)
                    | ("error", step_key, attempt, error_info)
A worker runs one step attempt at a time. A step placed on a worker whose current step has
already sent its terminal event (success, failure, retry) reserves the worker at once, but
is only sent once that step's "done" (or "error") has been read: every update is then known
to be the current attempt's, and the next step does not wait to be placed.
"""

from __future__ import annotations

import ctypes
import importlib
import multiprocessing
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Any, Mapping, Sequence

from dagster_gravity.dagster_internals import interrupts, serializable_error_info_from_exc_info
from dagster_gravity.errors import GravityConfigError

from dagster_gravity.pools import process_tree
from dagster_gravity.pools.settings import with_defaults
from dagster_gravity.pools.base import (
    COMPLETED,
    CRASHED,
    NOT_STARTED,
    BackendCapabilities,
    PoolHealth,
    StepEnded,
    StepEvent,
    StepRequest,
    StepUpdate,
    Submission,
)

# Parent ends of every live worker's pipe, so a newly forked worker can close its copies
# (otherwise a sibling would keep a pipe open after the parent died).
_PARENT_ENDS: set[Connection] = set()



def _set_parent_death_signal() -> None:
    """Ask Linux to SIGKILL this process when its parent dies (no-op elsewhere)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:
        pass


def _load_callable(path: str):
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise ValueError(f"startup_check: got {path!r}; expected 'module:function'")
    return getattr(importlib.import_module(module_name), attr)


def _remember_interrupt(_signo, _frame) -> None:
    interrupts._received_interrupt["received"] = True


def _worker_main(
    conn: Connection,
    parent_pid: int,
    payload,
    site: str,
    pool_id: str,
    settings: Mapping[str, Any],
) -> None:
    """Entry point of a forked worker: start up, then run steps until told to stop."""
    _set_parent_death_signal()
    if os.getppid() != parent_pid:  # the parent died before we could ask to follow it
        os._exit(1)
    for other in list(_PARENT_ENDS):
        try:
            other.close()
        except OSError:
            pass
    _PARENT_ENDS.clear()
    # What a step starts must not outlive it, nor this worker (pools/process_tree.py).
    process_tree.set_child_subreaper()
    reaper = process_tree.start_group_reaper()
    spare = frozenset({reaper} if reaper else ())
    # The executor's process captures SIGINT into a flag; a worker starts with it clear.
    # Until a run session installs Dagster's interrupt capture, a SIGINT (the executor
    # interrupting the step this worker was started for) is remembered the way that capture
    # does, so the step fails as interrupted as soon as its user code starts instead of the
    # interrupt being lost while the worker warms up.
    interrupts._received_interrupt["received"] = False
    signal.signal(signal.SIGINT, _remember_interrupt)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)

    try:
        os.environ.update({str(k): str(v) for k, v in (settings.get("env") or {}).items()})
        from dagster_gravity.step_runner import StepRunner

        runner = StepRunner(site, pool_id)
        check = settings.get("startup_check")
        if check:
            _load_callable(check)(site, pool_id)
        runner.warm(payload)
    except BaseException:
        conn.send(("start_failed", serializable_error_info_from_exc_info(sys.exc_info())))
        conn.close()
        os._exit(3)
    conn.send(("ready", os.getpid()))

    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            break
        if message[0] == "stop":
            break
        _, step_key, attempt, known_state = message
        # Dagster's own interrupt capture (set up by the run's session) turns a SIGINT from
        # the executor into DagsterExecutionInterruptedError inside the step's user code.
        try:
            runner.open_capture(payload)  # the run's log capture is not the step's to kill
            before = process_tree.descendants()
            try:
                for event in runner.run_step(payload, step_key, known_state):
                    conn.send(("event", event))
            finally:
                process_tree.stop_new_descendants(before, f"step {step_key} on worker pid {os.getpid()}", spare)
            conn.send(("done", step_key, attempt))
        except BaseException:
            try:
                conn.send(("error", step_key, attempt, serializable_error_info_from_exc_info(sys.exc_info())))
            except OSError:
                break
    try:
        runner.close()
    finally:
        conn.close()


@dataclass(eq=False)
class _Worker:
    pool_id: str
    process: Any
    conn: Connection
    state: str = "starting"  # starting | ready | stopping
    # The (step key, attempt) the worker runs, then at most one reserved behind it; the
    # reserved one is sent (with `held`, its known state) only when the first one's end has
    # been read, so a retry of the same step is never mistaken for the attempt before it.
    queue: list[tuple[str, int]] = field(default_factory=list)
    held: Any = None  # the reserved step's known state, until it is sent
    head_finished: bool = False  # the running step sent its terminal event
    steps_run: int = 0
    max_steps: int = 100  # recycled after this many steps
    started_at: float = field(default_factory=time.monotonic)
    killed_why: str = ""  # set when we SIGKILLed it (it ignored the run's interrupt)

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def step_key(self) -> str | None:
        return self.queue[0][0] if self.queue else None

    @property
    def attempt(self) -> int:
        return self.queue[0][1] if self.queue else 0

    @property
    def free(self) -> bool:
        if self.state == "stopping" or self.steps_run + len(self.queue) >= self.max_steps:
            return False
        return not self.queue or (len(self.queue) == 1 and self.head_finished)


@dataclass
class _PoolState:
    pool: Any
    settings: Mapping[str, Any]
    workers: list[_Worker] = field(default_factory=list)
    consecutive_failures: int = 0
    unhealthy_reason: str = ""


class LocalBackend:
    """Warm forked worker processes per pool (see the module docstring)."""

    name = "local"
    capabilities = BackendCapabilities(forks_run_process=True)

    def __init__(self, settings: Mapping[str, Any], *, worker_max_steps: int = 100, unhealthy_after: int = 3):
        self.settings = with_defaults("local", settings)
        self.worker_max_steps = max(1, int(worker_max_steps))
        self.unhealthy_after = max(1, int(unhealthy_after))
        self._ctx = multiprocessing.get_context("fork")
        self._pools: dict[str, _PoolState] = {}
        self._retiring: list[_Worker] = []
        self._payload = None
        self._updates: list[StepUpdate] = []
        self._interrupted_at: float | None = None
        self.stop_grace_seconds = float(self.settings["stop_grace_seconds"])
        if self.stop_grace_seconds < 0:
            raise GravityConfigError(
                f"local pool backend: stop_grace_seconds is {self.stop_grace_seconds}; expected seconds >= 0"
            )

    # -- protocol ------------------------------------------------------------------------

    def start(self, run, pools: Sequence[Any], *, warm_all: bool = False) -> None:
        """Take the pools; fork `prestart` workers per pool now, or all of them (`warm_all`)."""
        self._payload = run
        for pool in pools:
            self._pools[pool.id] = _PoolState(pool, self.settings)
        for state in self._pools.values():
            count = state.pool.slots if warm_all else self.settings["prestart"]
            for _ in range(min(count, state.pool.slots)):
                self._start_worker(state)

    def free_slots(self, pool_id: str) -> int:
        state = self._pools[pool_id]
        return state.pool.slots - sum(1 for w in state.workers if not w.free)

    def health(self, pool_id: str) -> PoolHealth:
        state = self._pools[pool_id]
        return PoolHealth(
            healthy=not state.unhealthy_reason,
            reason=state.unhealthy_reason,
            workers=len(state.workers),
            busy=sum(1 for w in state.workers if not w.free),
            consecutive_failures=state.consecutive_failures,
        )

    def submit(self, pool_id: str, request: StepRequest) -> Submission:
        state = self._pools[pool_id]
        if state.unhealthy_reason:
            raise RuntimeError(f"pool {pool_id} is unhealthy ({state.unhealthy_reason}); it takes no steps")
        worker = self._idle_worker(state)
        if worker is None:
            if len(state.workers) >= state.pool.slots:
                raise RuntimeError(f"pool {pool_id} has no free slot ({state.pool.slots} busy)")
            worker = self._start_worker(state)
        worker.queue.append((request.step_key, request.attempt))
        if len(worker.queue) == 1:
            self._send(worker, request.known_state)
        else:  # its current step is finishing: sent when that step's end is read
            worker.held = request.known_state
        return Submission(pool_id=pool_id, worker=f"pid {worker.pid}", pid=worker.pid)

    def poll(self, timeout: float) -> list[StepUpdate]:
        self._kill_workers_ignoring_interrupt()
        workers = [w for s in self._pools.values() for w in s.workers]
        if workers and not self._updates:
            waitables = [w.conn for w in workers] + [w.process.sentinel for w in workers]
            ready = set(wait(waitables, timeout=timeout))
            for worker in workers:
                if worker.conn in ready or worker.process.sentinel in ready:
                    self._drain(worker)
        elif not workers and not self._updates and timeout > 0:
            time.sleep(timeout)
        self._reap_retiring()
        updates, self._updates = self._updates, []
        return updates

    def interrupt(self) -> None:
        """SIGINT every busy worker; those still busy `stop_grace_seconds` later are killed
        by `poll` and their steps reported CRASHED, so a stopping run always ends."""
        if self._interrupted_at is None:
            self._interrupted_at = time.monotonic()
        for state in self._pools.values():
            for worker in state.workers:
                if worker.step_key is not None and worker.process.is_alive():
                    try:
                        os.kill(worker.pid, signal.SIGINT)
                    except ProcessLookupError:
                        pass

    def probe(self, pools: Sequence[Any], timeout_s: float) -> dict[str, PoolHealth]:
        """Workers are forked from a run's own process, so outside a run nothing can be
        started: the check is that the settings are valid and `startup_check` imports."""
        check = self.settings["startup_check"]
        if check:
            try:
                _load_callable(check)
            except Exception as exc:
                return {p.id: PoolHealth(False, f"startup_check {check!r} cannot be loaded: {exc}") for p in pools}
        detail = "local workers are forked per run (none run outside a run); settings valid"
        return {p.id: PoolHealth(True, detail=detail) for p in pools}

    def stop(self) -> None:
        grace = self.stop_grace_seconds
        everyone = [w for s in self._pools.values() for w in s.workers] + self._retiring
        for worker in everyone:
            self._ask_to_stop(worker)
        deadline = time.monotonic() + grace
        for worker in everyone:
            worker.process.join(max(0.0, deadline - time.monotonic()))
        for worker in everyone:
            if worker.process.is_alive():
                try:
                    os.kill(worker.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                worker.process.join(5)
            self._forget(worker)
        for state in self._pools.values():
            state.workers.clear()
        self._retiring.clear()

    # -- extras (used by `gravity sites`, tests and the executor's events) ---------------

    def worker_pids(self) -> list[int]:
        return [w.pid for s in self._pools.values() for w in s.workers] + [w.pid for w in self._retiring]

    # -- internals -----------------------------------------------------------------------

    def _kill_workers_ignoring_interrupt(self) -> None:
        if self._interrupted_at is None or time.monotonic() - self._interrupted_at < self.stop_grace_seconds:
            return
        for state in self._pools.values():
            for worker in state.workers:
                if worker.queue and not worker.killed_why and worker.process.is_alive():
                    worker.killed_why = (
                        f"did not stop within {self.stop_grace_seconds:g} s of the run's interrupt "
                        "(stop_grace_seconds); killed with SIGKILL"
                    )
                    try:
                        os.kill(worker.pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass

    def _idle_worker(self, state: _PoolState) -> _Worker | None:
        free = [w for w in state.workers if w.free]
        # Prefer a worker with nothing queued, then one whose step is just finishing.
        free.sort(key=lambda w: len(w.queue))
        return free[0] if free else None

    def _send(self, worker: _Worker, known_state) -> None:
        """Send the worker its first queued step."""
        step_key, attempt = worker.queue[0]
        try:
            worker.conn.send(("step", step_key, attempt, known_state))
        except OSError:
            pass  # the worker is dead: poll() reports it

    def _start_worker(self, state: _PoolState) -> _Worker:
        parent_end, child_end = self._ctx.Pipe(duplex=True)
        process = self._ctx.Process(
            target=_worker_main,
            args=(child_end, os.getpid(), self._payload, state.pool.site, state.pool.id, state.settings),
            name=f"gravity-worker[{state.pool.id}]",
            daemon=True,
        )
        process.start()
        child_end.close()
        _PARENT_ENDS.add(parent_end)
        worker = _Worker(state.pool.id, process, parent_end, max_steps=self.worker_max_steps)
        state.workers.append(worker)
        return worker

    def _drain(self, worker: _Worker) -> None:
        """Read everything the worker sent; notice when it died."""
        dead = False
        while True:
            try:
                if not worker.conn.poll():
                    if worker.process.is_alive():
                        break
                    # Exited: anything it sent before dying is already readable.
                    if not worker.conn.poll():
                        dead = True
                        break
                message = worker.conn.recv()
            except (EOFError, OSError):
                dead = True
                break
            self._handle_message(worker, message)
            if worker.state == "stopping" and worker not in self._pools[worker.pool_id].workers:
                return
        if dead:
            self._handle_death(worker)

    def _handle_message(self, worker: _Worker, message: tuple) -> None:
        kind = message[0]
        state = self._pools[worker.pool_id]
        if kind == "ready":
            worker.state = "ready"
        elif kind == "start_failed":
            error = message[1]
            self._record_failure(state, f"a worker failed to start: {error.message.strip()}")
            self._remove(worker)
            self._retire(worker)
            for step_key, attempt in worker.queue:
                self._updates.append(
                    StepEnded(
                        step_key,
                        NOT_STARTED,
                        worker.pool_id,
                        message=f"worker pid {worker.pid} failed to start: {error.message.strip()}",
                        pid=worker.pid,
                        error=error,
                        attempt=attempt,
                    )
                )
            worker.queue.clear()
            worker.held = None
        elif kind == "event":
            event = message[1]
            if event.is_step_success or event.is_step_failure or event.is_step_up_for_retry:
                worker.head_finished = True
            self._updates.append(StepEvent(event.step_key or worker.step_key, event, attempt=worker.attempt))
        elif kind in ("done", "error"):
            step_key, attempt = message[1], message[2]
            error = message[3] if kind == "error" else None
            state.consecutive_failures = 0
            if worker.queue and worker.queue[0] == (step_key, attempt):
                worker.queue.pop(0)
            worker.head_finished = False
            worker.steps_run += 1
            self._updates.append(
                StepEnded(
                    step_key,
                    COMPLETED,
                    worker.pool_id,
                    message="" if error is None else f"worker pid {worker.pid} raised: {error.message.strip()}",
                    pid=worker.pid,
                    error=error,
                    attempt=attempt,
                )
            )
            if worker.queue:
                self._send(worker, worker.held)
                worker.held = None
            if worker.steps_run >= self.worker_max_steps and not worker.queue:
                self._remove(worker)
                self._retire(worker)

    def _handle_death(self, worker: _Worker) -> None:
        state = self._pools[worker.pool_id]
        worker.process.join(1)
        exit_code = worker.process.exitcode
        if worker in state.workers:
            self._remove(worker)
            how = f"exit code {exit_code}" if exit_code is None or exit_code >= 0 else f"signal {-exit_code}"
            self._record_failure(state, f"worker pid {worker.pid} died ({how})")
            for i, (step_key, attempt) in enumerate(worker.queue):
                started = i == 0 and worker.state == "ready"
                what = worker.killed_why or f"died ({how})"
                self._updates.append(
                    StepEnded(
                        step_key,
                        CRASHED if started else NOT_STARTED,
                        worker.pool_id,
                        message=f"worker pid {worker.pid} at site {state.pool.site} {what} while running the step"
                        if started
                        else f"worker pid {worker.pid} at site {state.pool.site} {what} before it took the step",
                        pid=worker.pid,
                        exit_code=exit_code,
                        attempt=attempt,
                    )
                )
            worker.queue.clear()
            worker.held = None
        self._forget(worker)

    def _record_failure(self, state: _PoolState, what: str) -> None:
        state.consecutive_failures += 1
        if state.consecutive_failures >= self.unhealthy_after and not state.unhealthy_reason:
            state.unhealthy_reason = (
                f"{state.consecutive_failures} consecutive worker failures, last: {what}"
            )

    def _remove(self, worker: _Worker) -> None:
        state = self._pools[worker.pool_id]
        if worker in state.workers:
            state.workers.remove(worker)

    def _retire(self, worker: _Worker) -> None:
        self._ask_to_stop(worker)
        self._retiring.append(worker)

    def _ask_to_stop(self, worker: _Worker) -> None:
        worker.state = "stopping"
        try:
            worker.conn.send(("stop",))
        except OSError:
            pass

    def _reap_retiring(self) -> None:
        for worker in list(self._retiring):
            if not worker.process.is_alive():
                worker.process.join(0)
                self._retiring.remove(worker)
                self._forget(worker)

    def _forget(self, worker: _Worker) -> None:
        _PARENT_ENDS.discard(worker.conn)
        try:
            worker.conn.close()
        except OSError:
            pass
