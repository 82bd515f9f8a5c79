"""`dagster dev -w workspace.yaml`: a run launched the way the UI launches it (GraphQL
`launchRun`) goes through the run launcher, uses the gravity executor, and its log shows
the placement events with their candidate tables."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from dagster_graphql import DagsterGraphQLClient

from tests.support.ports import free_port
from tests.support.dagster_dev import (
    REPO,
    dagster_dev_server,
    project_env,
    stop_group,
    wait_for_run,
    wait_for_webserver,
    write_landing_day,
)

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


def test_make_ui_on_a_fresh_clone_serves_its_own_home_on_the_chosen_port(tmp_path):
    """`make ui PORT=...` in a copy of the project with no home: it creates .dagster_home
    (telemetry off) and dagster dev answers on that port. The venv is this one (-o: make does
    not reinstall it)."""
    work = tmp_path / "clone"
    work.mkdir()
    for name in ("Makefile", "workspace.yaml", "sites.yaml", "pyproject.toml"):
        shutil.copy(REPO / name, work / name)
    venv = Path(sys.executable).parents[1]
    env = {k: v for k, v in os.environ.items() if k not in ("DAGSTER_HOME", "GRAVITY_SITES", "DAGSTER_IS_DEV_CLI")}
    env["PYTHONPATH"] = str(REPO)
    port = free_port()
    log_path = tmp_path / "ui.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            ["make", "-s", "-o", f"{venv}/.installed", "ui", f"PORT={port}", f"VENV={venv}", f"PY={sys.executable}"],
            cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        try:
            client = DagsterGraphQLClient("127.0.0.1", port_number=port)
            wait_for_webserver(client, proc, log_path)
            info = client._execute("{ instance { info } }")["instance"]["info"]
            assert str(work / ".dagster_home") in info
            assert (work / ".dagster_home/dagster.yaml").read_text() == "telemetry:\n  enabled: false\n"
            assert f"DAGSTER_HOME={work / '.dagster_home'}" in log_path.read_text()
            # what the UI filters by: the site and residency asset tags, beside the kinds
            nodes = client._execute("{ assetNodes { assetKey { path } tags { key value } } }")["assetNodes"]
            tags = {"/".join(n["assetKey"]["path"]): {t["key"]: t["value"] for t in n["tags"]} for n in nodes}
            assert tags["raw_events"]["gravity/site"] == "onprem-dc" and "dagster/kind/parquet" in tags["raw_events"]
            assert tags["raw_eu_customers"]["gravity/residency"] == "eu"
        finally:
            stop_group(proc)
