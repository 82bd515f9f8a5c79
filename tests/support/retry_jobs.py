"""Jobs whose steps ask for retries without a delay, the case where an earlier attempt's
late end used to be credited to the retry: RetryPolicy on a raising step, RetryRequested,
a failure hook on a step that exhausts its retries, and a resource whose initialisation
fails under a RetryPolicy."""

from __future__ import annotations

import json
import os
from pathlib import Path

from dagster import (
    Definitions,
    HookContext,
    RetryPolicy,
    RetryRequested,
    asset,
    define_asset_job,
    failure_hook,
    job,
    op,
    resource,
)

from dagster_gravity import gravity_executor

ATTEMPTS_ENV = "GRAVITY_TEST_ATTEMPTS_DIR"
FAILS_BEFORE_SUCCESS = 2


def _count(name: str) -> int:
    """How many times `name` ran before, counted on disk (each attempt may be another process)."""
    path = Path(os.environ[ATTEMPTS_ENV]) / f"{name}.json"
    seen = json.loads(path.read_text()) if path.exists() else 0
    path.write_text(json.dumps(seen + 1))
    return seen


def _flaky(name: str):
    @asset(name=name, retry_policy=RetryPolicy(max_retries=FAILS_BEFORE_SUCCESS))
    def _asset() -> int:
        if _count(name) < FAILS_BEFORE_SUCCESS:
            raise RuntimeError(f"{name}: failing on purpose before the retry")
        return 1

    return _asset


FLAKY = [_flaky(f"flaky_{i}") for i in range(4)]


@asset(deps=FLAKY)
def after_flaky() -> int:
    return 1


@op
def asks_for_retry():
    if _count("asks_for_retry") < FAILS_BEFORE_SUCCESS:
        raise RetryRequested(max_retries=FAILS_BEFORE_SUCCESS)
    return 1


@failure_hook
def record_failure(context: HookContext):
    (Path(os.environ[ATTEMPTS_ENV]) / f"hooked_{context.op.name}").write_text("failed")


@op(retry_policy=RetryPolicy(max_retries=3))
def always_fails():
    _count("always_fails")
    raise RuntimeError("always fails (on purpose)")


@resource
def broken_resource(_):
    _count("broken_resource")
    raise RuntimeError("broken_resource cannot initialise (on purpose)")


@op(required_resource_keys={"broken"}, retry_policy=RetryPolicy(max_retries=1))
def needs_broken():
    return 1


flaky_job = define_asset_job("flaky_job", selection=[*FLAKY, after_flaky], executor_def=gravity_executor)


@job(executor_def=gravity_executor)
def retry_requested_job():
    asks_for_retry()


@job(executor_def=gravity_executor, hooks={record_failure})
def exhausted_retries_job():
    always_fails()


@job(executor_def=gravity_executor, resource_defs={"broken": broken_resource})
def broken_resource_retry_job():
    needs_broken()


defs = Definitions(assets=[*FLAKY, after_flaky], jobs=[flaky_job])


def flaky():
    return defs.resolve_job_def("flaky_job")
