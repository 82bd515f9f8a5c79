"""Jobs over the reference assets (the schedule, which checks the landing areas first, is in
pipelines/definitions.py: sensors/daily_schedule.py)."""

from __future__ import annotations

from dagster import AssetSelection, define_asset_job

from pipelines.common import GROUPS, TRAINING_GROUP

SITE_GROUPS = AssetSelection.groups(*GROUPS.values())

# Everything for one day: raw -> features -> stats -> train -> quality gate check -> promote.
everything_job = define_asset_job("everything_job", selection=AssetSelection.all())

# The day's features at every site (what the schedule runs).
daily_features_job = define_asset_job("daily_features_job", selection=SITE_GROUPS)

# One per site: that site's raw data, features and stats (what its landing sensor requests).
ingest_jobs = {
    site: define_asset_job(f"ingest_{group}_job", selection=AssetSelection.groups(group))
    for site, group in GROUPS.items()
}

# Train, gate (the blocking check on the candidate), promote (what the drift sensor requests).
retrain_job = define_asset_job("retrain_job", selection=AssetSelection.groups(TRAINING_GROUP))

ASSET_JOBS = [everything_job, daily_features_job, retrain_job, *ingest_jobs.values()]
