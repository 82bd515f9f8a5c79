"""A one-site residency zone goes dark mid-step, on real Dask scheduler and worker processes.

Zone eu has one site, eu-west, with its own Dask workers; onprem-dc (zone us) has a healthy
worker all along, where eu's data may never go. About a second after the step starts, every
eu-west worker is killed (SIGKILL by pid). The step's attempt is not failed (its worker was
lost, the step did not fail), so it waits for the zone (`zone_outage_wait`) instead of using
its RetryPolicy: if a worker comes back within the wait the run succeeds there; if none does,
it fails after the wait (there the zone's own `outage_wait_seconds` in the sites file, which
overrides the run's), naming the zone and the setting. One scheduler serves the module.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest
import yaml
from dagster import DagsterEventType, execute_job, reconstructable

from dagster_gravity.run_summary import STEPS, SUMMARY_PREFIX
from tests.support import dask_jobs
from tests.support.dask_cluster import DaskCluster
from tests.test_dask_backend import ensure_workers, placements, run_messages, step_events, workers_started

pytestmark = pytest.mark.slow

STEP = "eu_scores"
EU_POOL = f"{dask_jobs.EU}/cpu"


def write_zone_sites(path: Path, zone_wait: float | None = None) -> Path:
    sites = [
        {
            "name": name,
            "region": f"region-{i}",
            "kind": "cloud",
            "storage": {"kind": "local", "path": str(path.parent / "storage" / name)},
            "pools": [{"name": "cpu", "kind": "cpu", "slots": 2}],
        }
        for i, name in enumerate([dask_jobs.ONPREM, dask_jobs.EU])
    ]
    eu = [dask_jobs.EU] if zone_wait is None else {"sites": [dask_jobs.EU], "outage_wait_seconds": zone_wait}
    residency = {dask_jobs.EU_ZONE: eu, "us": [dask_jobs.ONPREM]}
    path.write_text(yaml.safe_dump({"sites": sites, "residency": residency}))
    return path


def zone_run_config(tmp_path: Path, scheduler: str, zone_outage_wait: float, zone_wait: float | None = None) -> dict:
    """`zone_outage_wait` for the executor; `zone_wait`: zone eu's own outage_wait_seconds."""
    markers = tmp_path / "markers"
    markers.mkdir()
    return {
        "execution": {
            "config": {
                "sites_file": str(write_zone_sites(tmp_path / "sites.yaml", zone_wait)),
                "locality_wait": 0.0,
                "zone_outage_wait": zone_outage_wait,
                "pools": {"default": {"dask": {"scheduler": scheduler, "connect_timeout_seconds": 5.0}}},
            }
        },
        "ops": {STEP: {"config": {"marker_dir": str(markers), "sleep_seconds": 120}}},
    }


def start_run(instance, config: dict) -> tuple[threading.Thread, dict]:
    outcome: dict = {}

    def run() -> None:
        outcome["result"] = execute_job(
            reconstructable(dask_jobs.eu_scores_job), instance, run_config=config, raise_on_error=False
        )

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


def wait_for_first_run(thread, markers: Path) -> dict:
    deadline = time.monotonic() + 60
    while not (markers / "run-0.json").exists():
        assert thread.is_alive(), "the run ended before its step started"
        assert time.monotonic() < deadline, "the step did not start within 60 s"
        time.sleep(0.05)
    return json.loads((markers / "run-0.json").read_text())


def kill_zone(cluster: DaskCluster, names: list[str]) -> None:
    """SIGKILL every named worker by pid at once (then reap them): the site goes dark."""
    time.sleep(1.0)  # about a second into the step
    procs = [cluster.workers[name] for name in names]
    for proc in procs:
        os.kill(proc.pid, signal.SIGKILL)
    for proc in procs:
        proc.wait(timeout=10)


def engine_messages(events, words: str) -> list:
    return [e for e in events if e.event_type == DagsterEventType.ENGINE_EVENT and words in (e.message or "")]


def test_a_zone_whose_workers_return_within_the_wait_runs_the_step_there_without_using_a_retry(
    dask_cluster, instance, tmp_path
):
    eu_workers = [f"{dask_jobs.EU}-1", f"{dask_jobs.EU}-2"]
    ensure_workers(dask_cluster, {**{n: dask_jobs.EU for n in eu_workers}, "onprem-dc-1": dask_jobs.ONPREM})
    config = zone_run_config(tmp_path, dask_cluster.address, zone_outage_wait=60)
    markers = Path(config["ops"][STEP]["config"]["marker_dir"])
    thread, outcome = start_run(instance, config)
    first = wait_for_first_run(thread, markers)
    assert first["worker"] in eu_workers
    kill_zone(dask_cluster, eu_workers)
    run_id = instance.get_runs(limit=1)[0].run_id
    deadline = time.monotonic() + 30
    while not engine_messages(step_events(instance, run_id), "waits up to"):  # it waits before any worker is back
        assert thread.is_alive() and time.monotonic() < deadline, "the step did not wait for its zone"
        time.sleep(0.1)
    dask_cluster.start_worker(eu_workers[0], dask_jobs.EU, wait=False)  # the zone comes back
    thread.join(timeout=90)
    assert not thread.is_alive(), "the run did not finish within 90 s of the zone's return"

    result = outcome["result"]
    events = step_events(instance, result.run_id)
    assert result.success, "\n".join(run_messages(instance, result.run_id))
    again = json.loads((markers / "run-1.json").read_text())
    assert again["worker"] == eu_workers[0] and again["site"] == dask_jobs.EU
    assert again["attempt"] == 0, "the outage used the step's RetryPolicy"
    # Never out of the zone: every placement and every worker that announced it is eu-west's.
    assert set(placements(events)[STEP]) == {dask_jobs.EU}
    assert {w["gravity/site"] for w in workers_started(events)[STEP]} == {dask_jobs.EU}
    # The wait and how it ended are events on the step.
    (waiting,) = engine_messages(events, "waits up to")
    assert waiting.step_key == STEP
    assert "residency zone 'eu'" in waiting.message and EU_POOL in waiting.message and "zone_outage_wait" in waiting.message
    assert waiting.engine_event_data.metadata["gravity/pools_down"].value.keys() == {EU_POOL}
    assert engine_messages(events, f"compute pool {EU_POOL} marked unhealthy")
    assert engine_messages(events, f"compute pool {EU_POOL} is healthy again")
    (back,) = engine_messages(events, "came back after")
    assert back.step_key == STEP and EU_POOL in back.message
    assert back.engine_event_data.metadata["gravity/waited_seconds"].value > 0
    # One attempt as Dagster knows it.
    types = [e.event_type for e in events if e.step_key == STEP]
    assert types.count(DagsterEventType.STEP_START) == 1
    assert DagsterEventType.STEP_UP_FOR_RETRY not in types and DagsterEventType.STEP_RESTARTED not in types
    assert types.count(DagsterEventType.STEP_SUCCESS) == 1 and DagsterEventType.STEP_FAILURE not in types
    # The run summary: it ran in its zone, one attempt, succeeded.
    (summary,) = [e for e in events if e.event_type == DagsterEventType.ENGINE_EVENT and (e.message or "").startswith(SUMMARY_PREFIX)]
    step = summary.engine_event_data.metadata[STEPS].value[STEP]
    assert (step["pool_id"], step["site"], step["attempts"], step["status"]) == (EU_POOL, dask_jobs.EU, 1, "succeeded")


def test_a_zone_that_stays_down_fails_the_step_after_the_wait_naming_the_zone_and_the_setting(
    dask_cluster, instance, tmp_path
):
    """Zone eu's own outage_wait_seconds (3 s, in the sites file) overrides the run's 60 s."""
    eu_worker = f"{dask_jobs.EU}-1"
    ensure_workers(dask_cluster, {eu_worker: dask_jobs.EU, "onprem-dc-1": dask_jobs.ONPREM})
    config = zone_run_config(tmp_path, dask_cluster.address, zone_outage_wait=60, zone_wait=3)
    setting = f"residency.eu.outage_wait_seconds in {tmp_path / 'sites.yaml'}"
    markers = Path(config["ops"][STEP]["config"]["marker_dir"])
    thread, outcome = start_run(instance, config)
    wait_for_first_run(thread, markers)
    kill_zone(dask_cluster, [eu_worker])
    killed = time.monotonic()
    thread.join(timeout=60)
    took = time.monotonic() - killed
    assert not thread.is_alive(), "the run did not end within 60 s of its zone going dark"
    print(f"the run failed {took:.1f} s after its zone went dark (outage_wait_seconds 3 s)")
    assert 3 <= took < 30, f"it waited {took:.1f} s after the kill, for a wait of 3 s"

    result = outcome["result"]
    assert not result.success
    events = step_events(instance, result.run_id)
    assert not (markers / "run-1.json").exists(), "the step ran again somewhere"
    assert set(placements(events)[STEP]) == {dask_jobs.EU}
    types = [e.event_type for e in events if e.step_key == STEP]
    assert types.count(DagsterEventType.STEP_START) == 1
    assert DagsterEventType.STEP_UP_FOR_RETRY not in types and DagsterEventType.STEP_RESTARTED not in types
    failures = [e for e in events if e.event_type == DagsterEventType.STEP_FAILURE]
    assert [e.step_key for e in failures] == [STEP]
    error = failures[0].event_specific_data.error.message
    assert "residency zone 'eu'" in error and f"{setting} is 3 s" in error and "gave up after" in error, error
    assert "data is not moved out of its zone" in error
    (waiting,) = engine_messages(events, f"waits up to 3 s ({setting})")
    (gave_up,) = [e for e in engine_messages(events, "gave up after") if e.message.startswith(f"gravity: step {STEP} gave up")]
    assert waiting.step_key == gave_up.step_key == STEP
    assert gave_up.engine_event_data.metadata["gravity/waited_seconds"].value >= 3
