"""The replication benchmark still runs (quick mode, against the session's SeaweedFS)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


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
