"""Steps that start long-lived processes (a direct child and an orphaned grandchild, as
`sh -c 'cmd &'` leaves one) and then fail or hang, to check that nothing they started
outlives the step, an interrupted run, or a run process killed outright."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from dagster import job, op

from dagster_gravity import gravity_executor

PIDS_ENV = "GRAVITY_TEST_PIDS_DIR"


def _start_sleepers() -> None:
    """`sleep 600` as a child, and another as an orphaned grandchild; pids written to disk."""
    out = Path(os.environ[PIDS_ENV])
    child = subprocess.Popen(["sleep", "600"])
    grandchild_file = out / "grandchild.tmp"
    subprocess.run(["sh", "-c", f"sleep 600 & echo $! > {grandchild_file}"], check=True)
    (out / "child").write_text(str(child.pid))
    grandchild_file.rename(out / "grandchild")


@op
def starts_sleepers_then_fails():
    _start_sleepers()
    raise RuntimeError("the step fails, leaving its processes behind (on purpose)")


@op
def starts_sleepers_then_hangs():
    _start_sleepers()
    time.sleep(600)


@job(executor_def=gravity_executor)
def fails_job():
    starts_sleepers_then_fails()


@job(executor_def=gravity_executor)
def hangs_job():
    starts_sleepers_then_hangs()
