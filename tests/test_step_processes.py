"""Nothing a step starts survives it on a local worker: not when the step fails, not when the
run is interrupted, not when the run process is SIGKILLed (pools/process_tree.py)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from dagster import execute_job, reconstructable

from tests.support import survivor_jobs
from tests.support.executor_runs import pid_alive

REPO = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.slow, pytest.mark.executor, pytest.mark.timeout(120)]

RUN_SCRIPT = """
import sys
from dagster import DagsterInstance, execute_job, reconstructable
from tests.support import survivor_jobs
with DagsterInstance.get() as instance:
    execute_job(reconstructable(survivor_jobs.hangs_job), instance=instance,
                run_config={"execution": {"config": {"sites_file": sys.argv[1], "locality_wait": 0.0}}})
"""


@pytest.fixture
def pids_dir(tmp_path, monkeypatch):
    directory = tmp_path / "pids"
    directory.mkdir()
    monkeypatch.setenv(survivor_jobs.PIDS_ENV, str(directory))
    return directory


def _started(pids_dir: Path, timeout: float = 60) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (pids_dir / "child").exists() and (pids_dir / "grandchild").exists():
            return [int((pids_dir / name).read_text()) for name in ("child", "grandchild")]
        time.sleep(0.1)
    raise AssertionError("the step never started its processes")


def _survivors(pids: list[int], within: float = 10) -> list[int]:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline and any(pid_alive(p) for p in pids):
        time.sleep(0.1)
    return [p for p in pids if pid_alive(p)]


def test_a_failed_steps_processes_do_not_survive_it(gravity, pids_dir):
    result = execute_job(
        reconstructable(survivor_jobs.fails_job), instance=gravity.instance,
        run_config={"execution": {"config": {"sites_file": str(gravity.sites_file)}}}, raise_on_error=False,
    )
    assert not result.success
    pids = _started(pids_dir, timeout=1)
    assert _survivors(pids, within=5) == []


@pytest.mark.parametrize("how", ["interrupt", "sigkill"])
def test_an_ended_runs_step_processes_do_not_survive_it(how, gravity, pids_dir):
    proc = subprocess.Popen([sys.executable, "-c", RUN_SCRIPT, str(gravity.sites_file)], cwd=REPO)
    try:
        pids = _started(pids_dir)
        assert all(pid_alive(p) for p in pids)
        if how == "interrupt":
            proc.send_signal(signal.SIGINT)
        else:
            proc.kill()  # no chance to clean up: the worker dies with it, its reaper cleans up
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert _survivors(pids) == []
