"""latest_location against a real on-disk Dagster instance with recorded events."""

from __future__ import annotations

from dagster import AssetKey, AssetMaterialization, AssetObservation

from dagster_gravity import metadata as md
from dagster_gravity.locations import DataLocation, latest_location, latest_sizes


def materialize_at(instance, key, site, sha, size=100, partition=None, replicas=(), residency=None):
    instance.report_runless_asset_event(
        AssetMaterialization(
            asset_key=key,
            partition=partition,
            metadata=md.location_metadata(
                site, replicas=replicas, residency=residency, uri=f"file:///{site}/{key}", size_bytes=size, sha256=sha
            ),
        )
    )


def observe_replica(instance, key, sites, sha, partition=None):
    instance.report_runless_asset_event(
        AssetObservation(asset_key=key, partition=partition, metadata={md.REPLICAS: list(sites), md.SHA256: sha})
    )


def test_definition_metadata_is_the_fallback_then_unknown(instance):
    assert latest_location(instance, "nothing/here") == DataLocation(
        "nothing/here", None, None, (), 0, None, None, "unknown"
    )
    loc = latest_location(
        instance,
        "raw/events",
        definition_metadata={
            md.SITE: "onprem-dc",
            md.REPLICAS: ["onprem-dc", "aws-us-east-1"],
            md.SIZE_BYTES: 5_000_000,
            md.RESIDENCY: "us",
        },
    )
    assert loc.source == "definition" and loc.site == "onprem-dc"
    assert loc.replicas == ("aws-us-east-1",) and loc.size_bytes == 5_000_000 and loc.residency == "us"
    assert loc.sites == ("onprem-dc", "aws-us-east-1")


def test_materialization_is_the_truth_and_only_current_replicas_count(instance):
    materialize_at(instance, "raw/events", "onprem-dc", "sha-1", size=42, residency="us")
    observe_replica(instance, "raw/events", ["aws-us-east-1"], "sha-1")
    loc = latest_location(instance, "raw/events", definition_metadata={md.SITE: "eu-colo"})
    assert loc.source == "materialization"
    assert (loc.site, loc.replicas, loc.size_bytes, loc.sha256, loc.residency) == (
        "onprem-dc",
        ("aws-us-east-1",),
        42,
        "sha-1",
        "us",
    )

    # re-materialized elsewhere: the old replica is stale, and an observation of an older
    # version recorded afterwards does not count either
    materialize_at(instance, "raw/events", "aws-us-east-1", "sha-2", size=43)
    observe_replica(instance, "raw/events", ["eu-colo"], "sha-1")
    loc = latest_location(instance, "raw/events")
    assert loc.site == "aws-us-east-1" and loc.replicas == () and loc.sha256 == "sha-2"
    assert loc.residency is None

    observe_replica(instance, "raw/events", ["onprem-dc", "aws-us-east-1"], "sha-2")
    assert latest_location(instance, "raw/events").replicas == ("onprem-dc",)


def test_partitions_are_tracked_separately(instance):
    materialize_at(instance, "events", "onprem-dc", "d1", partition="2024-01-01")
    materialize_at(instance, "events", "eu-colo", "d2", partition="2024-01-02")
    observe_replica(instance, "events", ["aws-us-east-1"], "d1", partition="2024-01-01")
    day1 = latest_location(instance, "events", "2024-01-01")
    day2 = latest_location(instance, "events", "2024-01-02")
    assert (day1.site, day1.replicas, day1.partition) == ("onprem-dc", ("aws-us-east-1",), "2024-01-01")
    assert (day2.site, day2.replicas) == ("eu-colo", ())
    any_partition = latest_location(instance, "events")  # no partition given: the latest of any
    assert (any_partition.site, any_partition.partition) == ("eu-colo", "2024-01-02")


def test_two_queries_whatever_the_history(instance):
    for i in range(10):
        materialize_at(instance, "big", "onprem-dc", f"sha-{i}")
        observe_replica(instance, "big", ["aws-us-east-1"], f"sha-{i}")
    calls = []
    for name in ("fetch_materializations", "fetch_observations"):
        original = getattr(instance, name)

        def counted(*args, _original=original, _name=name, **kwargs):
            calls.append(_name)
            return _original(*args, **kwargs)

        setattr(instance, name, counted)
    loc = latest_location(instance, "big")
    assert loc.sha256 == "sha-9" and loc.replicas == ("aws-us-east-1",)
    assert calls == ["fetch_materializations", "fetch_observations"]


def test_latest_sizes_agree_with_latest_location_in_one_query(instance):
    materialize_at(instance, "moved", "onprem-dc", "sha-1", size=10)
    materialize_at(instance, "moved", "aws-us-east-1", "sha-2", size=20)  # the latest counts
    instance.report_runless_asset_event(AssetMaterialization("no_site", metadata={md.SIZE_BYTES: 7}))
    instance.report_runless_asset_event(AssetMaterialization("bad_size", metadata={md.SITE: "eu-colo", md.SIZE_BYTES: -3}))
    definitions = {
        AssetKey("moved"): {md.SIZE_BYTES: 99},  # a materialization with a site wins
        AssetKey("no_site"): {md.SIZE_BYTES: 5},  # one naming no site does not: the definition's
        AssetKey("declared"): {md.SITE: "onprem-dc", md.SIZE_BYTES: 300},
        AssetKey("bad_size"): None,  # unreadable: unknown
        AssetKey("unknown"): None,
    }
    calls = []
    original = instance.get_latest_materialization_events
    instance.get_latest_materialization_events = lambda keys: calls.append(list(keys)) or original(keys)
    sizes = latest_sizes(instance, definitions)
    assert sizes == {AssetKey("moved"): 20, AssetKey("no_site"): 5, AssetKey("declared"): 300,
                     AssetKey("bad_size"): 0, AssetKey("unknown"): 0}
    assert len(calls) == 1 and set(calls[0]) == set(definitions)
    for key in ("moved", "no_site", "declared"):
        assert sizes[AssetKey(key)] == latest_location(instance, key, definition_metadata=definitions[AssetKey(key)]).size_bytes


def test_a_replan_sizes_only_what_it_has_not_sized_yet(instance, tmp_path):
    from dagster import Definitions, asset, define_asset_job

    from dagster_gravity.input_locations import InputLocations
    from dagster_gravity.topology import Topology
    from tests.support import jobs as test_jobs

    @asset(metadata={md.SIZE_BYTES: 5})
    def first():
        return 1

    @asset(metadata={md.SIZE_BYTES: 6})
    def second(first):
        return first

    job = Definitions(assets=[first, second], jobs=[define_asset_job("sized")]).resolve_job_def("sized")
    locations = InputLocations(instance, job, Topology.from_yaml(test_jobs.write_test_sites(tmp_path)))
    asked = []
    original = instance.get_latest_materialization_events
    instance.get_latest_materialization_events = lambda keys: asked.append(sorted(k.to_user_string() for k in keys)) or original(keys)
    assert locations.latest_sizes_of([AssetKey("first")]) == {AssetKey("first"): 5}
    assert locations.latest_sizes_of([AssetKey("first"), AssetKey("second")]) == {AssetKey("first"): 5, AssetKey("second"): 6}
    assert locations.latest_sizes_of([AssetKey("second")]) == {AssetKey("second"): 6}
    assert asked == [["first"], ["second"]]
