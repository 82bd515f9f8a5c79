"""Helpers shared by the ported Dagster executor tests.

Every ported case runs twice, once per executor (`executors()` parametrizes `executor`
with "multiprocess" and "gravity"). A job is built by a module-level factory that takes
the executor name, and reconstructed with `dagster.build_reconstructable_job`, so both
executors' step processes rebuild exactly the job the test built:

    def define_diamond_job(executor: str) -> JobDefinition:
        @job(executor_def=executor_def(executor))
        def diamond_job(): ...
        return diamond_job

    execute_job(recon(define_diamond_job, executor), instance, run_config=run_config(executor))

Dagster's originals keep what they observe in memory (lists appended to by an op, a hook
or a resource). Under an out-of-process executor that code runs in another process, so the
ports record into files instead (`record` / `recorded`): one JSON line per call, appended
under the run's instance directory, which reaches every step process through the instance
ref (environment variables do not: a forkserver's children inherit the environment of
the first test that started it). The test then rebuilds the same list or dict and asserts
on it exactly as the original did.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

import pytest
from dagster import (
    DagsterInstance,
    ExecutorDefinition,
    build_reconstructable_job,
    multiprocess_executor,
)
from dagster._core.definitions.reconstruct import ReconstructableJob

MULTIPROCESS = "multiprocess"
GRAVITY = "gravity"
EXECUTOR_NAMES = (MULTIPROCESS, GRAVITY)


SITES_YAML = """\
sites:
  - name: here
    region: local
    kind: onprem
    storage: {{kind: local, path: {storage}}}
    pools: [{{name: cpu, kind: cpu, slots: {slots}}}]
"""

RECORDS_DIR = "ported_records"


def executor_def(executor: str) -> ExecutorDefinition:
    """The executor a job is built with. gravity is imported only when asked for, so the
    multiprocess executor's step processes (which rebuild the job) do not pay for it."""
    if executor == MULTIPROCESS:
        return multiprocess_executor
    if executor == GRAVITY:
        from dagster_gravity import gravity_executor

        return gravity_executor
    raise ValueError(f"unknown executor {executor!r}; expected one of {EXECUTOR_NAMES}")


def executors(gravity_xfail: str | None = None, *, raises=None):
    """Parametrize a test over both executors. `gravity_xfail` marks the gravity case only
    as a strict expected failure (a known gravity bug: the marker must go when it is fixed)."""
    gravity: Any = GRAVITY
    if gravity_xfail:
        gravity = pytest.param(
            GRAVITY, marks=pytest.mark.xfail(strict=True, reason=f"gravity: {gravity_xfail}", raises=raises)
        )
    return pytest.mark.parametrize("executor", [MULTIPROCESS, gravity])


def recon(factory: Callable[..., Any], executor: str, *args: Any) -> ReconstructableJob:
    """The reconstructable job `factory(executor, *args)` returns (a module-level function)."""
    return build_reconstructable_job(factory.__module__, factory.__name__, reconstructable_args=(executor, *args))


def write_sites(directory: Path, slots: int = 4) -> Path:
    path = Path(directory) / "sites.yaml"
    storage = Path(directory) / "here"
    storage.mkdir(parents=True, exist_ok=True)
    path.write_text(SITES_YAML.format(storage=storage, slots=slots))
    return path


def merge(a: dict, b: dict) -> dict:
    """Deep merge of run config dicts (b wins)."""
    out = dict(a)
    for key, value in b.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


class RunConfigs:
    """Builds the run config of each executor: what the original test set for the
    multiprocess executor (max_concurrent, retries, tag_concurrency_limits), plus
    forkserver for multiprocess (much faster here than spawn) and the sites file for
    gravity."""

    def __init__(self, sites_file: Path):
        self.sites_file = sites_file

    def execution(self, executor: str, **config: Any) -> dict:
        if executor == MULTIPROCESS:
            cfg = {"start_method": {"forkserver": {}}, **config}
        else:
            cfg = {"sites_file": str(self.sites_file), **config}
        return {"execution": {"config": cfg}}

    def __call__(self, executor: str, base: dict | None = None, **config: Any) -> dict:
        return merge(base or {}, self.execution(executor, **config))


# -- recording from step processes -----------------------------------------------------


def _records_path(root: str | os.PathLike, channel: str) -> Path:
    return Path(root) / RECORDS_DIR / f"{channel}.jsonl"


def record(instance: DagsterInstance, channel: str, item: Any) -> None:
    """Append `item` (JSON) to `channel`, from whatever process runs the calling code."""
    path = _records_path(instance.root_directory, channel)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(item) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, line)  # one write of one line: appends from several processes interleave whole
    finally:
        os.close(fd)


def recorded(instance: DagsterInstance, channel: str) -> list:
    path = _records_path(instance.root_directory, channel)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def clear(instance: DagsterInstance, channel: str) -> None:
    path = _records_path(instance.root_directory, channel)
    if path.exists():
        path.unlink()
