"""The drift sensor: compares the feature statistics of every partition materialized since
its last tick with the earlier partitions' and requests retraining on each partition where
any feature's mean moved by more than `threshold` standard deviations.

Every new materialization counts, not only the newest partition: a day filled in by a
backfill, or several days landed together, are each evaluated. The cursor holds, per stats
asset, the storage id of the last materialization seen; the partitions already requested;
and the drifted partitions still waiting for the assets a retrain needs.

It reads the statistics from the stats assets' materialization metadata in the instance
(``stats/<feature>/mean`` and ``.../std``), so it needs no access to any site's storage.
"""

from __future__ import annotations

import json
from typing import Sequence

from dagster import AssetKey, AssetRecordsFilter, DefaultSensorStatus, RunRequest, SensorEvaluationContext, SkipReason, sensor

from dagster_gravity.metadata import plain_value


MAX_NEW_PER_TICK = 500  # new materializations read per stats asset and tick; the rest next tick


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


def read_cursor(text: str | None) -> dict:
    """The cursor: {"after": {asset: storage id}, "done": [partition], "waiting": {partition:
    scores}}. The earlier format, a list of requested partitions, reads as "done" with nothing
    seen (so every materialization is evaluated once)."""
    value = json.loads(text) if text else {}
    if isinstance(value, list):
        value = {"done": value}
    return {"after": dict(value.get("after", {})), "done": list(value.get("done", [])), "waiting": dict(value.get("waiting", {}))}


def new_partitions(instance, asset_key: AssetKey, after: int | None) -> tuple[int, list[str]] | None:
    """(the last storage id read, the partitions materialized after storage id `after`, in
    order), or None when nothing new was materialized."""
    records = instance.fetch_materializations(
        AssetRecordsFilter(asset_key=asset_key, after_storage_id=after), limit=MAX_NEW_PER_TICK, ascending=True
    ).records
    if not records:
        return None
    partitions = list(dict.fromkeys(r.partition_key for r in records if r.partition_key is not None))
    return records[-1].storage_id, partitions


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
        cursor = read_cursor(context.cursor)
        done: list[str] = cursor["done"]
        drifted: dict[str, dict[str, float]] = {p: dict(s) for p, s in cursor["waiting"].items()}
        for key in stats_assets:
            label = key.to_user_string()
            new = new_partitions(context.instance, key, cursor["after"].get(label))
            if new is None:
                continue
            last_id, partitions = new
            cursor["after"][label] = last_id
            if not partitions:
                continue
            history = partition_stats(context.instance, key)
            for partition in partitions:
                if partition not in history:
                    continue
                # a newer materialization of a waiting partition replaces this asset's scores
                entry = drifted.get(partition, {})
                for name in [n for n in entry if n.startswith(label + ".")]:
                    del entry[name]
                for feature, score in drift_scores(history, partition).items():
                    if score > threshold:
                        drifted.setdefault(partition, {})[f"{label}.{feature}"] = round(score, 3)
        requests, notes, waiting = [], [], {}
        for partition, scores in sorted(drifted.items()):
            if partition in done or not scores:
                continue
            missing = [k.to_user_string() for k in requires if partition not in context.instance.get_materialized_partitions(k)]
            if missing:
                notes.append(f"{partition} drifted but waits for {', '.join(missing)}")
                waiting[partition] = scores
                continue
            done.append(partition)
            requests.append(RunRequest(
                run_key=f"drift:{partition}",
                partition_key=partition,
                tags={"gravity/trigger": "drift", "gravity/drift": json.dumps(scores, sort_keys=True)[:200]},
            ))
        context.update_cursor(json.dumps({"after": cursor["after"], "done": sorted(done), "waiting": waiting}, sort_keys=True))
        if requests:
            return requests
        return SkipReason("; ".join(notes) or f"no feature moved more than {threshold} std")

    return _drift
