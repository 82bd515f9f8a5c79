"""Landing sensors (filesystem and S3), the drift sensor and the daily schedule, evaluated
against a real on-disk Dagster instance."""

from __future__ import annotations

import os
import time
from datetime import datetime, timezone

from dagster import AssetMaterialization, build_schedule_context, build_sensor_context

from dagster_gravity.topology import Topology
from pipelines.definitions import build_defs
from tests.support.pipeline import SITES_YAML, generate_days, write_sites


def sensor(defs, name):
    return next(s for s in defs.sensors if s.name == name)


def tick(defs, name, instance, cursor=None):
    # As Dagster's code server evaluates a sensor: with the top-level resources it requires
    # (the landing sensors take the `gravity_topology` resource).
    sensor_def = sensor(defs, name)
    resources = {k: v for k, v in defs.resources.items() if k in sensor_def.required_resource_keys}
    with build_sensor_context(instance=instance, cursor=cursor, definitions=defs, resources=resources) as ctx:
        result = sensor_def.evaluate_tick(ctx)
    return result


def materialize_marker(instance, asset: str, partition: str, **metadata):
    instance.report_runless_asset_event(AssetMaterialization(asset_key=asset, partition=partition, metadata=metadata))


def test_landing_sensor_requests_each_new_file_once_with_a_unique_run_key(pipeline_sites, instance):
    defs = build_defs()
    generate_days(pipeline_sites, ["2026-01-01", "2026-01-02"], datasets=["items"])
    first = tick(defs, "landing_aws_us_east_1_sensor", instance)
    keys = sorted(r.run_key for r in first.run_requests)
    assert [k.rsplit(":", 1)[0] for k in keys] == ["aws-us-east-1:items:2026-01-01", "aws-us-east-1:items:2026-01-02"]
    assert all(k.rsplit(":", 1)[1].startswith("mtime") for k in keys)
    assert sorted(r.partition_key for r in first.run_requests) == ["2026-01-01", "2026-01-02"]
    assert sensor(defs, "landing_aws_us_east_1_sensor").job_name == "ingest_aws_us_east_1_job"

    again = tick(defs, "landing_aws_us_east_1_sensor", instance, cursor=first.cursor)
    assert again.run_requests == [] and "no new files" in again.skip_message
    # Without its cursor the sensor proposes the same run keys, which Dagster never launches twice.
    assert sorted(r.run_key for r in tick(defs, "landing_aws_us_east_1_sensor", instance).run_requests) == keys

    time.sleep(0.01)
    generate_days(pipeline_sites, ["2026-01-02"], datasets=["items"], size="61KB")  # rewritten file
    path = Topology.from_yaml(pipeline_sites).site("aws-us-east-1").storage.path
    os.utime(os.path.join(path, "landing/items/2026-01-02.parquet"))
    rewritten = tick(defs, "landing_aws_us_east_1_sensor", instance, cursor=first.cursor)
    assert [r.partition_key for r in rewritten.run_requests] == ["2026-01-02"]
    assert rewritten.run_requests[0].run_key not in keys


def test_landing_sensor_waits_for_cross_site_inputs_and_skips_ingested_files(pipeline_sites, instance):
    defs = build_defs()
    generate_days(pipeline_sites, ["2026-01-01"], datasets=["events"])
    waiting = tick(defs, "landing_onprem_dc_sensor", instance)
    assert waiting.run_requests == []
    assert "2026-01-01 waits for raw_items" in waiting.skip_message

    materialize_marker(instance, "raw_items", "2026-01-01")
    ready = tick(defs, "landing_onprem_dc_sensor", instance, cursor=waiting.cursor)
    assert [r.partition_key for r in ready.run_requests] == ["2026-01-01"]
    assert ready.run_requests[0].run_key.startswith("onprem-dc:events:2026-01-01:")

    # A file whose raw partition was materialized after it landed is not requested again.
    generate_days(pipeline_sites, ["2026-01-02"], datasets=["events", "items"])
    materialize_marker(instance, "raw_items", "2026-01-02")
    materialize_marker(instance, "raw_events", "2026-01-02")
    later = tick(defs, "landing_onprem_dc_sensor", instance, cursor=ready.cursor)
    assert later.run_requests == []


def test_s3_landing_sensor_lists_with_get_objects(tmp_path, monkeypatch, instance, seaweedfs, s3_buckets):
    bucket = s3_buckets[0]
    text = SITES_YAML.replace(
        "    region: us-east-1\n    kind: cloud\n",
        f"    region: us-east-1\n    kind: cloud\n    storage: {{kind: s3, bucket: {bucket}, prefix: ref, "
        f"endpoint_url: '{seaweedfs.endpoint_url}'}}\n",
    )
    sites = write_sites(tmp_path / "s3topo", text)
    monkeypatch.setenv("GRAVITY_SITES", str(sites))
    assert Topology.from_yaml(sites).site("aws-us-east-1").storage.kind == "s3"
    defs = build_defs()
    generate_days(sites, ["2026-01-05"], datasets=["items"])
    result = tick(defs, "landing_aws_us_east_1_sensor", instance)
    [request] = result.run_requests
    assert request.partition_key == "2026-01-05"
    site, dataset, partition, version = request.run_key.split(":")
    assert (site, dataset, partition) == ("aws-us-east-1", "items", "2026-01-05") and version.startswith("etag")
    keys = [o["Key"] for o in seaweedfs.client().list_objects_v2(Bucket=bucket)["Contents"]]
    assert keys == ["ref/landing/items/2026-01-05.parquet"]
    assert tick(defs, "landing_aws_us_east_1_sensor", instance, cursor=result.cursor).run_requests == []


def stats(instance, asset, partition, **means):
    meta = {}
    for feature, mean in means.items():
        meta[f"stats/{feature}/mean"] = float(mean)
        meta[f"stats/{feature}/std"] = 1.0
    materialize_marker(instance, asset, partition, **meta)


def test_drift_sensor_requests_retraining_only_past_the_threshold(pipeline_sites, instance):
    defs = build_defs()
    for day in ("2026-01-01", "2026-01-02"):
        stats(instance, "event_feature_stats", day, log_dwell=2.0, clicks=1.5)
        stats(instance, "eu_feature_stats", day, spend=40.0)
    stats(instance, "event_feature_stats", "2026-01-03", log_dwell=2.2, clicks=1.6)  # 0.2 std: no drift
    calm = tick(defs, "feature_drift_sensor", instance)
    assert calm.run_requests == [] and "no feature moved more than 0.5 std" in calm.skip_message

    stats(instance, "event_feature_stats", "2026-01-04", log_dwell=2.0, clicks=2.5)  # clicks: 1 std
    waiting = tick(defs, "feature_drift_sensor", instance, cursor=calm.cursor)
    assert waiting.run_requests == [] and "2026-01-04 drifted but waits for event_features" in waiting.skip_message

    materialize_marker(instance, "event_features", "2026-01-04")
    materialize_marker(instance, "eu_segment_features", "2026-01-04")
    drifted = tick(defs, "feature_drift_sensor", instance, cursor=waiting.cursor)
    [request] = drifted.run_requests
    assert request.partition_key == "2026-01-04" and request.run_key == "drift:2026-01-04"
    assert '"event_feature_stats.clicks": 0.967' in request.tags["gravity/drift"]
    assert sensor(defs, "feature_drift_sensor").job_name == "retrain_job"
    assert tick(defs, "feature_drift_sensor", instance, cursor=drifted.cursor).run_requests == []


def schedule_tick(defs, instance, when: datetime):
    schedule = defs.resolve_schedule_def("daily_features_job_schedule")
    # as Dagster's code server evaluates it: with its repository and the resource it takes
    with build_schedule_context(instance=instance, scheduled_execution_time=when,
                                repository_def=defs.get_repository_def(),
                                resources={"gravity_topology": defs.resources["gravity_topology"]}) as ctx:
        return schedule.evaluate_tick(ctx)


def test_daily_schedule_runs_a_day_only_once_it_has_landed_everywhere(pipeline_sites, instance):
    defs = build_defs()
    when = datetime(2026, 1, 3, 0, 30, tzinfo=timezone.utc)  # the tick for 2026-01-02
    nothing = schedule_tick(defs, instance, when)
    assert nothing.run_requests == []
    assert nothing.skip_message.startswith("2026-01-02 has not landed everywhere: no landing file for ")
    assert "events at onprem-dc (" in nothing.skip_message and "landing/events/2026-01-02.parquet" in nothing.skip_message

    generate_days(pipeline_sites, ["2026-01-02"], datasets=["items", "eu_customers"])
    partly = schedule_tick(defs, instance, when)
    assert partly.run_requests == []
    assert "no landing file for events at onprem-dc" in partly.skip_message
    assert "items at" not in partly.skip_message and "eu_customers at" not in partly.skip_message

    generate_days(pipeline_sites, ["2026-01-02"], datasets=["events"])
    [request] = schedule_tick(defs, instance, when).run_requests
    assert request.partition_key == "2026-01-02" and request.run_key == "daily_features_job:2026-01-02"
    schedule = defs.resolve_schedule_def("daily_features_job_schedule")
    assert schedule.job_name == "daily_features_job" and schedule.cron_schedule == "30 0 * * *"

    # once the landing sensors' runs ingested every file, the schedule has nothing to do
    time.sleep(0.01)
    for dataset in ("items", "eu_customers", "events"):
        materialize_marker(instance, f"raw_{dataset}", "2026-01-02")
    done = schedule_tick(defs, instance, when)
    assert done.run_requests == [] and "every landing file was already ingested" in done.skip_message
    before_start = schedule_tick(defs, instance, datetime(2026, 1, 1, 0, 30, tzinfo=timezone.utc))
    assert "2025-12-31 is before the first partition 2026-01-01" in before_start.skip_message

    job = defs.resolve_job_def("daily_features_job")
    selected = {k.to_user_string() for k in job.asset_layer.selected_asset_keys}
    assert selected == {
        "raw_events", "raw_items", "raw_eu_customers", "event_features", "event_feature_stats",
        "eu_customer_features", "eu_segment_features", "eu_feature_stats",
    }


def test_drift_sensor_evaluates_every_partition_materialized_since_its_cursor(pipeline_sites, instance):
    """A backfilled earlier day, or two days landed between ticks: each new partition is
    compared with the partitions before it, not only the newest one."""
    defs = build_defs()
    for day in ("2026-01-01", "2026-01-02", "2026-01-03"):
        stats(instance, "event_feature_stats", day, log_dwell=2.0, clicks=1.5)
        materialize_marker(instance, "event_features", day)
        materialize_marker(instance, "eu_segment_features", day)
    calm = tick(defs, "feature_drift_sensor", instance)
    assert calm.run_requests == []

    # between two ticks: a backfill rewrites 2026-01-02 (drifted), then 2026-01-05 lands
    # (calm) together with 2026-01-04 (drifted); the newest partition alone shows nothing
    stats(instance, "event_feature_stats", "2026-01-02", log_dwell=2.0, clicks=3.0)
    stats(instance, "event_feature_stats", "2026-01-04", log_dwell=3.5, clicks=1.5)
    stats(instance, "event_feature_stats", "2026-01-05", log_dwell=2.0, clicks=1.5)
    for day in ("2026-01-04", "2026-01-05"):
        materialize_marker(instance, "event_features", day)
        materialize_marker(instance, "eu_segment_features", day)
    result = tick(defs, "feature_drift_sensor", instance, cursor=calm.cursor)
    by_partition = {r.partition_key: r for r in result.run_requests}
    assert sorted(by_partition) == ["2026-01-02", "2026-01-04"]
    assert "event_feature_stats.clicks" in by_partition["2026-01-02"].tags["gravity/drift"]
    assert "event_feature_stats.log_dwell" in by_partition["2026-01-04"].tags["gravity/drift"]
    # nothing new: nothing requested again
    again = tick(defs, "feature_drift_sensor", instance, cursor=result.cursor)
    assert again.run_requests == [] and "no feature moved" in again.skip_message
    # a cursor of the earlier format (the partitions requested) still counts them as done
    old = tick(defs, "feature_drift_sensor", instance, cursor='["2026-01-02", "2026-01-04"]')
    assert {"2026-01-02", "2026-01-04"}.isdisjoint(r.partition_key for r in old.run_requests)
