"""Jobs whose resources record their set-up and teardown, to check resource lifetime under
the gravity executor against Dagster's multiprocess executor. The log file is resource
config (not an environment variable: a forkserver started by an earlier test keeps that
test's environment)."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from dagster import job, multiprocess_executor, op, resource

from dagster_gravity import gravity_executor


@dataclass(frozen=True)
class Recorder:
    name: str
    path: str

    def log(self, line: str) -> None:
        with open(self.path, "a") as f:
            f.write(line + "\n")


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def run_config(log: Path) -> dict:
    return {"resources": {"recorded": {"config": {"log": str(log)}}}}


@resource(config_schema={"log": str})
@contextmanager
def recorded(init_context):
    recorder = Recorder("foo", init_context.resource_config["log"])
    recorder.log("set up")
    try:
        yield recorder
    finally:
        recorder.log("torn down")


@resource
@contextmanager
def fails_teardown(_):
    yield "bar"
    raise RuntimeError("teardown fails (on purpose)")


@op(required_resource_keys={"recorded"})
def first(context):
    context.resources.recorded.log(f"compute {context.resources.recorded.name}")
    return 1


@op(required_resource_keys={"recorded"})
def second(context, _after):
    context.resources.recorded.log(f"compute {context.resources.recorded.name}")


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
