"""Fixtures for the reference pipeline: a private topology under tmp_path, generated data."""

from __future__ import annotations

from pathlib import Path

import pytest

SITES_YAML = """\
storage_root: sites
sites:
  - name: onprem-dc
    region: us-east
    kind: onprem
    pools:
      - {name: gpu, kind: gpu, slots: 1, gpus: 2}
      - {name: cpu, kind: cpu, slots: 2}
  - name: aws-us-east-1
    region: us-east-1
    kind: cloud
    pools:
      - {name: cpu, kind: cpu, slots: 2}
  - name: eu-colo
    region: eu-central
    kind: colo
    pools:
      - {name: cpu, kind: cpu, slots: 2}
links:
  - {from: onprem-dc, to: aws-us-east-1, bandwidth_gbps: 10, latency_ms: 2, usd_per_gb: 0.0, reverse_usd_per_gb: 0.02}
residency:
  eu: [eu-colo]
  us: [onprem-dc, aws-us-east-1]
"""

SMALL = "60KB"  # raw events per day in tests: a few thousand rows


def write_sites(folder: Path, text: str = SITES_YAML) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "sites.yaml"
    path.write_text(text)
    return path


@pytest.fixture
def pipeline_sites(tmp_path, monkeypatch) -> Path:
    """A sites file whose storage lives under tmp_path; exported as $GRAVITY_SITES so
    worker processes that re-import the code location see it too."""
    path = write_sites(tmp_path / "topology")
    monkeypatch.setenv("GRAVITY_SITES", str(path))
    return path


def generate_days(sites: Path, dates, size: str = SMALL, drift: float = 0.0, datasets=None):
    from dagster_gravity.topology import Topology
    from pipelines.datagen import DATASETS, generate

    topology = Topology.from_yaml(sites)
    out = []
    for date in dates:
        out += generate(topology, date, size, drift, tuple(datasets or DATASETS))
    return out
