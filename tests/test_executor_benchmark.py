"""The overhead benchmark runs end to end (tiny jobs) and prints its side-by-side table."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


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
