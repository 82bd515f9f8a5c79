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


def test_placement_benchmark_quick():
    out = subprocess.run(
        [sys.executable, "benchmarks/placement.py", "--quick"], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert out.returncode in (0, 1), out.stderr
    assert "Exactness: gravity == brute-force optimum on 20/20" in out.stdout
    assert "RESULT:" in out.stdout


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
