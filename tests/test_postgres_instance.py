"""A gravity run on a Postgres-backed Dagster instance (dagster-postgres), on real processes.

A real PostgreSQL (tests/support/postgres.py) holds the instance; three DAGSTER_HOME
directories each have their own dagster.yaml naming that one database: the launcher's (this
test process: the executor), the Dask workers' (separate `dask worker` processes, started
with that DAGSTER_HOME) and a reader's. The job (tests/support/postgres_jobs.py) runs its
steps on the workers, one of them fails its first attempt and is retried. Then a separate
process opens a fresh instance from the reader's dagster.yaml and reads the run back; the
test checks that, the database's own tables, and that no SQLite file appeared in any of the
three directories, so a silent fall-back to SQLite fails it.

The password reaches every process as $DAGSTER_PG_PASSWORD (`password: {env: ...}`): the
workers open the instance from the run's instance ref, which carries the launcher's
dagster.yaml storage section with the `env:` reference unresolved, so a worker without the
variable fails its steps. Their own DAGSTER_HOME is not what they store through: with the
launcher's dagster.yaml on SQLite the run still succeeds, written to the launcher's SQLite
files (which the last test finds).

Wall time: about 20 s (PostgreSQL starts in about 1 s; the Dask scheduler and two workers,
the run, and the reader process take the rest).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from dagster import DagsterEventType, DagsterInstance, execute_job, reconstructable

from dagster_gravity.run_summary import SUMMARY_PREFIX
from tests.support import postgres_jobs
from tests.support.dask_cluster import REPO_ROOT
from tests.support.dask_jobs import AWS, ONPREM
from tests.support.postgres import PASSWORD_ENV
from tests.test_dask_backend import run_config, write_sites

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

WORKERS = {f"{ONPREM}-1": ONPREM, f"{AWS}-1": AWS}
ASSETS = ["raw_at_onprem", "flaky_features", "report_at_aws"]
SQLITE_MAGIC = b"SQLite format 3\x00"


def sqlite_files(home: Path) -> list[str]:
    """Every file under `home` that is an SQLite database (by its header, whatever its name)."""
    found = []
    for path in home.rglob("*"):
        if path.is_file():
            with open(path, "rb") as f:
                if f.read(len(SQLITE_MAGIC)) == SQLITE_MAGIC:
                    found.append(str(path.relative_to(home)))
    return found


@dataclass
class PostgresRun:
    run_id: str
    success: bool
    homes: dict[str, Path]  # launcher, workers, reader
    worker_pids: dict[str, int]  # worker name -> pid of its `dask worker` process
    read_back: dict  # what tests/support/postgres_reader.py printed


def _home(root: Path, name: str, dagster_yaml: str) -> Path:
    home = root / name
    home.mkdir()
    (home / "dagster.yaml").write_text(dagster_yaml)
    return home


@pytest.fixture(scope="module")
def postgres_run(postgres, dask_cluster, tmp_path_factory) -> PostgresRun:
    """One run of postgres_job, and what a separate process reads back about it."""
    root = tmp_path_factory.mktemp("postgres-run")
    homes = {name: _home(root, name, postgres.dagster_yaml()) for name in ("launcher", "workers", "reader")}
    worker_env = {"DAGSTER_HOME": str(homes["workers"]), PASSWORD_ENV: postgres.password}
    for name, site in WORKERS.items():
        dask_cluster.start_worker(name, site, wait=False, env=worker_env)
    dask_cluster.wait_for_workers(set(WORKERS))
    sites = write_sites(root / "sites.yaml", [ONPREM, AWS])

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DAGSTER_HOME", str(homes["launcher"]))
        mp.setenv(PASSWORD_ENV, postgres.password)
        with DagsterInstance.get() as instance:
            with execute_job(
                reconstructable(postgres_jobs.postgres_job), instance,
                run_config=run_config(sites, dask_cluster.address), raise_on_error=False,
            ) as result:
                run_id, success = result.run_id, result.success

    reader_env = {
        **os.environ,
        "DAGSTER_HOME": str(homes["reader"]),
        PASSWORD_ENV: postgres.password,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
    }
    kv = ["gravity/step-seconds/postgres_job", f"gravity/links-from/{ONPREM}"]
    done = subprocess.run(
        [sys.executable, "-m", "tests.support.postgres_reader", run_id,
         *[f"--asset={a}" for a in ASSETS], *[f"--kv={k}" for k in kv]],
        env=reader_env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, f"the reader failed:\n{done.stderr[-3000:]}"
    pids = {name: dask_cluster.workers[name].pid for name in WORKERS}
    return PostgresRun(run_id, success, homes, pids, json.loads(done.stdout.strip().splitlines()[-1]))


def events_of(read_back: dict, step_key: str | None = None, type_: str | None = None) -> list[dict]:
    return [
        e for e in read_back["events"]
        if (step_key is None or e["step_key"] == step_key) and (type_ is None or e["type"] == type_)
    ]


def placements(read_back: dict, step: str) -> list[dict]:
    """The metadata of the step's placement events (placement_events.py), in order."""
    return [
        e["metadata"] for e in events_of(read_back, step, "ENGINE_EVENT")
        if "gravity/site" in e["metadata"] and "gravity/candidates" in e["metadata"]
    ]


def test_the_run_succeeds_and_a_fresh_instance_reads_it_from_postgres(postgres_run):
    read_back = postgres_run.read_back
    assert postgres_run.success
    assert read_back["storage"] == {
        "run": "PostgresRunStorage", "event_log": "PostgresEventLogStorage", "schedule": "PostgresScheduleStorage",
    }
    assert read_back["run_status"] == "SUCCESS"
    run_level = {t.value for t in (DagsterEventType.RUN_START, DagsterEventType.RUN_SUCCESS, DagsterEventType.RUN_FAILURE)}
    assert [e["type"] for e in events_of(read_back) if e["type"] in run_level] == [
        DagsterEventType.RUN_START.value, DagsterEventType.RUN_SUCCESS.value,
    ]
    for step in ASSETS:
        types = [e["type"] for e in events_of(read_back, step) if e["type"].startswith("STEP_")]
        assert types[0] == "STEP_WORKER_STARTED" and "STEP_START" in types, (step, types)
        assert types[-1] == "STEP_SUCCESS", (step, types)
        assert "STEP_FAILURE" not in types, (step, types)
        assert "STEP_OUTPUT" in types and any(e["type"] == "ASSET_MATERIALIZATION" for e in events_of(read_back, step))


def test_the_retry_is_recorded_step_by_step(postgres_run):
    read_back = postgres_run.read_back
    types = [e["type"] for e in events_of(read_back, "flaky_features") if e["type"].startswith("STEP_")]
    # attempt 1: announced by a worker, started, up for retry; attempt 2: announced, restarted, success
    attempts = [t for t in types if t in ("STEP_START", "STEP_UP_FOR_RETRY", "STEP_RESTARTED", "STEP_SUCCESS")]
    assert attempts == ["STEP_START", "STEP_UP_FOR_RETRY", "STEP_RESTARTED", "STEP_SUCCESS"], types
    assert types.count("STEP_WORKER_STARTED") == 2, types
    (retry,) = events_of(read_back, "flaky_features", "STEP_UP_FOR_RETRY")
    assert postgres_jobs.FIRST_ATTEMPT_ERROR in retry["error"], retry
    for other in ("raw_at_onprem", "report_at_aws"):
        assert not events_of(read_back, other, "STEP_RESTARTED")


def test_each_attempt_ran_on_a_worker_process_of_the_site_placement_chose(postgres_run):
    """Placement's engine events and the workers' own STEP_WORKER_STARTED, as stored: one
    placement per attempt, at the site whose worker process (by pid) then ran it."""
    read_back = postgres_run.read_back
    plans = [e for e in events_of(read_back, None, "ENGINE_EVENT") if "gravity/planned_sites" in e["metadata"]]
    assert plans and set(plans[0]["metadata"]["gravity/planned_sites"]) == set(ASSETS)
    for step in ASSETS:
        placed = placements(read_back, step)
        ran = [e["metadata"] for e in events_of(read_back, step, "STEP_WORKER_STARTED")]
        assert len(placed) == len(ran) == (2 if step == "flaky_features" else 1), (step, placed, ran)
        for decision, worker in zip(placed, ran):
            assert {c["site"] for c in decision["gravity/candidates"]} == {ONPREM, AWS}
            assert decision["gravity/reason"]
            assert worker["gravity/site"] == decision["gravity/site"]
            assert worker["gravity/worker"] == f"{decision['gravity/site']}-1"
            assert worker["pid"] == str(postgres_run.worker_pids[worker["gravity/worker"]])
    assert [m["gravity/site"] for m in placements(read_back, "raw_at_onprem")] == [ONPREM]
    assert [m["gravity/site"] for m in placements(read_back, "report_at_aws")] == [AWS]


def test_the_run_summary_and_what_the_workers_recorded_are_in_postgres(postgres_run):
    read_back = postgres_run.read_back
    (summary,) = [e for e in events_of(read_back, None, "ENGINE_EVENT") if (e["message"] or "").startswith(SUMMARY_PREFIX)]
    steps = summary["metadata"]["gravity/steps"]
    assert {k: (v["status"], v["attempts"]) for k, v in steps.items()} == {
        "raw_at_onprem": ("succeeded", 1), "flaky_features": ("succeeded", 2), "report_at_aws": ("succeeded", 1),
    }
    link = summary["metadata"]["gravity/links"][f"{ONPREM}->{AWS}"]
    # One copy, or two when placement put flaky_features's attempts at different sites.
    assert link["copies"] >= 1 and link["bytes"] >= link["copies"] * postgres_jobs.N * 8

    # Materializations, written from the workers, with the site that holds the data.
    materialized = read_back["materializations"]
    assert {a: m and m["run_id"] for a, m in materialized.items()} == {a: postgres_run.run_id for a in ASSETS}
    assert materialized["raw_at_onprem"]["metadata"]["gravity/site"] == ONPREM
    assert materialized["report_at_aws"]["metadata"]["gravity/site"] == AWS
    # The key-value store: step durations (the executor, at run end) and the measured link
    # (the IO manager, in the worker that copied the data).
    durations = json.loads(read_back["kv"]["gravity/step-seconds/postgres_job"])
    assert set(durations) == set(ASSETS)
    assert AWS in json.loads(read_back["kv"][f"gravity/links-from/{ONPREM}"])


def test_the_run_and_its_events_are_rows_of_the_database(postgres_run, postgres):
    conn = postgres.connect()
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT status FROM runs WHERE run_id = %s", (postgres_run.run_id,))
            assert cur.fetchall() == [("SUCCESS",)]
            cur.execute(
                "SELECT dagster_event_type, count(*) FROM event_logs WHERE run_id = %s GROUP BY 1",
                (postgres_run.run_id,),
            )
            counts = dict(cur.fetchall())
    finally:
        conn.close()
    assert counts["STEP_UP_FOR_RETRY"] == 1 and counts["STEP_RESTARTED"] == 1 and counts["STEP_SUCCESS"] == 3
    assert counts["STEP_WORKER_STARTED"] == 4


def test_no_dagster_home_holds_an_sqlite_database(postgres_run):
    """A storage that fell back to Dagster's default would have left runs.db, index.db,
    schedules.db, ... in the DAGSTER_HOME of the process that opened it."""
    for name, home in postgres_run.homes.items():
        assert (home / "dagster.yaml").exists()
        assert sqlite_files(home) == [], f"SQLite database(s) in the {name} DAGSTER_HOME {home}"
    # What the instance ref carries besides storage are the launcher's local paths: the
    # workers wrote the steps' compute logs there (README: use S3 compute logs across hosts),
    # and nothing at all under their own DAGSTER_HOME.
    launcher, workers = postgres_run.homes["launcher"], postgres_run.homes["workers"]
    assert (launcher / "storage" / postgres_run.run_id / "compute_logs").is_dir()
    assert [p.name for p in workers.rglob("*")] == ["dagster.yaml"]
