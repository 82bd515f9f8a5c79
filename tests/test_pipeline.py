"""The reference pipeline end to end with the gravity executor on a real on-disk instance:
every asset at its site, kill-and-resume training, corrupted-checkpoint fallback, rollback."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from dagster import AssetKey, AssetRecordsFilter, DagsterEventType

from dagster_gravity.checkpoints import CheckpointStore
from dagster_gravity.metadata import plain_value
from dagster_gravity.topology import Topology
from pipelines.definitions import defs
from pipelines.report import summary_numbers
from pipelines.training import MODEL_NAME
from tests.support.pipeline import generate_days, run_job, training_run_config

pytestmark = [pytest.mark.slow, pytest.mark.executor]

DAY1, DAY2 = "2026-01-01", "2026-01-02"


def latest_metadata(instance, asset: str, partition: str) -> dict:
    records = instance.fetch_materializations(
        AssetRecordsFilter(asset_key=AssetKey(asset), asset_partitions=[partition]), limit=1
    ).records
    assert records, f"{asset} [{partition}] was never materialized"
    return {k: plain_value(v) for k, v in records[0].asset_materialization.metadata.items()}


def run_events(instance, run_id, event_type):
    return [e for e in instance.all_logs(run_id) if e.dagster_event and e.dagster_event.event_type == event_type]


def gate_evaluation(instance, run_id):
    """The quality gate check's evaluation in the run: (passed, metadata)."""
    [evaluation] = [
        data for e in run_events(instance, run_id, DagsterEventType.ASSET_CHECK_EVALUATION)
        if (data := e.dagster_event.asset_check_evaluation_data).check_name == "quality_gate"
    ]
    assert evaluation.asset_key == AssetKey("model_checkpoint")
    return evaluation.passed, {k: plain_value(v) for k, v in evaluation.metadata.items()}


def store_for(sites) -> CheckpointStore:
    return CheckpointStore.for_site(Topology.from_yaml(sites), "onprem-dc")


def test_full_materialization_with_gravity_executor_puts_every_asset_at_its_site(pipeline_sites, instance):
    landed = generate_days(pipeline_sites, [DAY1])
    run_id, ok, failures = run_job(instance, "everything_job", DAY1)
    assert ok, failures

    graph = defs.resolve_asset_graph()
    for key in graph.get_all_asset_keys():
        expected = plain_value(graph.get(key).metadata["gravity/site"])
        meta = latest_metadata(instance, key.to_user_string(), DAY1)
        assert meta["gravity/site"] == expected, f"{key.to_user_string()} at {meta['gravity/site']}, expected {expected}"
        assert meta["dagster/size_bytes"] > 0 and len(meta["gravity/sha256"]) == 64
    # EU personal data is stored only in the EU and never replicated out of it.
    for asset in ("raw_eu_customers", "eu_customer_features"):
        meta = latest_metadata(instance, asset, DAY1)
        assert meta["gravity/residency"] == "eu" and meta["gravity/replicas"] == []
    assert "gravity/residency" not in latest_metadata(instance, "eu_segment_features", DAY1)
    # ... and their residency-compliance checks ran in the run and passed
    evaluations = [
        e.dagster_event.event_specific_data for e in run_events(instance, run_id, DagsterEventType.ASSET_CHECK_EVALUATION)
    ]
    residency = {ev.asset_key.to_user_string(): ev.passed for ev in evaluations if ev.check_name == "residency_compliance"}
    assert residency == {"raw_eu_customers": True, "eu_customer_features": True}, residency
    # The copy of raw_items into onprem-dc (for the point-in-time join) is recorded as where
    # the version is now: its primary and every current replica.
    [copied] = [
        obs for e in run_events(instance, run_id, DagsterEventType.ASSET_OBSERVATION)
        if (obs := e.dagster_event.asset_observation_data.asset_observation).asset_key == AssetKey("raw_items")
    ]
    assert {k: plain_value(copied.metadata[k]) for k in ("gravity/site", "gravity/replicas", "gravity/sha256")} == {
        "gravity/site": "aws-us-east-1", "gravity/replicas": ["onprem-dc"],
        "gravity/sha256": latest_metadata(instance, "raw_items", DAY1)["gravity/sha256"]}

    # The executor placed every step and said where; training went to the GPU pool.
    placements = {
        e.step_key: plain_value(e.dagster_event.engine_event_data.metadata["gravity/pool_id"])
        for e in run_events(instance, run_id, DagsterEventType.ENGINE_EVENT)
        if "gravity/pool_id" in (e.dagster_event.engine_event_data.metadata or {}) and e.step_key
    }
    # every asset's step, the quality gate check and the two residency-compliance checks
    assert len(placements) == len(graph.get_all_asset_keys()) + 3, sorted(placements)
    assert placements["model_checkpoint"] == "onprem-dc/gpu"
    assert placements["eu_customer_features"].startswith("eu-colo/")

    ckpt = latest_metadata(instance, "model_checkpoint", DAY1)
    assert ckpt["checkpoint/version"] == 1 and len(ckpt["checkpoint/sha256"]) == 64
    assert ckpt["train/start_batch"] == 0 and "metric/train_log_loss" in ckpt
    gate = latest_metadata(instance, "promoted_model", DAY1)
    assert gate["gate/decision"] == "promoted" and gate["checkpoint/version"] == 1
    # nothing was promoted: a first model, on absolute thresholds, not compared with itself
    passed, check = gate_evaluation(instance, run_id)
    assert passed and check["gate/baseline"] == "first model" and check["gate/metric_deltas"] == {}
    assert not any(k.startswith("promoted/") for k in check) and gate["gate/baseline"] == "first model"
    assert store_for(pipeline_sites).promoted(MODEL_NAME) == 1

    # A candidate worse than the promoted model fails the blocking gate: the run fails,
    # promoted_model never runs, v1 stays promoted (huge step sizes make v2 diverge).
    bad_run, ok, failures = run_job(instance, "retrain_job", DAY1, training_run_config(learning_rate=1000.0))
    passed, check = gate_evaluation(instance, bad_run)
    assert not ok and not passed and check["gate/decision"] == "kept" and check["gate/baseline"] == "v1", failures
    assert [e.step_key for e in run_events(instance, bad_run, DagsterEventType.STEP_FAILURE)] == ["model_checkpoint_quality_gate"]
    assert "promoted_model" not in {e.step_key for e in run_events(instance, bad_run, DagsterEventType.ASSET_MATERIALIZATION)}
    assert store_for(pipeline_sites).promoted(MODEL_NAME) == 1 and store_for(pipeline_sites).versions(MODEL_NAME) == [1, 2]

    # What the demo reports: the bytes the IO manager replicated match the cost model, and
    # a location-blind run (everything at the hub) would move far more.
    sizes = {(f"raw_{f.dataset}", f.partition): (f.site, f.size_bytes) for f in landed}
    numbers = summary_numbers(Topology.from_yaml(pipeline_sites), instance, [run_id], graph, sizes)
    assert 0 < numbers["measured"] == numbers["aware"]
    assert numbers["blind"] > 2 * numbers["aware"]  # ~3.6x at this tiny size, ~120x at the demo size

    # The run's summary event says the same: where each step ran, and the bytes the IO manager moved.
    [summary] = [
        e.dagster_event.engine_event_data.metadata for e in run_events(instance, run_id, DagsterEventType.ENGINE_EVENT)
        if (e.dagster_event.message or "").startswith("gravity run summary: ")
    ]
    assert {k: v["pool_id"] for k, v in plain_value(summary["gravity/steps"]).items()} == placements
    assert plain_value(summary["gravity/bytes_moved"]) == numbers["measured"]


def start_slow_retrain(partition):
    """A retrain run in its own process (and process group), slowed down so it can be killed."""
    return subprocess.Popen(
        [sys.executable, "-m", "tests.support.pipeline", "retrain_job", partition, "128", "0.1"],
        env=os.environ.copy(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
    )


def wait_for_progress(proc, progress_root: Path, timeout: float = 90) -> int:
    """Wait until training saved an intermediate checkpoint; its next batch."""
    deadline = time.monotonic() + timeout
    while True:
        states = list(progress_root.glob("*/state.json"))
        if states:
            try:
                return json.loads(states[0].read_text())["next_batch"]
            except (FileNotFoundError, ValueError):
                pass
        assert proc.poll() is None, f"training run ended before saving progress: {proc.stdout.read()!r}"
        assert time.monotonic() < deadline, f"no intermediate checkpoint within {timeout} s"
        time.sleep(0.1)


def training_worker_pid(progress_root: Path) -> int:
    """The process that wrote the training progress: the worker running the step."""
    [state] = list(progress_root.glob("*/state.json"))
    return int(json.loads(state.read_text())["state"]["pid"])


def test_killed_training_step_resumes_from_its_intermediate_checkpoint(pipeline_sites, instance, dagster_home):
    generate_days(pipeline_sites, [DAY1])
    assert run_job(instance, "everything_job", DAY1)[1]
    progress_root = Path(Topology.from_yaml(pipeline_sites).site("onprem-dc").storage.path) / "checkpoints" / MODEL_NAME / "_intermediate"
    store = store_for(pipeline_sites)

    # 1. SIGKILL the worker running the training step: the executor retries the step (its
    #    RetryPolicy) in the same run, and the retry resumes from the intermediate checkpoint.
    proc = start_slow_retrain(DAY1)
    try:
        saved_at = wait_for_progress(proc, progress_root)
        pid = training_worker_pid(progress_root)
        assert pid != proc.pid  # a worker of the run, not the run process itself
        os.kill(pid, signal.SIGKILL)
        output = proc.communicate(timeout=120)[0].decode()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
    assert proc.returncode == 0, output
    meta = latest_metadata(instance, "model_checkpoint", DAY1)
    assert meta["train/resumed"] is True and meta["train/start_batch"] >= saved_at >= 4
    assert meta["checkpoint/version"] == 2 and meta["train/warm_start_from"] == 1
    assert not list(progress_root.glob("*/state.json"))  # progress is cleared once the version exists

    # 2. SIGKILL the whole run (run process and its workers): a new run of the same
    #    partition, parent and data resumes from where the killed one got to.
    parent = store.promoted(MODEL_NAME)
    proc = start_slow_retrain(DAY1)
    try:
        saved_at = wait_for_progress(proc, progress_root)
        time.sleep(0.4)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    saved_at = json.loads(next(progress_root.glob("*/state.json")).read_text())["next_batch"]
    assert store.versions(MODEL_NAME) == [1, 2]  # the killed run saved no version

    run_id, ok, failures = run_job(instance, "retrain_job", DAY1, training_run_config(batch_rows=128))
    assert ok, failures
    meta = latest_metadata(instance, "model_checkpoint", DAY1)
    assert meta["train/resumed"] is True
    assert saved_at <= meta["train/start_batch"] < meta["train/total_batches"]
    assert meta["checkpoint/version"] == 3 and meta["train/warm_start_from"] == parent


def test_corrupted_checkpoint_falls_back_with_an_event_and_rollback_job_restores(pipeline_sites, instance):
    generate_days(pipeline_sites, [DAY1, DAY2])
    for day in (DAY1, DAY2):
        run_id, ok, failures = run_job(instance, "everything_job", day)
        assert ok, failures
    store = store_for(pipeline_sites)
    assert store.promoted(MODEL_NAME) == 2
    # day 2's gate compared v2 with v1 on day 2's holdout, and both it and the promotion
    # report that one comparison
    passed, check = gate_evaluation(instance, run_id)
    gate = latest_metadata(instance, "promoted_model", DAY2)
    assert passed and check["gate/baseline"] == "v1" == gate["gate/baseline"] and check["gate/decision"] == "promoted"
    deltas = {m: check[f"candidate/{m}"] - check[f"promoted/{m}"] for m in ("log_loss", "auc", "accuracy")}
    assert check["gate/metric_deltas"] == pytest.approx(deltas) and gate["gate/metric_deltas"] == pytest.approx(deltas)

    weights = Path(Topology.from_yaml(pipeline_sites).site("onprem-dc").storage.path) / "checkpoints" / MODEL_NAME / "v2" / "weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[100] ^= 0xFF
    weights.write_bytes(bytes(data))

    run_id, ok, failures = run_job(instance, "retrain_job", DAY2)
    assert ok, failures
    refusals = [
        e.dagster_event.asset_observation_data.asset_observation.metadata
        for e in run_events(instance, run_id, DagsterEventType.ASSET_OBSERVATION)
        if "checkpoint/refused_version" in e.dagster_event.asset_observation_data.asset_observation.metadata
    ]
    assert refusals, "no event reported the corrupted checkpoint"
    assert plain_value(refusals[0]["checkpoint/refused_version"]) == 2
    assert plain_value(refusals[0]["checkpoint/used_version"]) == 1
    assert "corrupted" in plain_value(refusals[0]["checkpoint/refused_reason"])
    warnings = [e.message for e in instance.all_logs(run_id) if "refused checkpoint conversion@v2" in (e.user_message or "")]
    assert warnings
    meta = latest_metadata(instance, "model_checkpoint", DAY2)
    assert meta["train/warm_start_from"] == 1 and meta["checkpoint/version"] == 3

    promoted_before = store.promoted(MODEL_NAME)
    run_id, ok, failures = run_job(
        instance, "rollback_job", DAY2,
        run_config={"ops": {"promoted_model": {"config": {"to_version": 1, "reason": "test"}}}},
    )
    assert ok, failures
    assert store.promoted(MODEL_NAME) == 1
    history = store.promotion_history(MODEL_NAME)
    assert history[-1]["action"] == "rollback" and history[-2]["version"] == promoted_before
    assert store.load(MODEL_NAME, 1).version.version == 1
    # The asset page shows the rollback: it is promoted_model's latest materialization, stored
    # and recorded by the gravity IO manager like any other.
    rolled = latest_metadata(instance, "promoted_model", DAY2)
    assert rolled["promotion/decision"] == "rolled back" and rolled["gravity/checkpoint"] == f"{MODEL_NAME}@v1"
    assert (rolled["rollback/from"], rolled["rollback/to"]) == (promoted_before, 1)
    assert rolled["gravity/site"] == "onprem-dc" and rolled["dagster/uri"] and "gate/decision" not in rolled


def test_gc_after_the_day_is_rerun_keeps_every_recorded_version(pipeline_sites, instance, capsys):
    from dagster_gravity.cli import main as gravity
    from dagster_gravity.recorded_versions import recorded_bases
    from dagster_gravity.storage import storage_for_site

    topology = Topology.from_yaml(pipeline_sites)
    generate_days(pipeline_sites, [DAY1])
    assert run_job(instance, "everything_job", DAY1)[1]
    generate_days(pipeline_sites, [DAY1], drift=0.5)  # the day landed again, changed: new versions
    assert run_job(instance, "everything_job", DAY1)[1]

    def stored() -> set[str]:
        return {f"{site}:{k}" for site in topology.sites for k in storage_for_site(topology, site).list_keys()}

    def assert_recorded_readable():
        recorded = recorded_bases(instance)
        assert len(recorded) >= 10
        for base, version in recorded.items():  # every asset partition's latest version
            asset, partition = base.rsplit("/", 1)
            meta = latest_metadata(instance, asset, partition)
            data, _ = storage_for_site(topology, meta["gravity/site"]).read_bytes(version.key, meta["gravity/sha256"])
            assert len(data) == meta["dagster/size_bytes"]

    before = stored()
    assert gravity(["gc", "--sites", str(pipeline_sites), "--dry-run", "--grace-seconds", "0"]) == 0
    listed = [line for line in capsys.readouterr().out.splitlines() if "would remove superseded version" in line]
    assert listed and stored() == before  # it lists what it would remove, and removes nothing
    assert_recorded_readable()

    assert gravity(["gc", "--sites", str(pipeline_sites), "--grace-seconds", "0"]) == 0
    removed = [line for line in capsys.readouterr().out.splitlines() if "removed superseded version" in line]
    assert len(removed) == len(listed) and len(stored()) == len(before) - len(removed)
    assert_recorded_readable()
