"""An asset check that a resident asset's data has stayed in its residency zone.

`residency_compliance_check(asset, zone)` checks every site that the instance records as
holding the asset (one partition, or the whole asset when unpartitioned): the site of each
materialization and each replica that a materialization or an observation names. It passes
when all of them are sites of `zone` in the run's topology, and names the sites outside it
otherwise. It reads only the event log, never the data, so it may run anywhere.
"""


from dagster import AssetCheckExecutionContext, AssetCheckResult, AssetKey, AssetRecordsFilter, MetadataValue, asset_check

from dagster_gravity import metadata as md

# Events of each kind read per asset partition: a partition rewritten more often than this
# has its oldest events unchecked, which the result says.
MAX_EVENTS = 1_000


def recorded_sites(instance, asset_key: AssetKey, partition: "str | None") -> "tuple[dict[str, list[str]], bool]":
    """(site -> which events record a copy there, e.g. "materialization 12", "observation 15";
    whether older events than the newest `MAX_EVENTS` of a kind were left unread)."""
    where = AssetRecordsFilter(asset_key=asset_key, asset_partitions=[partition] if partition is not None else None)
    found: dict[str, list[str]] = {}
    materializations = instance.fetch_materializations(where, limit=MAX_EVENTS)
    observations = instance.fetch_observations(where, limit=MAX_EVENTS)
    records = [("materialization", r, r.asset_materialization) for r in materializations.records] + [
        ("observation", r, r.asset_observation) for r in observations.records
    ]
    for kind, record, event in records:
        meta = event.metadata if event is not None else {}
        sites = [md.plain_value(meta.get(md.SITE))] + list(md.plain_value(meta.get(md.REPLICAS)) or [])
        for site in sites:
            if site:
                found.setdefault(str(site), []).append(f"{kind} {record.storage_id}")
    return found, bool(materializations.has_more or observations.has_more)


def residency_compliance_check(asset, zone: str, *, partitions_def=None, topology_resource_key: str = "gravity_topology"):
    """A non-blocking asset check on `asset` (its definition or key): every recorded copy sits
    inside residency zone `zone`. The topology comes from the GravityTopology resource bound
    at `topology_resource_key`."""

    @asset_check(
        asset=asset, name="residency_compliance", partitions_def=partitions_def, blocking=False,
        required_resource_keys={topology_resource_key},
        description=f"Every materialization and replica of this asset sits inside residency zone {zone!r}.",
    )
    def _check(context: AssetCheckExecutionContext) -> AssetCheckResult:
        topology = getattr(context.resources, topology_resource_key).load()
        partition = context.partition_key if context.has_partition_key else None
        return compliance_result(context.instance, topology, context.check_specs[0].asset_key, zone, partition)

    return _check


def compliance_result(instance, topology, asset_key: AssetKey, zone: str, partition: "str | None") -> AssetCheckResult:
    """The check's verdict on `asset_key` (one partition, or all of it when None)."""
    scope = f"partition {partition}" if partition else "the asset"
    if zone not in topology.zones:
        return AssetCheckResult(
            passed=False,
            description=(
                f"residency_compliance_check of asset {asset_key.to_user_string()!r}: residency zone {zone!r} is not "
                f"defined in {topology.source}; known zones: {', '.join(topology.zones) or '(none)'}"
            ),
            metadata={"gravity/zone": MetadataValue.text(zone)},
        )
    allowed = topology.zone_sites(zone)
    found, truncated = recorded_sites(instance, asset_key, partition)
    outside = {site: events for site, events in sorted(found.items()) if site not in allowed}
    if outside:
        words = "; ".join(f"{site} ({', '.join(events[:3])})" for site, events in outside.items())
        description = f"{scope}: copies outside residency zone {zone!r} ({', '.join(sorted(allowed))}): {words}"
    else:
        description = f"{scope}: all {len(found)} recorded site(s) are in residency zone {zone!r}"
    if truncated:
        description += f" (only the newest {MAX_EVENTS} materializations and observations were read)"
    return AssetCheckResult(
        passed=not outside,
        description=description,
        metadata={
            "gravity/zone": MetadataValue.text(zone),
            "gravity/zone_sites": MetadataValue.json(sorted(allowed)),
            "gravity/recorded_sites": MetadataValue.json(sorted(found)),
            "gravity/sites_outside_zone": MetadataValue.json(sorted(outside)),
            "gravity/older_events_unread": MetadataValue.bool(truncated),
        },
    )
