"""The benchmarks in benchmarks/ still run end to end in their quick modes and print their tables."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.executor
@pytest.mark.timeout(180)
def test_executor_overhead_benchmark_quick(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("DAGSTER_HOME", "GRAVITY_SITES")}
    out = subprocess.run(
        [sys.executable, "benchmarks/executor_overhead.py", "--quick", "--executors", "in_process,gravity"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=170,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    table = out.stdout
    for label in ("chain3", "chain6"):
        assert label in table
    assert "gravity/in_process =" in table
    assert "gravity per-step cost" in table


# Targets of benchmarks/placement.py that depend on how loaded the machine is: its speed
# targets, and the gap to a MILP bound that was cut short by the MILP's time limit.
# Every other target is computed on seeded workloads and must be met.
SPEED_TARGETS = re.compile(r"place_step median >= 1 ms|place_plan \d+ steps took [\d.]+ s")
TIME_LIMITED_GAP = re.compile(r"auto gap [\d.]+% on random-dag \d+x\d+")


def test_placement_benchmark_quick():
    out = subprocess.run(
        [sys.executable, "benchmarks/placement.py", "--quick"], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    text = out.stdout
    assert "Exactness: gravity == brute-force optimum on 20/20" in text, (text, out.stderr[-3000:])
    # The side-by-side table: a row per workload size, then each baseline against gravity.
    for workload, steps, sites in [("ml", 10, 4), ("ml", 50, 10), ("ml", 200, 20), ("random-dag", 10, 4), ("random-dag", 100, 8)]:
        assert re.search(rf"^{workload}\s+{steps}\s+{sites}\s", text, re.M), (workload, steps, sites, text)
    for baseline in ("blind", "round-robin", "dask"):
        assert re.search(rf"^  {baseline}\s+moves\s+[\d.]+x the bytes of gravity/time \(median\)$", text, re.M), text
    [result] = re.findall(r"^RESULT: (.*)$", text, re.M)
    if out.returncode == 0:
        assert result == "all targets met"
    else:
        # Exit 1 is the benchmark saying a target was missed; only load-dependent ones may be.
        assert out.returncode == 1 and result.startswith("MISSED: "), (out.returncode, out.stderr[-3000:])
        for missed in result.removeprefix("MISSED: ").split("; "):
            load_dependent = SPEED_TARGETS.fullmatch(missed) or (
                TIME_LIMITED_GAP.fullmatch(missed) and "milp (time limit)" in text
            )
            assert load_dependent, f"missed a target that does not depend on machine load: {missed}\n{text}"


def test_replication_benchmark_quick(seaweedfs, tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "replication.py"),
            "--quick",
            "--endpoint-url",
            seaweedfs.endpoint_url,
            "--workdir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr
    rows = {m.group(1): m.groups()[1:] for m in re.finditer(r"^(\S+->\S+)\s+([\d.]+)\s+([\d.]+)\s+(\d+)%$", proc.stdout, re.M)}
    assert set(rows) == {"local->local", "S3->S3", "S3->local"}, proc.stdout
    assert all(float(raw) > 0 and float(grav) > 0 for raw, grav, _ in rows.values())
    assert list(tmp_path.iterdir()) == []  # the benchmark cleans up its files


def test_runtime_rule_replay_stays_within_5_percent_of_the_plan():
    out = subprocess.run(
        [sys.executable, "benchmarks/runtime_rule.py", "--quick"], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stdout + out.stderr[-3000:]
    assert "target (gravity within 5% of the plan on every seed): met" in out.stdout
