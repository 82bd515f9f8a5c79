"""Scale-out pool backend: each step runs on a Dask distributed worker of the placed site.

Site restriction. A worker declares its site with a Dask *resource*, ``site-<site>=<slots>``
(`dask worker tcp://scheduler:8786 --resources "site-onprem-dc=1" --name onprem-dc-1`).
A step placed at a site is submitted with ``resources={"site-<site>": 1}`` *and*
``workers=[<one worker of that site>]``, ``allow_other_workers=False``. The resource keeps the
step off every other site; the worker restriction means that when that worker dies, Dask has
nowhere to re-run the task (it never runs it again silently, whatever the scheduler's
``allowed-failures``): the backend cancels the task and reports the step as crashed with its
worker lost (`StepEnded.worker_lost`); the executor runs the same attempt again on a live
worker (`StepRequest.resumed`: the task does not publish, nor the worker write, a second
STEP_START), using no retry. Departures the client has heard of are handled before a worker
is chosen (`_drain`), so a step is never sent to a worker the backend knows is gone.

Event streaming. The worker runs the step with `step_runner.StepRunner` (events are written to
the Dagster instance from the worker, as with Dagster's own multiprocess children) and also
publishes each event, serialized with Dagster's serdes, on the scheduler's event broker
(`Worker.log_event` on one topic, `dagster-gravity/step-events`); the backend subscribes
(`Client.subscribe_topic`), so events reach the executor while the step runs. Each message
carries the task key and a sequence number; the task's return value holds the whole list,
used only to fill a gap if a message was lost.

Health. A pool is healthy while its scheduler is reachable and at least one worker declares
``site-<site>``; the executor stops placing on an unhealthy pool and fails over. A pool
without workers, or whose scheduler is unreachable or reconnecting, may recover
(`PoolHealth.may_recover`: workers may join again); one whose client never connected, gave up
reconnecting, or lost `unhealthy_after` workers in a row does not. A step that
was waiting for a worker of a site that lost all of them is reported NOT_STARTED, so the
executor places it elsewhere.

Deadlines. Nothing waits on the scheduler without a deadline (`connect_timeout_seconds`),
and waiting for its answers gives up within a tenth of a second of the run's interrupt
(SIGINT; the TCP connect itself and closing the client are bounded by the deadline only):
connecting (`connect_client`: first `check_dask_handshake` over a plain socket, because Dask's
own connect reads the peer's handshake without a timeout, so a port that accepts and stays
silent, such as the dashboard's HTTP port, would block it forever; then the Client, created in
a helper thread), each refresh of the worker list, cancelling, fetching a result, asking the
workers to close the run (`CLOSE_RUN_TIMEOUT_S`) and closing the client. A scheduler address
that does not answer as Dask leaves the pools unhealthy with a reason that names the address
and what answered ("not a Dask scheduler: it answered b'HTTP/1.1 400 ..." or "timed out after
N s waiting for a Dask handshake").

A lost scheduler. When the client loses its connection (the scheduler died, the network
failed), the pools are unhealthy while it lasts and every step in flight ends at once:
CRASHED if it had started (the RetryPolicy decides; the executor places a retry on a healthy
pool), NOT_STARTED otherwise, with a message naming the scheduler and the worker. The step
may in fact go on in its worker thread; Dask can no longer say how it ends. If the client
reconnects (it tries for `connect_timeout_seconds`, then closes), the subscriptions are
renewed and the pools are healthy again. `stop()` never raises: what fails at the end of a run
is logged, so it cannot hide why the run failed.

Configuration (executor config, per site or as the default):

    pools:
      per_site:
        onprem-dc:     {backend: dask, scheduler: "tcp://dask-onprem:8786"}   # one scheduler per site
        aws-us-east-1: {backend: dask, scheduler: "tcp://dask-aws:8786"}
      # or one scheduler for all sites: the same address in each entry / in `default`.

Workers run Dagster steps in threads of the worker process; Dagster is not thread safe, so
start workers with ``--nthreads 1`` (scale with ``--nworkers N``) and ``site-<site>=1``.

Capacity. A site's capacity on a scheduler is what its workers declare as ``site-<site>``.
Several pools of one site on one scheduler (``onprem-dc/cpu`` and ``onprem-dc/gpu`` both on
Dask, even with different settings) share those workers. A worker's free slots are its
capacity minus the steps in flight there of *every* pool of the site from this process
(counted in `_IN_FLIGHT`, shared by all backend instances, so a step just submitted counts at
once) minus what the scheduler saw busy there at the last refresh that this process does not
hold: gravity tasks of other processes' runs (`Scheduler.processing`), and tasks the worker
reports cancelled but still running (its heartbeat's ``metrics.task_counts``): the step of an
interrupted run, which Dask cannot stop, holds its worker's thread until it returns. A step
goes to the worker with the most free slots, round robin among equals (from a random start in
each process). Give pools workers of their own by running them on separate schedulers.

Child processes. With ``--nthreads 1`` the task stops what its step left running: it
snapshots the worker process's descendants when the step starts (STEP_START; the run's
session resources and its log capture, which outlive the step, are set up before that) and,
when the step ends and before its end is reported, sends SIGTERM to every descendant that is
newer, SIGKILL to those left after `process_tree.STOP_GRACE_S`, and reaps the ones that are
its own children; the stopped processes are logged (the step's captured stderr, the worker's
log). The tree is read from /proc (`pools/process_tree.py`; Linux only, elsewhere nothing is
done). Not covered: a process that left the tree before the step ended (it
daemonised, or its parent exited and it was reparented to init); a step whose STEP_START never
came (its resources failed to initialise); a worker killed outright (its children are
orphaned: nothing of the backend runs there any more); workers with more than one thread (the
tree would hold other steps' processes, so nothing is stopped). A process that a resource kept
for the whole run starts lazily during a step counts as that step's, and is stopped with it.

End of a run. `stop()` asks every worker to close what it holds for the run
(`close_run_on_worker`: its Dagster sessions, their resources, its stdout/stderr capture),
best effort with a short timeout; a worker that misses it still evicts the run after
`StepRunner.MAX_CACHED_RUNS` newer runs.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import logging
import os
import pickle
import queue
import random
import socket
import struct
import sys
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any, Mapping, Sequence

from dagster_gravity.errors import GravityConfigError, GravityError
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
from dagster_gravity.pools import process_tree
from dagster_gravity.pools.settings import with_defaults

log = logging.getLogger(__name__)

EVENT_TOPIC = "dagster-gravity/step-events"


@dataclass(frozen=True)
class _ProbeRun:
    """What `start` gets outside a run (`probe`): a run id for its task names, no plan."""

    run_id: str = "gravity-sites-health"
SITE_RESOURCE_PREFIX = "site-"



def site_resource(site: str) -> str:
    """The Dask resource a worker of `site` declares (and every step placed there needs)."""
    return f"{SITE_RESOURCE_PREFIX}{site}"


# ---------------------------------------------------------------------------------------
# Worker side: runs inside a Dask worker process.
# ---------------------------------------------------------------------------------------


def dask_setup(worker) -> None:
    """`dask worker --preload dagster_gravity.pools.dask`: import Dagster and the step runner
    when the worker starts, so its first step does not pay for the import."""
    import dagster_gravity.step_runner  # noqa: F401


_RUNNERS: dict[tuple[str, str], Any] = {}
_RUNNERS_LOCK = threading.Lock()


def _runner_for(site: str, pool_id: str):
    """One StepRunner per (site, pool) per worker process: Dagster, the code location and
    each run's plan are loaded once and reused by every later step."""
    with _RUNNERS_LOCK:
        runner = _RUNNERS.get((site, pool_id))
        if runner is None:
            from dagster_gravity.step_runner import StepRunner

            runner = StepRunner(site, pool_id)
            _RUNNERS[(site, pool_id)] = runner
        return runner


def _close_run(run_id: str) -> int:
    with _RUNNERS_LOCK:
        runners = list(_RUNNERS.values())
    return sum(1 for runner in runners if runner.close_run(run_id))


async def close_run_on_worker(run_id: str) -> int:
    """`Client.run` target at the end of a run: every step runner of this worker process
    closes and forgets `run_id`. Returns how many held it.

    Runs in a thread: resource teardown may block, and Dagster's context teardown runs an
    asyncio loop of its own, which cannot run on the worker's event loop thread."""
    import asyncio

    return await asyncio.to_thread(_close_run, run_id)


def cached_runs_on_worker() -> list[str]:
    """`Client.run` target: the run ids this worker process still holds a cache for."""
    with _RUNNERS_LOCK:
        runners = list(_RUNNERS.values())
    return sorted({run_id for runner in runners for run_id in runner.cached_run_ids()})


def run_step_on_worker(
    task_key: str, payload, site: str, pool_id: str, step_key: str, known_state, resumed: bool = False
) -> list[str]:
    """The Dask task: run one step, publish each event as it happens, return them all.
    `resumed`: the attempt continues after its first worker was lost (StepRequest.resumed)."""
    from dagster import MetadataValue
    from dagster_gravity.dagster_internals import serialize_value
    from distributed import get_worker

    worker = get_worker()
    declared = worker.state.total_resources.get(site_resource(site), 0)
    if declared <= 0:  # never happens through the backend; guards hand-made submissions
        raise RuntimeError(
            f"dask worker {worker.name} ({worker.address}) does not declare resource "
            f"{site_resource(site)!r}; it may not run steps of site {site!r}"
        )
    worker.log_event(EVENT_TOPIC, {"key": task_key, "started": True, "worker_name": str(worker.name)})

    runner = _runner_for(site, pool_id)
    with _RUNNERS_LOCK:  # building a run's cache is not thread safe
        announce = runner.worker_started_event(
            payload,
            step_key,
            f'Executing step "{step_key}" on dask worker {worker.name} at site {site}.',
            {
                "pid": MetadataValue.text(str(os.getpid())),
                "gravity/site": MetadataValue.text(site),
                "gravity/pool_id": MetadataValue.text(pool_id),
                "gravity/worker": MetadataValue.text(str(worker.name)),
                "dask/worker_address": MetadataValue.text(str(worker.address)),
                "dask/task_key": MetadataValue.text(task_key),
            },
        )

    # Processes the step starts are stopped when it ends, if this task is the only one the
    # worker runs at a time (see "Child processes" in the module docstring). The snapshot is
    # taken at the step's start: the run's session (resources) and its log capture, which
    # outlive the step, are set up before it.
    clean_up = getattr(worker.state, "nthreads", getattr(worker, "nthreads", 0)) == 1
    before: dict[int, int] | None = None
    events: list[str] = []
    try:
        for event in itertools.chain([announce], runner.run_step(payload, step_key, known_state, resumed)):
            starts = event.step_key == step_key and event.event_type_value in _STEP_STARTS
            if clean_up and before is None and starts:
                before = process_tree.descendants()
            if resumed and starts:
                continue  # not written again (the lost worker wrote it): not the executor's either
            text = serialize_value(event)
            worker.log_event(EVENT_TOPIC, {"key": task_key, "seq": len(events), "event": text})
            events.append(text)
    finally:
        if before is not None:
            process_tree.stop_new_descendants(before, f"step {step_key} on dask worker {worker.name}")
    worker.log_event(EVENT_TOPIC, {"key": task_key, "end": len(events)})
    return events


_STEP_STARTS = ("STEP_START", "STEP_RESTARTED")


# ---------------------------------------------------------------------------------------
# Executor side: talking to the scheduler within a deadline.
# ---------------------------------------------------------------------------------------


class SchedulerUnavailable(GravityError):
    """A call to a Dask scheduler failed or did not answer in time; the message names it."""


def _interrupted() -> bool:
    """Whether the run's process received SIGINT (Dagster captures it during a run and the
    executor picks it up between steps): a wait on the scheduler then gives up at once."""
    from dagster_gravity.dagster_internals import interrupts

    return interrupts.check_captured_interrupt()


def _wait(future: concurrent.futures.Future, timeout: float, what: str, *, budget: float | None = None, cancel: bool = True):
    """`future`'s result within `timeout` seconds; SchedulerUnavailable naming `what` (and
    `budget`, the deadline to report if not `timeout`) when it takes longer or the run is
    interrupted, after cancelling `future` if `cancel`. Waits in short slices, so SIGINT is
    noticed (KeyboardInterrupt outside a run, the captured interrupt inside one)."""
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        done, _ = concurrent.futures.wait([future], timeout=max(0.0, min(0.1, remaining)))
        if done:
            try:
                return future.result()
            except concurrent.futures.CancelledError:
                raise SchedulerUnavailable(f"{what}: cancelled") from None
        if remaining <= 0 or _interrupted():
            if cancel:
                future.cancel()
            if remaining <= 0:
                raise SchedulerUnavailable(f"{what}: timed out after {budget or timeout:g} s")
            raise SchedulerUnavailable(f"{what}: given up, the run was interrupted")


def _on_loop(client, coro, timeout: float, what: str):
    """Run `coro` (a coroutine of `client`, e.g. from `client.cancel(..., asynchronous=True)`)
    on the client's event loop and wait for it within `timeout` (see `_wait`)."""
    loop = getattr(getattr(client, "loop", None), "asyncio_loop", None)
    if loop is None or loop.is_closed():
        coro.close()
        raise SchedulerUnavailable(f"{what}: the Dask client is closed")
    try:
        future = asyncio.run_coroutine_threadsafe(coro, loop)
    except RuntimeError as exc:  # the loop stopped meanwhile
        coro.close()
        raise SchedulerUnavailable(f"{what}: the Dask client is closed ({exc})") from None
    return _wait(future, timeout, what)


MAX_HANDSHAKE_BYTES = 1 << 16  # a Dask handshake is some 60 bytes


def check_dask_handshake(address: str, timeout: float) -> None:
    """Raise SchedulerUnavailable unless something at `address` speaks Dask's protocol
    within `timeout` seconds.

    A Dask server writes its handshake (a length-prefixed msgpack message) as soon as it
    accepts a connection; Dask's own `connect` then reads it without a timeout, so a port
    that accepts and stays silent (an HTTP server such as the scheduler's dashboard) would
    block a `Client` forever, and one that sends other bytes makes it read them as a frame
    length. Only plain `tcp://` addresses are checked here; the answer is read over a plain
    socket and decoded with msgpack alone (nothing is unpickled), and a Dask handshake is
    sent back so the scheduler does not log a half-open connection."""
    from distributed.comm.addressing import parse_address, parse_host_port

    try:
        scheme, location = parse_address(address)
        if scheme != "tcp":
            return  # tls://, ws://, ...: the Client's own connection is bounded instead
        host, port = parse_host_port(location)
    except (ValueError, TypeError):
        return  # the Client reports a malformed address itself
    deadline = time.monotonic() + timeout
    try:
        sock = socket.create_connection((host, port), timeout=max(0.01, timeout))
    except socket.timeout:
        raise SchedulerUnavailable(
            f"dask scheduler {address} is unreachable: connecting timed out after {timeout:g} s"
        ) from None
    except OSError as exc:
        raise SchedulerUnavailable(f"dask scheduler {address} is unreachable: {exc}") from None
    with sock:
        data, why = _read_handshake(sock, deadline)
        if why == "complete" and _is_handshake(data[8:]):
            try:
                sock.settimeout(max(0.01, deadline - time.monotonic()))
                sock.sendall(_handshake_reply())
            except OSError:
                pass  # it spoke Dask; what it makes of our half is its business
            return
    where = f"dask scheduler {address}"
    if why == "interrupted":
        raise SchedulerUnavailable(f"{where}: given up, the run was interrupted")
    if why.startswith("failed"):
        raise SchedulerUnavailable(f"{where}: the connection {why}")
    if not data:
        if why == "closed":
            raise SchedulerUnavailable(
                f"{where}: not a Dask scheduler: it accepted the connection and closed it without a Dask handshake"
            )
        raise SchedulerUnavailable(
            f"{where}: timed out after {timeout:g} s waiting for a Dask handshake: something accepts "
            "connections there but sends nothing (not a Dask scheduler, e.g. an HTTP server such as its "
            "dashboard, which waits for a request; a scheduler listens on 8786 by default)"
        )
    then = {"closed": " and closed the connection", "timeout": f" and then nothing for {timeout:g} s"}.get(why, "")
    raise SchedulerUnavailable(f"{where}: not a Dask scheduler: it answered {data[:64]!r}{then}")


def _read_handshake(sock: socket.socket, deadline: float) -> tuple[bytes, str]:
    """What the peer sends first, up to one length-prefixed message, and why reading stopped:
    "complete", "garbled" (the length prefix is not a handshake's), "closed", "timeout",
    "interrupted" or "failed: <error>"."""
    data = b""
    need = 8
    while True:
        if len(data) >= need:
            if need > 8:
                return data[:need], "complete"
            (size,) = struct.unpack("<Q", data[:8])
            if not 16 <= size <= MAX_HANDSHAKE_BYTES:
                return data, "garbled"
            need = 8 + size
            continue
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return data, "timeout"
        if _interrupted():
            return data, "interrupted"
        sock.settimeout(min(0.1, remaining))
        try:
            chunk = sock.recv(4096)
        except socket.timeout:
            continue
        except OSError as exc:
            return data, f"failed: {exc}"
        if not chunk:
            return data, "closed"
        data += chunk


def _is_handshake(payload: bytes) -> bool:
    """Whether `payload` (a message without its length prefix) is frames whose first one is
    a msgpack map: what a Dask handshake is."""
    import msgpack

    try:
        (count,) = struct.unpack_from("<Q", payload, 0)
        if not 1 <= count <= 16:
            return False
        sizes = struct.unpack_from(f"<{count}Q", payload, 8)
        start = 8 + 8 * count
        if start + sum(sizes) != len(payload):
            return False
        header = msgpack.unpackb(payload[start : start + sizes[0]], raw=False, strict_map_key=False)
    except Exception:
        return False
    return isinstance(header, dict)


def _handshake_reply() -> bytes:
    import msgpack

    info = msgpack.packb(
        {"compression": None, "python": list(sys.version_info[:3]), "pickle-protocol": pickle.HIGHEST_PROTOCOL}
    )
    message = struct.pack("<QQ", 1, len(info)) + info
    return struct.pack("<Q", len(message)) + message


def connect_client(address: str, timeout: float):
    """A `distributed.Client` connected to `address` within `timeout` seconds, or
    SchedulerUnavailable naming the address.

    The Client is created in a helper thread: its constructor blocks in Dask's own connect,
    which has no overall deadline. If the deadline passes, the thread is abandoned (it
    closes the Client if it ever gets one); `check_dask_handshake` first makes that
    unlikely."""
    from distributed import Client

    started = time.monotonic()
    check_dask_handshake(address, timeout)
    remaining = max(0.5, timeout - (time.monotonic() - started))
    result: concurrent.futures.Future = concurrent.futures.Future()
    lock = threading.Lock()
    abandoned = []

    def connect() -> None:
        try:
            client = Client(address, timeout=remaining, set_as_default=False)
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread
            with lock:
                if not abandoned:
                    result.set_exception(exc)
            return
        with lock:
            if not abandoned:
                result.set_result(client)
                return
        _close_client(client, remaining, address)

    thread = threading.Thread(target=connect, name=f"gravity-dask-connect {address}", daemon=True)
    thread.start()
    try:
        return _wait(result, remaining, f"dask scheduler {address}: connecting", budget=timeout, cancel=False)
    except SchedulerUnavailable:
        with lock:
            if result.done() and result.exception() is None:
                return result.result()  # it connected just now
            abandoned.append(True)
        raise
    except (OSError, TimeoutError) as exc:
        raise SchedulerUnavailable(f"dask scheduler {address} is unreachable: {exc}") from None
    except Exception as exc:
        raise SchedulerUnavailable(
            f"dask scheduler {address}: connecting failed: {type(exc).__name__}: {exc}"
        ) from None
    except BaseException:  # KeyboardInterrupt (outside a run): a Client made later is closed
        with lock:
            abandoned.append(True)
        raise


def _close_client(client, timeout: float, address: str) -> None:
    """Close `client` within `timeout`; failures are logged, never raised."""
    try:
        client.close(timeout=timeout)
    except Exception as exc:
        log.warning("gravity: dask scheduler %s: closing the client failed: %s", address, _describe(exc))


def _describe(exc: BaseException) -> str:
    """An exception for a log line: a SchedulerUnavailable's message already says it all."""
    return str(exc) if isinstance(exc, SchedulerUnavailable) else f"{type(exc).__name__}: {exc}"


# ---------------------------------------------------------------------------------------
# Executor side.
# ---------------------------------------------------------------------------------------


# Steps in flight per (scheduler address, site), across every DaskBackend of this process:
# task key -> worker address. Pools of one site on one scheduler share its workers.
_IN_FLIGHT: dict[tuple[str, str], dict[str, str]] = {}
_IN_FLIGHT_LOCK = threading.Lock()


def _in_flight(address: str, site: str) -> dict[str, str]:
    """A copy of the steps in flight at `site` on scheduler `address` (task key -> worker)."""
    with _IN_FLIGHT_LOCK:
        return dict(_IN_FLIGHT.get((address, site), {}))


# Task key prefixes of the runs with a backend started in this process (prefix -> backends):
# their tasks are counted in _IN_FLIGHT, so the scheduler's view of them is not added again.
_LOCAL_RUNS: dict[str, int] = {}

# Whose turn it is among equally free workers. Shared by every backend of the process, and
# starting at a random place, so runs in separate processes do not all pick the same worker.
_TURNS = itertools.count(random.randrange(1 << 20))


def _local_prefixes() -> tuple[str, ...]:
    with _IN_FLIGHT_LOCK:
        return tuple(_LOCAL_RUNS)


@dataclass
class _Step:
    key: str  # the Dask task key
    step_key: str
    pool_id: str
    worker_address: str
    future: Any
    attempt: int = 0  # Dagster's attempt of the step this task runs
    started: bool = False
    worker_name: str = ""
    next_seq: int = 0
    pending: dict[int, str] = field(default_factory=dict)  # seq -> event, arrived early
    end: int | None = None  # number of events, once the worker said it is done
    finished: bool = False


@dataclass
class _Scheduler:
    """One Dask scheduler and what we know about its workers."""

    address: str
    client: Any = None
    workers: dict[str, Mapping[str, float]] = field(default_factory=dict)  # address -> resources
    names: dict[str, str] = field(default_factory=dict)  # address -> worker name
    # address -> steps the scheduler sees busy there that _IN_FLIGHT does not hold: tasks of
    # other processes' runs, and tasks cancelled while running (an interrupted run's step
    # that goes on in its worker thread until it returns)
    busy: dict[str, int] = field(default_factory=dict)
    refreshed_at: float = 0.0
    stale: bool = True
    error: str = ""
    lost: bool = False  # the client lost its connection (it reconnects, then closes if it cannot)


class DaskBackend:
    """Runs steps on Dask workers restricted to the placed site (see the module docstring)."""

    name = "dask"
    capabilities = BackendCapabilities(forks_run_process=False, resumes_steps=True)

    def __init__(self, settings: Mapping[str, Any], *, worker_max_steps: int = 100, unhealthy_after: int = 3):
        settings = with_defaults("dask", settings)
        address = settings["scheduler"]
        if not address:
            raise GravityConfigError(
                f"dask pool backend: setting 'scheduler' is {address!r}; expected the address of a "
                "Dask scheduler such as 'tcp://127.0.0.1:8786'"
            )
        extra = settings["resources"]
        if not all(v > 0 for v in extra.values()):
            raise GravityConfigError(
                f"dask pool backend: setting 'resources' is {extra!r}; expected a mapping of name -> positive number"
            )
        self.settings = settings
        self.address = address
        self.extra_resources = dict(extra)
        self.connect_timeout = float(settings["connect_timeout_seconds"])
        self.refresh_seconds = float(settings["worker_refresh_seconds"])
        self._scheduler = _Scheduler(address)
        self._pools: dict[str, Any] = {}
        self._payload = None
        self._key_prefix = "gravity-"
        self._steps: dict[str, _Step] = {}  # task key -> step
        self._inbox: queue.Queue = queue.Queue()  # from the client's thread to poll()
        self.unhealthy_after = max(1, int(unhealthy_after))
        self._failures: dict[str, int] = {}  # pool id -> consecutive lost workers
        self._registered = False  # this run's key prefix is in _LOCAL_RUNS
        self._ended: list[StepUpdate] = []  # ends decided outside poll(), reported by it

    # -- protocol ------------------------------------------------------------------------

    def start(self, run, pools: Sequence[Any], *, warm_all: bool = False) -> None:
        """Connect to the scheduler and subscribe to step events, all within
        `connect_timeout_seconds`; a scheduler that cannot be reached, or is not one, leaves
        the pools unhealthy (`health` says why). `warm_all` does not apply (workers are
        Dask's own processes)."""
        # The worker builds the plan itself: the executor's in-memory plan is not shipped.
        self._payload = run.without_plan() if hasattr(run, "without_plan") else run
        self._pools = {pool.id: pool for pool in pools}
        self._key_prefix = f"gravity-{run.run_id}-"
        with _IN_FLIGHT_LOCK:
            _LOCAL_RUNS[self._key_prefix] = _LOCAL_RUNS.get(self._key_prefix, 0) + 1
        self._registered = True
        sched = self._scheduler
        started = time.monotonic()
        try:
            client = connect_client(sched.address, self.connect_timeout)
        except SchedulerUnavailable as exc:
            sched.error = str(exc)
            return
        sched.client = client
        try:  # both only queue a message for the client's loop
            client.subscribe_topic(EVENT_TOPIC, self._on_step_message)
            client.subscribe_topic("all", self._on_cluster_message)
        except Exception as exc:
            sched.error = f"dask scheduler {sched.address}: subscribing to events failed: {type(exc).__name__}: {exc}"
            return
        self._refresh(force=True, timeout=max(0.5, self.connect_timeout - (time.monotonic() - started)))

    def free_slots(self, pool_id: str) -> int:
        """The free slots of the site's workers: each one's capacity minus the steps in
        flight there from this process and what the scheduler sees busy there (see
        "Capacity" in the module docstring)."""
        pool = self._pools[pool_id]
        self._refresh()
        return sum(max(0, free) for free in self._free_by_worker(pool.site).values())

    def health(self, pool_id: str) -> PoolHealth:
        pool = self._pools[pool_id]
        self._drain()
        self._refresh()
        sched = self._scheduler
        busy = sum(1 for s in self._steps.values() if s.pool_id == pool_id and not s.finished)
        failures = self._failures.get(pool_id, 0)
        if sched.error:
            # Unreachable or reconnecting may pass; a client that never connected or gave up
            # reconnecting (closed) does not come back in this run.
            may_recover = sched.client is not None and getattr(sched.client, "status", "running") in ("running", "connecting")
            return PoolHealth(False, sched.error, workers=0, busy=busy, consecutive_failures=failures, may_recover=may_recover)
        if failures >= self.unhealthy_after:
            return PoolHealth(
                False,
                f"{failures} consecutive steps lost their Dask worker at site {pool.site}",
                workers=len(self._site_workers(pool.site)),
                busy=busy,
                consecutive_failures=failures,
            )
        workers = self._site_workers(pool.site)
        if not workers:
            return PoolHealth(
                False,
                f"no Dask worker on scheduler {sched.address} declares resource {site_resource(pool.site)!r}",
                workers=0,
                busy=busy,
                may_recover=True,  # workers of the site may join (again) at any time
            )
        return PoolHealth(True, workers=len(workers), busy=busy, consecutive_failures=failures)

    def submit(self, pool_id: str, request: StepRequest) -> Submission:
        pool = self._pools[pool_id]
        sched = self._scheduler
        if sched.client is None:
            raise RuntimeError(f"pool {pool_id}: {sched.error or 'the Dask backend was not started'}")
        self._drain()  # a worker we have been told left is never chosen
        self._refresh()
        if sched.error:
            raise RuntimeError(f"pool {pool_id} is unhealthy: {sched.error}")
        worker = self._choose_worker(pool)
        if worker is None:
            raise RuntimeError(
                f"pool {pool_id} is unhealthy: no Dask worker on {sched.address} declares resource "
                f"{site_resource(pool.site)!r}; it takes no steps"
            )
        key = f"{self._key_prefix}{request.step_key}-{request.attempt}-{uuid.uuid4().hex[:8]}"
        resources = {site_resource(pool.site): 1, **self.extra_resources}
        future = sched.client.submit(
            run_step_on_worker,
            key,
            self._payload,
            pool.site,
            pool_id,
            request.step_key,
            request.known_state,
            request.resumed,
            key=key,
            resources=resources,
            workers=[worker],
            allow_other_workers=False,
            retries=0,  # retries are Dagster's (RetryPolicy), never Dask's
            pure=False,
        )
        step = _Step(key, request.step_key, pool_id, worker, future, attempt=request.attempt)
        self._steps[key] = step
        with _IN_FLIGHT_LOCK:
            _IN_FLIGHT.setdefault((self.address, pool.site), {})[key] = worker
        future.add_done_callback(lambda f, key=key: self._inbox.put(("done", key)))
        name = sched.names.get(worker, worker)
        return Submission(pool_id=pool_id, worker=f"dask worker {name} ({worker})")

    def _drain(self) -> None:
        """Handle what the client's thread has queued so far (a worker that left, a step's
        end) now, not at the next poll: a worker the scheduler said is gone is then out of
        the worker list before a step is placed or sent. The ends it decides are reported
        by the next `poll`, in order."""
        try:
            while True:
                self._handle(self._inbox.get_nowait(), self._ended)
        except queue.Empty:
            pass

    def poll(self, timeout: float) -> list[StepUpdate]:
        updates, self._ended = self._ended, []
        if updates:
            timeout = 0.0
        try:  # wait for the first message, then take whatever else has arrived
            item = self._inbox.get(timeout=max(0.0, timeout)) if timeout > 0 else self._inbox.get_nowait()
            while True:
                self._handle(item, updates)
                item = self._inbox.get_nowait()
        except queue.Empty:
            pass
        self._check_orphans(updates)
        return updates

    def interrupt(self) -> None:
        # Dask cannot interrupt a thread that runs a step: the task is cancelled and the step
        # reported as ended now; a step already running finishes on its worker in the background.
        live = [s for s in self._steps.values() if not s.finished]
        if not live or self._scheduler.client is None:
            return
        self._cancel([s.future for s in live])
        for step in live:
            self._finish_cancelled(step, "run interrupted: the Dask task on {where} was cancelled", self._ended, count_failure=False)

    CLOSE_RUN_TIMEOUT_S = 10.0

    def probe(self, pools: Sequence[Any], timeout_s: float) -> dict[str, PoolHealth]:
        """Contact the scheduler (within `timeout_s`); a pool is healthy only when at least
        one worker declares its site's resource `site-<site>`."""
        self.connect_timeout = min(self.connect_timeout, timeout_s)
        self.start(_ProbeRun(), pools)
        try:
            out = {}
            for pool in pools:
                health = self.health(pool.id)
                if health.healthy:
                    plural = "s" if health.workers != 1 else ""
                    health = replace(health, detail=f"{health.workers} Dask worker{plural} of the site connected")
                out[pool.id] = health
            return out
        finally:
            self.stop()

    def stop(self) -> None:
        """Cancel what is left, ask the workers to close the run, close the client. Never
        raises: a failure here (the scheduler is gone, a call times out) is logged, so it
        cannot hide why the run failed."""
        sched = self._scheduler
        client, sched.client = sched.client, None
        live = [s.future for s in self._steps.values() if not s.finished]
        for step in list(self._steps.values()):
            self._forget(step)
        self._steps.clear()
        if self._registered:
            self._registered = False
            with _IN_FLIGHT_LOCK:
                left = _LOCAL_RUNS.pop(self._key_prefix, 1) - 1
                if left > 0:
                    _LOCAL_RUNS[self._key_prefix] = left
        if client is None:
            return
        try:
            if getattr(client, "status", "running") == "running":
                if live:
                    self._cancel(live, client)
                for topic in (EVENT_TOPIC, "all"):
                    try:
                        client.unsubscribe_topic(topic)
                    except ValueError:  # never subscribed
                        pass
                self._close_run_on_workers(client)
        except Exception as exc:
            log.warning("gravity: dask scheduler %s: stopping the backend: %s", self.address, _describe(exc))
        finally:
            _close_client(client, self.connect_timeout, self.address)

    def _cancel(self, futures: list, client=None) -> None:
        """Cancel `futures` on the scheduler, within the deadline; a failure is logged (the
        futures of a lost scheduler are gone anyway)."""
        client = client or self._scheduler.client
        if client is None or not futures or getattr(client, "status", "running") != "running":
            return  # a lost scheduler has dropped its tasks already
        try:
            _on_loop(
                client,
                client.cancel(futures, force=True, asynchronous=True),
                self.connect_timeout,
                f"dask scheduler {self.address}: cancelling {len(futures)} task(s)",
            )
        except Exception as exc:
            log.warning("gravity: dask scheduler %s: cancelling %d task(s): %s", self.address, len(futures), _describe(exc))

    def _close_run_on_workers(self, client) -> None:
        """Best effort: the workers release the run's sessions, resources and log capture."""
        run_id = getattr(self._payload, "run_id", None)
        if not run_id:
            return
        try:
            _on_loop(
                client,
                client.run(close_run_on_worker, run_id, on_error="ignore", asynchronous=True),
                self.CLOSE_RUN_TIMEOUT_S,
                f"dask scheduler {self.address}: asking the workers to close run {run_id}",
            )
        except Exception as exc:  # the run is over either way; say why workers may lag
            log.warning(
                "gravity: dask scheduler %s: could not ask the workers to close run %s: %s",
                self.address, run_id, _describe(exc),
            )

    # -- extras (tests, `gravity sites`) -------------------------------------------------

    def site_workers(self, site: str) -> dict[str, str]:
        """address -> name of the workers that declare `site`."""
        self._refresh(force=True)
        return {a: self._scheduler.names.get(a, a) for a in self._site_workers(site)}

    # -- messages from the client's thread -----------------------------------------------

    def _on_step_message(self, event) -> None:
        _, message = event
        # By run, not by `self._steps`: a message may overtake the bookkeeping of submit().
        if isinstance(message, dict) and str(message.get("key", "")).startswith(self._key_prefix):
            self._inbox.put(("step", message))

    def _on_cluster_message(self, event) -> None:
        _, message = event
        if isinstance(message, dict) and message.get("action") in ("add-worker", "remove-worker"):
            self._inbox.put(("cluster", message))

    # -- internals -----------------------------------------------------------------------

    def _handle(self, item, updates: list[StepUpdate]) -> None:
        kind, body = item
        if kind == "step":
            step = self._steps.get(body["key"])
            if step is None or step.finished:
                return
            if body.get("started"):
                step.started = True
                step.worker_name = body.get("worker_name", "")
            elif "end" in body:
                step.end = int(body["end"])
            else:
                step.pending[int(body["seq"])] = body["event"]
            self._emit_in_order(step, updates)
            if step.end is not None and step.next_seq >= step.end:
                self._finish(step, StepEnded(step.step_key, COMPLETED, step.pool_id), updates)
        elif kind == "done":
            step = self._steps.get(body)
            if step is not None and not step.finished:
                self._on_future_done(step, updates)
        elif kind == "cluster":
            self._scheduler.stale = True
            if body.get("action") == "remove-worker":
                self._on_worker_removed(body.get("worker", ""), updates)

    def _emit_in_order(self, step: _Step, updates: list[StepUpdate]) -> None:
        from dagster_gravity.dagster_internals import deserialize_value

        while step.next_seq in step.pending:
            text = step.pending.pop(step.next_seq)
            step.next_seq += 1
            event = deserialize_value(text)
            updates.append(StepEvent(event.step_key or step.step_key, event, attempt=step.attempt))

    def _on_future_done(self, step: _Step, updates: list[StepUpdate]) -> None:
        future = step.future
        if future.status == "finished":
            if step.end is None or step.next_seq < step.end:
                # A streamed message went missing: the return value holds every event.
                try:
                    client = self._scheduler.client
                    if client is None:
                        raise SchedulerUnavailable(f"dask scheduler {self.address}: the backend is stopped")
                    (events,) = _on_loop(
                        client,
                        client.gather([future], asynchronous=True),
                        self.connect_timeout,
                        f"dask scheduler {self.address}: fetching the events of step {step.step_key}",
                    )
                except Exception as exc:
                    where = f"dask worker {step.worker_name or step.worker_address}"
                    message = f"the step ended on {where}, but some of its events could not be fetched: {exc}"
                    self._finish(step, StepEnded(step.step_key, CRASHED, step.pool_id, message=message), updates)
                    return
                for seq in range(step.next_seq, len(events)):
                    step.pending[seq] = events[seq]
                step.end = len(events)
                self._emit_in_order(step, updates)
            self._finish(step, StepEnded(step.step_key, COMPLETED, step.pool_id), updates)
        elif future.status == "error":
            try:
                exc = future.exception(timeout=self.connect_timeout)
            except Exception as failed:  # the task's error is held by the client: this is rare
                exc = failed
            error = _error_info(exc)
            lost_worker = type(exc).__name__ == "KilledWorker"
            where = f"dask worker {step.worker_name or step.worker_address} at site {self._pools[step.pool_id].site}"
            if lost_worker:
                outcome = CRASHED if step.started else NOT_STARTED
                message = f"{where} died while running the step"
            else:
                outcome = COMPLETED
                message = f"{where} raised: {error.message.strip()}"
            ended = StepEnded(step.step_key, outcome, step.pool_id, message=message, error=error, worker_lost=lost_worker)
            self._finish(step, ended, updates)
        else:  # "cancelled" by someone else: we drop the steps we cancel before this runs
            self._refresh()
            if self._scheduler.lost:
                self._finish_lost(step, updates)
            else:
                self._finish_cancelled(
                    step,
                    f"the Dask task on {{where}} was cancelled outside this run (dask scheduler {self.address})",
                    updates,
                )

    def _on_worker_removed(self, address: str, updates: list[StepUpdate]) -> None:
        self._scheduler.workers.pop(address, None)
        for step in list(self._steps.values()):
            if step.finished or step.worker_address != address:
                continue
            # The task is restricted to that worker: Dask will not run it anywhere else.
            site = self._pools[step.pool_id].site
            name = step.worker_name or self._scheduler.names.get(address, address)
            if step.started:
                ended = StepEnded(
                    step.step_key, CRASHED, step.pool_id,
                    message=f"dask worker {name} ({address}) at site {site} left the cluster while running the step",
                    worker_lost=True,
                )
            else:
                ended = StepEnded(
                    step.step_key, NOT_STARTED, step.pool_id,
                    message=f"dask worker {name} ({address}) at site {site} left the cluster before the step started",
                )
            self._cancel([step.future])
            self._finish(step, ended, updates)

    def _check_orphans(self, updates: list[StepUpdate]) -> None:
        """A step whose worker vanished without a remove-worker message reaching us, and
        every step of a scheduler the client lost its connection to (the client cancels
        their futures; this does not wait for that to be reported)."""
        if not any(not s.finished for s in self._steps.values()):
            return
        self._refresh()
        if self._scheduler.lost:
            for step in list(self._steps.values()):
                if not step.finished:
                    self._finish_lost(step, updates)
            return
        if self._scheduler.error or self._scheduler.stale:
            return  # no reliable worker list: a lost connection cancels the futures instead
        for step in list(self._steps.values()):
            if not step.finished and step.worker_address not in self._scheduler.workers:
                self._on_worker_removed(step.worker_address, updates)

    def _forget(self, step: _Step) -> None:
        site = self._pools[step.pool_id].site
        with _IN_FLIGHT_LOCK:
            keys = _IN_FLIGHT.get((self.address, site))
            if keys is not None:
                keys.pop(step.key, None)
                if not keys:
                    del _IN_FLIGHT[(self.address, site)]

    def _finish_lost(self, step: _Step, updates: list[StepUpdate]) -> None:
        """End a step whose scheduler connection was lost: crashed if it had started (the
        RetryPolicy decides), else not started (placed again: this pool is unhealthy now)."""
        where = f"dask worker {step.worker_name or self._scheduler.names.get(step.worker_address) or step.worker_address}"
        when = "while it ran the step" if step.started else "before the step started"
        message = (
            f"lost the connection to dask scheduler {self.address} {when} on {where} (the scheduler "
            "died or the network failed); Dask cannot report how the step ends"
        )
        self._finish(step, StepEnded(step.step_key, CRASHED if step.started else NOT_STARTED, step.pool_id, message=message), updates)

    def _finish_cancelled(self, step: _Step, message: str, updates: list[StepUpdate], count_failure: bool = True) -> None:
        """End a step whose Dask task was cancelled: crashed if it had started, else not started.
        `message` may name the worker as {where}."""
        where = f"dask worker {step.worker_name or step.worker_address}"
        outcome = CRASHED if step.started else NOT_STARTED
        ended = StepEnded(step.step_key, outcome, step.pool_id, message=message.format(where=where))
        self._finish(step, ended, updates, count_failure)

    def _finish(self, step: _Step, ended: StepEnded, updates: list[StepUpdate], count_failure: bool = True) -> None:
        step.finished = True
        updates.append(replace(ended, attempt=step.attempt))
        del self._steps[step.key]
        self._forget(step)
        if ended.outcome == COMPLETED:
            self._failures[step.pool_id] = 0
        elif count_failure:
            self._failures[step.pool_id] = self._failures.get(step.pool_id, 0) + 1

    def _refresh(self, force: bool = False, timeout: float | None = None) -> None:
        """Re-read the workers from the scheduler (at most every `worker_refresh_seconds`
        unless forced), within the deadline. A failure empties the worker list and sets
        `error`, so the pools are unhealthy until a later refresh succeeds."""
        sched = self._scheduler
        client = sched.client
        if client is None:
            return
        status = getattr(client, "status", "running")
        if status != "running":
            if not sched.lost:
                log.warning("gravity: lost the connection to dask scheduler %s (the Dask client is %s)", sched.address, status)
            sched.lost = True
            again = "reconnecting" if status == "connecting" else f"the Dask client is {status}"
            sched.error = f"dask scheduler {sched.address}: the connection to it was lost ({again})"
            sched.workers, sched.busy = {}, {}
            return
        if sched.lost:  # the client reconnected: a scheduler that restarted knows no subscriptions
            sched.lost = False
            log.warning("gravity: reconnected to dask scheduler %s", sched.address)
            try:
                client.subscribe_topic(EVENT_TOPIC, self._on_step_message)
                client.subscribe_topic("all", self._on_cluster_message)
            except Exception as exc:
                sched.error = f"dask scheduler {sched.address}: subscribing to events failed: {type(exc).__name__}: {exc}"
                return
            force = True
        now = time.monotonic()
        if not force and not sched.stale and now - sched.refreshed_at < self.refresh_seconds:
            return
        sched.refreshed_at, sched.stale = now, False
        try:
            info = _on_loop(
                client,
                client.scheduler.identity(n_workers=-1),
                timeout or self.connect_timeout,
                f"dask scheduler {sched.address}: reading its workers",
            )
            if not isinstance(info, dict) or not isinstance(info.get("workers"), dict):
                kind = info.get("type") if isinstance(info, dict) else type(info).__name__
                raise SchedulerUnavailable(
                    f"dask scheduler {sched.address}: not a Dask scheduler: it identifies as {kind!r}"
                )
            processing = _on_loop(
                client,
                client.scheduler.processing(),
                timeout or self.connect_timeout,
                f"dask scheduler {sched.address}: reading what its workers run",
            )
        except Exception as exc:
            if not isinstance(exc, SchedulerUnavailable):
                exc = f"dask scheduler {sched.address} is unreachable: {type(exc).__name__}: {exc}"
            sched.error = str(exc)
            sched.workers, sched.busy = {}, {}
            return
        sched.error = ""
        sched.workers = {
            addr: dict(w.get("resources") or {})
            for addr, w in info["workers"].items()
            if w.get("status", "running") == "running"
        }
        sched.names = {addr: str(w.get("name", addr)) for addr, w in info["workers"].items()}
        sched.busy = _busy_elsewhere(info["workers"], processing, _local_prefixes())

    def _capacity(self, resources: Mapping[str, float], site: str) -> float:
        """How many steps of `site` a worker with these resources can run at once."""
        need = {site_resource(site): 1, **self.extra_resources}
        return min(resources.get(name, 0) // amount for name, amount in need.items())

    def _site_workers(self, site: str) -> list[str]:
        return [a for a, res in self._scheduler.workers.items() if self._capacity(res, site) >= 1]

    def _free_by_worker(self, site: str) -> dict[str, int]:
        """worker address -> free slots (negative when over-committed) of each worker of
        `site`: its capacity, minus this process's steps in flight there, minus the steps
        the scheduler saw busy there at the last refresh that this process does not hold."""
        mine = Counter(_in_flight(self.address, site).values())
        busy = self._scheduler.busy
        return {
            addr: int(self._capacity(res, site)) - mine.get(addr, 0) - busy.get(addr, 0)
            for addr, res in self._scheduler.workers.items()
            if self._capacity(res, site) >= 1
        }

    def _choose_worker(self, pool) -> str | None:
        """The site's worker with the most free slots; round robin among equals."""
        free = self._free_by_worker(pool.site)
        if not free:
            return None
        candidates = list(free)
        turn = next(_TURNS) % len(candidates)
        return max(candidates[turn:] + candidates[:turn], key=free.__getitem__)


def _busy_elsewhere(workers: Mapping[str, Any], processing: Mapping[str, Any], mine: tuple[str, ...]) -> dict[str, int]:
    """worker address -> gravity steps busy there that this process does not track, from the
    scheduler's `identity` (`workers`) and `processing`: the gravity tasks of other
    processes' runs it has assigned there, plus the tasks the worker reports cancelled but
    still running (its last heartbeat's `metrics.task_counts`), which hold its thread."""
    out: dict[str, int] = {}
    for addr, worker in workers.items():
        counts = (worker.get("metrics") or {}).get("task_counts") or {}
        abandoned = int(counts.get("cancelled", 0) or 0)
        others = sum(
            1 for key in processing.get(addr, ()) or ()
            if isinstance(key, str) and key.startswith("gravity-") and not (mine and key.startswith(mine))
        )
        if abandoned + others:
            out[addr] = abandoned + others
    return out


def _error_info(exc: BaseException):
    from dagster_gravity.dagster_internals import serializable_error_info_from_exc_info

    return serializable_error_info_from_exc_info((type(exc), exc, exc.__traceback__))
