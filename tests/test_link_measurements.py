"""Links priced by what gravity's own copies delivered, remembered by the instance."""

from __future__ import annotations

import numpy as np
import pytest
from dagster import AssetKey, AssetRecordsFilter, DagsterInstance, asset, materialize

from dagster_gravity import GravityIOManager, GravityTopology
from dagster_gravity.cli import main as gravity
from dagster_gravity.job_plan import load_job, plan_job
from dagster_gravity.link_measurements import MIN_BYTES, measured_links, record_transfer, with_measured_links
from dagster_gravity.topology import Topology
from tests.support import jobs
from tests.support.s3 import write_sites_yaml

MB = 1_000_000


def test_a_link_is_priced_by_measurement_only_after_enough_copies(tmp_path, instance):
    topology = Topology.from_yaml(write_sites_yaml(tmp_path))
    configured = topology.link("us-local", "eu-local").bandwidth_bytes_per_s
    for _ in range(2):
        record_transfer(instance, topology, "us-local", "eu-local", 50 * MB, 5.0)
    [only] = measured_links(instance, topology.sites).values()
    assert only.samples == 2 and not only.trusted
    assert with_measured_links(topology, measured_links(instance, topology.sites)) is topology

    record_transfer(instance, topology, "us-local", "eu-local", 50 * MB, 5.0)
    priced = with_measured_links(topology, measured_links(instance, topology.sites))
    assert priced.link("us-local", "eu-local").bandwidth_bytes_per_s == pytest.approx(10 * MB, rel=0.01)
    assert priced.link("eu-local", "us-local").bandwidth_bytes_per_s == configured  # the other direction: unmeasured
    assert priced.link("us-local", "eu-local").latency_s == topology.link("us-local", "eu-local").latency_s


def test_the_estimate_follows_a_link_that_slows_down(tmp_path, instance):
    topology = Topology.from_yaml(write_sites_yaml(tmp_path))
    for _ in range(3):
        record_transfer(instance, topology, "us-local", "eu-local", 100 * MB, 1.0)
    fast = measured_links(instance, topology.sites)[("us-local", "eu-local")].bandwidth_bytes_per_s
    for _ in range(5):
        record_transfer(instance, topology, "us-local", "eu-local", 100 * MB, 10.0)
    slow = measured_links(instance, topology.sites)[("us-local", "eu-local")].bandwidth_bytes_per_s
    assert fast > 90 * MB and slow < fast / 3


def test_small_or_local_copies_teach_nothing(tmp_path, instance):
    topology = Topology.from_yaml(write_sites_yaml(tmp_path))
    assert record_transfer(instance, topology, "us-local", "eu-local", MIN_BYTES - 1, 1.0) is None
    assert record_transfer(instance, topology, "us-local", "us-local", 100 * MB, 1.0) is None
    assert record_transfer(instance, topology, "us-local", "eu-local", 100 * MB, 0.0) is None
    assert measured_links(instance, topology.sites) == {}


def test_what_one_run_learned_the_next_knows(tmp_path, dagster_home):
    topology = Topology.from_yaml(write_sites_yaml(tmp_path))
    with DagsterInstance.get() as first:
        for _ in range(3):
            record_transfer(first, topology, "eu-local", "us-local", 20 * MB, 2.0)
    with DagsterInstance.get() as later:  # another process, another day: the same instance
        assert measured_links(later, topology.sites)[("eu-local", "us-local")].trusted


def test_gravity_plan_prices_moves_by_the_measured_link(tmp_path, instance):
    topology = Topology.from_yaml(jobs.write_test_sites(tmp_path))
    job = load_job("tests.support.jobs", "delay_job")

    def planned():
        [step] = [s for s in plan_job(job, instance, topology, disabled_pools=["alpha"]) if s.step_key == "slow_left"]
        assert step.bytes_moved == 100 * jobs.GB
        return step

    configured = planned()
    assert configured.site == "beta"  # by configuration alpha -> beta is the fastest way out of alpha
    link = topology.link("alpha", "beta")
    for _ in range(3):  # ... but it delivered 10 MB/s
        record_transfer(instance, topology, "alpha", "beta", 100 * MB, 10.0 + link.latency_s)
    measured = planned()
    gamma = topology.link("alpha", "gamma")
    assert measured.site == "gamma"  # now the configured alpha -> gamma link is the faster
    assert measured.transfer_seconds == pytest.approx(gamma.seconds(100 * jobs.GB), rel=0.01)
    assert "next best beta/cpu" in measured.reason and "1e+04" in measured.reason  # 100 GB at 10 MB/s


def test_gravity_sites_shows_configured_and_measured(tmp_path, dagster_home, capsys):
    sites = write_sites_yaml(tmp_path)
    topology = Topology.from_yaml(sites)
    assert gravity(["sites", "--sites", str(sites)]) == 0
    assert "none yet" in capsys.readouterr().out
    with DagsterInstance.get() as instance:
        for _ in range(3):
            record_transfer(instance, topology, "us-local", "eu-local", 50 * MB, 5.0)
    assert gravity(["sites", "--sites", str(sites)]) == 0
    out = capsys.readouterr().out
    [row] = [line for line in out.splitlines() if line.startswith("us-local") and "eu-local" in line and "copies" not in line and "measured" in line]
    assert "0.0805G" in row and " 3 " in row  # 50 MB in 5 s less the link's latency


@asset
def weights() -> np.ndarray:
    return np.zeros(500_000)  # 4 MB


@asset
def reads_weights(weights: np.ndarray) -> int:
    return int(weights.size)


@pytest.mark.slow
def test_a_replication_is_recorded_as_a_link_measurement(tmp_path, instance):
    sites = write_sites_yaml(tmp_path)
    topology = GravityTopology(sites_file=str(sites))
    materialize([weights], resources={"io_manager": GravityIOManager(topology=topology, default_site="us-local")}, instance=instance)
    at_eu = GravityIOManager(topology=topology, default_site="eu-local")
    materialize([weights, reads_weights], resources={"io_manager": at_eu}, instance=instance, selection=[reads_weights])

    [obs] = instance.fetch_observations(AssetRecordsFilter(asset_key=AssetKey("weights")), limit=5).records
    seconds = obs.asset_observation.metadata["gravity/replication_seconds"].value
    measurement = measured_links(instance, ["us-local", "eu-local"])[("us-local", "eu-local")]
    assert measurement.samples == 1 and measurement.last_bytes == 4_000_128 and measurement.last_seconds == pytest.approx(seconds, abs=1e-5)


def test_gravity_sites_without_a_usable_instance_still_prints_the_topology(tmp_path, monkeypatch, capsys):
    sites = write_sites_yaml(tmp_path)
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "no-such-home"))
    assert gravity(["sites", "--sites", str(sites)]) == 0
    captured = capsys.readouterr()
    assert "us-local" in captured.out and "cannot open the Dagster instance" in captured.err
