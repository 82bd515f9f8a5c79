"""Single-flight replication: one copy of a version into a site, however many read it at once."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
from dagster import AssetKey, AssetRecordsFilter, execute_job, materialize, reconstructable

from dagster_gravity import GravityIOManager, GravityTopology
from tests.support import flight_jobs
from tests.support.replication_race import race_replications, storage_from_spec
from tests.support.s3 import write_sites_yaml

pytestmark = pytest.mark.slow

SIZE = 12 * 1024 * 1024  # two S3 parts at the default part size


def _specs(tmp_path, seaweedfs) -> dict[str, dict]:
    bucket = seaweedfs.make_bucket(f"flight-{os.getpid()}-{time.monotonic_ns()}")
    return {
        "local": {"kind": "local", "site": "here", "root": str(tmp_path / "store")},
        "other-local": {"kind": "local", "site": "there", "root": str(tmp_path / "other")},
        "s3": {"kind": "s3", "site": "cloud", "bucket": bucket, "prefix": "gravity", "endpoint_url": seaweedfs.endpoint_url},
    }


@pytest.mark.parametrize("route", [("s3", "local"), ("local", "s3"), ("other-local", "local")])
def test_concurrent_readers_make_one_copy(tmp_path, seaweedfs, route):
    specs = _specs(tmp_path, seaweedfs)
    source, destination = specs[route[0]], specs[route[1]]
    data = np.random.default_rng(7).bytes(SIZE)
    info = storage_from_spec(source).put_version("features/day1", data, ".parquet")

    outcomes = race_replications(source, destination, info.key, info.sha256, readers=6)
    assert all(o[0] != "error" for o in outcomes), outcomes
    assert sorted(o[0] for o in outcomes) == [0] * 5 + [SIZE]  # one copier; five reused its copy
    assert sum(1 for _moved, reused in outcomes if reused) == 5
    assert storage_from_spec(destination).read_bytes(info.key, info.sha256)[0] == data


def test_parallel_steps_at_one_site_replicate_their_input_once(tmp_path, instance, monkeypatch):
    sites = write_sites_yaml(tmp_path)
    monkeypatch.setenv("GRAVITY_SITES", str(sites))
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    monkeypatch.setenv(flight_jobs.BARRIER_ENV, str(barrier))
    at_us = GravityIOManager(topology=GravityTopology(sites_file=str(sites)), default_site="us-local")
    materialize([flight_jobs.big_table], resources={"io_manager": at_us}, instance=instance)

    run_config = {"execution": {"config": {"max_concurrent": flight_jobs.READERS}}}
    with execute_job(reconstructable(flight_jobs.readers_job), instance=instance, run_config=run_config) as result:
        assert result.success
    observations = instance.fetch_observations(AssetRecordsFilter(asset_key=AssetKey("big_table")), limit=10).records
    moved = [o.asset_observation.metadata["gravity/bytes_moved"].value for o in observations]
    assert moved == [16_000_128]  # three readers, one replication into eu-local, recorded once
