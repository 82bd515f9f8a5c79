"""The residency-compliance asset check: every recorded copy of a resident asset (each
materialization's site and each replica a materialization or observation names) sits in its
zone; a copy outside it fails the check, naming the site and the event."""

import pytest
from dagster import AssetKey, AssetMaterialization, AssetObservation, DagsterInstance

from dagster_gravity.residency_check import compliance_result
from dagster_gravity.topology import Topology
from pipelines.definitions import build_defs

SITES = """
sites:
  - {name: eu-a, region: eu, kind: colo, pools: [{name: cpu, slots: 1}]}
  - {name: eu-b, region: eu, kind: colo, pools: [{name: cpu, slots: 1}]}
  - {name: us, region: us, kind: cloud, pools: [{name: cpu, slots: 1}]}
residency:
  eu: [eu-a, eu-b]
"""
KEY = AssetKey("customers")
DAY = "2026-01-01"


@pytest.fixture
def run_check(tmp_path):
    sites = tmp_path / "sites.yaml"
    sites.write_text(SITES)
    instance = DagsterInstance.ephemeral()
    topology = Topology.from_yaml(sites)

    def run(*events):
        for event in events:
            instance.report_runless_asset_event(event)
        return compliance_result(instance, topology, KEY, "eu", DAY)

    return run


def test_copies_inside_the_zone_pass(run_check):
    result = run_check(
        AssetMaterialization(KEY, partition=DAY, metadata={"gravity/site": "eu-a", "gravity/replicas": []}),
        AssetObservation(KEY, partition=DAY, metadata={"gravity/site": "eu-a", "gravity/replicas": ["eu-b"]}),
    )
    assert result.passed, result.description
    assert result.metadata["gravity/recorded_sites"].value == ["eu-a", "eu-b"]


def test_a_replica_outside_the_zone_fails_naming_the_site_and_the_event(run_check):
    result = run_check(
        AssetMaterialization(KEY, partition=DAY, metadata={"gravity/site": "eu-a"}),
        AssetObservation(KEY, partition=DAY, metadata={"gravity/site": "eu-a", "gravity/replicas": ["us"]}),
    )
    assert not result.passed
    assert "outside residency zone 'eu'" in result.description and "us (observation" in result.description
    assert result.metadata["gravity/sites_outside_zone"].value == ["us"]


def test_an_older_materialization_outside_the_zone_still_fails(run_check):
    result = run_check(
        AssetMaterialization(KEY, partition=DAY, metadata={"gravity/site": "us"}),
        AssetMaterialization(KEY, partition=DAY, metadata={"gravity/site": "eu-a"}),
    )
    assert not result.passed and "us (materialization" in result.description


def test_another_partitions_copies_do_not_count(run_check):
    result = run_check(
        AssetMaterialization(KEY, partition="2026-01-02", metadata={"gravity/site": "us"}),
        AssetMaterialization(KEY, partition=DAY, metadata={"gravity/site": "eu-b"}),
    )
    assert result.passed, result.description


def test_the_reference_location_checks_each_resident_asset():
    keys = {key for check in build_defs().asset_checks for key in check.check_keys}
    residency = {k.asset_key.to_user_string() for k in keys if k.name == "residency_compliance"}
    assert residency == {"raw_eu_customers", "eu_customer_features"}


def test_an_unknown_zone_fails_the_check_naming_the_asset_and_the_zone(tmp_path):
    sites = tmp_path / "sites.yaml"
    sites.write_text(SITES)
    result = compliance_result(DagsterInstance.ephemeral(), Topology.from_yaml(sites), KEY, "mars", DAY)
    assert not result.passed
    assert "asset 'customers'" in result.description and "zone 'mars' is not defined" in result.description
    assert "known zones: eu" in result.description
