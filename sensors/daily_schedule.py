"""The daily schedule that runs a day only once its data has landed.

At 00:30 UTC it considers the day that just ended. It requests the daily job for that day
only when every site's landing file of that day is there, and not all of them were already
ingested (a landing sensor or a backfill materialized the raw partition after the file
landed). Otherwise it skips, saying which files are missing or that the day is done, so a
tick never starts a run that would fail on a missing landing file.

How it relates to the landing sensors: the sensors ingest each file as it arrives (site by
site); the schedule is the once-a-day catch-up for the sites whose files the sensors did not
ingest (sensors stopped, or a file that landed while they were off). Both check the same
landing areas, through the `gravity_topology` resource.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Mapping, Sequence

from dagster import (
    AssetKey,
    DefaultScheduleStatus,
    RunRequest,
    ScheduleEvaluationContext,
    SkipReason,
    schedule,
)

from dagster_gravity import GravityTopology
from resources import landing_area
from sensors.landing import ingested_after_landing, list_landing


def day_before(when: datetime | None) -> str:
    when = (when or datetime.now(timezone.utc)).astimezone(timezone.utc)
    return (when - timedelta(days=1)).strftime("%Y-%m-%d")


def make_daily_schedule(
    job, landing: Mapping[str, Sequence[str]], first_day: str, hour_of_day: int = 0, minute_of_hour: int = 30
):
    """`landing`: site -> the datasets landing there (the raw asset of a dataset is
    `raw_<dataset>`); `first_day`: the first partition of the job."""

    @schedule(
        name=f"{job.name}_schedule",
        job=job,
        cron_schedule=f"{minute_of_hour} {hour_of_day} * * *",
        execution_timezone="UTC",
        default_status=DefaultScheduleStatus.STOPPED,
        description="The day that just ended, at every site, once all its landing files are there "
                    "(skips with the missing files otherwise, or when the landing sensors already ingested it)",
    )
    def _daily(context: ScheduleEvaluationContext, gravity_topology: GravityTopology):
        day = day_before(context.scheduled_execution_time)
        if day < first_day:
            return SkipReason(f"{day} is before the first partition {first_day}")
        missing, to_ingest = [], []
        for site, datasets in landing.items():
            area = landing_area(gravity_topology, site)
            for dataset in datasets:
                landed = next((f for f in list_landing(area, dataset) if f.partition == day), None)
                if landed is None:
                    missing.append(f"{dataset} at {site} ({area.uri(dataset, day)})")
                elif not ingested_after_landing(context.instance, AssetKey(f"raw_{dataset}"), landed):
                    to_ingest.append(f"{dataset} at {site}")
        if missing:
            return SkipReason(
                f"{day} has not landed everywhere: no landing file for {'; '.join(missing)}. The landing "
                f"sensors ingest each file when it arrives; or run {job.name} for {day} once it is there."
            )
        if not to_ingest:
            return SkipReason(f"{day}: every landing file was already ingested (by a landing sensor or an earlier run)")
        return RunRequest(
            run_key=f"{job.name}:{day}", partition_key=day,
            tags={"gravity/trigger": "schedule", "gravity/landed": ", ".join(to_ingest)[:200]},
        )

    return _daily
