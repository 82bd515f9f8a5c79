"""The drift sensor: compares the newest partition's feature statistics with the earlier
partitions' and requests retraining on that partition when any feature's mean moved by
more than `threshold` standard deviations.

It reads the statistics from the stats assets' materialization metadata in the instance
(``stats/<feature>/mean`` and ``.../std``), so it needs no access to any site's storage.
"""

from __future__ import annotations

import json
from typing import Sequence

from dagster import AssetKey, AssetRecordsFilter, DefaultSensorStatus, RunRequest, SensorEvaluationContext, SkipReason, sensor

from dagster_gravity.metadata import plain_value


def partition_stats(instance, asset_key: AssetKey, limit: int = 200) -> dict[str, dict[str, tuple[float, float]]]:
    """partition -> feature -> (mean, std), from the latest materialization per partition."""
    records = instance.fetch_materializations(AssetRecordsFilter(asset_key=asset_key), limit=limit, ascending=False).records
    out: dict[str, dict[str, tuple[float, float]]] = {}
    for record in records:
        mat = record.asset_materialization
        if mat is None or mat.partition is None or mat.partition in out:
            continue
        features = {}
        for key, value in mat.metadata.items():
            if key.startswith("stats/") and key.endswith("/mean"):
                name = key[len("stats/") : -len("/mean")]
                features[name] = (float(plain_value(value)), float(plain_value(mat.metadata.get(f"stats/{name}/std", 0.0))))
        out[mat.partition] = features
    return out


def drift_scores(history: dict[str, dict[str, tuple[float, float]]], partition: str) -> dict[str, float]:
    """feature -> |mean(partition) - mean(baseline)| / baseline std, where the baseline is
    the average over every earlier partition."""
    earlier = [p for p in history if p < partition]
    scores = {}
    for feature, (mean, _) in history[partition].items():
        base = [history[p][feature] for p in earlier if feature in history[p]]
        if not base:
            continue
        base_mean = sum(m for m, _ in base) / len(base)
        base_std = max(sum(s for _, s in base) / len(base), 1e-9)
        scores[feature] = abs(mean - base_mean) / base_std
    return scores


def make_drift_sensor(
    stats_assets: Sequence[AssetKey],
    job,
    threshold: float = 0.5,
    requires: Sequence[AssetKey] = (),
    minimum_interval_seconds: int = 60,
):
    """`requires`: assets the retrain needs for the drifted partition (waits until present)."""

    @sensor(
        name="feature_drift_sensor",
        job=job,
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=DefaultSensorStatus.STOPPED,
        description=f"Retrain when a feature mean moves > {threshold} std from earlier partitions",
    )
    def _drift(context: SensorEvaluationContext):
        done: list[str] = json.loads(context.cursor) if context.cursor else []
        drifted: dict[str, dict[str, float]] = {}
        for key in stats_assets:
            history = partition_stats(context.instance, key)
            if not history:
                continue
            newest = max(history)
            for feature, score in drift_scores(history, newest).items():
                if score > threshold:
                    drifted.setdefault(newest, {})[f"{key.to_user_string()}.{feature}"] = round(score, 3)
        requests, notes = [], []
        for partition, scores in sorted(drifted.items()):
            if partition in done:
                continue
            missing = [k.to_user_string() for k in requires if partition not in context.instance.get_materialized_partitions(k)]
            if missing:
                notes.append(f"{partition} drifted but waits for {', '.join(missing)}")
                continue
            done.append(partition)
            requests.append(RunRequest(
                run_key=f"drift:{partition}",
                partition_key=partition,
                tags={"gravity/trigger": "drift", "gravity/drift": json.dumps(scores, sort_keys=True)[:200]},
            ))
        context.update_cursor(json.dumps(sorted(done)))
        if requests:
            return requests
        return SkipReason("; ".join(notes) or f"no feature moved more than {threshold} std")

    return _drift
