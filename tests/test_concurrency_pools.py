"""Dagster's own concurrency pools (`@asset(pool=...)`, limits in the instance) hold under
the gravity executor as under Dagster's multiprocess executor. They are a different thing
from gravity's compute pools: a concurrency pool limits how many steps that use it run at
once across the instance; a compute pool is where a step runs."""

from __future__ import annotations

import itertools
import json

import pytest
from dagster import execute_job, reconstructable

from tests.support import concurrency_jobs, jobs

pytestmark = [pytest.mark.slow, pytest.mark.executor]


def _windows(directory) -> dict[str, tuple[float, float]]:
    return {p.stem: tuple(json.loads(p.read_text())) for p in directory.glob("*.json")}


def _overlaps(windows) -> list[tuple[str, str]]:
    return [
        (a, b)
        for (a, (a0, a1)), (b, (b0, b1)) in itertools.combinations(sorted(windows.items()), 2)
        if a0 < b1 and b0 < a1
    ]


@pytest.mark.parametrize("factory", ["gravity_job", "multiprocess_job"])
def test_a_concurrency_pool_limit_of_one_is_honoured(factory, instance, tmp_path, monkeypatch):
    windows = tmp_path / "windows"
    windows.mkdir()
    monkeypatch.setenv(concurrency_jobs.WINDOWS_ENV, str(windows))
    instance.event_log_storage.set_concurrency_slots(concurrency_jobs.CONCURRENCY_POOL, 1)
    run_config = {}
    if factory == "gravity_job":
        # Three free slots at the one site it may use: only the concurrency pool serialises.
        run_config = {"execution": {"config": {"sites_file": str(jobs.write_test_sites(tmp_path)), "max_concurrent": 3}}}
    recon = reconstructable(getattr(concurrency_jobs, factory))
    with execute_job(recon, instance=instance, run_config=run_config) as result:
        assert result.success
    ran = _windows(windows)
    assert sorted(ran) == ["pooled_a", "pooled_b", "pooled_c"]
    assert _overlaps(ran) == [], f"steps of concurrency pool {concurrency_jobs.CONCURRENCY_POOL!r} overlapped: {ran}"


def test_without_a_limit_gravity_runs_the_pooled_steps_concurrently(instance, tmp_path, monkeypatch):
    """The control: the same job without a limit overlaps, so the test above can fail."""
    windows = tmp_path / "windows"
    windows.mkdir()
    monkeypatch.setenv(concurrency_jobs.WINDOWS_ENV, str(windows))
    run_config = {"execution": {"config": {"sites_file": str(jobs.write_test_sites(tmp_path)), "max_concurrent": 3}}}
    with execute_job(reconstructable(concurrency_jobs.gravity_job), instance=instance, run_config=run_config) as result:
        assert result.success
    assert _overlaps(_windows(windows))
