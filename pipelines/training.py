"""Incremental logistic regression in numpy, resumable from intermediate checkpoints.

Weights are plain arrays (coef, intercept, feature mean/std) saved as .npz through the
CheckpointStore; nothing is pickled. Training warm-starts from a parent checkpoint (the
promoted model) and, every `checkpoint_every` batches, records its progress under a key
derived from its lineage, so a step that is killed and retried resumes from the last
recorded batch instead of starting over.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from dagster_gravity.checkpoints import Checkpoint, CheckpointStore

FEATURES = ["log_dwell", "clicks", "log_price", "is_eu", "eu_mean_spend", "eu_mean_sessions"]
LABEL = "converted"
MODEL_NAME = "conversion"
CODE_VERSION = "logreg-numpy-1"


@dataclass(frozen=True)
class TrainConfig:
    batch_rows: int = 512
    epochs: int = 2
    learning_rate: float = 0.1
    checkpoint_every: int = 4  # batches between intermediate checkpoints
    batch_delay_s: float = 0.0  # slows each batch down (tests use it to kill mid-way)


@dataclass
class TrainResult:
    arrays: dict[str, np.ndarray]
    start_batch: int  # > 0 when resumed from an intermediate checkpoint
    total_batches: int
    progress_key: str
    intermediate_saves: int = 0
    final_loss: float = float("nan")
    resumed_state: dict = field(default_factory=dict)


def holdout_mask(df: pd.DataFrame) -> np.ndarray:
    """Deterministic 20% holdout by event id, used by evaluation and excluded from training."""
    return (df["event_id"].to_numpy() % 5) == 0


def matrix(df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    missing = [c for c in FEATURES + [LABEL] if c not in df.columns]
    if missing:
        raise ValueError(f"training data lacks columns {missing}; has {list(df.columns)}")
    return df[FEATURES].to_numpy(np.float64), df[LABEL].to_numpy(np.float64)


def init_arrays(x: np.ndarray) -> dict[str, np.ndarray]:
    std = x.std(axis=0)
    return {
        "coef": np.zeros(x.shape[1]),
        "intercept": np.zeros(1),
        "mean": x.mean(axis=0),
        "std": np.where(std > 0, std, 1.0),
    }


def predict_proba(arrays: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    z = ((x - arrays["mean"]) / arrays["std"]) @ arrays["coef"] + arrays["intercept"][0]
    return 1.0 / (1.0 + np.exp(-np.clip(z, -30, 30)))


def log_loss(y: np.ndarray, p: np.ndarray) -> float:
    p = np.clip(p, 1e-7, 1 - 1e-7)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def auc(y: np.ndarray, p: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, p)) if 0 < y.sum() < len(y) else 0.5


def metrics(arrays: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    p = predict_proba(arrays, x)
    return {"log_loss": log_loss(y, p), "auc": auc(y, p), "accuracy": float(np.mean((p > 0.5) == y)), "rows": float(len(y))}


def progress_key(partition: str, parent_version: int | None, data_sha256: str) -> str:
    """Same partition + same parent + same data + same code -> same key: a retry resumes."""
    digest = hashlib.sha256(f"{partition}|{parent_version}|{data_sha256}|{CODE_VERSION}".encode()).hexdigest()[:16]
    return f"{partition}-p{parent_version or 0}-{digest}"


def train_incremental(
    store: CheckpointStore,
    df: pd.DataFrame,
    parent: Checkpoint | None,
    key: str,
    config: TrainConfig = TrainConfig(),
    log=None,
) -> TrainResult:
    """Minibatch SGD over `df` (training rows only), resuming from progress under `key`."""
    x, y = matrix(df)
    if len(y) == 0:
        raise ValueError("no training rows: the partition's training set is empty after the holdout")
    n_batches_epoch = max(1, int(np.ceil(len(y) / config.batch_rows)))
    total = n_batches_epoch * config.epochs
    progress = store.load_progress(MODEL_NAME, key)
    if progress is not None:
        arrays, start = progress.arrays, progress.next_batch
        if log:
            log(f"resuming training {key} from intermediate checkpoint at batch {start}/{total}")
    else:
        arrays = {k: v.copy() for k, v in parent.arrays.items()} if parent else init_arrays(x)
        start = 0
    order = np.random.default_rng(7).permutation(len(y))  # fixed order: resumable exactly
    xs = (x - arrays["mean"]) / arrays["std"]
    saves = 0
    for batch in range(start, total):
        lo = (batch % n_batches_epoch) * config.batch_rows
        idx = order[lo : lo + config.batch_rows]
        z = xs[idx] @ arrays["coef"] + arrays["intercept"][0]
        err = 1.0 / (1.0 + np.exp(-np.clip(z, -30, 30))) - y[idx]
        arrays["coef"] = arrays["coef"] - config.learning_rate * (xs[idx].T @ err / len(idx))
        arrays["intercept"] = arrays["intercept"] - config.learning_rate * np.array([err.mean()])
        if config.batch_delay_s:
            time.sleep(config.batch_delay_s)
        done = batch + 1
        if done % config.checkpoint_every == 0 and done < total:
            store.save_progress(MODEL_NAME, key, done, arrays, {"total_batches": total, "pid": os.getpid()})
            saves += 1
    loss = log_loss(y, predict_proba(arrays, x))
    return TrainResult(arrays, start, total, key, saves, loss, dict(progress.state) if progress else {})
