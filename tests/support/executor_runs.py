"""Fixtures for executor tests: run a job of `tests.support.jobs` under gravity_executor on a
real on-disk instance with the three-site test topology, and read back what happened."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from dagster import DagsterEventType, execute_job, reconstructable

from tests.support import jobs

STALE_SITE = "gamma"  # what $GRAVITY_SITE says in executor tests (used to be a second channel)


@dataclass
class GravityRunner:
    instance: Any
    sites_file: Path
    store: Path

    def config(self, **overrides) -> dict:
        return {"execution": {"config": {"sites_file": str(self.sites_file), "locality_wait": 0.5, **overrides}}}

    def run(self, factory: str, **overrides):
        recon = reconstructable(getattr(jobs, factory))
        return execute_job(recon, instance=self.instance, run_config=self.config(**overrides), raise_on_error=False)


@pytest.fixture
def gravity(instance, tmp_path, monkeypatch) -> GravityRunner:
    store = tmp_path / "store"
    store.mkdir()
    monkeypatch.setenv(jobs.STORE_ENV, str(store))
    # A stale site in the environment must be ignored: a step learns its site from the one
    # channel, `runtime.running_at`, which the worker enters around it.
    monkeypatch.setenv("GRAVITY_SITE", STALE_SITE)
    sites = jobs.write_test_sites(tmp_path)
    return GravityRunner(instance, sites, store)


def placements(result) -> dict[str, dict]:
    """step key -> metadata (plain values) of its last placement event."""
    out = {}
    for event in result.all_events:
        if event.event_type != DagsterEventType.ENGINE_EVENT or not event.step_key:
            continue
        metadata = event.event_specific_data.metadata or {}
        if "gravity/site" in metadata:
            out[event.step_key] = {k: getattr(v, "value", v) for k, v in metadata.items()} | {
                "message": event.message
            }
    return out


def engine_messages(result) -> list[str]:
    return [e.message or "" for e in result.all_events if e.event_type == DagsterEventType.ENGINE_EVENT]


def worker_pids(result) -> set[int]:
    """Pids of processes that ran steps (the STEP_START events' pids)."""
    return {e.pid for e in result.all_events if e.event_type == DagsterEventType.STEP_START}


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); it is gone for our purposes.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"
