"""Three steps at one site reading one upstream asset at the same moment, in separate
processes (Dagster's multiprocess executor), for the single-flight replication test.

The IO manager waits, before loading, until all three readers are loading (a file barrier
in $GRAVITY_TEST_BARRIER_DIR), so their replications really overlap."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
from dagster import Definitions, asset, define_asset_job, multiprocess_executor

from dagster_gravity import GravityIOManager

BARRIER_ENV = "GRAVITY_TEST_BARRIER_DIR"
READERS = 3


class BarrierIOManager(GravityIOManager):
    def load_input(self, context):
        barrier = Path(os.environ[BARRIER_ENV])
        (barrier / context.step_context.step.key).touch()
        deadline = time.monotonic() + 60
        while len(list(barrier.iterdir())) < READERS and time.monotonic() < deadline:
            time.sleep(0.01)
        return super().load_input(context)


@asset
def big_table() -> np.ndarray:
    return np.arange(2_000_000, dtype=np.float64)


def _reader(name: str):
    @asset(name=name)
    def reads(big_table: np.ndarray) -> float:
        return float(big_table.sum())

    return reads


READER_ASSETS = [_reader(f"reader_{i}") for i in range(READERS)]

defs = Definitions(
    assets=[big_table, *READER_ASSETS],
    jobs=[define_asset_job("readers_job", selection=[r.key for r in READER_ASSETS], executor_def=multiprocess_executor)],
    resources={"io_manager": BarrierIOManager(default_site="eu-local")},
)


def readers_job():
    return defs.resolve_job_def("readers_job")
