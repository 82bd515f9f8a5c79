"""Training, evaluation and the quality gate, as separate steps; plus the rollback job.

- `model_checkpoint` trains incrementally (scikit-learn `SGDClassifier.partial_fit`, warm
  start from the promoted checkpoint; resumes from its intermediate checkpoint when a killed
  step is retried) and saves a new version (safetensors + JSON manifest).
- `model_evaluation` scores the new version and the promoted one (if any) on the same holdout.
- `promoted_model` is the quality gate (`pipelines.quality_gate`): from that one comparison
  it promotes the new version unless it is worse, otherwise keeps the promoted one; with
  nothing promoted yet it promotes a first model that passes absolute thresholds. Then it
  applies retention.
"""


import hashlib

import pandas as pd
from dagster import (
    AssetExecutionContext,
    AssetKey,
    AssetObservation,
    Config,
    Failure,
    MetadataValue,
    OpExecutionContext,
    RetryPolicy,
    asset,
    job,
    op,
)

from dagster_gravity import GravityCheckpoints
from dagster_gravity import metadata as gm
from dagster_gravity.checkpoints import CheckpointStore, checkpoint_metadata
from pipelines import quality_gate
from pipelines.common import DAILY, TRAINING_GROUP, TRAINING_SITE, at_site
from pipelines.training import CODE_VERSION, MODEL_NAME, TrainConfig, holdout_mask, matrix, metrics, progress_key, train_incremental

RETAIN_VERSIONS = 5
FEATURE_CODE_VERSIONS = {"event_features": "1", "eu_segment_features": "2", "training_set": "1"}


class TrainingConfig(Config):
    batch_rows: int = 512
    epochs: int = 2
    learning_rate: float = 0.1  # the first step size (SGDClassifier's eta0); it decays with t
    checkpoint_every: int = 4
    batch_delay_s: float = 0.0


def data_sha256(df: pd.DataFrame) -> str:
    return hashlib.sha256(pd.util.hash_pandas_object(df, index=False).to_numpy().tobytes()).hexdigest()


def load_promoted(context, store: CheckpointStore):
    """The promoted checkpoint, or the newest good one below it if it is corrupted; every
    refusal becomes a warning and an observation on the checkpoint asset. None while nothing
    is promoted: a version that never passed the gate is neither a parent nor a baseline."""
    if store.promoted(MODEL_NAME) is None:
        return None
    fallback = store.load_usable(MODEL_NAME)
    for refused in fallback.refused:
        message = f"refused checkpoint {MODEL_NAME}@v{refused.version}: {refused}"
        context.log.warning(message)
        context.log_event(AssetObservation(
            asset_key=AssetKey("model_checkpoint"),
            metadata={
                "checkpoint/refused_version": refused.version,
                "checkpoint/refused_reason": str(refused),
                "checkpoint/used_version": fallback.checkpoint.version.version if fallback.checkpoint else -1,
            },
        ))
    return fallback.checkpoint


@asset(
    partitions_def=DAILY, group_name=TRAINING_GROUP, metadata=at_site(TRAINING_SITE), code_version=CODE_VERSION,
    op_tags={gm.TAG_POOL_KIND: "gpu", gm.TAG_GPU: "1"}, kinds={"scikitlearn", "safetensors"},
    # A killed or crashed training step is retried, and resumes from its last intermediate
    # checkpoint (same partition, parent and data -> same progress key).
    retry_policy=RetryPolicy(max_retries=2, delay=1),
)
def model_checkpoint(
    context: AssetExecutionContext, config: TrainingConfig, checkpoints: GravityCheckpoints, training_set: pd.DataFrame
) -> pd.DataFrame:
    """A new checkpoint version trained on the partition, warm-started from the promoted one."""
    store = checkpoints.store()
    parent = load_promoted(context, store)
    train_rows = training_set[~holdout_mask(training_set)]
    sha = data_sha256(train_rows)
    parent_version = parent.version.version if parent else None
    key = progress_key(context.partition_key, parent_version, sha)
    result = train_incremental(
        store, train_rows, parent, key, TrainConfig(**config.model_dump()), log=context.log.info
    )
    x, y = matrix(train_rows)
    version = store.save(
        MODEL_NAME,
        result.arrays,
        lineage={
            "partitions": [context.partition_key],
            "training_set_sha256": sha,
            "feature_code_versions": FEATURE_CODE_VERSIONS,
            "parent": parent_version,
            "run_id": context.run_id,
        },
        metrics={f"train_{k}": v for k, v in metrics(result.arrays, x, y).items()},
        code_version=CODE_VERSION,
        parent=parent_version,
    )
    store.clear_progress(MODEL_NAME, key)
    context.add_output_metadata({
        **checkpoint_metadata(version),
        "train/start_batch": result.start_batch,
        "train/total_batches": result.total_batches,
        "train/resumed": result.start_batch > 0,
        "train/warm_start_from": parent_version if parent_version is not None else -1,
    })
    return pd.DataFrame([{
        "model": MODEL_NAME, "version": version.version, "sha256": version.sha256,
        "parent": parent_version if parent_version is not None else -1, "start_batch": result.start_batch,
    }])


@asset(
    partitions_def=DAILY, group_name=TRAINING_GROUP, metadata=at_site(TRAINING_SITE), code_version="1",
    kinds={"parquet"},
)
def model_evaluation(
    context: AssetExecutionContext, checkpoints: GravityCheckpoints, model_checkpoint: pd.DataFrame,
    training_set: pd.DataFrame,
) -> pd.DataFrame:
    """Holdout metrics of the new version and of the promoted one (none while nothing is
    promoted), on the same rows: the one comparison the quality gate decides on."""
    store = checkpoints.store()
    holdout = training_set[holdout_mask(training_set)]
    x, y = matrix(holdout)
    candidate = store.load(MODEL_NAME, int(model_checkpoint["version"].iloc[0]))
    rows = [{"role": "candidate", "version": candidate.version.version, **metrics(candidate.arrays, x, y)}]
    store.update_metrics(MODEL_NAME, candidate.version.version, {f"eval_{k}": v for k, v in rows[0].items() if k not in ("role", "version")})
    promoted = load_promoted(context, store)
    if promoted is not None:
        rows.append({"role": "promoted", "version": promoted.version.version, **metrics(promoted.arrays, x, y)})
    out = pd.DataFrame(rows)
    context.add_output_metadata({
        f"{r['role']}/{m}": float(r[m]) for r in rows for m in ("log_loss", "auc", "accuracy")
    } | {
        "candidate/version": candidate.version.version,
        "evaluation/baseline": f"v{promoted.version.version}" if promoted else quality_gate.FIRST_MODEL,
        "evaluation/holdout_rows": int(len(y)),
    })
    return out


@asset(
    partitions_def=DAILY, group_name=TRAINING_GROUP, metadata=at_site(TRAINING_SITE), code_version="1",
    kinds={"parquet"},
)
def promoted_model(
    context: AssetExecutionContext, checkpoints: GravityCheckpoints, model_evaluation: pd.DataFrame
) -> pd.DataFrame:
    """The quality gate: promote the candidate unless it evaluates worse than the promoted
    model on the same holdout; with nothing promoted, if it passes absolute thresholds."""
    store = checkpoints.store()
    by_role = {r["role"]: r for r in model_evaluation.to_dict("records")}
    cand = by_role["candidate"]
    gate = quality_gate.decide(cand, by_role.get("promoted"))
    outcome = {
        "gate/decision": gate.decision, "gate/reason": gate.reason, "gate/candidate": int(cand["version"]),
        "gate/baseline": gate.baseline,
        # candidate - promoted, from the comparison the decision was made on (same holdout)
        "gate/metric_deltas": MetadataValue.json(gate.deltas),
    }
    if gate.decision == quality_gate.REJECTED:
        raise Failure(description=f"quality gate rejected the first model: {gate.reason}", metadata=outcome)
    if gate.promotes:
        store.promote(MODEL_NAME, int(cand["version"]), reason=gate.reason)
    else:
        context.log.warning(f"quality gate kept the promoted model: {gate.reason}")
    if "promoted" in by_role:
        changes = store.compare(MODEL_NAME, int(by_role["promoted"]["version"]), int(cand["version"])).lineage_changes
        outcome["gate/lineage_changes"] = sorted(changes)
    deleted = store.apply_retention(MODEL_NAME, keep=RETAIN_VERSIONS)
    version = store.manifest(MODEL_NAME, store.promoted(MODEL_NAME))
    context.add_output_metadata({
        **checkpoint_metadata(version),
        **outcome,
        "retention/deleted": [int(v) for v in deleted],
    })
    return pd.DataFrame([{"model": MODEL_NAME, "version": version.version, "decision": gate.decision, "sha256": version.sha256,
                          **{k: v for k, v in version.metrics.items()}}])


MODEL_ASSETS = [model_checkpoint, model_evaluation, promoted_model]


class RollbackConfig(Config):
    to_version: int | None = None  # None: the version promoted before the current one
    reason: str = "manual rollback"


@op(tags={gm.TAG_PIN: TRAINING_SITE})
def rollback_model(context: OpExecutionContext, config: RollbackConfig, checkpoints: GravityCheckpoints) -> None:
    store = checkpoints.store()
    before = store.promoted(MODEL_NAME)
    version = store.rollback(MODEL_NAME, to=config.to_version, reason=config.reason)
    context.log.info(f"rolled {MODEL_NAME} back from v{before} to v{version.version}")
    context.log_event(AssetObservation(
        asset_key=AssetKey("promoted_model"),
        metadata={**checkpoint_metadata(version, site=TRAINING_SITE), "rollback/from": before if before is not None else -1},
    ))


@job(description="Promote an earlier checkpoint version (default: the previously promoted one).")
def rollback_job():
    rollback_model()
