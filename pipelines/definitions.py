"""The reference code location: `dagster dev -w workspace.yaml` loads `defs` from here.

One `GravityTopology` resource (`resources.project_resources`) says which sites file every
part uses: in a run, the gravity executor's; elsewhere (sensors) $GRAVITY_SITES or
./sites.yaml, resolved when it is used (not at import), so one imported code location can
serve another topology.
"""

from __future__ import annotations

from dagster import AssetKey, Definitions

from dagster_gravity import gravity_executor
from dagster_gravity import metadata as gm
from dagster_gravity.residency_check import residency_compliance_check
from pipelines.datagen import EU_SITE, EVENTS_SITE, REFERENCE_SITE
from pipelines.features import FEATURE_ASSETS, STATS_ASSETS
from pipelines.common import DAILY
from pipelines.jobs import ASSET_JOBS, daily_features_job, ingest_jobs, retrain_job
from pipelines.model import MODEL_ASSETS, MODEL_CHECKS, rollback_job
from pipelines.raw import RAW_ASSETS
from resources import project_resources
from sensors.daily_schedule import make_daily_schedule
from sensors.drift import make_drift_sensor
from sensors.landing import make_landing_sensor

DRIFT_THRESHOLD = 0.5  # standard deviations
LANDING = {REFERENCE_SITE: ["items"], EU_SITE: ["eu_customers"], EVENTS_SITE: ["events"]}  # site -> datasets

# Runs the day that ended, at 00:30 UTC, once every site's file of that day has landed.
daily_features_schedule = make_daily_schedule(
    daily_features_job, LANDING, first_day=DAILY.start.strftime("%Y-%m-%d"), minute_of_hour=30)


def build_sensors() -> list:
    """The landing sensors read the topology from the `gravity_topology` resource."""
    landing = [
        make_landing_sensor(REFERENCE_SITE, LANDING[REFERENCE_SITE], ingest_jobs[REFERENCE_SITE]),
        make_landing_sensor(EU_SITE, LANDING[EU_SITE], ingest_jobs[EU_SITE]),
        # Event features join the reference table point-in-time: wait for that day's items.
        make_landing_sensor(EVENTS_SITE, LANDING[EVENTS_SITE], ingest_jobs[EVENTS_SITE],
                            requires={"events": [AssetKey("raw_items")]}),
    ]
    drift = make_drift_sensor(
        [AssetKey(name) for name in STATS_ASSETS], retrain_job, threshold=DRIFT_THRESHOLD,
        requires=[AssetKey("event_features"), AssetKey("eu_segment_features")],
    )
    return [*landing, drift]


def residency_checks(assets) -> list:
    """A residency-compliance check on every asset that declares a residency zone."""
    checks = []
    for asset in assets:
        for key in asset.keys:
            zone = gm.residency_zone(asset.specs_by_key[key].metadata)
            if zone:
                checks.append(residency_compliance_check(key, zone, partitions_def=DAILY))
    return checks


def build_defs(sites: str | None = None, executor=None) -> Definitions:
    """`sites`: the sites file of the `gravity_topology` resource (None: see the module
    docstring); building the definitions never reads or writes the environment."""
    return Definitions(
        assets=[*RAW_ASSETS, *FEATURE_ASSETS, *MODEL_ASSETS],
        asset_checks=[*MODEL_CHECKS, *residency_checks([*RAW_ASSETS, *FEATURE_ASSETS, *MODEL_ASSETS])],
        jobs=[*ASSET_JOBS, rollback_job],
        schedules=[daily_features_schedule],
        sensors=build_sensors(),
        resources=project_resources(sites),
        executor=executor or gravity_executor,
    )


defs = build_defs()
