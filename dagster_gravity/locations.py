"""Where an asset's data is now: the latest materialization plus current replicas.

`latest_location(instance, "a/b", partition)` is what the executor and the CLI place by.
The truth is the asset's latest materialization (site, sha256, size); replicas are the
materialization's `gravity/replicas` plus the sites named by AssetObservations recorded
after it whose `gravity/sha256` equals its sha256, so a copy of an older version never
counts. Two instance queries; falls back to the definition metadata when nothing is
materialized.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from dagster import AssetKey, AssetRecordsFilter

from dagster_gravity import metadata as md

MAX_OBSERVATIONS = 200  # observations after one materialization worth scanning


@dataclass(frozen=True)
class DataLocation:
    asset_key: str  # "a/b" user string
    partition: str | None
    site: str | None  # primary: where the latest materialization was written
    replicas: tuple[str, ...]  # other sites with a verified, current copy
    size_bytes: int  # 0 if unknown
    residency: str | None
    sha256: str | None
    source: str  # "materialization" | "definition" | "unknown"

    @property
    def sites(self) -> tuple[str, ...]:
        """Every site holding a current copy, primary first."""
        return ((self.site,) if self.site else ()) + self.replicas


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
    meta = record.asset_materialization.metadata
    loc = md.read_location(meta)
    replicas = set(loc["replicas"])
    sha = loc["sha256"]
    if sha:
        observations = instance.fetch_observations(
            _filter(key, partition, after_storage_id=record.storage_id), limit=MAX_OBSERVATIONS
        ).records
        for obs in observations:
            obs_meta = obs.asset_observation.metadata if obs.asset_observation else {}
            if md.plain_value(obs_meta.get(md.SHA256)) == sha:
                replicas.update(str(r) for r in (md.plain_value(obs_meta.get(md.REPLICAS)) or []))
    replicas.discard(loc["site"])
    return sorted(replicas)


def latest_location(
    instance,
    asset_key: str | AssetKey,
    partition: str | None = None,
    definition_metadata: Mapping[str, Any] | None = None,
) -> DataLocation:
    """Where the latest version of `asset_key` (one partition, or any when None) lives."""
    key = _asset_key(asset_key)
    label = key.to_user_string()
    definition = md.read_location(definition_metadata or {})
    records = instance.fetch_materializations(_filter(key, partition), limit=1).records
    if records:
        record = records[0]
        loc = md.read_location(record.asset_materialization.metadata)
        if loc["site"]:
            return DataLocation(
                asset_key=label,
                partition=partition if partition is not None else record.partition_key,
                site=loc["site"],
                replicas=tuple(replicas_since(instance, key, partition, record)),
                size_bytes=loc["size_bytes"] or 0,
                residency=loc["residency"] or definition["residency"],
                sha256=loc["sha256"],
                source="materialization",
            )
    if definition["site"] or definition["size_bytes"] or definition["residency"]:
        return DataLocation(
            asset_key=label,
            partition=partition,
            site=definition["site"],
            replicas=tuple(r for r in definition["replicas"] if r != definition["site"]),
            size_bytes=definition["size_bytes"] or 0,
            residency=definition["residency"],
            sha256=definition["sha256"],
            source="definition",
        )
    return DataLocation(label, partition, None, (), 0, None, None, "unknown")
