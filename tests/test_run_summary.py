"""The run summary: one engine event at the end of every gravity run saying where each step
ran and what moved per directed link (bytes, seconds, dollars), beside the plan's figures
when given.

The end-to-end tests run real jobs (forked workers, the real GravityIOManager over local
storage at two sites) whose input must move alpha -> beta, and check the summary against
what storage holds; the others check the accounting and the table on their own."""

from __future__ import annotations

import pytest
from dagster import AssetKey, DagsterEventType, execute_job, materialize, reconstructable

from dagster_gravity import GravityIOManager, GravityTopology
from dagster_gravity.locations import latest_location
from dagster_gravity.errors import GravityConfigError
from dagster_gravity.step_durations import expected_durations
from dagster_gravity.placement.waits import DEFAULT_STEP_SECONDS
from dagster_gravity.run_summary import LINKS, MAKESPAN, PREDICTED, STEPS, SUMMARY_PREFIX, TABLE, RunFigures, RunSummary
from dagster_gravity.topology import Topology
from tests.support import summary_jobs

def executor_test(test):
    for mark in (pytest.mark.slow, pytest.mark.executor, pytest.mark.timeout(60)):
        test = mark(test)
    return test


@pytest.fixture
def sites(tmp_path, monkeypatch):
    path = summary_jobs.write_summary_sites(tmp_path)
    monkeypatch.setenv("GRAVITY_SITES", str(path))
    return path


def _run(instance, factory, sites):
    run_config = {"execution": {"config": {"sites_file": str(sites)}}}
    return execute_job(reconstructable(factory), instance=instance, run_config=run_config, raise_on_error=False)


def _summary(result) -> tuple[str, dict]:
    found = [
        e for e in result.all_events
        if e.event_type == DagsterEventType.ENGINE_EVENT and (e.message or "").startswith(SUMMARY_PREFIX)
    ]
    assert len(found) == 1, f"expected one run summary event, got {[e.message for e in found]}"
    event = found[0]
    assert event.step_key is None  # a run-level event: the run's log shows it, not one step's
    return event.message, {k: getattr(v, "value", v) for k, v in event.event_specific_data.metadata.items()}


def _replica_size(sites, asset: str) -> int:
    """The size of the object the replication wrote at beta, read from beta's storage itself."""
    files = [p for p in (sites.parent / "sites-store" / "beta").rglob(f"{asset}@*") if p.is_file()]
    assert len(files) == 1, files
    return files[0].stat().st_size


@executor_test
@pytest.mark.parametrize("fail", [False, True], ids=["succeeds", "fails"])
def test_the_summary_names_each_steps_pool_and_the_bytes_of_the_copy(instance, sites, monkeypatch, fail):
    if fail:
        monkeypatch.setenv(summary_jobs.FAIL_ENV, "1")
    with _run(instance, summary_jobs.moving_job, sites) as result:
        assert result.success is not fail
        message, meta = _summary(result)
        step_seconds = {
            e.step_key: e.event_specific_data.duration_ms / 1000.0
            for e in result.all_events if e.event_type == DagsterEventType.STEP_SUCCESS
        }
    steps = meta[STEPS]
    assert steps["made_at_alpha"] == {"pool_id": "alpha/cpu", "site": "alpha", "attempts": 1,
                                      "status": "succeeded", "bytes_in": 0}
    assert steps["read_at_beta"]["pool_id"] == "beta/cpu"
    assert steps["read_at_beta"]["status"] == ("failed" if fail else "succeeded")
    # what moved: exactly the object the IO manager copied into beta, as stored there and as recorded
    size = _replica_size(sites, "made_at_alpha")
    assert size == latest_location(instance, AssetKey("made_at_alpha")).size_bytes > summary_jobs.N * 8
    assert set(meta[LINKS]) == {"alpha->beta"}
    link = meta[LINKS]["alpha->beta"]
    assert link["bytes"] == size and link["copies"] == 1 and link["seconds"] > 0
    assert link["dollars"] == pytest.approx(size / 1e9 * summary_jobs.USD_PER_GB)
    assert steps["read_at_beta"]["bytes_in"] == size
    assert meta["gravity/bytes_moved"] == size
    assert meta["gravity/dollars"] == pytest.approx(link["dollars"])
    assert meta[MAKESPAN] > 0
    assert "| read_at_beta | beta/cpu | 1 |" in meta[TABLE]
    assert "2 steps on 2 compute pools; moved 2 MB over 1 link" in message
    # the duration it leaves for the next run's wait estimates excludes the copy it made
    if not fail:
        learned = expected_durations(instance, "moving_job")
        assert learned["read_at_beta"] == pytest.approx(step_seconds["read_at_beta"] - link["seconds"], abs=1e-3)
        assert learned["made_at_alpha"] == pytest.approx(step_seconds["made_at_alpha"], abs=1e-3)
    # beside what the run plan predicted: the simulated run knew no sizes (1 B) nor durations
    # (DEFAULT_STEP_SECONDS, 0.5 s each)
    predicted = meta[PREDICTED]
    assert predicted["steps"] == {"made_at_alpha": "alpha/cpu", "read_at_beta": "beta/cpu"}
    assert predicted["links"]["alpha->beta"]["bytes"] == 1
    assert predicted["makespan_seconds"] == pytest.approx(2 * DEFAULT_STEP_SECONDS, abs=0.1)
    assert "| alpha->beta | 1 B | 2 MB |" in meta[TABLE] and "(predicted 1.01 s)" in meta[TABLE]  # + the 1 B copy's latency


@executor_test
@pytest.mark.parametrize("factory", ["ops_job", "all_days_job"])
def test_copies_of_op_outputs_and_of_several_partitions_are_counted(instance, sites, factory):
    # op outputs have no materialization to record a replica on; an input spanning partitions
    # is copied one partition at a time: both state their copies on the input's LOADED_INPUT
    if factory == "all_days_job":
        at_alpha = GravityIOManager(topology=GravityTopology(sites_file=str(sites)), default_site="alpha")
        for day in ("d1", "d2"):
            materialize([summary_jobs.daily], partition_key=day, resources={"io_manager": at_alpha}, instance=instance)
    with _run(instance, getattr(summary_jobs, factory), sites) as result:
        assert result.success
        _, meta = _summary(result)
    copies = 1 if factory == "ops_job" else 2
    link = meta[LINKS]["alpha->beta"]
    assert link["copies"] == copies
    assert link["bytes"] == copies * (summary_jobs.N * 8 + 128)  # the .npy header: 128 bytes
    reader = "read_op" if factory == "ops_job" else "all_days"
    assert meta[STEPS][reader]["pool_id"] == "beta/cpu"
    assert meta[STEPS][reader]["bytes_in"] == link["bytes"]


# -- the accounting on its own -------------------------------------------------------------

TOPOLOGY = {
    "sites": [{"name": n, "region": "r", "kind": "cloud", "pools": [{"name": "cpu", "slots": 1}]} for n in ("a", "b")],
    "links": [{"from": "a", "to": "b", "usd_per_gb": 0.1}],
}


def _summary_of(copies, clock=None) -> RunSummary:
    ticks = iter([100.0, 112.5])
    summary = RunSummary(Topology.from_dict(TOPOLOGY), clock=clock or (lambda: next(ticks)))
    summary.step_placed("s", "a/cpu", "a", 0)
    summary.step_placed("s", "b/cpu", "b", 1)  # retried elsewhere
    summary.step_placed("s", "b/cpu", "b", 1)  # handed over again without running: same attempt
    for nbytes in copies:
        summary.transfer("a", "b", nbytes, 0.5, step_key="s")
    return summary


def test_attempts_and_pools_of_a_retried_step():
    steps = _summary_of([]).metadata()[STEPS].value
    assert steps["s"]["attempts"] == 2 and steps["s"]["pool_id"] == "b/cpu"
    assert steps["s"]["pools"] == ["a/cpu", "b/cpu", "b/cpu"] and steps["s"]["status"] == "did not end"


def test_predicted_figures_show_beside_the_actual_ones():
    summary = _summary_of([3_000_000_000, 1_000_000_000])
    predicted = {"links": {("a", "b"): {"bytes": 2_000_000_000, "seconds": 1.5, "dollars": 0.2}},
                 "steps": {"s": "a/cpu"}, "makespan_seconds": 10.0}
    meta = summary.metadata(predicted)
    assert meta[LINKS].value["a->b"] == {"bytes": 4_000_000_000, "seconds": 1.0, "dollars": 0.4, "copies": 2}
    assert meta[PREDICTED].value["links"]["a->b"]["bytes"] == 2_000_000_000
    table = meta[TABLE].value
    assert "| a->b | 2 GB | 4 GB | 1.5 | 1 | 0.20 | 0.40 |" in table
    assert "| s | b/cpu | 2 | did not end | 4 GB | a/cpu |" in table  # planned pool beside the actual
    assert "Makespan: 12.5 s (predicted 10 s)" in table


def test_a_run_that_moved_nothing_says_so():
    summary = _summary_of([])
    assert summary.message().endswith("1 step on 1 compute pool; no data moved between sites")
    assert "(no data moved)" in summary.metadata()[TABLE].value


def test_bad_predicted_figures_name_what_was_expected():
    with pytest.raises(GravityConfigError, match=r"link 'a-b'.*expected 'src->dst'"):
        RunFigures.from_mapping({"links": {"a-b": {"bytes": 1}}})
    with pytest.raises(GravityConfigError, match=r"unknown keys \['bytes'\]"):
        RunFigures.from_mapping({"bytes": 1})


def _loaded_input(step_key: str, metadata: dict):
    from dagster._core.definitions.dependency import NodeHandle
    from dagster._core.events import DagsterEvent, LoadedInputData
    from dagster._core.definitions.metadata import normalize_metadata
    from dagster._core.execution.plan.handle import StepHandle

    return DagsterEvent(
        DagsterEventType.LOADED_INPUT.value, "job", step_handle=StepHandle(NodeHandle(step_key, None)),
        event_specific_data=LoadedInputData(input_name="x", manager_key="io_manager",
                                            metadata=normalize_metadata(metadata)),
    )


def test_a_copy_without_its_destination_counts_at_the_steps_site_and_bad_values_are_a_note():
    summary = RunSummary(Topology.from_dict(TOPOLOGY))
    summary.step_placed("s", "b/cpu", "b", 0)
    summary.observe(_loaded_input("s", {"gravity/bytes_moved": 2_000_000_000, "gravity/replicated_from": "a",
                                        "gravity/replication_seconds": 2.0}))
    summary.observe(_loaded_input("s", {"gravity/bytes_moved": "lots", "gravity/replicated_from": "a"}))
    summary.observe(_loaded_input("s", {"dagster/size_bytes": 10}))  # another IO manager's load: no copy
    meta = summary.metadata()
    assert meta[LINKS].value == {"a->b": {"bytes": 2_000_000_000, "seconds": 2.0, "dollars": pytest.approx(0.2),
                                          "copies": 1}}
    assert "step s: unreadable copy metadata" in meta["gravity/notes"].value
