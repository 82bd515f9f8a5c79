"""A real `dagster dev -w workspace.yaml` on the reference code location, for tests that
talk to the webserver (GraphQL in tests/test_webserver.py, a browser in tests/test_browser.py)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

from dagster_graphql import DagsterGraphQLClient

from tests.support.instance import write_dagster_yaml
from tests.support.ports import free_port

REPO = Path(__file__).resolve().parents[2]
DONE = ("SUCCESS", "FAILURE", "CANCELED")


def stop_group(proc: subprocess.Popen) -> None:
    """SIGINT the whole process group (dagster dev may ignore SIGTERM), then SIGKILL."""
    try:
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        pass
    except ProcessLookupError:
        return
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=10)


def project_env(root: Path) -> tuple[Path, dict[str, str]]:
    """A copy of the reference project's workspace and sites file under `root`, an empty
    DAGSTER_HOME beside it, and the environment `dagster dev` and helpers run with."""
    work = root / "project"
    work.mkdir(parents=True)
    for name in ("workspace.yaml", "sites.yaml"):
        shutil.copy(REPO / name, work / name)
    home = root / "home"
    write_dagster_yaml(home)
    env = dict(os.environ, DAGSTER_HOME=str(home), GRAVITY_SITES=str(work / "sites.yaml"), PYTHONPATH=str(REPO))
    env.pop("DAGSTER_IS_DEV_CLI", None)
    return work, env


def write_landing_day(work: Path, env: dict[str, str], date: str = "2026-01-01", size: str = "200KB") -> None:
    """A day of raw data in every site's landing area (pipelines.datagen)."""
    subprocess.run([sys.executable, "-m", "pipelines.datagen", "--date", date, "--size", size],
                   cwd=work, env=env, check=True, capture_output=True)


@contextlib.contextmanager
def dagster_dev_server(work: Path, env: dict[str, str], log_path: Path) -> Iterator[tuple[DagsterGraphQLClient, int]]:
    """`dagster dev` on a free loopback port, until its GraphQL answers; stopped by process
    group on exit. Yields a GraphQL client and the port."""
    port = free_port()
    dagster = Path(sys.executable).with_name("dagster")
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [str(dagster), "dev", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)],
            cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        try:
            client = DagsterGraphQLClient("127.0.0.1", port_number=port)
            wait_for_webserver(client, proc, log_path)
            yield client, port
        finally:
            stop_group(proc)


def wait_for_webserver(client: DagsterGraphQLClient, proc: subprocess.Popen, log_path: Path, seconds: float = 120) -> None:
    """Until the webserver's GraphQL answers; AssertionError with the log's tail if `proc`
    exits first or `seconds` pass."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            client._execute("{ version }")
            return
        except Exception:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(log_path.read_text()[-3000:])
            time.sleep(1)


def wait_for_run(client: DagsterGraphQLClient, run_id: str, timeout: float = 120) -> str:
    """The run's final status, polled until it is done (AssertionError after `timeout`)."""
    deadline = time.monotonic() + timeout
    while (status := client.get_run_status(run_id).value) not in DONE:
        assert time.monotonic() < deadline, f"run {run_id} still {status} after {timeout} s"
        time.sleep(0.5)
    return status
