"""Resource lifetime under the gravity executor matches Dagster's multiprocess executor:
each step initialises its resources and tears them down when it ends, even when two steps
run one after the other in the same warm worker, and a teardown error is an event of the
run. (Results are not entered as context managers: that would initialise the resources
once more in the test process.) `resource_lifetime: run` keeps them for the worker's later steps instead (opt-in)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from dagster import DagsterEventType, execute_job, reconstructable

from tests.support import resource_jobs
from tests.support.executor_runs import worker_pids

pytestmark = pytest.mark.slow


@pytest.fixture
def log(tmp_path) -> Path:
    return tmp_path / "resource.log"


@pytest.fixture
def one_worker(tmp_path):
    """A topology of one site with one slot: both steps run in the same warm worker."""
    path = tmp_path / "sites.yaml"
    path.write_text(yaml.safe_dump({"sites": [{"name": "here", "region": "r", "kind": "onprem",
                                                "storage": {"kind": "local", "path": str(tmp_path / "here")},
                                                "pools": [{"name": "cpu", "slots": 1}]}]}))
    return path


def _config(executor: str, sites, **gravity):
    if executor == "gravity":
        return {"execution": {"config": {"sites_file": str(sites), **gravity}}}
    return {"execution": {"config": {"start_method": {"forkserver": {}}, "max_concurrent": 1}}}


PER_STEP = ["set up", "compute foo", "torn down", "set up", "compute foo", "torn down"]


@pytest.mark.parametrize("executor", ["gravity", "multiprocess"])
def test_each_step_sets_up_and_tears_down_its_resources(executor, instance, one_worker, log):
    recon = reconstructable(getattr(resource_jobs, f"lifetime_{executor}"))
    result = execute_job(recon, instance=instance, run_config={**_config(executor, one_worker), **resource_jobs.run_config(log)})
    assert result.success
    pids = worker_pids(result)
    assert resource_jobs.lines(log) == PER_STEP
    if executor == "gravity":
        assert len(pids) == 1  # one warm worker ran both steps, and still each had its own resources


def test_run_scoped_resources_are_opt_in(instance, one_worker, log):
    recon = reconstructable(resource_jobs.lifetime_gravity)
    config = {**_config("gravity", one_worker, resource_lifetime="run"), **resource_jobs.run_config(log)}
    assert execute_job(recon, instance=instance, run_config=config).success
    assert resource_jobs.lines(log) == ["set up", "compute foo", "compute foo", "torn down"]


@pytest.mark.parametrize("executor", ["gravity", "multiprocess"])
def test_a_teardown_error_reaches_the_runs_events(executor, instance, one_worker):
    recon = reconstructable(getattr(resource_jobs, f"teardown_{executor}"))
    result = execute_job(recon, instance=instance, run_config=_config(executor, one_worker))
    assert result.success  # as in Dagster: a teardown error does not fail the step
    errors = [
        e for e in result.all_events
        if e.event_type == DagsterEventType.ENGINE_EVENT and e.engine_event_data.error is not None
        and "teardown fails (on purpose)" in e.engine_event_data.error.to_string()
    ]
    assert len(errors) == 1, [e.message for e in result.all_events]
