"""Training, evaluation and the quality gate, as separate steps; plus the rollback job.

- `model_checkpoint` trains incrementally (scikit-learn `SGDClassifier.partial_fit`, warm
  start from the promoted checkpoint; resumes from its intermediate checkpoint when a killed
  step is retried) and saves a new version (safetensors + JSON manifest).
- `quality_gate`, a blocking asset check on `model_checkpoint` (the candidate), scores the
  new version and the promoted one (if any) on the same holdout and decides from that one
  comparison (`pipelines.quality_gate`): it passes unless the candidate is worse; with
  nothing promoted yet it passes a first model that reaches absolute thresholds. It records
  the scores and its verdict on the candidate's manifest.
- `promoted_model` runs only when the gate passed (Dagster skips it after a failed blocking
  check), promotes the candidate, refusing one whose manifest shows no passed gate, and
  applies retention.
- `rollback_job` materializes `promoted_model` too (its runs carry the tag
  `promotion/action: rollback`; config `to_version`, `reason`): it promotes an earlier version and records that as the asset's latest materialization (the model now
  promoted, `promotion/decision: rolled back`, from and to versions, the reason), so the
  asset page shows the current model and why.
"""


import hashlib

import pandas as pd
from dagster import (
    AssetCheckExecutionContext,
    AssetSelection,
    AssetCheckResult,
    AssetCheckSeverity,
    AssetExecutionContext,
    AssetIn,
    AssetKey,
    AssetObservation,
    Config,
    Failure,
    MetadataValue,
    RetryPolicy,
    asset,
    asset_check,
    define_asset_job,
)

from dagster_gravity import GravityCheckpoints
from dagster_gravity import metadata as gm
from dagster_gravity.checkpoints import CheckpointStore, checkpoint_metadata
from pipelines import quality_gate
from pipelines.common import DAILY, TRAINING_GROUP, TRAINING_SITE, at_site, site_tags
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
    partitions_def=DAILY, group_name=TRAINING_GROUP, metadata=at_site(TRAINING_SITE, asset="model_checkpoint"),
    tags=site_tags(TRAINING_SITE), code_version=CODE_VERSION,
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


def evaluate_on_holdout(context, store: CheckpointStore, candidate_version: int, training_set: pd.DataFrame) -> list[dict]:
    """Holdout metrics of the candidate and of the promoted model (none while nothing is
    promoted), on the same rows: the one comparison the quality gate decides on. The
    candidate's are recorded on its manifest (eval_*)."""
    holdout = training_set[holdout_mask(training_set)]
    x, y = matrix(holdout)
    candidate = store.load(MODEL_NAME, candidate_version)
    rows = [{"role": "candidate", "version": candidate_version, **metrics(candidate.arrays, x, y)}]
    store.update_metrics(MODEL_NAME, candidate_version, {f"eval_{k}": v for k, v in rows[0].items() if k not in ("role", "version")})
    promoted = load_promoted(context, store)
    if promoted is not None:
        rows.append({"role": "promoted", "version": promoted.version.version, **metrics(promoted.arrays, x, y)})
    return rows


# The verdict, recorded on the candidate's manifest (its metrics are numbers): promoted_model
# promotes nothing whose manifest lacks a passed gate, whatever selected it.
GATE_PASSED = "gate_passed"  # 1.0 passed, 0.0 failed
GATE_BASELINE = "gate_baseline"  # the version compared with; 0 for a first model
GATE_DELTA = "gate_delta_"  # + metric: candidate - baseline on the same holdout


# The check is partitioned like its asset (a Dagster preview feature, which warns once at
# import): each day's candidate is gated on that day's holdout.
@asset_check(
    asset=model_checkpoint, name="quality_gate", blocking=True, partitions_def=DAILY,
    additional_ins={"training_set": AssetIn("training_set")},
    description="The candidate against the promoted model on the same holdout (log loss, within 0.002); "
                "a first model against absolute thresholds. Promotion happens only when it passes.",
)
def quality_gate_check(
    context: AssetCheckExecutionContext, checkpoints: GravityCheckpoints, model_checkpoint: pd.DataFrame,
    training_set: pd.DataFrame,
) -> AssetCheckResult:
    store = checkpoints.store()
    number = int(model_checkpoint["version"].iloc[0])
    # the op's context: a refused (corrupted) promoted checkpoint is logged as an observation
    rows = evaluate_on_holdout(context.op_execution_context, store, number, training_set)
    by_role = {r["role"]: r for r in rows}
    gate = quality_gate.decide(by_role["candidate"], by_role.get("promoted"))
    baseline = by_role.get("promoted")
    store.update_metrics(MODEL_NAME, number, {
        GATE_PASSED: 1.0 if gate.promotes else 0.0, GATE_BASELINE: int(baseline["version"]) if baseline else 0,
        **{GATE_DELTA + k: v for k, v in gate.deltas.items()},
    })
    outcome = {
        "gate/decision": gate.decision, "gate/reason": gate.reason, "gate/candidate": number,
        "gate/baseline": gate.baseline,
        # candidate - promoted, from the comparison the decision was made on (same holdout)
        "gate/metric_deltas": MetadataValue.json(gate.deltas),
        "evaluation/holdout_rows": int(holdout_mask(training_set).sum()),
        **{f"{r['role']}/{m}": float(r[m]) for r in rows for m in ("log_loss", "auc", "accuracy")},
    }
    if baseline is not None:
        outcome["gate/lineage_changes"] = sorted(store.compare(MODEL_NAME, int(baseline["version"]), number).lineage_changes)
    if not gate.promotes:
        context.log.warning(f"quality gate: {gate.decision}: {gate.reason}")
    return AssetCheckResult(passed=gate.promotes, severity=AssetCheckSeverity.ERROR, metadata=outcome)


ROLLED_BACK = "rolled back"  # promotion/decision of a rollback (quality_gate.PROMOTED otherwise)
# The run tag of rollback_job: a run of it always rolls back, whatever config it was given.
ACTION_TAG, ROLLBACK = "promotion/action", "rollback"


class PromotionConfig(Config):
    """Settings of a rollback (rollback_job); a promotion takes none."""

    to_version: int | None = None  # the version to return to; None: the one promoted before the current
    reason: str = "manual rollback"  # recorded in the promotion history and on the asset


@asset(
    partitions_def=DAILY, group_name=TRAINING_GROUP, metadata=at_site(TRAINING_SITE, asset="promoted_model"),
    tags=site_tags(TRAINING_SITE), code_version="2",
    kinds={"parquet"},
)
def promoted_model(
    context: AssetExecutionContext, config: PromotionConfig, checkpoints: GravityCheckpoints,
    model_checkpoint: pd.DataFrame,
) -> pd.DataFrame:
    """The promoted model and why: promotes the candidate that passed the quality gate (the
    blocking check on model_checkpoint), then applies retention; or, with `rollback`, rolls
    the promotion back."""
    store = checkpoints.store()
    # the op context's run_tags (not deprecated there) also works when invoked directly
    if context.op_execution_context.run_tags.get(ACTION_TAG) == ROLLBACK:
        return roll_back(context, store, config)
    if config.to_version is not None:
        raise Failure(description=(
            f"promoted_model: to_version is {config.to_version}, but this run promotes the candidate; "
            f"to_version applies to a rollback (run rollback_job, or tag the run {ACTION_TAG}={ROLLBACK})"))
    number = int(model_checkpoint["version"].iloc[0])
    verdict = store.manifest(MODEL_NAME, number).metrics
    if verdict.get(GATE_PASSED) != 1.0:
        state = "failed" if GATE_PASSED in verdict else "has not run on"
        raise Failure(description=(
            f"candidate {MODEL_NAME}@v{number}: the quality gate (check model_checkpoint:quality_gate) {state} it, "
            "so it is not promoted; materialize model_checkpoint with its check"))
    compared = int(verdict[GATE_BASELINE])
    reason = (f"passed the quality gate against promoted v{compared}" if compared
              else f"passed the quality gate as the {quality_gate.FIRST_MODEL}")
    store.promote(MODEL_NAME, number, reason=reason)
    deleted = store.apply_retention(MODEL_NAME, keep=RETAIN_VERSIONS)
    version = store.manifest(MODEL_NAME, store.promoted(MODEL_NAME))
    context.add_output_metadata({
        **checkpoint_metadata(version),
        "promotion/decision": quality_gate.PROMOTED, "promotion/reason": reason,
        "gate/decision": quality_gate.PROMOTED, "gate/reason": reason, "gate/candidate": number,
        "gate/baseline": f"v{compared}" if compared else quality_gate.FIRST_MODEL,
        "gate/metric_deltas": MetadataValue.json(
            {k[len(GATE_DELTA):]: v for k, v in verdict.items() if k.startswith(GATE_DELTA)}),
        "retention/deleted": [int(v) for v in deleted],
    })
    return pd.DataFrame([{"model": MODEL_NAME, "version": version.version, "decision": quality_gate.PROMOTED,
                          "sha256": version.sha256, **{k: v for k, v in version.metrics.items()}}])


def roll_back(context: AssetExecutionContext, store: CheckpointStore, config: PromotionConfig) -> pd.DataFrame:
    """Promote an earlier version (the promotion history records it) and return the asset's
    new value: the model promoted now, rolled back from which version, and why."""
    before = store.promoted(MODEL_NAME)
    version = store.rollback(MODEL_NAME, to=config.to_version, reason=config.reason)
    rolled_from = before if before is not None else -1
    reason = f"rolled back from v{rolled_from} to v{version.version}: {config.reason}"
    context.log.info(f"{MODEL_NAME}: {reason}")
    context.add_output_metadata({
        **checkpoint_metadata(version),
        "promotion/decision": ROLLED_BACK, "promotion/reason": reason,
        "rollback/from": rolled_from, "rollback/to": version.version, "rollback/reason": config.reason,
    })
    return pd.DataFrame([{"model": MODEL_NAME, "version": version.version, "decision": ROLLED_BACK,
                          "rolled_back_from": rolled_from, "sha256": version.sha256, **dict(version.metrics)}])


MODEL_ASSETS = [model_checkpoint, promoted_model]
MODEL_CHECKS = [quality_gate_check]

# Rolls the promotion back for the chosen day's partition of promoted_model (the day whose
# promotion is undone), so that partition's latest materialization says what is promoted now.
# Config (optional): ops.promoted_model.config.to_version (None: the version promoted before), reason.
rollback_job = define_asset_job(
    "rollback_job", selection=AssetSelection.assets(promoted_model), tags={ACTION_TAG: ROLLBACK},
    description="Promote an earlier checkpoint version (default: the previously promoted one) and record it "
                "as a materialization of promoted_model.",
)
