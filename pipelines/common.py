"""Shared pieces of the reference pipeline: partitions, groups, site metadata."""

from __future__ import annotations

from dagster import DailyPartitionsDefinition

from dagster_gravity import metadata as gm
from pipelines.datagen import EU_SITE, EVENTS_SITE, REFERENCE_SITE

DAILY = DailyPartitionsDefinition(start_date="2026-01-01")
EU_ZONE = "eu"
TRAINING_SITE = EVENTS_SITE  # where the GPUs are

GROUPS = {EVENTS_SITE: "onprem_dc", REFERENCE_SITE: "aws_us_east_1", EU_SITE: "eu_colo"}
TRAINING_GROUP = "training"


def at_site(site: str, residency: str | None = None, *, asset: str | None = None, **extra) -> dict:
    """Definition metadata that shows in the UI where the asset's data is expected to live
    (with `asset`, its name, also the `dagster/uri` the UI shows as its Storage)."""
    out = {gm.SITE: site}
    if asset is not None:
        out[gm.URI] = gm.definition_uri(site, [asset])
    if residency:
        out[gm.RESIDENCY] = residency
    out.update(extra)
    return out


def site_tags(site: str, residency: str | None = None) -> dict[str, str]:
    """Asset tags that let the UI filter and select by site and residency zone."""
    return gm.location_tags(site, residency)
