"""Where an asset's data is now: the latest materialization plus current replicas.

`latest_location(instance, "a/b", partition)` is what the executor and the CLI place by.
The truth is the asset's latest materialization (site, sha256, size); replicas are the
materialization's `gravity/replicas` plus the sites named by AssetObservations recorded
after it whose `gravity/sha256` equals its sha256, so a copy of an older version never
counts. Two instance queries; falls back to the definition metadata when nothing is
materialized. The answer is a `metadata.DataLocation`.

`latest_sizes(instance, definitions)` gives only the sizes, of many unpartitioned assets at
once, from one query.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Mapping

from dagster import AssetKey, AssetRecordsFilter

from dagster_gravity import metadata as md
from dagster_gravity.errors import GravityConfigError
from dagster_gravity.metadata import DataLocation

MAX_OBSERVATIONS = 200  # observations after one materialization worth scanning


def _asset_key(asset_key: str | AssetKey | list) -> AssetKey:
    if isinstance(asset_key, AssetKey):
        return asset_key
    if isinstance(asset_key, str):
        return AssetKey.from_user_string(asset_key)
    return AssetKey(list(asset_key))


def _filter(key: AssetKey, partition: str | None, after_storage_id: int | None = None) -> AssetRecordsFilter:
    return AssetRecordsFilter(
        asset_key=key,
        asset_partitions=[partition] if partition is not None else None,
        after_storage_id=after_storage_id,
    )


def replicas_since(instance, asset_key: str | AssetKey, partition: str | None, record) -> list[str]:
    """Replica sites of the materialization `record` (an EventLogRecord): its own list plus
    those observed after it with the same sha256."""
    key = _asset_key(asset_key)
    what = f"the latest materialization of asset {key.to_user_string()!r}"
    loc = DataLocation.from_metadata(record.asset_materialization.metadata, what=what)
    replicas = set(loc.replicas)
    if loc.sha256:
        observations = instance.fetch_observations(
            _filter(key, partition, after_storage_id=record.storage_id), limit=MAX_OBSERVATIONS
        ).records
        for obs in observations:
            obs_meta = obs.asset_observation.metadata if obs.asset_observation else {}
            if md.plain_value(obs_meta.get(md.SHA256)) == loc.sha256:
                replicas.update(str(r) for r in (md.plain_value(obs_meta.get(md.REPLICAS)) or []))
    replicas.discard(loc.site)
    return sorted(replicas)


def latest_location(
    instance,
    asset_key: str | AssetKey,
    partition: str | None = None,
    definition_metadata: Mapping[str, Any] | None = None,
) -> DataLocation:
    """Where the latest version of `asset_key` (one partition, or any when None) lives.
    Raises GravityConfigError when its location metadata cannot be read."""
    key = _asset_key(asset_key)
    label = key.to_user_string()
    definition = _from_definition(definition_metadata, label, partition)
    records = instance.fetch_materializations(_filter(key, partition), limit=1).records
    if records:
        record = records[0]
        loc = _from_materialization(
            record.asset_materialization.metadata, label, partition if partition is not None else record.partition_key
        )
        if loc.site:
            return replace(
                loc,
                replicas=tuple(replicas_since(instance, key, partition, record)),
                residency=loc.residency or definition.residency,
            )
    if definition.site or definition.size_bytes or definition.residency:
        return definition
    return DataLocation(label, partition, source="unknown")


def latest_sizes(instance, definitions: Mapping[AssetKey, Mapping[str, Any] | None]) -> dict[AssetKey, int]:
    """The size in bytes of each unpartitioned asset's latest version, as `latest_location`
    gives it (its latest materialization's where that names a site, else its definition's),
    0 when unknown or unreadable. `definitions`: asset key -> its definition's metadata. One
    query for all (the run plan sizes every output of a run as it starts: `latest_location`
    an asset cost ~5 ms each on SQLite, half a second on a 100-step chain)."""
    latest = instance.get_latest_materialization_events(list(definitions))
    sizes = {}
    for key, definition_metadata in definitions.items():
        label = key.to_user_string()
        entry = latest.get(key)
        materialization = entry.asset_materialization if entry is not None else None
        try:
            definition = _from_definition(definition_metadata, label, None)
            loc = _from_materialization(materialization.metadata, label, None) if materialization else None
        except GravityConfigError:
            sizes[key] = 0
            continue
        sizes[key] = (loc if loc is not None and loc.site else definition).size_bytes
    return sizes


def _from_definition(metadata: Mapping[str, Any] | None, label: str, partition: str | None) -> DataLocation:
    return DataLocation.from_metadata(
        metadata, what=f"the definition of asset {label!r}", asset_key=label, partition=partition, source="definition"
    )


def _from_materialization(metadata: Mapping[str, Any], label: str, partition: str | None) -> DataLocation:
    return DataLocation.from_metadata(
        metadata, what=f"the latest materialization of asset {label!r}", asset_key=label, partition=partition,
        source="materialization",
    )
