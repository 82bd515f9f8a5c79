"""How long each step takes, learned from its earlier runs, so a busy compute pool's wait can
be estimated (`placement.waits`).

The executor records every successful step's duration at run end (`record_durations`) and
reads them at run start (`expected_durations`). Entries are an exponentially weighted mean
per job and step (dynamic copies `step[key]` share their step's entry), kept in the
Dagster instance's key-value store beside the measured links (SQLite on one machine, the
shared Postgres beyond one), so the tenth run knows what the first learned. A step with no
entry is expected to take `placement.waits.DEFAULT_STEP_SECONDS`.
"""

from __future__ import annotations

import json
import math
from typing import Mapping

from dagster_gravity.link_measurements import read_json_entry
from dagster_gravity.placement.waits import DEFAULT_STEP_SECONDS

KEY_PREFIX = "gravity/step-seconds/"
WEIGHT = 0.3  # of the newest run in the moving mean


def step_family(step_key: str) -> str:
    """The entry a step's duration is filed under: dynamic copies share their step's."""
    return step_key.split("[", 1)[0]


def _key(job_name: str) -> str:
    return KEY_PREFIX + job_name


def _read(instance, job_name: str) -> dict[str, dict]:
    return read_json_entry(instance, _key(job_name))


def expected_durations(instance, job_name: str) -> dict[str, float]:
    """Step family -> expected seconds, for the steps of `job_name` seen before."""
    found = {}
    for family, entry in _read(instance, job_name).items():
        try:
            seconds = float(entry["seconds"])
        except (KeyError, TypeError, ValueError):
            continue
        if math.isfinite(seconds) and seconds >= 0:
            found[family] = seconds
    return found


def record_durations(instance, job_name: str, durations: Mapping[str, float]) -> None:
    """Fold this run's step durations (step key -> seconds) into the job's entries."""
    if not durations:
        return
    entries = _read(instance, job_name)
    for step_key, seconds in durations.items():
        if not (math.isfinite(seconds) and seconds >= 0):
            continue
        family = step_family(step_key)
        previous = entries.get(family) if isinstance(entries.get(family), dict) else {}
        samples = int(previous.get("samples", 0) or 0)
        try:
            mean = float(previous.get("seconds", seconds))
        except (TypeError, ValueError):
            mean, samples = seconds, 0
        mean = seconds if samples == 0 else (1 - WEIGHT) * mean + WEIGHT * seconds
        entries[family] = {"seconds": round(mean, 4), "samples": samples + 1}
    instance.daemon_cursor_storage.set_cursor_values({_key(job_name): json.dumps(entries, sort_keys=True)})


class DurationEstimates:
    """Expected seconds per step key for one run: history, else the default."""

    def __init__(self, history: Mapping[str, float], default: float = DEFAULT_STEP_SECONDS):
        self.history = dict(history)
        self.default = default

    def expected(self, step_key: str) -> float:
        return self.history.get(step_family(step_key), self.default)

    def known(self, step_key: str) -> bool:
        return step_family(step_key) in self.history
