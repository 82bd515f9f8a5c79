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


def run_job(instance, job_name: str, partition: str | None = None, run_config: dict | None = None):
    """Run a job of the reference code location with its own executor (the gravity executor),
    as the daemon would: reconstructable from the module, in worker processes."""
    import os

    from dagster import execute_job
    from dagster._core.definitions.reconstruct import ReconstructableRepository

    repo = ReconstructableRepository.for_module("pipelines.definitions", "defs", working_directory=os.getcwd())
    tags = {"dagster/partition": partition} if partition else {}
    with execute_job(repo.get_reconstructable_job(job_name), instance=instance, tags=tags, run_config=run_config) as result:
        failures = [e.message for e in result.all_events if e.is_failure]
        return result.run_id, result.success, failures


def training_run_config(**config) -> dict:
    return {"ops": {"model_checkpoint": {"config": config}}}


def main(argv=None) -> int:
    """`python -m tests.support.pipeline <job> <partition> [batch_rows delay_s]`: one run in
    this process, used by the kill-and-resume test (it SIGKILLs this process mid-training)."""
    import sys

    from dagster import DagsterInstance

    args = list(sys.argv[1:] if argv is None else argv)
    job, partition = args[0], args[1]
    run_config = training_run_config(batch_rows=int(args[2]), batch_delay_s=float(args[3])) if len(args) > 2 else None
    with DagsterInstance.get() as instance:
        _, success, failures = run_job(instance, job, partition, run_config)
    print("success" if success else f"failed: {failures}", flush=True)
    return 0 if success else 1


if __name__ == "__main__":
    raise SystemExit(main())
