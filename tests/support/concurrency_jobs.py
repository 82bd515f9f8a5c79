"""Jobs that use Dagster's own concurrency pools (`pool=`), to check that they still hold
under the gravity executor exactly as under Dagster's multiprocess executor."""

from __future__ import annotations

import json
import os
import time

from dagster import Definitions, asset, define_asset_job, multiprocess_executor

from dagster_gravity import gravity_executor

CONCURRENCY_POOL = "warehouse"  # a Dagster concurrency pool, not a gravity compute pool
WINDOWS_ENV = "GRAVITY_TEST_WINDOWS_DIR"  # where each step records when it ran


def _held_for(name: str, seconds: float = 0.6) -> None:
    """Hold the step for `seconds`, then record its [start, end] wall-clock window."""
    start = time.time()
    time.sleep(seconds)
    path = os.path.join(os.environ[WINDOWS_ENV], f"{name}.json")
    with open(path, "w") as f:
        json.dump([start, time.time()], f)


@asset(pool=CONCURRENCY_POOL)
def pooled_a() -> None:
    _held_for("pooled_a")


@asset(pool=CONCURRENCY_POOL)
def pooled_b() -> None:
    _held_for("pooled_b")


@asset(pool=CONCURRENCY_POOL)
def pooled_c() -> None:
    _held_for("pooled_c")


POOLED = [pooled_a, pooled_b, pooled_c]

gravity_pooled_job = define_asset_job("gravity_pooled_job", selection=POOLED, executor_def=gravity_executor)
multiprocess_pooled_job = define_asset_job(
    "multiprocess_pooled_job", selection=POOLED, executor_def=multiprocess_executor
)

defs = Definitions(assets=POOLED, jobs=[gravity_pooled_job, multiprocess_pooled_job])


def gravity_job():
    return defs.resolve_job_def("gravity_pooled_job")


def multiprocess_job():
    return defs.resolve_job_def("multiprocess_pooled_job")
