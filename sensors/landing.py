"""One sensor per site that notices new files in the site's landing area and requests the
site's ingest job (raw -> features -> stats) for that day.

The run key is ``site:dataset:partition:version`` (version: the S3 ETag, or the local
file's mtime), so the same file can never be ingested twice, while a rewritten file is.
A day whose inputs from other sites are not materialized yet is left for a later tick; a
file that was already ingested after it landed (its raw asset partition materialized later
than the file's modification time, e.g. by a backfill or the schedule) is not requested again.
"""

from __future__ import annotations

import json
from typing import Mapping, Sequence

from dagster import AssetKey, AssetRecordsFilter, DefaultSensorStatus, RunRequest, SensorEvaluationContext, SkipReason, sensor
from dagster_aws.s3.sensor import get_objects

from dagster_gravity import GravityTopology
from resources import landing_area
from resources.landing import LandingArea, LandingFile


def list_landing(area: LandingArea, dataset: str) -> list[LandingFile]:
    """The finished landing files of `dataset` at the area's site (S3 via get_objects)."""
    if area.spec.kind == "s3":
        objects = get_objects(area.spec.bucket, prefix=area.s3_prefix(dataset), client=area.client)
        return area.files_from_s3_objects(dataset, objects)
    return area.list(dataset)


def ingested_after_landing(instance, asset_key: AssetKey, f: LandingFile) -> bool:
    records = instance.fetch_materializations(
        AssetRecordsFilter(asset_key=asset_key, asset_partitions=[f.partition]), limit=1
    ).records
    return bool(records) and records[0].timestamp > f.modified


def run_key(f: LandingFile) -> str:
    return f"{f.site}:{f.dataset}:{f.partition}:{f.version}"


def make_landing_sensor(
    site: str,
    datasets: Sequence[str],
    job,
    requires: Mapping[str, Sequence[AssetKey]] | None = None,
    minimum_interval_seconds: int = 30,
):
    """The site's raw asset for a dataset is `raw_<dataset>`. The topology comes from the
    `gravity_topology` resource at each evaluation (unset: $GRAVITY_SITES, else ./sites.yaml).
    `requires`: dataset -> assets from other sites that must hold the same partition
    before the job can run (e.g. the reference table a point-in-time join needs)."""
    requires = dict(requires or {})

    @sensor(
        name=f"landing_{site.replace('-', '_')}_sensor",
        job=job,
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=DefaultSensorStatus.STOPPED,
        description=f"New files in the landing area of {site} ({', '.join(datasets)}) -> {job.name}",
    )
    def _landing(context: SensorEvaluationContext, gravity_topology: GravityTopology):
        area = landing_area(gravity_topology, site)
        seen: dict[str, str] = json.loads(context.cursor) if context.cursor else {}
        waiting = []
        requests = []
        for dataset in datasets:
            for f in list_landing(area, dataset):
                if seen.get(f.key) == f.version:
                    continue
                if ingested_after_landing(context.instance, AssetKey(f"raw_{dataset}"), f):
                    seen[f.key] = f.version
                    continue
                missing = [
                    key.to_user_string()
                    for key in requires.get(dataset, ())
                    if f.partition not in context.instance.get_materialized_partitions(key)
                ]
                if missing:
                    waiting.append(f"{f.partition} waits for {', '.join(missing)}")
                    continue
                seen[f.key] = f.version
                requests.append(RunRequest(
                    run_key=run_key(f),
                    partition_key=f.partition,
                    tags={"gravity/landing_site": site, "gravity/landing_file": f.key},
                ))
        context.update_cursor(json.dumps(seen, sort_keys=True))
        if requests:
            return requests
        return SkipReason("; ".join(waiting) if waiting else f"no new files in the landing area of {site}")

    return _landing
