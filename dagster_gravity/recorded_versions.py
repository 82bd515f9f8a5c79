"""Which stored version each asset partition's latest materialization names, read from the
Dagster instance; and `collect`, the garbage collection of every site (`gravity gc`).

The IO manager records every version's URI and sha256 on its materialization, so the key of
the version a record names follows from the asset key, partition and those two
(`storage.keys.recorded_key`). Only records with gravity's metadata count: a base whose
latest record came from another IO manager has no recorded gravity version, and garbage
collection leaves its objects alone.
"""

from __future__ import annotations

from dagster import AssetKey, AssetRecordsFilter, DagsterEventType

from dagster_gravity import metadata as md
from dagster_gravity.storage import gc, storage_for_site
from dagster_gravity.storage.base import StorageError, parse_version_key
from dagster_gravity.storage.keys import asset_base, recorded_key

_BATCH = 100  # storage ids per instance query


def recorded_version(record, base: str) -> gc.RecordedVersion | None:
    """The version of `base` the materialization `record` names, or None when the record
    lacks gravity's metadata or names an object of before versions were immutable."""
    meta = record.asset_materialization.metadata if record.asset_materialization else {}
    sha, uri = md.plain_value(meta.get(md.SHA256)), md.plain_value(meta.get(md.URI))
    if not sha or not uri:
        return None
    key = recorded_key(base, str(sha), str(uri))
    return gc.RecordedVersion(key, record.timestamp) if parse_version_key(key) else None


def latest_records(instance, asset_key: AssetKey) -> list:
    """The latest materialization record of each partition of `asset_key` (or the one, when
    it is not partitioned)."""
    by_partition = instance.get_latest_storage_id_by_partition(asset_key, DagsterEventType.ASSET_MATERIALIZATION)
    if not by_partition:
        return list(instance.fetch_materializations(AssetRecordsFilter(asset_key=asset_key), limit=1).records)
    ids = sorted(by_partition.values())
    records = []
    for start in range(0, len(ids), _BATCH):
        chunk = ids[start : start + _BATCH]
        result = instance.fetch_materializations(AssetRecordsFilter(asset_key=asset_key, storage_ids=chunk), limit=len(chunk))
        records.extend(result.records)
    return records


def recorded_bases(instance) -> dict[str, gc.RecordedVersion]:
    """Every base with a gravity record, and the version its latest materialization names."""
    recorded: dict[str, gc.RecordedVersion] = {}
    for asset_key in instance.get_asset_keys():
        for record in latest_records(instance, asset_key):
            base = asset_base(asset_key.path, record.partition_key)
            version = recorded_version(record, base)
            if version is not None:
                recorded[base] = version
    return recorded


def collect(instance, topology, *, grace_s: float = gc.DEFAULT_GRACE_S, dry_run: bool = False,
            now: float | None = None) -> dict[str, gc.Report]:
    """Collect garbage at every site of `topology`: superseded versions of the recorded bases,
    and debris. Returns each site's report; an unreachable site's report holds the error."""
    recorded = recorded_bases(instance)
    reports = {}
    for site in topology.sites:
        report = gc.Report(dry_run=dry_run)
        try:
            storage = storage_for_site(topology, site)
            report.merge(gc.collect_versions(storage, recorded, grace_s=grace_s, dry_run=dry_run, now=now))
            report.merge(gc.collect_debris(storage, grace_s=grace_s, dry_run=dry_run, now=now))
        except StorageError as exc:
            report.errors.append(str(exc))
        reports[site] = report
    return reports
