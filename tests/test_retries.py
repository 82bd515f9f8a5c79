"""Retries without a delay under the gravity executor: each attempt is its own, so runs never
crash with "unknown state" / "not known to be in flight" errors, a retry limit of N gives
N + 1 attempts, failure hooks run, and a failed resource initialisation is retried once per
attempt. (benchmarks/retry_stress.py repeats the first case 50 times.)"""

from __future__ import annotations

import json

import pytest
from dagster import DagsterEventType, execute_job, reconstructable

from tests.support import jobs, retry_jobs

pytestmark = [pytest.mark.slow, pytest.mark.executor]


@pytest.fixture
def attempts(tmp_path, monkeypatch):
    directory = tmp_path / "attempts"
    directory.mkdir()
    monkeypatch.setenv(retry_jobs.ATTEMPTS_ENV, str(directory))
    return directory


def _run(instance, factory, tmp_path, **config):
    run_config = {"execution": {"config": {"sites_file": str(jobs.write_test_sites(tmp_path)), "locality_wait": 0.0, **config}}}
    return execute_job(reconstructable(getattr(retry_jobs, factory)), instance=instance, run_config=run_config, raise_on_error=False)


def _events(result, step_key, event_type):
    return [e for e in result.all_events if e.step_key == step_key and e.event_type == event_type]


def test_retry_policy_without_delay_never_crashes_the_run(instance, attempts, tmp_path):
    for round_ in range(3):
        for path in attempts.iterdir():
            path.unlink()
        with _run(instance, "flaky", tmp_path) as result:
            assert result.success, f"round {round_}: {[e.message for e in result.all_events if e.is_failure]}"
            for asset in retry_jobs.FLAKY:
                key = asset.key.to_user_string()
                assert len(_events(result, key, DagsterEventType.STEP_UP_FOR_RETRY)) == retry_jobs.FAILS_BEFORE_SUCCESS
                assert len(_events(result, key, DagsterEventType.STEP_SUCCESS)) == 1
                assert json.loads((attempts / f"{key}.json").read_text()) == retry_jobs.FAILS_BEFORE_SUCCESS + 1


def test_retry_requested_counts_every_attempt(instance, attempts, tmp_path):
    with _run(instance, "retry_requested_job", tmp_path) as result:
        assert result.success
        assert len(_events(result, "asks_for_retry", DagsterEventType.STEP_UP_FOR_RETRY)) == retry_jobs.FAILS_BEFORE_SUCCESS


def test_a_retry_limit_of_three_is_four_attempts_and_the_failure_hook_runs(instance, attempts, tmp_path):
    with _run(instance, "exhausted_retries_job", tmp_path) as result:
        assert not result.success
        assert len(_events(result, "always_fails", DagsterEventType.STEP_UP_FOR_RETRY)) == 3
        assert len(_events(result, "always_fails", DagsterEventType.STEP_FAILURE)) == 1
        assert len(_events(result, "always_fails", DagsterEventType.HOOK_COMPLETED)) == 1
    assert json.loads((attempts / "always_fails.json").read_text()) == 4
    assert (attempts / "hooked_always_fails").read_text() == "failed"


def test_a_resource_that_fails_to_initialise_is_retried_once_per_attempt(instance, attempts, tmp_path):
    # Not entered as a context manager: that would initialise the broken resource again here.
    result = _run(instance, "broken_resource_retry_job", tmp_path)
    assert not result.success
    assert len(_events(result, "needs_broken", DagsterEventType.STEP_UP_FOR_RETRY)) == 1
    assert len(_events(result, "needs_broken", DagsterEventType.STEP_FAILURE)) == 1
    assert json.loads((attempts / "broken_resource.json").read_text()) == 2
