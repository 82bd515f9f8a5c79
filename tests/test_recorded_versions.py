"""Nothing recorded is lost when an overwrite is interrupted (issue 11): kill tests for the
window between the storage commit of a new version and Dagster's record of it.

GravityIOManager commits the new object in `handle_output`; Dagster records the
materialization only after it returns. Each test hits that window with real processes on a
real SQLite instance on disk and then checks, through Dagster's records and the user's
read path only (not the storage's key layout), that the latest *recorded* materialization
is readable with exactly the bytes it recorded:

(a) the run is SIGKILLed in the window;
(b) the instance's event log database is locked in the window, so the step fails
    "database is locked" and the new version is never recorded;
(c) two runs materialize the same asset at once, 30 rounds; both recorded versions of a
    round must stay readable, and the latest must load.

The runs are `tests.support.recorded_writer` processes; its `WindowIOManager` writes a
marker file once `super().handle_output` has committed, then sleeps, so the test acts in
the window exactly.
"""

from __future__ import annotations

import hashlib
import json
import os
import select
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest
from dagster import AssetKey, DagsterInstance

from tests.support.recorded_writer import (
    ASSET,
    payload_value,
    run_once,
    user_definitions,
    write_instance_yaml,
    write_local_sites,
)

pytestmark = pytest.mark.slow  # every test starts run processes

REPO = Path(__file__).resolve().parents[1]
RACE_ROUNDS = 30
BUSY_TIMEOUT_S = 2.0  # the locked-database run's SQLite busy timeout (Dagster's own: 30 s)


@pytest.fixture
def env(tmp_path, monkeypatch):
    home = tmp_path / "dagster_home"
    write_instance_yaml(home)
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    sites = write_local_sites(tmp_path)
    with DagsterInstance.get() as instance:
        yield instance, home, sites, tmp_path


def start_writer(tmp_path: Path, *args: str, stdin=None) -> subprocess.Popen:
    """A writer process; its JSON summaries on stdout, Dagster's log in tmp_path/writer-*.log."""
    with open(tmp_path / f"writer-{time.monotonic_ns()}.log", "wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "tests.support.recorded_writer", *args],
            cwd=REPO,
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
        )


def stop(proc: subprocess.Popen) -> None:
    """End a writer this test started, if it is still running."""
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=30)


def wait_for_file(path: Path, proc: subprocess.Popen, timeout: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, f"the writer exited ({proc.returncode}) before reaching the window"
        assert time.monotonic() < deadline, f"the writer did not reach the window within {timeout} s"
        time.sleep(0.01)
    return json.loads(path.read_text())


def read_line(proc: subprocess.Popen, timeout: float = 60.0) -> str:
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, f"no output from the writer within {timeout} s"
    line = proc.stdout.readline()
    assert line, f"the writer exited ({proc.wait(timeout=30)}) early"
    return line


# -- what was recorded, and whether it can be read ----------------------------------------------


def recorded(instance, limit: int = 1):
    """The latest `limit` materializations of the asset, newest first."""
    return instance.fetch_materializations(AssetKey(ASSET), limit=limit).records


def meta(record, name):
    value = record.asset_materialization.metadata[name]
    return getattr(value, "value", value)


def recorded_bytes_problem(record) -> str | None:
    """None if the bytes at the record's `dagster/uri` are the ones it recorded (sha256, size)."""
    uri = meta(record, "dagster/uri")
    try:
        data = Path(unquote(urlparse(uri).path)).read_bytes()
    except OSError as exc:
        return f"run {record.run_id}: the recorded URI {uri} cannot be read: {exc}"
    sha = hashlib.sha256(data).hexdigest()
    if sha != meta(record, "gravity/sha256") or len(data) != meta(record, "dagster/size_bytes"):
        return (
            f"run {record.run_id}: {uri} holds {len(data)} bytes with sha256 {sha[:12]}, the record says "
            f"{meta(record, 'dagster/size_bytes')} bytes with sha256 {meta(record, 'gravity/sha256')[:12]}"
        )
    return None


def load_problem(instance, sites: Path, tag: str) -> str | None:
    """None if the user's read of the asset returns what the run tagged `tag` wrote."""
    try:
        value = user_definitions(sites).load_asset_value(ASSET, instance=instance)
    except Exception as exc:  # noqa: BLE001 - reported as the finding
        return f"loading the asset fails: {type(exc).__name__}: {exc}"
    if value != payload_value(tag):
        return f"loading the asset returns tag {value.get('tag') if isinstance(value, dict) else value!r}, expected {tag!r}"
    return None


def assert_latest_readable(instance, sites: Path, tags_by_run: dict[str, str], expected_run: str) -> None:
    [latest] = recorded(instance)
    assert latest.run_id == expected_run, (
        f"the latest recorded materialization is run {latest.run_id}'s, expected {expected_run}'s "
        "(the interrupted run recorded one?)"
    )
    problems = [recorded_bytes_problem(latest), load_problem(instance, sites, tags_by_run[latest.run_id])]
    problems = [p for p in problems if p]
    assert not problems, "the latest recorded version is lost: " + "; ".join(problems)


def good_run(sites: Path, tag: str) -> str:
    summary = run_once(sites, tag)
    assert summary["success"], summary
    return summary["run_id"]


# -- (a) SIGKILL in the window ------------------------------------------------------------------


def test_run_killed_between_storage_commit_and_record_loses_nothing_recorded(env):
    instance, _home, sites, tmp = env
    before = good_run(sites, "before")
    marker = tmp / "committed.json"
    proc = start_writer(tmp, "run", "--sites", str(sites), "--tag", "after", "--marker", str(marker), "--hold", "120")
    try:
        window = wait_for_file(marker, proc)
        assert window["pid"] == proc.pid  # the run itself (in-process executor) is what dies
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        stop(proc)
    assert_latest_readable(instance, sites, {before: "before"}, expected_run=before)


# -- (b) instance database locked in the window -------------------------------------------------


def event_log_index(home: Path) -> Path:
    # Dagster 1.13's SqliteEventLogStorage writes each event to the run's shard
    # (history/runs/<run_id>.db) and mirrors asset events into history/runs/index.db, which
    # is what asset queries (fetch_materializations) read.
    return home / "history" / "runs" / "index.db"


def step_failed(home: Path, run_id: str) -> bool:
    shard = home / "history" / "runs" / f"{run_id}.db"
    if not shard.exists():
        return False
    with sqlite3.connect(f"file:{shard}?mode=ro", uri=True, timeout=5) as conn:
        (count,) = conn.execute("SELECT COUNT(*) FROM event_logs WHERE dagster_event_type = 'STEP_FAILURE'").fetchone()
    return count > 0


def test_instance_database_locked_between_storage_commit_and_record_loses_nothing_recorded(env):
    instance, home, sites, tmp = env
    before = good_run(sites, "before")
    marker = tmp / "committed.json"
    proc = start_writer(
        tmp, "run", "--sites", str(sites), "--tag", "after", "--marker", str(marker), "--hold", "0.5",
        "--busy-timeout", str(BUSY_TIMEOUT_S),
    )
    try:
        window = wait_for_file(marker, proc)
        lock = sqlite3.connect(event_log_index(home), timeout=30, isolation_level=None)
        try:
            lock.execute("BEGIN EXCLUSIVE")  # taken while the writer sleeps in the window
            deadline = time.monotonic() + 60
            while not step_failed(home, window["run_id"]):
                assert proc.poll() is None, "the run ended without a step failure"
                assert time.monotonic() < deadline, "the step did not fail while the event log was locked"
                time.sleep(0.05)
        finally:
            lock.rollback()
            lock.close()
        summary = json.loads(read_line(proc))
        assert proc.wait(timeout=60) == 0
    finally:
        stop(proc)
    assert not summary["success"]
    assert any("database is locked" in e for e in summary["errors"]), summary["errors"]
    assert_latest_readable(instance, sites, {before: "before"}, expected_run=before)


# -- (c) two concurrent runs of one asset, repeated ---------------------------------------------


def test_concurrent_runs_of_one_asset_leave_both_recorded_versions_readable(env):
    instance, _home, sites, tmp = env
    proc = start_writer(
        tmp, "race", "--sites", str(sites), "--rounds", str(RACE_ROUNDS), "--barrier-dir", str(tmp / "barriers"),
        stdin=subprocess.PIPE,
    )
    lost_latest: list[str] = []  # rounds whose latest record could not be read
    lost_other: list[str] = []  # rounds where the other run's recorded version was gone
    try:
        for number in range(RACE_ROUNDS):
            runs = json.loads(read_line(proc))
            assert all(r.get("success") for r in runs.values()), f"round {number}: a run failed: {runs}"
            tags_by_run = {r["run_id"]: tag for tag, r in runs.items()}
            records = recorded(instance, limit=2)
            assert {r.run_id for r in records} == set(tags_by_run), f"round {number}: not both runs recorded"
            latest, other = records
            problem = recorded_bytes_problem(latest) or load_problem(instance, sites, tags_by_run[latest.run_id])
            if problem:
                lost_latest.append(f"round {number}: {problem}")
            problem = recorded_bytes_problem(other)
            if problem:
                lost_other.append(f"round {number}: {problem}")
            proc.stdin.write("\n")
            proc.stdin.flush()
        assert proc.wait(timeout=60) == 0
    finally:
        stop(proc)
    assert not lost_latest and not lost_other, (
        f"the latest recorded version was lost in {len(lost_latest)} of {RACE_ROUNDS} rounds, the other run's "
        f"recorded version in {len(lost_other)} of {RACE_ROUNDS}; first: {(lost_latest + lost_other)[:2]}"
    )
