"""Raw datasets, one per site, read from the site's landing area (daily partitions).

Each raw asset is pinned to its site: it reads the landing file where it arrived, so
ingesting never moves raw bytes. The landing area comes from the run's topology (the
`gravity_topology` resource), the one the executor placed the step by.
"""


import pandas as pd
from dagster import AssetExecutionContext, asset

from dagster_gravity import GravityTopology
from dagster_gravity import metadata as gm
from pipelines.common import DAILY, EU_ZONE, GROUPS, at_site, site_tags
from pipelines.datagen import EU_SITE, EVENTS_SITE, REFERENCE_SITE
from resources import landing_area


def _raw_asset(dataset: str, site: str, description: str, residency: str | None = None):
    @asset(
        name=f"raw_{dataset}",
        partitions_def=DAILY,
        group_name=GROUPS[site],
        metadata=at_site(site, residency, asset=f"raw_{dataset}", **{"gravity/landing": f"landing/{dataset}/<date>.parquet"}),
        tags=site_tags(site, residency),
        op_tags={gm.TAG_PIN: site},
        code_version="1",
        kinds={"parquet"},
        description=description,
    )
    def _raw(context: AssetExecutionContext, gravity_topology: GravityTopology) -> pd.DataFrame:
        area = landing_area(gravity_topology, site)
        df = area.read(dataset, context.partition_key)
        context.add_output_metadata({"gravity/landing_uri": area.uri(dataset, context.partition_key)})
        return df

    return _raw


raw_events = _raw_asset("events", EVENTS_SITE, "Clickstream events logged at the on-prem data centre.")
raw_items = _raw_asset("items", REFERENCE_SITE, "Item reference table with timed price changes (cloud region).")
# EU customer activity holds personal data (emails): it must never leave the EU zone.
raw_eu_customers = _raw_asset(
    "eu_customers", EU_SITE, "EU customer activity with personal data (stays in the EU).", residency=EU_ZONE
)

RAW_ASSETS = [raw_events, raw_items, raw_eu_customers]
