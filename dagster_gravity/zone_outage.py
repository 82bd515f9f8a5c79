"""A step whose residency zone has no healthy compute pool waits for one to come back.

Data that may not leave its zone is never moved out of it, so when every compute pool of
the zone is down the step has nowhere to run. If some of those pools may recover (their
backend says so: a Dask site whose workers left may see them rejoin), the step waits up to
the executor's `zone_outage_wait` seconds (or the zone's own `outage_wait_seconds` in the
sites file; with several zones, the shortest), re-checking health, instead of failing at once.
Each wait is told by engine events on the step: that it waits (for which zone, which pools
are down and why), then how it ended (the zone came back after N s and where the step runs,
or it gave up after N s, naming the setting).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Mapping, Sequence

from dagster import MetadataValue

from dagster_gravity import metadata as md
from dagster_gravity.dagster_internals import DagsterEvent, EngineEventData

SETTING = "zone_outage_wait"


def wait_limit(zones: Sequence[str], per_zone: Mapping[str, float], default: float, source: str) -> tuple[float, str]:
    """How long a step of `zones` waits, and the setting that says so: the shortest of each
    zone's own `outage_wait_seconds` (sites file), else the executor's `zone_outage_wait`."""
    limits = [
        (per_zone[z], f"residency.{z}.outage_wait_seconds in {source}") if z in per_zone else (default, SETTING)
        for z in zones
    ]
    return min(limits, key=lambda pair: pair[0])


@dataclass
class ZoneOutage:
    """What a waiting step waits for: its zones, and the zone's pools that are down (id -> why)."""

    zones: Sequence[str]
    down: Mapping[str, str]
    limit: float  # seconds it may wait
    setting: str  # the setting `limit` comes from
    since: float = field(default_factory=time.monotonic)
    checked: float = 0.0  # when health was last re-checked

    def zone_words(self) -> str:
        names = ", ".join(repr(z) for z in self.zones)
        return f"residency zone {names}" if len(self.zones) == 1 else f"residency zones {names}"

    def down_words(self) -> str:
        return "; ".join(f"{pid}: {why}" for pid, why in sorted(self.down.items()))

    def waited(self, now: float | None = None) -> float:
        return (time.monotonic() if now is None else now) - self.since


def _metadata(outage: ZoneOutage, **more) -> dict:
    return {
        "gravity/zones": MetadataValue.json(list(outage.zones)),
        "gravity/pools_down": MetadataValue.json(dict(outage.down)),
        f"gravity/{SETTING}": MetadataValue.float(float(outage.limit)),
        "gravity/outage_wait_setting": MetadataValue.text(outage.setting),
        **more,
    }


def waiting_event(step_context, outage: ZoneOutage) -> DagsterEvent:
    key = step_context.step.key
    return DagsterEvent.engine_event(
        step_context,
        f"gravity: step {key} waits up to {outage.limit:g} s ({outage.setting}) for {outage.zone_words()}: no "
        f"compute pool there is healthy ({outage.down_words()}); its data is not moved out of the zone",
        EngineEventData(metadata=_metadata(outage)),
    )


def back_note(outage: ZoneOutage, pool_id: str, now: float | None = None) -> str:
    return f"waited {outage.waited(now):.1f} s ({outage.setting}) for {outage.zone_words()}, which came back: runs on {pool_id}"


def back_event(step_context, outage: ZoneOutage, pool_id: str, site: str, now: float) -> DagsterEvent:
    waited = outage.waited(now)
    return DagsterEvent.engine_event(
        step_context,
        f"gravity: {outage.zone_words()} came back after {waited:.1f} s: step {step_context.step.key} "
        f"runs on compute pool {pool_id}",
        EngineEventData(
            metadata=_metadata(
                outage,
                **{
                    "gravity/waited_seconds": MetadataValue.float(round(waited, 3)),
                    md.POOL_ID: MetadataValue.text(pool_id),
                    md.SITE: MetadataValue.text(site),
                },
            )
        ),
    )


def gave_up_note(outage: ZoneOutage, now: float | None = None, *, limit_reached: bool = True) -> str:
    """Why the wait ended without the zone: its limit, or (`limit_reached` False) because no
    pool of the zone that is down can come back any more."""
    if not limit_reached:
        return (
            f"stopped waiting after {outage.waited(now):.1f} s (of {outage.limit:g} s, {outage.setting}): no compute "
            f"pool of {outage.zone_words()} that is down can come back now (it was: {outage.down_words()})"
        )
    return (
        f"gave up after {outage.waited(now):.1f} s ({outage.setting} is {outage.limit:g} s): {outage.zone_words()} "
        f"still has no healthy compute pool ({outage.down_words()})"
    )


def gave_up_event(step_context, outage: ZoneOutage, now: float, *, limit_reached: bool = True) -> DagsterEvent:
    return DagsterEvent.engine_event(
        step_context,
        f"gravity: step {step_context.step.key} {gave_up_note(outage, now, limit_reached=limit_reached)}",
        EngineEventData(
            metadata=_metadata(outage, **{"gravity/waited_seconds": MetadataValue.float(round(outage.waited(now), 3))})
        ),
    )
