"""Jobs whose resources record their set-up and teardown, to check resource lifetime under
the gravity executor against Dagster's multiprocess executor."""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

from dagster import job, multiprocess_executor, op, resource

from dagster_gravity import gravity_executor

LOG_ENV = "GRAVITY_TEST_RESOURCE_LOG"


def _log(line: str) -> None:
    with open(os.environ[LOG_ENV], "a") as f:
        f.write(line + "\n")


def lines() -> list[str]:
    path = Path(os.environ[LOG_ENV])
    return path.read_text().splitlines() if path.exists() else []


@resource
@contextmanager
def recorded(_):
    _log("set up")
    try:
        yield "foo"
    finally:
        _log("torn down")


@resource
@contextmanager
def fails_teardown(_):
    yield "bar"
    raise RuntimeError("teardown fails (on purpose)")


@op(required_resource_keys={"recorded"})
def first(context):
    _log(f"compute {context.resources.recorded}")
    return 1


@op(required_resource_keys={"recorded"})
def second(context, _after):
    _log(f"compute {context.resources.recorded}")


@op(required_resource_keys={"fragile"})
def uses_fragile(context):
    return context.resources.fragile


def _lifetime(executor_def, name):
    @job(name=name, executor_def=executor_def, resource_defs={"recorded": recorded})
    def _job():
        second(first())

    return _job


def _teardown(executor_def, name):
    @job(name=name, executor_def=executor_def, resource_defs={"fragile": fails_teardown})
    def _job():
        uses_fragile()

    return _job


# Module-level factories, so the jobs are reconstructable (multiprocess children rebuild them).
def lifetime_gravity():
    return _lifetime(gravity_executor, "lifetime_gravity")


def lifetime_multiprocess():
    return _lifetime(multiprocess_executor, "lifetime_multiprocess")


def teardown_gravity():
    return _teardown(gravity_executor, "teardown_gravity")


def teardown_multiprocess():
    return _teardown(multiprocess_executor, "teardown_multiprocess")
