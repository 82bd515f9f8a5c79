"""Jobs whose inputs must move between sites, for the run summary tests: each step is pinned
(`gravity/pin`), so the reader runs at beta and its input, written at alpha, is replicated
by the real `GravityIOManager` over the link alpha->beta (local storage at both sites).

`write_summary_sites` writes the two-site topology, with the link's price the test checks."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import yaml
from dagster import Definitions, StaticPartitionsDefinition, asset, define_asset_job, job, op

from dagster_gravity import GravityIOManager, gravity_executor

FAIL_ENV = "GRAVITY_TEST_SUMMARY_FAIL"  # set: the reader fails after loading its input
USD_PER_GB = 0.05  # alpha -> beta
N = 250_000  # float64 values: 2 MB, above link_measurements.MIN_BYTES


def write_summary_sites(directory: Path) -> Path:
    store = Path(directory) / "sites-store"
    spec = {
        "sites": [
            {"name": name, "region": f"r-{name}", "kind": "onprem",
             "storage": {"kind": "local", "path": str(store / name)}, "pools": [{"name": "cpu", "slots": 1}]}
            for name in ("alpha", "beta")
        ],
        "links": [{"from": "alpha", "to": "beta", "bandwidth_gbps": 1, "latency_ms": 5, "usd_per_gb": USD_PER_GB}],
    }
    path = Path(directory) / "summary-sites.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@asset(op_tags={"gravity/pin": "alpha"})
def made_at_alpha() -> np.ndarray:
    return np.arange(N, dtype=np.float64)


@asset(op_tags={"gravity/pin": "beta"})
def read_at_beta(made_at_alpha: np.ndarray) -> float:
    if os.environ.get(FAIL_ENV):
        raise RuntimeError("the reader fails on purpose (GRAVITY_TEST_SUMMARY_FAIL)")
    return float(made_at_alpha.sum())


days = StaticPartitionsDefinition(["d1", "d2"])


@asset(partitions_def=days)
def daily() -> np.ndarray:
    return np.arange(N, dtype=np.float64)


@asset(op_tags={"gravity/pin": "beta"})
def all_days(daily: dict) -> float:
    return float(sum(v.sum() for v in daily.values()))


@op(tags={"gravity/pin": "alpha"})
def make_op() -> np.ndarray:
    return np.arange(N, dtype=np.float64)


@op(tags={"gravity/pin": "beta"})
def read_op(values: np.ndarray) -> float:
    return float(values.sum())


@job(executor_def=gravity_executor, resource_defs={"io_manager": GravityIOManager()})
def op_moving_job():
    read_op(make_op())


defs = Definitions(
    assets=[made_at_alpha, read_at_beta, daily, all_days],
    jobs=[
        define_asset_job("moving_job", selection=[made_at_alpha, read_at_beta], executor_def=gravity_executor),
        define_asset_job("all_days_job", selection=[all_days], executor_def=gravity_executor),
        op_moving_job,
    ],
    resources={"io_manager": GravityIOManager()},
)


def moving_job():
    return defs.resolve_job_def("moving_job")


def all_days_job():
    return defs.resolve_job_def("all_days_job")


def ops_job():
    return defs.resolve_job_def("op_moving_job")
