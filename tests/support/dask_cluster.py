"""Real `dask scheduler` and `dask worker` processes on loopback, for the Dask backend tests.

Every process is started here and stopped here by its pid (SIGTERM, a grace period, then
SIGKILL), so a test never leaves a scheduler or worker behind. Workers run without a nanny
so that the pid we hold is the process that runs steps: killing it kills the step.

Each worker declares its site the way the Dask backend expects: the resource
``site-<name>=<slots>``, and a name ``<site>-<n>`` so events can say which worker ran a step.
"""

from __future__ import annotations

import http.server
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


def _dask_command(*args: str) -> list[str]:
    # `dask scheduler` / `dask worker` from the same venv as the tests.
    dask = Path(sys.executable).with_name("dask")
    if not dask.exists():
        raise FileNotFoundError(f"{dask} not found: the Dask CLI comes with 'distributed' (pip install distributed)")
    return [str(dask), *args]


def _process_env() -> dict[str, str]:
    env = dict(os.environ)
    # Workers import the test jobs (tests.support...) and the library from the checkout.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    # Quiet, and no port clashes between parallel test sessions.
    env.setdefault("DASK_DISTRIBUTED__LOGGING__DISTRIBUTED", "warning")
    env["DAGSTER_DISABLE_TELEMETRY"] = "1"
    return env


def stop_process(proc: subprocess.Popen, grace_s: float = 5.0) -> None:
    """SIGTERM, wait up to `grace_s`, then SIGKILL; always reaps the pid."""
    if proc.poll() is not None:
        return
    try:
        os.kill(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        try:
            os.kill(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=10)


@dataclass
class DaskCluster:
    """One scheduler and any number of site-tagged workers, all children of the test."""

    workdir: Path
    scheduler: subprocess.Popen | None = None
    address: str = ""
    workers: dict[str, subprocess.Popen] = field(default_factory=dict)
    _logs: list = field(default_factory=list)
    _children: list = field(default_factory=list)  # what the scheduler and workers had started, at stop()

    def start_scheduler(self, timeout_s: float = 30.0) -> str:
        scheduler_file = self.workdir / "scheduler.json"
        log = open(self.workdir / "scheduler.log", "wb")
        self._logs.append(log)
        self.scheduler = subprocess.Popen(
            _dask_command(
                "scheduler",
                "--host", "127.0.0.1",
                "--port", "0",
                "--no-dashboard",
                "--scheduler-file", str(scheduler_file),
            ),
            cwd=self.workdir,
            env=_process_env(),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.scheduler.poll() is not None:
                raise RuntimeError(f"dask scheduler exited with {self.scheduler.returncode}: {self.log('scheduler')}")
            if scheduler_file.exists():
                try:
                    self.address = json.loads(scheduler_file.read_text())["address"]
                    return self.address
                except (ValueError, KeyError):
                    pass  # written but not complete yet
            time.sleep(0.1)
        raise TimeoutError(f"dask scheduler did not write {scheduler_file} within {timeout_s}s")

    def start_worker(
        self, name: str, site: str, slots: int = 1, wait: bool = True, env: dict[str, str] | None = None
    ) -> subprocess.Popen:
        """A worker of `site` named `name`, with `slots` threads and `site-<site>=<slots>`;
        `env` is set in its environment over the test's (its own DAGSTER_HOME, say)."""
        if name in self.workers and self.workers[name].poll() is None:
            raise ValueError(f"worker {name!r} is already running (pid {self.workers[name].pid})")
        log = open(self.workdir / f"worker-{name}.log", "wb")
        self._logs.append(log)
        proc = subprocess.Popen(
            _dask_command(
                "worker", self.address,
                "--name", name,
                "--resources", f"site-{site}={slots}",
                "--nthreads", str(slots),
                "--nworkers", "1",
                "--no-nanny",
                "--host", "127.0.0.1",
                "--no-dashboard",
                "--local-directory", str(self.workdir / f"worker-{name}"),
                "--death-timeout", "30",
                # Import Dagster at start-up rather than in the first step.
                "--preload", "dagster_gravity.pools.dask",
            ),
            cwd=self.workdir,
            env={**_process_env(), **(env or {})},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self.workers[name] = proc
        if wait:
            self.wait_for_workers({name})
        return proc

    def worker_names(self) -> set[str]:
        from distributed import Client

        with Client(self.address, timeout=10) as client:
            return {str(w["name"]) for w in client.scheduler_info(n_workers=-1)["workers"].values()}

    def wait_for_workers(self, names: set[str], timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for name in names:
                proc = self.workers[name]
                if proc.poll() is not None:
                    raise RuntimeError(f"dask worker {name} exited with {proc.returncode}: {self.log('worker-' + name)}")
            if names <= self.worker_names():
                return
            time.sleep(0.2)
        raise TimeoutError(f"dask workers {sorted(names)} did not join {self.address} within {timeout_s}s")

    def kill_worker(self, name: str) -> None:
        """SIGKILL: the worker gets no chance to say goodbye, as when a machine dies."""
        proc = self.workers[name]
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)

    def stop_worker(self, name: str) -> None:
        stop_process(self.workers[name])

    def processes(self) -> list[subprocess.Popen]:
        return [p for p in [self.scheduler, *self.workers.values()] if p is not None]

    def log(self, which: str) -> str:
        path = self.workdir / f"{which}.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else "(no log)"

    def stop(self) -> None:
        self._children += self._descendants()
        for proc in self.workers.values():
            stop_process(proc)
        if self.scheduler is not None:
            stop_process(self.scheduler)
        for log in self._logs:
            log.close()

    def _descendants(self) -> list:
        import psutil

        found = []
        for proc in self.processes():
            if proc.poll() is None:
                try:
                    found += psutil.Process(proc.pid).children(recursive=True)
                except psutil.NoSuchProcess:
                    pass
        return found

    def leftover_processes(self, wait_s: float = 10.0) -> list[str]:
        """What of this cluster still runs after `stop()`: the scheduler and workers (which
        `stop_process` reaps), and the processes they had started (compute-log `tail`s and
        their watchers, ...), given `wait_s` to exit. Empty when nothing was left behind."""
        import psutil

        def running(p) -> bool:
            try:
                return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
            except psutil.NoSuchProcess:
                return False

        deadline = time.monotonic() + wait_s
        while (left := [p for p in self._children if running(p)]) and time.monotonic() < deadline:
            time.sleep(0.1)
        described = []
        for p in left:
            try:
                described.append(f"{p.pid}: {' '.join(p.cmdline())[:200]}")
            except psutil.Error:
                described.append(str(p.pid))
        return [f"{p.pid}: {p.args}" for p in self.processes() if p.poll() is None] + described


class NotDaskServer:
    """A loopback TCP server at a Dask scheduler's address that does not speak Dask.

    kind "garbage": sends `answer` as soon as it accepts a connection, then holds it open
    (a service that talks first); "silent": accepts and says nothing; "http": Python's
    `http.server`, which waits for a request, as the scheduler's dashboard does. Runs in a
    thread of the test; `close()` (or leaving the `with` block) stops it.
    """

    def __init__(self, kind: str = "garbage", answer: bytes = b"HTTP/1.1 400 Bad Request\r\nServer: not-dask\r\n\r\n"):
        self.kind = kind
        self.answer = answer
        self.accepted = threading.Event()  # set at the first connection
        self._stop = threading.Event()
        self._connections: list[socket.socket] = []
        if kind == "http":
            server = self

            class Handler(http.server.BaseHTTPRequestHandler):
                def setup(self):
                    server.accepted.set()
                    super().setup()

                def do_GET(self):
                    self.send_error(404)

                def log_message(self, *args):
                    pass

            self._http = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
            self._http.daemon_threads = True
            self.port = self._http.server_address[1]
            self._thread = threading.Thread(target=self._http.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
        elif kind in ("garbage", "silent"):
            self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self._sock.bind(("127.0.0.1", 0))
            self._sock.listen(16)
            self._sock.settimeout(0.1)
            self.port = self._sock.getsockname()[1]
            self._thread = threading.Thread(target=self._serve, daemon=True)
        else:
            raise ValueError(f"NotDaskServer kind {kind!r}; expected garbage, silent or http")
        self.address = f"tcp://127.0.0.1:{self.port}"
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            self._connections.append(conn)
            self.accepted.set()
            if self.kind == "garbage":
                try:
                    conn.sendall(self.answer)
                except OSError:
                    pass

    def close(self) -> None:
        self._stop.set()
        if self.kind == "http":
            self._http.shutdown()
            self._http.server_close()
        else:
            self._sock.close()
        self._thread.join(timeout=5)
        for conn in self._connections:
            conn.close()

    def __enter__(self) -> "NotDaskServer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@pytest.fixture(scope="module")
def dask_cluster(tmp_path_factory):
    """A running scheduler with no workers; tests add the workers they need."""
    cluster = DaskCluster(workdir=tmp_path_factory.mktemp("dask"))
    try:
        cluster.start_scheduler()
        yield cluster
    finally:
        cluster.stop()
    left = cluster.leftover_processes()
    assert not left, f"dask processes still running after the tests: {left}"
