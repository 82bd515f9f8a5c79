"""The Dask pool backend against a real `dask scheduler` and real `dask worker` processes.

Workers declare their site with the resource ``site-<name>``; the gravity executor runs the
jobs of tests/support/dask_jobs.py with every pool on the Dask backend.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from dagster import DagsterEventType, execute_job, reconstructable

from dagster_gravity.pools.dask import DaskBackend, site_resource
from tests.support import dask_jobs
from tests.support.dask_cluster import REPO_ROOT, DaskCluster, NotDaskServer
from tests.support.executor_runs import pid_alive

pytestmark = pytest.mark.slow


def write_sites(path: Path, site_names: list[str]) -> Path:
    """A topology of cpu pools with one slot, in this order, all in one residency zone."""
    sites = [
        {
            "name": name,
            "region": f"region-{i}",
            "kind": "onprem" if name == dask_jobs.ONPREM else "cloud",
            "storage": {"kind": "local", "path": str(path.parent / "storage" / name)},
            "pools": [{"name": "cpu", "kind": "cpu", "slots": 1}],
        }
        for i, name in enumerate(site_names)
    ]
    path.write_text(yaml.safe_dump({"sites": sites, "residency": {"us": list(site_names)}}))
    return path


def run_config(sites_file: Path, scheduler: str, connect_timeout: float | None = None, **extra) -> dict:
    dask = {"scheduler": scheduler}
    if connect_timeout is not None:
        dask["connect_timeout_seconds"] = connect_timeout
    return {
        "execution": {
            "config": {
                "sites_file": str(sites_file),
                "locality_wait": 0.0,
                "pools": {"default": {"dask": dask}},
            }
        },
        **extra,
    }


def ensure_workers(cluster, wanted: dict[str, str]) -> None:
    """Exactly the workers `wanted` (name -> site) are running; start them in parallel."""
    for name, proc in list(cluster.workers.items()):
        if name not in wanted and proc.poll() is None:
            cluster.stop_worker(name)
    missing = {n: s for n, s in wanted.items() if n not in cluster.workers or cluster.workers[n].poll() is not None}
    for name, site in missing.items():
        cluster.start_worker(name, site, wait=False)
    cluster.wait_for_workers(set(wanted))
    deadline = time.monotonic() + 30
    while cluster.worker_names() != set(wanted):  # stopped ones have left the scheduler
        assert time.monotonic() < deadline, f"workers {cluster.worker_names()} != {set(wanted)}"
        time.sleep(0.1)


def step_events(instance, run_id: str):
    return [e.dagster_event for e in instance.all_logs(run_id) if e.dagster_event is not None]


def placements(events) -> dict[str, list[str]]:
    """step key -> the sites the executor placed it at, in order (one per attempt)."""
    out: dict[str, list[str]] = {}
    for ev in events:
        if ev.event_type == DagsterEventType.ENGINE_EVENT and ev.step_key:
            meta = ev.engine_event_data.metadata
            if "gravity/site" in meta and "gravity/candidates" in meta:
                out.setdefault(ev.step_key, []).append(meta["gravity/site"].value)
    return out


def workers_started(events) -> dict[str, list[dict]]:
    """step key -> the Dask workers that announced the step, in order (one per attempt)."""
    out: dict[str, list[dict]] = {}
    for ev in events:
        if ev.event_type == DagsterEventType.STEP_WORKER_STARTED:
            meta = ev.engine_event_data.metadata
            out.setdefault(ev.step_key, []).append(
                {k: meta[k].value for k in ("gravity/site", "gravity/worker", "dask/worker_address")}
            )
    return out


def run_in_background(job_def, instance, config: dict, output_node: str) -> tuple[threading.Thread, dict]:
    """`job_def` started in a thread (so the test can act while it runs); the dict gets the
    run's success, run_id and `output_node`'s output (None unless it succeeded)."""
    outcome: dict = {}

    def run() -> None:
        with execute_job(reconstructable(job_def), instance, run_config=config) as result:
            outcome["success"] = result.success
            outcome["run_id"] = result.run_id
            outcome["output"] = result.output_for_node(output_node) if result.success else None

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


def test_each_step_runs_on_a_worker_of_its_placed_site(dask_cluster, instance, tmp_path):
    ensure_workers(dask_cluster, {"onprem-dc-1": dask_jobs.ONPREM, "aws-us-east-1-1": dask_jobs.AWS})
    sites = write_sites(tmp_path / "sites.yaml", [dask_jobs.ONPREM, dask_jobs.AWS])

    with execute_job(
        reconstructable(dask_jobs.two_sites_job), instance, run_config=run_config(sites, dask_cluster.address)
    ) as result:
        assert result.success
        outputs = {key: result.output_for_node(key) for key in ("at_onprem", "at_aws", "anywhere")}
        events = step_events(instance, result.run_id)

    placed = placements(events)
    started = workers_started(events)
    assert placed["at_onprem"] == [dask_jobs.ONPREM]
    assert placed["at_aws"] == [dask_jobs.AWS]
    for step_key in ("at_onprem", "at_aws", "anywhere"):
        (site,) = placed[step_key]
        (worker,) = started[step_key]
        # The event the worker wrote names a worker of the site the executor chose ...
        assert worker["gravity/site"] == site
        assert worker["gravity/worker"] == f"{site}-1"
        # ... and the step itself saw that site and that worker.
        assert outputs[step_key]["site"] == site
        assert outputs[step_key]["worker"] == f"{site}-1"


def test_dynamic_outputs_map_and_collect_on_dask_workers(dask_cluster, instance, tmp_path):
    ensure_workers(dask_cluster, {"onprem-dc-1": dask_jobs.ONPREM, "aws-us-east-1-1": dask_jobs.AWS})
    sites = write_sites(tmp_path / "sites.yaml", [dask_jobs.ONPREM, dask_jobs.AWS])

    with execute_job(
        reconstructable(dask_jobs.dynamic_job), instance, run_config=run_config(sites, dask_cluster.address)
    ) as result:
        assert result.success
        assert result.output_for_node("total") == 0 + 1 + 4
        events = step_events(instance, result.run_id)

    placed = placements(events)
    started = workers_started(events)
    mapped = [key for key in placed if key.startswith("square[")]
    assert sorted(mapped) == ["square[part0]", "square[part1]", "square[part2]"]
    for step_key, sites_placed in placed.items():
        assert [w["gravity/site"] for w in started[step_key]] == sites_placed


def test_a_step_whose_worker_is_killed_runs_again_on_a_live_worker_without_using_a_retry(dask_cluster, instance, tmp_path):
    """The backend knows the worker left the cluster: the step did not fail, so the same
    attempt runs again on the site's other worker and its RetryPolicy is not consumed."""
    ensure_workers(
        dask_cluster,
        {"onprem-dc-1": dask_jobs.ONPREM, "onprem-dc-2": dask_jobs.ONPREM, "aws-us-east-1-1": dask_jobs.AWS},
    )
    sites = write_sites(tmp_path / "sites.yaml", [dask_jobs.ONPREM, dask_jobs.AWS])
    markers = tmp_path / "markers"
    markers.mkdir()
    config = run_config(
        sites,
        dask_cluster.address,
        ops={"slow_first_attempt": {"config": {"marker_dir": str(markers), "sleep_seconds": 120}}},
    )
    thread, outcome = run_in_background(dask_jobs.killed_worker_job, instance, config, "slow_first_attempt")
    first = markers / "run-0.json"
    deadline = time.monotonic() + 60
    while not first.exists():
        assert thread.is_alive(), f"the run ended before its first attempt started: {outcome}"
        assert time.monotonic() < deadline, "the first attempt did not start within 60 s"
        time.sleep(0.05)
    victim = json.loads(first.read_text())
    assert victim["site"] == dask_jobs.ONPREM
    dask_cluster.kill_worker(victim["worker"])  # SIGKILL mid-step

    thread.join(timeout=60)
    assert not thread.is_alive(), "the run did not finish within 60 s of the worker being killed"
    assert outcome["success"], outcome
    again = json.loads((markers / "run-1.json").read_text())
    survivor = ({"onprem-dc-1", "onprem-dc-2"} - {victim["worker"]}).pop()
    assert again["worker"] == survivor and again["site"] == dask_jobs.ONPREM
    assert outcome["output"] == again and again["attempt"] == 0, "the RetryPolicy was used"
    assert not (markers / "run-2.json").exists()

    events = step_events(instance, outcome["run_id"])
    types = [e.event_type for e in events if e.step_key == "slow_first_attempt"]
    # One attempt as Dagster knows it: one start, no retry, one success, no failure.
    assert types.count(DagsterEventType.STEP_START) == 1
    assert DagsterEventType.STEP_RESTARTED not in types and DagsterEventType.STEP_UP_FOR_RETRY not in types
    assert types.count(DagsterEventType.STEP_SUCCESS) == 1 and DagsterEventType.STEP_FAILURE not in types
    resumed = [e.message for e in events if e.event_type == DagsterEventType.ENGINE_EVENT and "runs again" in (e.message or "")]
    assert len(resumed) == 1 and victim["worker"] in resumed[0] and "using no retry" in resumed[0], resumed
    assert [w["gravity/worker"] for w in workers_started(events)["slow_first_attempt"]] == [
        victim["worker"],
        survivor,
    ]


def test_dynamic_outputs_a_lost_worker_reported_are_mapped_once(dask_cluster, instance, tmp_path):
    """The fan-out step yields part0, then its worker is killed: the attempt runs again on the
    other worker and yields part0 again and part1; each is mapped once."""
    workers = {"onprem-dc-1": dask_jobs.ONPREM, "onprem-dc-2": dask_jobs.ONPREM}
    ensure_workers(dask_cluster, workers)
    sites = write_sites(tmp_path / "sites.yaml", [dask_jobs.ONPREM])
    markers = tmp_path / "markers"
    markers.mkdir()
    config = run_config(
        sites, dask_cluster.address,
        ops={"fans_out_then_sleeps": {"config": {"marker_dir": str(markers), "sleep_seconds": 120}}},
    )
    thread, outcome = run_in_background(dask_jobs.lost_fan_out_job, instance, config, "total")
    deadline = time.monotonic() + 60
    while not (markers / "fan-0.json").exists():
        assert thread.is_alive() and time.monotonic() < deadline, "the fan-out step did not start"
        time.sleep(0.05)
    time.sleep(1.0)  # part0's event reaches the executor
    victim = json.loads((markers / "fan-0.json").read_text())["worker"]
    dask_cluster.kill_worker(victim)
    thread.join(timeout=60)
    assert not thread.is_alive(), "the run did not finish within 60 s of the worker being killed"
    assert outcome["success"], "\n".join(run_messages(instance, outcome["run_id"])) if "run_id" in outcome else outcome
    assert outcome["output"] == 1 * 1 + 2 * 2
    assert json.loads((markers / "fan-1.json").read_text())["attempt"] == 0
    events = step_events(instance, outcome["run_id"])
    part0 = [
        e for e in events if e.event_type == DagsterEventType.STEP_OUTPUT
        and e.step_key == "fans_out_then_sleeps" and e.step_output_data.mapping_key == "part0"
    ]
    assert len(part0) == 2, "the lost worker had reported part0 before it died"
    mapped = sorted({e.step_key for e in events if e.event_type == DagsterEventType.STEP_SUCCESS and e.step_key.startswith("square[")})
    assert mapped == ["square[part0]", "square[part1]"]
    starts = [e.step_key for e in events if e.event_type == DagsterEventType.STEP_START]
    assert sorted(starts) == ["fans_out_then_sleeps", "square[part0]", "square[part1]", "total"], starts
    assert not [e for e in events if e.event_type in (DagsterEventType.STEP_UP_FOR_RETRY, DagsterEventType.STEP_FAILURE)]


def test_site_without_workers_is_unhealthy_and_its_steps_fail_over(dask_cluster, instance, tmp_path):
    ensure_workers(dask_cluster, {"onprem-dc-1": dask_jobs.ONPREM})
    # The step has no inputs, so placement would pick the first pool: aws, which has no worker.
    sites = write_sites(tmp_path / "sites.yaml", [dask_jobs.AWS, dask_jobs.ONPREM])

    with execute_job(
        reconstructable(dask_jobs.failover_job), instance, run_config=run_config(sites, dask_cluster.address)
    ) as result:
        assert result.success
        output = result.output_for_node("first_choice")
        events = step_events(instance, result.run_id)

    assert output == {"site": dask_jobs.ONPREM, "worker": "onprem-dc-1"}
    unhealthy = [
        e.message for e in events
        if e.event_type == DagsterEventType.ENGINE_EVENT and "marked unhealthy" in (e.message or "")
    ]
    assert any(f"{dask_jobs.AWS}/cpu" in m and site_resource(dask_jobs.AWS) in m for m in unhealthy), unhealthy
    placed = next(
        e for e in events
        if e.event_type == DagsterEventType.ENGINE_EVENT and e.step_key == "first_choice"
        and "gravity/failover" in e.engine_event_data.metadata
    )
    assert placed.engine_event_data.metadata["gravity/site"].value == dask_jobs.ONPREM
    assert f"{dask_jobs.AWS}/cpu unhealthy" in placed.engine_event_data.metadata["gravity/failover"].value


def worker_pids(cluster, names) -> list[int]:
    return [cluster.workers[name].pid for name in names]


def tail_children(pids: list[int]) -> list[str]:
    """The `tail` processes (compute-log capture) still running under these workers."""
    import psutil

    found = []
    for pid in pids:
        for child in psutil.Process(pid).children(recursive=True):
            try:
                if child.name() == "tail" or "tail" in " ".join(child.cmdline()[:1]):
                    found.append(f"{child.pid}: {' '.join(child.cmdline())}")
            except psutil.NoSuchProcess:
                pass
    return found


def test_workers_close_a_finished_runs_sessions_and_log_capture(dask_cluster, instance, tmp_path):
    from distributed import Client

    from dagster_gravity.pools.dask import cached_runs_on_worker

    names = {"onprem-dc-1": dask_jobs.ONPREM, "aws-us-east-1-1": dask_jobs.AWS}
    ensure_workers(dask_cluster, names)
    sites = write_sites(tmp_path / "sites.yaml", [dask_jobs.ONPREM, dask_jobs.AWS])
    with execute_job(
        reconstructable(dask_jobs.two_sites_job), instance, run_config=run_config(sites, dask_cluster.address)
    ) as result:
        assert result.success
        run_id = result.run_id
    logs = [e for e in step_events(instance, run_id) if e.event_type == DagsterEventType.LOGS_CAPTURED]
    assert logs, "the steps' compute logs were captured"

    deadline = time.monotonic() + 10  # the tail processes exit a moment after their capture
    while (left := tail_children(worker_pids(dask_cluster, names))) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not left, f"compute-log capture still running on the workers after the run: {left}"
    with Client(dask_cluster.address, timeout=10) as client:
        held = client.run(cached_runs_on_worker)
    assert len(held) == 2
    assert all(run_id not in runs for runs in held.values()), held


def test_a_step_initialises_only_the_resources_it_needs(dask_cluster, instance, tmp_path):
    """Both steps run on the one onprem worker; only the second needs the broken resource."""
    ensure_workers(dask_cluster, {"onprem-dc-1": dask_jobs.ONPREM})
    sites = write_sites(tmp_path / "sites.yaml", [dask_jobs.ONPREM])
    # Not entered as a context: that would initialise every resource in this process.
    result = execute_job(
        reconstructable(dask_jobs.broken_resource_job),
        instance,
        run_config=run_config(sites, dask_cluster.address),
        raise_on_error=False,
    )
    assert not result.success
    events = step_events(instance, result.run_id)
    succeeded = {e.step_key for e in events if e.event_type == DagsterEventType.STEP_SUCCESS}
    failed = {e.step_key for e in events if e.event_type == DagsterEventType.STEP_FAILURE}
    assert succeeded == {"needs_no_resource"}, (succeeded, failed)
    assert failed == {"needs_broken"}
    failure = next(e for e in events if e.event_type == DagsterEventType.STEP_FAILURE)
    assert "broken_resource cannot initialise" in str(failure.event_specific_data.error), failure


def test_pools_of_one_site_share_its_workers_capacity(dask_cluster, instance):
    """Two pools of onprem-dc on one scheduler (even in two backends) share its one slot."""
    from dagster._core.execution.plan.state import KnownExecutionState

    from dagster_gravity.pools.base import StepEnded, StepRequest
    from dagster_gravity.topology import Pool

    ensure_workers(dask_cluster, {"onprem-dc-1": dask_jobs.ONPREM})
    backend, cpu = start_backend(dask_cluster, instance, dask_jobs.streaming_job)
    gpu = Pool(site=dask_jobs.ONPREM, name="gpu", slots=1)
    other = DaskBackend({"scheduler": dask_cluster.address, "worker_refresh_seconds": 0.5})
    other.start(backend._payload, [gpu])
    try:
        assert backend.free_slots(cpu.id) == 1 and other.free_slots(gpu.id) == 1
        backend.submit(cpu.id, StepRequest("logs_then_sleeps", KnownExecutionState()))
        assert backend.free_slots(cpu.id) == 0
        assert other.free_slots(gpu.id) == 0, "the gpu pool saw a slot the cpu pool's step holds"
        deadline = time.monotonic() + 60
        while not any(isinstance(u, StepEnded) for u in backend.poll(0.2)):
            assert time.monotonic() < deadline, "logs_then_sleeps did not end within 60 s"
        assert other.free_slots(gpu.id) == 1
    finally:
        other.stop()
        backend.stop()


def start_backend(cluster, instance, job_def, site=dask_jobs.ONPREM):
    """A Dask backend started for a fresh run of `job_def`, outside the executor."""
    from dagster._core.execution.retries import RetryMode

    from dagster_gravity.step_runner import RunPayload
    from dagster_gravity.topology import Pool

    dagster_run = instance.create_run_for_job(job_def, run_config={})
    payload = RunPayload(
        run_id=dagster_run.run_id,
        instance_ref=instance.get_ref(),
        dagster_run=dagster_run,
        run_config={},
        recon_job=reconstructable(job_def),
        retry_mode=RetryMode.ENABLED,
    )
    pool = Pool(site=site, name="cpu", slots=1)
    backend = DaskBackend({"scheduler": cluster.address})
    backend.start(payload, [pool])
    return backend, pool


def test_events_reach_the_executor_while_the_step_runs(dask_cluster, instance):
    from dagster._core.execution.plan.state import KnownExecutionState

    from dagster_gravity.pools.base import StepEnded, StepEvent, StepRequest

    ensure_workers(dask_cluster, {"onprem-dc-1": dask_jobs.ONPREM})
    backend, pool = start_backend(dask_cluster, instance, dask_jobs.streaming_job)
    try:
        submission = backend.submit(pool.id, StepRequest("logs_then_sleeps", KnownExecutionState()))
        assert "onprem-dc-1" in submission.worker
        arrived: dict[str, float] = {}
        deadline = time.monotonic() + 60
        while "end" not in arrived:
            assert time.monotonic() < deadline, f"step did not end within 60 s; saw {arrived}"
            for update in backend.poll(0.1):
                if isinstance(update, StepEvent):
                    arrived.setdefault(update.event.event_type_value, time.monotonic())
                else:
                    assert isinstance(update, StepEnded) and update.outcome == "completed", update
                    arrived["end"] = time.monotonic()
    finally:
        backend.stop()
    # The step sleeps 3 s after it starts: its first events came while it was running.
    assert arrived["end"] - arrived["STEP_START"] > 2.0, arrived
    assert arrived["end"] - arrived["STEP_WORKER_STARTED"] > 2.0, arrived
    assert "STEP_SUCCESS" in arrived


def test_lost_worker_ends_its_running_step_as_crashed_and_its_queued_step_as_not_started(dask_cluster, instance):
    from dagster._core.execution.plan.state import KnownExecutionState

    from dagster_gravity.pools.base import CRASHED, NOT_STARTED, StepEnded, StepEvent, StepRequest

    ensure_workers(dask_cluster, {"onprem-dc-1": dask_jobs.ONPREM})
    backend, pool = start_backend(dask_cluster, instance, dask_jobs.two_sleepers_job)
    try:
        backend.submit(pool.id, StepRequest("sleeper_a", KnownExecutionState()))
        deadline = time.monotonic() + 60
        seen: list[str] = []
        while "STEP_START" not in seen:
            assert time.monotonic() < deadline, f"sleeper_a did not start; saw {seen}"
            seen += [u.event.event_type_value for u in backend.poll(0.1) if isinstance(u, StepEvent)]
        # The only worker of the site is busy: sleeper_b waits in its queue.
        assert backend.free_slots(pool.id) == 0
        backend.submit(pool.id, StepRequest("sleeper_b", KnownExecutionState()))
        dask_cluster.kill_worker("onprem-dc-1")

        ended: dict[str, StepEnded] = {}
        while len(ended) < 2:
            assert time.monotonic() < deadline + 30, f"steps not ended after the kill: {ended}"
            ended.update({u.step_key: u for u in backend.poll(0.1) if isinstance(u, StepEnded)})
        assert ended["sleeper_a"].outcome == CRASHED
        assert "onprem-dc-1" in ended["sleeper_a"].message and "while running" in ended["sleeper_a"].message
        assert ended["sleeper_b"].outcome == NOT_STARTED  # the executor places it again
        health = backend.health(pool.id)
        assert not health.healthy and "site-onprem-dc" in health.reason
    finally:
        backend.stop()


def test_one_scheduler_per_site(dask_cluster, instance, tmp_path):
    """onprem-dc's workers on the shared scheduler, aws-us-east-1's on a scheduler of its own."""
    ensure_workers(dask_cluster, {"onprem-dc-1": dask_jobs.ONPREM})
    aws = DaskCluster(workdir=tmp_path / "aws-scheduler")
    aws.workdir.mkdir()
    try:
        aws.start_scheduler()
        aws.start_worker("aws-us-east-1-1", dask_jobs.AWS)
        sites = write_sites(tmp_path / "sites.yaml", [dask_jobs.ONPREM, dask_jobs.AWS])
        config = run_config(sites, dask_cluster.address)
        config["execution"]["config"]["pools"]["per_site"] = {
            dask_jobs.AWS: {"dask": {"scheduler": aws.address}}
        }
        with execute_job(reconstructable(dask_jobs.two_sites_job), instance, run_config=config) as result:
            assert result.success
            outputs = {key: result.output_for_node(key) for key in ("at_onprem", "at_aws")}
    finally:
        aws.stop()
    assert outputs["at_onprem"]["worker"] == "onprem-dc-1"
    assert outputs["at_aws"]["worker"] == "aws-us-east-1-1"
    assert not aws.leftover_processes()


def test_backend_reports_an_unreachable_scheduler_as_unhealthy():
    from dagster_gravity.topology import Pool

    backend = DaskBackend({"scheduler": "tcp://127.0.0.1:9", "connect_timeout_seconds": 0.5})
    pool = Pool(site="onprem-dc", name="cpu", slots=1)

    class _Run:
        run_id = "r" * 36

    backend.start(_Run(), [pool])
    try:
        health = backend.health(pool.id)
        assert not health.healthy
        assert "tcp://127.0.0.1:9" in health.reason and "unreachable" in health.reason
        assert backend.free_slots(pool.id) == 0
    finally:
        backend.stop()


@pytest.mark.parametrize(
    "settings, expected",
    [
        ({}, 'Missing required config entry "scheduler"'),
        ({"scheduler": ""}, "setting scheduler: got ''"),
        ({"scheduler": "tcp://x:1", "schedular": "typo"}, 'unexpected config entry "schedular"'),
        ({"scheduler": "tcp://x:1", "resources": {"GPU": 0}}, "setting 'resources' is {'GPU': 0.0}"),
    ],
)
def test_backend_settings_errors_name_the_setting(settings, expected):
    with pytest.raises(ValueError) as err:
        DaskBackend(settings)
    assert expected in str(err.value)


# ---------------------------------------------------------------------------------------
# Faults: a scheduler address that is not a scheduler, a worker still busy with an abandoned
# step, a scheduler that dies mid-step, processes a step leaves behind.
# ---------------------------------------------------------------------------------------

# Runs a job of tests/support/dask_jobs.py in a process of its own, so a test can SIGINT it.
RUN_SCRIPT = """
import json, sys
from dagster import DagsterInstance, execute_job, reconstructable
from tests.support import dask_jobs
with DagsterInstance.get() as instance:
    execute_job(reconstructable(getattr(dask_jobs, sys.argv[1])), instance=instance,
                run_config=json.loads(sys.argv[2]))
"""


def start_run_process(job_name: str, config: dict) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    return subprocess.Popen([sys.executable, "-c", RUN_SCRIPT, job_name, json.dumps(config)], cwd=REPO_ROOT, env=env)


def stop_run_process(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait(timeout=10)


def run_messages(instance, run_id: str) -> list[str]:
    """Every message of the run's events, with the text of each error they carry."""
    out = []
    for entry in instance.all_logs(run_id):
        event = entry.dagster_event
        out.append(entry.message or "")
        if event is None:
            continue
        data = event.event_specific_data
        error = getattr(data, "error", None)
        if error is not None:
            out.append(error.to_string())
    return out


@pytest.mark.parametrize(
    "kind, expected",
    [("garbage", "not a Dask scheduler: it answered b'HTTP/1.1 400"), ("http", "timed out after 3 s")],
)
def test_a_scheduler_address_that_is_not_dask_fails_the_run_within_its_timeout(instance, tmp_path, kind, expected):
    sites = write_sites(tmp_path / "sites.yaml", [dask_jobs.ONPREM])
    timeout = 3.0
    with NotDaskServer(kind) as server:
        started = time.monotonic()
        result = execute_job(
            reconstructable(dask_jobs.failover_job),
            instance,
            run_config=run_config(sites, server.address, connect_timeout=timeout),
            raise_on_error=False,
        )
        took = time.monotonic() - started
        assert server.accepted.is_set()
    print(f"{kind}: the run failed after {took:.1f} s")
    assert not result.success
    assert took < timeout + 10, f"the run took {took:.1f} s with connect_timeout_seconds={timeout}"
    events = step_events(instance, result.run_id)
    unhealthy = [
        e.message for e in events
        if e.event_type == DagsterEventType.ENGINE_EVENT and "marked unhealthy" in (e.message or "")
    ]
    assert any(server.address in m and expected in m for m in unhealthy), "\n".join(run_messages(instance, result.run_id))
    failures = [e for e in events if e.event_type == DagsterEventType.STEP_FAILURE]
    assert [e.step_key for e in failures] == ["first_choice"]
    assert f"{dask_jobs.ONPREM}/cpu: unhealthy" in failures[0].event_specific_data.error.message
    assert not any("KeyError" in m or "MemoryError" in m for m in run_messages(instance, result.run_id))


def test_a_run_interrupted_while_connecting_to_a_silent_port_ends_in_seconds(dagster_home, tmp_path):
    sites = write_sites(tmp_path / "sites.yaml", [dask_jobs.ONPREM])
    with NotDaskServer("silent") as server:
        # A minute to connect: the interrupt, not the deadline, must end this run.
        proc = start_run_process("failover_job", run_config(sites, server.address, connect_timeout=60))
        try:
            assert server.accepted.wait(60), "the run never connected"
            time.sleep(0.5)
            interrupted = time.monotonic()
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=30)
            took = time.monotonic() - interrupted
        finally:
            stop_run_process(proc)
    print(f"the interrupted run ended {took:.1f} s after SIGINT")
    assert took < 10, f"the run took {took:.1f} s to end after SIGINT"


def test_sites_health_against_a_port_that_is_not_dask_answers_within_its_timeout(tmp_path, capsys):
    from dagster_gravity.cli import main

    sites = write_sites(tmp_path / "sites.yaml", [dask_jobs.ONPREM])
    (tmp_path / "storage" / dask_jobs.ONPREM).mkdir(parents=True)
    for kind in ("http", "garbage"):
        with NotDaskServer(kind) as server:
            config = tmp_path / f"{kind}.yaml"
            config.write_text(yaml.safe_dump({"pools": {"default": {"dask": {"scheduler": server.address}}}}))
            started = time.monotonic()
            rc = main(["sites", "--health", "--timeout", "3", "--sites", str(sites), "--config", str(config)])
            took = time.monotonic() - started
        out = capsys.readouterr().out
        with capsys.disabled():
            print(f"{kind}: gravity sites --health answered in {took:.1f} s")
        row = next(line for line in out.splitlines() if line.startswith(f"{dask_jobs.ONPREM}/cpu ") and "dask" in line)
        assert rc == 1 and took < 10, (took, out)
        assert "unhealthy" in row and server.address in row, row


def test_sites_health_stops_on_sigint_while_a_silent_port_holds_it(tmp_path):
    sites = write_sites(tmp_path / "sites.yaml", [dask_jobs.ONPREM])
    gravity = Path(sys.executable).with_name("gravity")
    with NotDaskServer("silent") as server:
        config = tmp_path / "silent.yaml"
        config.write_text(yaml.safe_dump({"pools": {"default": {"dask": {"scheduler": server.address}}}}))
        proc = subprocess.Popen(
            [str(gravity), "sites", "--health", "--timeout", "120", "--sites", str(sites), "--config", str(config)],
            cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        try:
            assert server.accepted.wait(60), "gravity sites --health never connected"
            interrupted = time.monotonic()
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=30)
            took = time.monotonic() - interrupted
        finally:
            stop_run_process(proc)
    print(f"gravity sites --health ended {took:.1f} s after SIGINT")
    assert took < 5, took


def test_a_worker_still_running_an_interrupted_runs_step_gets_no_new_steps(instance, dask_cluster, tmp_path):
    """Run 1's step hangs on one of the site's two workers and run 1 is interrupted: Dask
    cannot stop the step's thread, so that worker stays busy. Later runs (other processes,
    which know nothing of run 1) must go to the idle worker, not queue behind the step."""
    workers = {"onprem-dc-1": dask_jobs.ONPREM, "onprem-dc-2": dask_jobs.ONPREM}
    ensure_workers(dask_cluster, workers)
    sites = write_sites(tmp_path / "sites.yaml", [dask_jobs.ONPREM])
    markers = tmp_path / "markers"
    markers.mkdir()
    config = run_config(sites, dask_cluster.address, ops={"hangs": {"config": {"marker_dir": str(markers)}}})
    stuck = None
    proc = start_run_process("hang_job", config)
    try:
        marker = markers / "hang.json"
        deadline = time.monotonic() + 60
        while not marker.exists():
            assert proc.poll() is None, "run 1 ended before its step started"
            assert time.monotonic() < deadline, "run 1's step did not start within 60 s"
            time.sleep(0.05)
        stuck = json.loads(marker.read_text())["worker"]
        interrupted = time.monotonic()
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
        print(f"run 1 ended {time.monotonic() - interrupted:.1f} s after SIGINT; its step still runs on {stuck}")
        idle = (set(workers) - {stuck}).pop()

        for attempt in (2, 3):
            started = time.monotonic()
            thread, outcome = run_in_background(
                dask_jobs.where_job, instance, run_config(sites, dask_cluster.address), "where_it_ran")
            thread.join(timeout=30)
            assert not thread.is_alive(), f"run {attempt} did not finish within 30 s: queued behind the stuck step on {stuck}?"
            print(f"run {attempt} ran on {outcome['output']['worker']} in {time.monotonic() - started:.1f} s")
            assert outcome["success"], outcome
            assert outcome["output"]["worker"] == idle, (outcome, stuck)
    finally:
        stop_run_process(proc)
        if stuck is not None:
            dask_cluster.kill_worker(stuck)  # the hanging step would hold it for two minutes


@pytest.mark.parametrize("job_name, op_name", [("hang_job", "hangs"), ("hang_retry_job", "hangs_then_retries")])
def test_a_scheduler_killed_mid_step_fails_the_step_naming_the_scheduler(instance, tmp_path, job_name, op_name):
    """The only scheduler dies while a step runs: the step fails as crashed, naming the
    scheduler; with a RetryPolicy the retry is asked for, and finds the pool unhealthy."""
    cluster = DaskCluster(workdir=tmp_path / "doomed")
    cluster.workdir.mkdir()
    markers = tmp_path / "markers"
    markers.mkdir()
    sites = write_sites(tmp_path / "sites.yaml", [dask_jobs.ONPREM])
    outcome: dict = {}
    try:
        address = cluster.start_scheduler()
        cluster.start_worker("onprem-dc-1", dask_jobs.ONPREM)
        config = run_config(sites, address, connect_timeout=3, ops={op_name: {"config": {"marker_dir": str(markers)}}})

        def run() -> None:
            job_def = getattr(dask_jobs, job_name)
            outcome["result"] = execute_job(reconstructable(job_def), instance, run_config=config, raise_on_error=False)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 60
        while not (markers / "hang.json").exists():
            assert thread.is_alive(), "the run ended before its step started"
            assert time.monotonic() < deadline, "the step did not start within 60 s"
            time.sleep(0.05)
        killed = time.monotonic()
        os.kill(cluster.scheduler.pid, signal.SIGKILL)
        cluster.scheduler.wait(timeout=10)
        thread.join(timeout=30)
        assert not thread.is_alive(), "the run did not end within 30 s of its scheduler's death"
        print(f"{job_name}: the run ended {time.monotonic() - killed:.1f} s after its scheduler was killed")
    finally:
        cluster.stop()
    result = outcome["result"]
    assert not result.success
    messages = run_messages(instance, result.run_id)
    assert not [m for m in messages if "KeyError" in m or "ClosedClientError" in m], "\n".join(messages)
    events = [e for e in step_events(instance, result.run_id) if e.step_key == op_name]
    crash = next(
        e for e in events
        if e.event_type in (DagsterEventType.STEP_FAILURE, DagsterEventType.STEP_UP_FOR_RETRY)
    )
    error = crash.event_specific_data.error.to_string()
    assert f"lost the connection to dask scheduler {address}" in error and "onprem-dc-1" in error, error
    failures = [e for e in events if e.event_type == DagsterEventType.STEP_FAILURE]
    assert len(failures) == 1, "\n".join(messages)
    if job_name == "hang_retry_job":
        assert crash.event_type == DagsterEventType.STEP_UP_FOR_RETRY
        assert f"{dask_jobs.ONPREM}/cpu: unhealthy" in failures[0].event_specific_data.error.message
        unhealthy = [m for m in messages if "marked unhealthy" in m]
        assert any(address in m for m in unhealthy), unhealthy
        assert not (markers / "hang-1.json").exists(), "the retry ran without a scheduler"


def test_processes_a_failing_step_starts_do_not_survive_it(dask_cluster, instance, tmp_path):
    ensure_workers(dask_cluster, {"onprem-dc-1": dask_jobs.ONPREM})
    sites = write_sites(tmp_path / "sites.yaml", [dask_jobs.ONPREM])
    config = run_config(sites, dask_cluster.address, ops={"spawns_then_fails": {"config": {"marker_dir": str(tmp_path)}}})
    started = time.monotonic()
    result = execute_job(reconstructable(dask_jobs.leaves_children_job), instance, run_config=config, raise_on_error=False)
    print(f"the run with a step that left processes took {time.monotonic() - started:.1f} s")
    pids = json.loads((tmp_path / "children.json").read_text())
    try:
        assert not result.success
        failure = next(e for e in step_events(instance, result.run_id) if e.event_type == DagsterEventType.STEP_FAILURE)
        assert "fails on purpose" in failure.event_specific_data.error.to_string()
        assert not {name: pid for name, pid in pids.items() if pid_alive(pid)}, pids
    finally:
        for pid in pids.values():  # never leave them behind, whatever the outcome
            if pid_alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_processes_a_step_starts_are_stopped_before_the_next_step_and_log_capture_survives(dask_cluster, instance, tmp_path):
    ensure_workers(dask_cluster, {"onprem-dc-1": dask_jobs.ONPREM})
    sites = write_sites(tmp_path / "sites.yaml", [dask_jobs.ONPREM])
    config = run_config(sites, dask_cluster.address, ops={"spawns_then_succeeds": {"config": {"marker_dir": str(tmp_path)}}})
    try:
        with execute_job(reconstructable(dask_jobs.children_then_next_step_job), instance, run_config=config) as result:
            assert result.success
            seen = result.output_for_node("looks_around")
            logs = [e for e in step_events(instance, result.run_id) if e.event_type == DagsterEventType.LOGS_CAPTURED]
    finally:
        for pid in json.loads((tmp_path / "children.json").read_text()).values():
            if pid_alive(pid):
                os.kill(pid, signal.SIGKILL)
    assert seen["worker"] == "onprem-dc-1"
    assert seen["still_running"] == {}, seen
    assert seen["tails"], f"the worker's compute-log capture was stopped with the step's processes: {seen}"
    assert logs
