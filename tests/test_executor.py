"""gravity_executor end to end: real on-disk instance, real forked worker processes.

Where a step ran is read twice: from the executor's placement event and from the IO manager
inside the worker (`runtime.current_site()`), so a test fails if either is wrong.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from dagster import DagsterEventType, DagsterRunStatus

from tests.support import jobs
from tests.support.executor_runs import STALE_SITE, engine_messages, pid_alive, placements
from tests.support.jobs import MB, ran_at

REPO = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.slow, pytest.mark.executor, pytest.mark.timeout(120)]


def test_steps_land_where_their_inputs_are(gravity):
    result = gravity.run("locality_job")
    assert result.success
    placed = placements(result)
    # Pinned to beta; its consumer follows the data produced in this run; the asset whose
    # data already sits at gamma (definition metadata, 5 GB) pulls its consumer there.
    assert placed["made_at_beta"]["gravity/site"] == "beta"
    assert placed["follows_beta"]["gravity/site"] == "beta"
    assert placed["reads_landed"]["gravity/site"] == "gamma"
    # $GRAVITY_SITE says gamma (see the fixture): only `runtime.running_at` tells a step its site.
    assert os.environ["GRAVITY_SITE"] == STALE_SITE == "gamma"
    for key, site in [("made_at_beta", "beta"), ("follows_beta", "beta"), ("reads_landed", "gamma")]:
        where = ran_at(key)
        assert where["site"] == site, (key, where)
        # The executor's sites file travels with the site once the step runner passes it to
        # running_at; until then it is None, never another file.
        assert where["run_sites_file"] == str(gravity.sites_file.resolve()), where
    # Every decision carries every pool's cost, and says what moved.
    rows = placed["follows_beta"]["gravity/candidates"]
    assert {r["pool"] for r in rows} == {"alpha/cpu", "alpha/gpu", "beta/cpu", "gamma/cpu"}
    assert rows[0]["pool"] == "beta/cpu" and rows[0]["bytes_moved"] == 0
    assert all(r["bytes_moved"] == 10_000_000 for r in rows[1:])
    assert placed["follows_beta"]["gravity/bytes_moved"] == 0
    assert "pool | site" in placed["follows_beta"]["gravity/candidates_table"]
    assert placed["follows_beta"]["gravity/reason"]


def test_input_location_comes_from_latest_materialization(gravity):
    assert gravity.run("locality_job").success
    # follows_beta alone: its input is not produced in this run, so the executor reads the
    # latest materialization of made_at_beta (written at beta by the IO manager).
    result = gravity.run("follows_only_job")
    assert result.success
    assert placements(result)["follows_beta"]["gravity/site"] == "beta"
    assert ran_at("follows_beta")["site"] == "beta"


def _report_location(instance, asset: str, **metadata):
    from dagster import AssetMaterialization

    instance.report_runless_asset_event(AssetMaterialization(asset, metadata=metadata))


def test_sites_no_longer_in_the_topology_are_ignored(gravity):
    # made_at_beta's latest copy names a site removed from sites.yaml plus a replica at beta.
    (gravity.store / "made_at_beta.json").write_text("1")
    _report_location(gravity.instance, "made_at_beta", **{
        "gravity/site": "old-site", "gravity/replicas": ["beta"], "dagster/size_bytes": 10 * MB,
    })
    result = gravity.run("follows_only_job")
    assert result.success
    placed = placements(result)["follows_beta"]
    assert placed["gravity/site"] == "beta"  # the replica the topology knows
    assert "made_at_beta: site 'old-site' is not in sites.yaml; ignored" in placed["gravity/notes"]
    assert "old-site" in placed["message"]

    # Only the unknown site: its location is unknown, the step still runs somewhere.
    _report_location(gravity.instance, "made_at_beta", **{"gravity/site": "old-site", "dagster/size_bytes": 10 * MB})
    result = gravity.run("follows_only_job")
    assert result.success
    assert "is not in sites.yaml; ignored" in placements(result)["follows_beta"]["gravity/notes"]


def test_unreadable_size_fails_the_consumer_step_not_the_run(gravity):
    _report_location(gravity.instance, "made_at_beta", **{"gravity/site": "beta", "dagster/size_bytes": "big"})
    result = gravity.run("follows_only_job")
    assert not result.success
    failures = [e for e in result.all_events if e.event_type == DagsterEventType.STEP_FAILURE]
    assert [e.step_key for e in failures] == ["follows_beta"]
    message = failures[0].step_failure_data.error.message
    assert "made_at_beta" in message and "dagster/size_bytes" in message and "'big'" in message


def test_a_bad_op_tag_fails_its_step_and_the_rest_of_the_run_goes_on(gravity):
    result = gravity.run("bad_tag_job")
    assert not result.success
    failures = [e for e in result.all_events if e.event_type == DagsterEventType.STEP_FAILURE]
    assert [e.step_key for e in failures] == ["bad_gpu_tag"]
    message = failures[0].step_failure_data.error.message
    assert "cannot place step 'bad_gpu_tag'" in message and "gravity/gpu" in message and "'two'" in message
    assert "bad_gpu_tag" not in placements(result)
    succeeded = {e.step_key for e in result.all_events if e.event_type == DagsterEventType.STEP_SUCCESS}
    assert succeeded == {"pinned_gamma"}


def test_pins_and_gpu_requirements(gravity):
    result = gravity.run("requirements_job")
    assert result.success
    placed = placements(result)
    assert placed["needs_gpu"]["gravity/pool_id"] == "alpha/gpu"
    assert placed["pinned_gamma"]["gravity/pool_id"] == "gamma/cpu"
    assert ran_at("needs_gpu")["site"] == "alpha"
    assert ran_at("pinned_gamma")["site"] == "gamma"
    gpu_rows = {r["pool"]: r for r in placed["needs_gpu"]["gravity/candidates"]}
    assert not gpu_rows["beta/cpu"]["feasible"] and "GPU" in gpu_rows["beta/cpu"]["reason"]


def test_residency_bound_input_stays_in_its_zone(gravity):
    result = gravity.run("residency_job")
    assert result.success
    assert placements(result)["eu_report"]["gravity/site"] == "gamma"
    assert ran_at("eu_report")["site"] == "gamma"


def test_an_outputs_residency_places_the_step_in_its_zone(gravity):
    # No inputs; the asset itself may not leave zone eu = [gamma]. By cost alone any site
    # would do (topology order picks alpha), but the write is only allowed at gamma.
    result = gravity.run("output_residency_job")
    assert result.success
    placed = placements(result)["eu_only_output"]
    assert placed["gravity/site"] == "gamma"
    assert ran_at("eu_only_output")["site"] == "gamma"
    reason = placed["gravity/reason"]
    assert "all inputs are already" not in reason and "no known input data to move" in reason
    assert "residency zone of its output eu_only_output (residency eu)" in reason
    rows = {r["pool"]: r for r in placed["gravity/candidates"]}
    assert not rows["alpha/cpu"]["feasible"]
    assert rows["alpha/cpu"]["reason"] == "residency: output 'eu_only_output' may not leave zone 'eu'"
    assert placed["gravity/bytes_moved"] == 0


def test_residency_fails_clearly_instead_of_moving_data_out(gravity):
    # The only site of zone eu is out of service: the step must fail, not run in the US.
    result = gravity.run("residency_job", disabled_pools=["gamma"])
    assert not result.success
    failures = [e for e in result.all_events if e.event_type == DagsterEventType.STEP_FAILURE]
    assert [e.step_key for e in failures] == ["eu_report"]
    message = failures[0].step_failure_data.error.message
    assert "eu_customers" in message and "'eu'" in message and "residency" in message
    # a pool taken out for the run is said to be, not called unhealthy
    assert "gamma/cpu: disabled for this run (disabled_pools)" in message, message
    assert "gamma/cpu: unhealthy" not in message
    assert not (gravity.store / "eu_report.where.json").exists()
    assert not any(e.event_type == DagsterEventType.STEP_START for e in result.all_events)


def test_unhealthy_zone_fails_the_step_instead_of_moving_data_out(gravity):
    # gamma's pool cannot start workers, so it turns unhealthy; no other site is in zone eu.
    result = gravity.run(
        "residency_job",
        unhealthy_after=1,
        pools={"per_site": {"gamma": {"local": {"startup_check": "tests.support.jobs:failing_startup_check"}}}},
    )
    assert not result.success
    assert any("gamma/cpu marked unhealthy" in m for m in engine_messages(result))
    failure = next(e for e in result.all_events if e.event_type == DagsterEventType.STEP_FAILURE)
    message = failure.step_failure_data.error.message
    assert failure.step_key == "eu_report" and "gamma/cpu: unhealthy" in message and "zone 'eu'" in message
    assert not (gravity.store / "eu_report.where.json").exists()


def test_delay_scheduling_waits_then_spills(gravity):
    # Both steps read 100 GB at alpha; alpha has one usable slot (its GPU pool is drained).
    result = gravity.run("delay_job", disabled_pools=["alpha/gpu"], locality_wait=1.0)
    assert result.success
    placed = placements(result)
    sites = sorted(p["gravity/site"] for p in placed.values())
    assert sites[0] == "alpha" and sites[1] != "alpha"
    spilled_key, spilled = next((k, p) for k, p in placed.items() if p["gravity/site"] != "alpha")
    assert spilled["gravity/spilled_from"] == "alpha/cpu"
    # It spilled only after the locality wait; the step at alpha held its slot until then
    # (it waits for the spilled step to start), so no upper bound depends on machine load.
    assert spilled["gravity/waited_seconds"] >= 1.0
    assert "spilled to" in spilled["message"] and "waited" in spilled["message"]
    assert (gravity.store / jobs.DELAY_RELEASE).read_text() == spilled_key


def test_delay_scheduling_waits_for_the_local_slot_when_it_frees_in_time(gravity):
    # The step at alpha holds its slot 0.5 s; the other waits for it (a wait of up to 60 s
    # beats moving 100 GB) instead of spilling.
    (gravity.store / jobs.DELAY_HOLD).write_text("0.5")
    result = gravity.run("delay_job", disabled_pools=["alpha/gpu"], locality_wait=60.0)
    assert result.success
    placed = placements(result)
    assert [p["gravity/site"] for p in placed.values()] == ["alpha", "alpha"]
    assert not any("gravity/spilled_from" in p for p in placed.values())


def test_worker_killed_mid_step_is_retried_and_the_run_succeeds(gravity):
    result = gravity.run("killed_job")
    assert result.success
    types = [e.event_type for e in result.all_events if e.step_key == "killed_once"]
    assert DagsterEventType.STEP_UP_FOR_RETRY in types
    assert types[-1] == DagsterEventType.STEP_SUCCESS
    assert any("died (signal 9)" in m for m in engine_messages(result))
    assert json.loads((gravity.store / "killed_once.json").read_text()) == 1

    # Without retries the same crash is a plain step failure: the run fails, it does not hang.
    no_retry = gravity.run("killed_job", retries={"disabled": {}})
    assert not no_retry.success
    failure = next(e for e in no_retry.all_events if e.event_type == DagsterEventType.STEP_FAILURE)
    assert failure.step_key == "killed_once"
    error = failure.step_failure_data.error
    assert error.cls_name == "ChildProcessCrashException"  # as Dagster's multiprocess executor reports it
    assert "compute pool" in error.message and "was terminated by signal 9" in error.message


def test_pool_whose_workers_die_is_marked_unhealthy_and_fails_over(gravity):
    result = gravity.run("failover_job", unhealthy_after=1)
    assert result.success
    messages = engine_messages(result)
    assert any("pool alpha/cpu marked unhealthy" in m for m in messages)
    final = placements(result)["dies_at_alpha"]
    assert final["gravity/site"] != "alpha"
    assert "alpha/cpu unhealthy" in final["gravity/failover"]
    assert ran_at("dies_at_alpha")["site"] == final["gravity/site"]


def test_pool_that_cannot_start_fails_over(gravity):
    result = gravity.run(
        "chain_job",
        unhealthy_after=1,
        pools={"per_site": {"alpha": {"local": {"startup_check": "tests.support.jobs:failing_startup_check"}}}},
    )
    assert result.success
    messages = engine_messages(result)
    assert any("alpha/cpu marked unhealthy" in m and "storage mount" in m for m in messages)
    for i in range(5):
        assert ran_at(f"chain_{i}")["site"] != "alpha"
    assert not any(e.event_type == DagsterEventType.STEP_FAILURE for e in result.all_events)


def test_backend_that_cannot_start_makes_its_pools_unhealthy(gravity, monkeypatch):
    # The dask backend's factory is swapped for one whose start raises (the config stays
    # typed: `{dask: {scheduler: ...}}`): its pools are unhealthy, the rest of the run goes on.
    import dagster_gravity.pools as pools

    monkeypatch.setitem(pools._BACKENDS, "dask", "tests.support.jobs:UnreachableBackend")
    result = gravity.run("locality_job", pools={"per_site": {"beta": {"dask": {"scheduler": "tcp://127.0.0.1:9"}}}})
    assert not result.success  # made_at_beta is pinned to beta
    assert any("failed to start" in m and "tcp://127.0.0.1:9" in m for m in engine_messages(result))
    failure = next(e for e in result.all_events if e.event_type == DagsterEventType.STEP_FAILURE)
    assert failure.step_key == "made_at_beta" and "beta/cpu: unhealthy" in failure.step_failure_data.error.message
    assert placements(result)["reads_landed"]["gravity/site"] == "gamma"  # the rest still runs


def test_requirements_no_healthy_pool_can_meet_fail_clearly(gravity):
    result = gravity.run("requirements_job", disabled_pools=["alpha/gpu"])
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type == DagsterEventType.STEP_FAILURE)
    assert failure.step_key == "needs_gpu"
    assert "needs 1 GPU" in failure.step_failure_data.error.message


def test_workers_are_recycled_and_dynamic_outputs_work(gravity):
    result = gravity.run("chain_job", worker_max_steps=2)
    assert result.success
    pids = [ran_at(f"chain_{i}")["pid"] for i in range(5)]
    assert len(set(pids)) >= 3  # a worker runs at most two steps
    assert os.getpid() not in pids
    assert json.loads((gravity.store / "chain_4.json").read_text()) == 4

    dynamic = gravity.run("dynamic_job_factory")
    assert dynamic.success
    assert json.loads((gravity.store / "total__result.json").read_text()) == 0 + 1 + 4
    squares = {e.step_key for e in dynamic.all_events if e.event_type == DagsterEventType.STEP_SUCCESS}
    assert {"square[0]", "square[1]", "square[2]"} <= squares


def test_resource_that_fails_to_initialise_fails_the_step_not_the_executor(gravity):
    result = gravity.run("broken_resource_job")
    assert not result.success
    failures = [e for e in result.all_events if e.event_type == DagsterEventType.STEP_FAILURE]
    assert [e.step_key for e in failures] == ["needs_broken_resource"]
    assert "credentials are missing" in failures[0].step_failure_data.error.to_string()


RUN_SCRIPT = """
import json, sys
from dagster import DagsterInstance, execute_job, reconstructable
from tests.support import jobs
job = getattr(jobs, sys.argv[2]) if len(sys.argv) > 2 else jobs.sleep_job
extra = json.loads(sys.argv[3]) if len(sys.argv) > 3 else {}
with DagsterInstance.get() as instance:
    execute_job(reconstructable(job), instance=instance,
                run_config={"execution": {"config": {"sites_file": sys.argv[1], **extra}}})
"""


def test_interrupting_a_run_stops_its_workers(gravity, dagster_home):
    env = dict(os.environ)
    proc = subprocess.Popen([sys.executable, "-c", RUN_SCRIPT, str(gravity.sites_file)], cwd=REPO, env=env)
    try:
        deadline = time.monotonic() + 60
        started = []
        while time.monotonic() < deadline and not started:
            time.sleep(0.3)
            runs = gravity.instance.get_runs()
            if runs:
                records = gravity.instance.get_records_for_run(
                    runs[0].run_id, of_type=DagsterEventType.STEP_START
                ).records
                started = [r.event_log_entry for r in records]
        assert started, "the step never started"
        run_id = runs[0].run_id
        worker = started[0].dagster_event.pid
        assert worker != proc.pid and pid_alive(worker)
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=45)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    logs = gravity.instance.all_logs(run_id)
    pids = {e.dagster_event.pid for e in logs if e.dagster_event and e.dagster_event.pid not in (None, proc.pid)}
    assert not pid_alive(worker), "the step's worker outlived the run"
    assert not [p for p in pids if pid_alive(p)], "worker processes outlived the run"
    # An interrupt with no termination request from Dagster is a failed run, not a canceled one.
    assert gravity.instance.get_run_by_id(run_id).status == DagsterRunStatus.FAILURE
    step_events = [e.dagster_event.event_type for e in logs if e.dagster_event and e.step_key == "sleeps_long"]
    assert DagsterEventType.STEP_FAILURE in step_events
    assert not (gravity.store / "sleeps_long.json").exists()
    # An interrupted run still ends with its summary: what ran until then, and where.
    summaries = [e.dagster_event for e in logs if e.dagster_event and not e.step_key
                 and (e.dagster_event.message or "").startswith("gravity run summary: ")]
    assert len(summaries) == 1, [e.dagster_event.message for e in logs if e.dagster_event and not e.step_key]
    steps = summaries[0].event_specific_data.metadata["gravity/steps"].value
    assert steps["sleeps_long"]["status"] == "failed" and steps["sleeps_long"]["pool_id"], steps


def _start_sleep_run(gravity, job: str = "sleep_job", **config):
    proc = subprocess.Popen(
        [sys.executable, "-c", RUN_SCRIPT, str(gravity.sites_file), job, json.dumps(config)], cwd=REPO
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        time.sleep(0.3)
        runs = gravity.instance.get_runs()
        if runs:
            records = gravity.instance.get_records_for_run(
                runs[0].run_id, of_type=DagsterEventType.STEP_START
            ).records
            if records:
                return proc, runs[0].run_id, records[0].event_log_entry.dagster_event.pid
    proc.kill()
    proc.wait()
    raise AssertionError("the step never started")


def test_killing_the_run_process_takes_its_workers_with_it(gravity):
    proc, _, worker = _start_sleep_run(gravity)
    try:
        assert worker != proc.pid and pid_alive(worker)
        proc.kill()  # SIGKILL: no chance to clean up; the workers must follow their parent
        proc.wait(timeout=10)
        deadline = time.monotonic() + 10
        while pid_alive(worker) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not pid_alive(worker), "worker outlived its SIGKILLed run process"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _run_outcome(gravity, run_id: str, step_key: str):
    logs = gravity.instance.all_logs(run_id)
    failures = [
        e.dagster_event for e in logs
        if e.dagster_event and e.step_key == step_key and e.dagster_event.event_type == DagsterEventType.STEP_FAILURE
    ]
    pids = {e.dagster_event.pid for e in logs if e.dagster_event and e.dagster_event.pid}
    return logs, failures, pids


def test_a_step_that_ignores_the_interrupt_is_killed_after_the_grace_period(gravity):
    grace = 2
    proc, run_id, worker = _start_sleep_run(
        gravity, "stubborn_job", pools={"default": {"local": {"stop_grace_seconds": grace}}}
    )
    try:
        assert worker != proc.pid and pid_alive(worker)
        interrupted = time.monotonic()
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=grace + 25)  # the step would sleep on for a minute: it must not
        elapsed = time.monotonic() - interrupted
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    logs, failures, pids = _run_outcome(gravity, run_id, "ignores_interrupts")
    assert not pid_alive(worker) and not [p for p in pids if p != proc.pid and pid_alive(p)]
    assert gravity.instance.get_run_by_id(run_id).status == DagsterRunStatus.FAILURE
    # The step got its grace period before the SIGKILL: it was not killed at the interrupt.
    assert elapsed >= grace, elapsed
    assert len(failures) == 1
    assert f"did not stop within {grace} s of the run's interrupt" in failures[0].step_failure_data.error.message
    assert not (gravity.store / "ignores_interrupts.json").exists()


def test_an_interrupt_while_the_worker_warms_up_is_not_lost(gravity):
    # The worker is forked for the step and is still warming up (a 4 s startup check) when
    # the run is interrupted: the step must fail as interrupted when it starts, not sleep
    # its 60 s (the 30 s grace would kill it, with another message, before that).
    config = {"startup_check": "tests.support.jobs:slow_startup_check", "stop_grace_seconds": 30}
    proc = subprocess.Popen(
        [sys.executable, "-c", RUN_SCRIPT, str(gravity.sites_file), "sleep_job",
         json.dumps({"pools": {"default": {"local": config}}})],
        cwd=REPO,
    )
    marker = gravity.store / jobs.WARMING_MARKER
    try:
        deadline = time.monotonic() + 60
        while not (marker.exists() and marker.read_text()) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert marker.exists(), "no worker started warming up"
        worker = int(marker.read_text())
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=25)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert not pid_alive(worker)
    run_id = gravity.instance.get_runs()[0].run_id
    logs, failures, pids = _run_outcome(gravity, run_id, "sleeps_long")
    assert len(failures) == 1
    error = failures[0].step_failure_data.error.to_string()
    assert "DagsterExecutionInterruptedError" in error and "did not stop" not in error
    assert not (gravity.store / "sleeps_long.json").exists()
