"""The multisite benchmark's jobs, importable by the Dask workers (run.py puts this directory
on their PYTHONPATH; they rebuild the jobs from module + name).

Each workload is one set of assets built twice: with the gravity executor and
`GravityIOManager` (per-site S3 storage from the run's sites file), and location-blind with
Dagster's `dask_executor` and dagster-aws `S3PickleIOManager` on one hub bucket
($MULTISITE_HUB_ENDPOINT, $MULTISITE_HUB_BUCKET). The raw assets are materialized before each
run (run.py) at the data's site; the jobs select everything downstream of them.

Compute is mostly `time.sleep`: the host has few cores shared by every site, so sleeping keeps
a step's duration the same wherever it runs, as on separate machines.
"""

from __future__ import annotations

import os
import time

import numpy as np
from dagster import AssetIn, AssetSelection, Definitions, EnvVar, asset, define_asset_job

from dagster_gravity import GravityIOManager, gravity_executor

# Workload 1 (ml): 4 raw partitions at the on-prem site, a feature build for each (more
# builds than the site's 2 slots), then join, train, evaluate.
RAW_PARTITIONS = 4
RAW_MB = float(os.environ.get("MULTISITE_RAW_MB", "50"))
FEATURE_SECONDS = 1.0
TRAIN_SECONDS = 1.0

# Workload 2 (long): one modest input at the on-prem site, many long steps (a long queue there).
LONG_STEPS = 6
LONG_SECONDS = float(os.environ.get("MULTISITE_LONG_SECONDS", "8"))
LONG_INPUT_MB = 5.0


def _array(mb: float, seed: int) -> np.ndarray:
    # Versions are content-named: the same bytes again would be the same version, with the
    # replicas earlier runs made still valid. run.py sets a new salt before each run.
    salt = int(os.environ.get("MULTISITE_SALT", "0"))
    return np.random.default_rng([seed, salt]).random(int(mb * 1024 * 1024 / 4), dtype=np.float32)


def _raw(i: int):
    @asset(name=f"raw_{i}", group_name="ml")
    def raw() -> np.ndarray:
        return _array(RAW_MB, i)

    return raw


def _ml_assets() -> list:
    raws = [_raw(i) for i in range(RAW_PARTITIONS)]
    builds = []
    for i in range(RAW_PARTITIONS):

        @asset(name=f"features_{i}", ins={"raw": AssetIn(f"raw_{i}")}, group_name="ml")
        def features(raw: np.ndarray) -> np.ndarray:
            time.sleep(FEATURE_SECONDS)
            # a tenth of the raw bytes: per-row aggregates of 10 columns
            return raw[: raw.size - raw.size % 10].reshape(-1, 10).mean(axis=1, dtype=np.float32)

        builds.append(features)

    @asset(ins={f"f{i}": AssetIn(f"features_{i}") for i in range(RAW_PARTITIONS)}, group_name="ml")
    def training_set(**parts: np.ndarray) -> np.ndarray:
        return np.concatenate([parts[k][::4] for k in sorted(parts)])

    @asset(group_name="ml")
    def model(training_set: np.ndarray) -> np.ndarray:
        time.sleep(TRAIN_SECONDS)
        return np.histogram(training_set, bins=256)[0].astype(np.float32)

    @asset(group_name="ml")
    def evaluation(model: np.ndarray, training_set: np.ndarray) -> dict:
        return {"bins": int(model.size), "mean": float(training_set.mean())}

    return [*raws, *builds, training_set, model, evaluation]


def _long_assets() -> list:
    @asset(group_name="long")
    def long_input() -> np.ndarray:
        return _array(LONG_INPUT_MB, 99)

    steps = []
    for i in range(LONG_STEPS):

        @asset(name=f"long_{i}", group_name="long")
        def long_step(long_input: np.ndarray) -> np.ndarray:
            time.sleep(LONG_SECONDS)
            return long_input[:1024] * 2

        steps.append(long_step)

    @asset(ins={f"s{i}": AssetIn(f"long_{i}") for i in range(LONG_STEPS)}, group_name="long")
    def long_summary(**parts: np.ndarray) -> dict:
        return {"sum": float(sum(p.sum() for p in parts.values()))}

    return [long_input, *steps, long_summary]


ML_ASSETS = _ml_assets()
LONG_ASSETS = _long_assets()
RAW = {"ml": [f"raw_{i}" for i in range(RAW_PARTITIONS)], "long": ["long_input"]}
GROUPS = {"ml": ML_ASSETS, "long": LONG_ASSETS}


def _downstream(workload: str) -> AssetSelection:
    return AssetSelection.groups(workload) - AssetSelection.assets(*RAW[workload])


def _gravity_defs() -> Definitions:
    return Definitions(
        assets=[*ML_ASSETS, *LONG_ASSETS],
        jobs=[define_asset_job(f"{w}_job", selection=_downstream(w), executor_def=gravity_executor) for w in GROUPS],
        resources={"io_manager": GravityIOManager()},
    )


def _blind_defs() -> Definitions:
    from dagster_aws.s3 import S3PickleIOManager, S3Resource
    from dagster_dask import dask_executor

    s3 = S3Resource(endpoint_url=EnvVar("MULTISITE_HUB_ENDPOINT"), region_name="us-east-1")
    return Definitions(
        assets=[*ML_ASSETS, *LONG_ASSETS],
        jobs=[define_asset_job(f"{w}_job", selection=_downstream(w), executor_def=dask_executor) for w in GROUPS],
        resources={"io_manager": S3PickleIOManager(s3_resource=s3, s3_bucket=EnvVar("MULTISITE_HUB_BUCKET"), s3_prefix="blind")},
    )


gravity_defs = _gravity_defs()
blind_defs = _blind_defs()


def gravity_ml_job():
    return gravity_defs.resolve_job_def("ml_job")


def gravity_long_job():
    return gravity_defs.resolve_job_def("long_job")


def blind_ml_job():
    return blind_defs.resolve_job_def("ml_job")


def blind_long_job():
    return blind_defs.resolve_job_def("long_job")
