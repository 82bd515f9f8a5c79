"""`dagster dev -w workspace.yaml`: a run launched the way the UI launches it (GraphQL
`launchRun`) goes through the run launcher, uses the gravity executor, and its log shows
the placement events with their candidate tables."""

from __future__ import annotations

import pytest

from tests.support.dagster_dev import dagster_dev_server, project_env, wait_for_run, write_landing_day

pytestmark = [pytest.mark.slow, pytest.mark.webserver]

EVENTS_QUERY = """
query($id: ID!) { logsForRun(runId: $id) { ... on EventConnection { events {
  __typename ... on MessageEvent { message stepKey }
  ... on EngineEvent { metadataEntries { label } } } } } }
"""


@pytest.fixture
def dagster_dev(tmp_path):
    work, env = project_env(tmp_path)
    write_landing_day(work, env)
    with dagster_dev_server(work, env, tmp_path / "dev.log") as (client, _port):
        yield client


def test_run_launched_from_the_ui_is_placed_by_the_gravity_executor(dagster_dev):
    client = dagster_dev
    run_id = client.submit_job_execution("ingest_aws_us_east_1_job", tags={"dagster/partition": "2026-01-01"})
    status = wait_for_run(client, run_id)
    events = client._execute(EVENTS_QUERY, {"id": run_id})["logsForRun"]["events"]
    assert status == "SUCCESS", [e.get("message") for e in events][-10:]
    placements = [e for e in events if e["__typename"] == "EngineEvent" and (e.get("message") or "").startswith("gravity: step")]
    assert placements, [e.get("message") for e in events]
    raw = next(e for e in placements if e["stepKey"] == "raw_items")
    assert "aws-us-east-1/cpu" in raw["message"]
    labels = {m["label"] for m in raw["metadataEntries"]}
    assert {"gravity/site", "gravity/pool_id", "gravity/reason", "gravity/candidates"} <= labels
