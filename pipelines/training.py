"""Incremental logistic regression with scikit-learn, resumable from intermediate checkpoints.

The model is `SGDClassifier(loss="log_loss")` trained by `partial_fit`, one minibatch at a
time. Its state is plain arrays (safetensors through the CheckpointStore; nothing is
pickled): its fitted attributes `coef_`, `intercept_`, `classes_` and `t_` (the step count
that drives the learning-rate schedule), plus the feature mean/std it standardises with.
`restore` puts them back on a fresh estimator, so `partial_fit` continues exactly where the
saved one stopped.

Training warm-starts from a parent checkpoint (the promoted model) and, every
`checkpoint_every` batches, records its progress under a key derived from its lineage, so a
step that is killed and retried resumes from the last recorded batch instead of starting
over. Batches come in a fixed order and each `partial_fit` call shuffles with the same seed,
so a resumed run ends with the same weights as one that was never killed.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from sklearn.linear_model import SGDClassifier
from sklearn.metrics import accuracy_score, roc_auc_score
from sklearn.metrics import log_loss as sk_log_loss

from dagster_gravity.checkpoints import Checkpoint, CheckpointStore

FEATURES = ["log_dwell", "clicks", "log_price", "is_eu", "eu_mean_spend", "eu_mean_sessions"]
LABEL = "converted"
MODEL_NAME = "conversion"
CODE_VERSION = "sgd-sklearn-1"
CLASSES = np.array([0.0, 1.0])
# Inverse-scaling step sizes (eta = learning_rate / t**0.25) and sklearn's default L2
# penalty: on the reference data as good as the earlier hand-written minibatch SGD.
SCHEDULE = "invscaling"
L2_ALPHA = 1e-4
SEED = 7
MODEL_ARRAYS = ("coef", "intercept", "mean", "std")  # what every checkpoint of the model holds


@dataclass(frozen=True)
class TrainConfig:
    batch_rows: int = 512
    epochs: int = 2
    learning_rate: float = 0.1  # the first step size (SGDClassifier's eta0); it decays with t
    checkpoint_every: int = 4  # batches between intermediate checkpoints
    batch_delay_s: float = 0.0  # slows each batch down (tests use it to kill mid-way)

    def __post_init__(self):
        for name in ("batch_rows", "epochs", "checkpoint_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"training config {name}={value!r}: expected an integer >= 1")
        if not self.learning_rate > 0:  # also refuses NaN
            raise ValueError(f"training config learning_rate={self.learning_rate!r}: expected a number > 0 "
                             "(the first step size, SGDClassifier's eta0)")
        if not self.batch_delay_s >= 0:
            raise ValueError(f"training config batch_delay_s={self.batch_delay_s!r}: expected seconds >= 0")


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


def classifier(learning_rate: float) -> SGDClassifier:
    """The estimator, configured in one place (partial_fit runs one pass per call)."""
    return SGDClassifier(
        loss="log_loss", penalty="l2", alpha=L2_ALPHA, learning_rate=SCHEDULE, eta0=learning_rate, random_state=SEED,
    )


def init_arrays(x: np.ndarray) -> dict[str, np.ndarray]:
    """A model that has seen nothing: zero weights, and the standardisation of `x`."""
    std = x.std(axis=0)
    return {
        "coef": np.zeros((1, x.shape[1])),
        "intercept": np.zeros(1),
        "t": np.ones(1),
        "mean": x.mean(axis=0),
        "std": np.where(std > 0, std, 1.0),
    }


def check_arrays(arrays: dict[str, np.ndarray], what: str = "checkpoint") -> None:
    missing = [k for k in MODEL_ARRAYS if k not in arrays]
    if missing:
        raise ValueError(f"{what} lacks arrays {missing} of the {MODEL_NAME!r} model; has {sorted(arrays)}")
    n = len(FEATURES)
    shapes = {k: np.shape(arrays[k]) for k in MODEL_ARRAYS}
    if np.size(arrays["coef"]) != n or shapes["mean"] != (n,) or shapes["std"] != (n,) or np.size(arrays["intercept"]) != 1:
        raise ValueError(f"{what} has array shapes {shapes}; expected coef (1, {n}), intercept (1,), mean and std ({n},) "
                         f"for the features {FEATURES}")


def restore(arrays: dict[str, np.ndarray], learning_rate: float = 0.1) -> SGDClassifier:
    """An estimator holding the saved state, ready for `partial_fit` or `predict_proba`.

    These are the attributes sklearn's own `partial_fit` continues from; checkpoints of the
    earlier numpy model (coef of shape (n,), no `t`) restore too, their schedule from step 1."""
    check_arrays(arrays)
    model = classifier(learning_rate)
    model.coef_ = np.array(arrays["coef"], dtype=np.float64).reshape(1, -1)
    model.intercept_ = np.array(arrays["intercept"], dtype=np.float64).reshape(1)
    model.classes_ = CLASSES.copy()
    model.t_ = float(np.asarray(arrays.get("t", [1.0])).reshape(-1)[0])
    model.n_features_in_ = model.coef_.shape[1]
    return model


def state_arrays(model: SGDClassifier, mean: np.ndarray, std: np.ndarray) -> dict[str, np.ndarray]:
    """What a checkpoint stores of a trained estimator."""
    return {"coef": model.coef_.copy(), "intercept": model.intercept_.copy(), "t": np.array([model.t_]),
            "classes": model.classes_.copy(), "mean": mean, "std": std}


def standardize(arrays: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    return (x - arrays["mean"]) / arrays["std"]


def predict_proba(arrays: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    """P(converted) for each row of `x`, from a checkpoint's arrays."""
    return restore(arrays).predict_proba(standardize(arrays, x))[:, 1]


def log_loss(y: np.ndarray, p: np.ndarray) -> float:
    return float(sk_log_loss(y, np.clip(p, 1e-7, 1 - 1e-7), labels=CLASSES))


def auc(y: np.ndarray, p: np.ndarray) -> float:
    return float(roc_auc_score(y, p)) if 0 < y.sum() < len(y) else 0.5


def metrics(arrays: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    p = predict_proba(arrays, x)
    return {"log_loss": log_loss(y, p), "auc": auc(y, p), "accuracy": float(accuracy_score(y, p > 0.5)), "rows": float(len(y))}


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
    """Minibatch `partial_fit` over `df` (training rows only), resuming from progress under `key`."""
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
        arrays = dict(parent.arrays) if parent else init_arrays(x)
        start = 0
    model = restore(arrays, config.learning_rate)
    mean, std = arrays["mean"], arrays["std"]  # the parent's: a warm start keeps its feature scale
    order = np.random.default_rng(SEED).permutation(len(y))  # fixed order: resumable exactly
    xs = standardize(arrays, x)
    saves = 0
    for batch in range(start, total):
        lo = (batch % n_batches_epoch) * config.batch_rows
        idx = order[lo : lo + config.batch_rows]
        model.partial_fit(xs[idx], y[idx], classes=CLASSES)
        if config.batch_delay_s:
            time.sleep(config.batch_delay_s)
        done = batch + 1
        if done % config.checkpoint_every == 0 and done < total:
            store.save_progress(MODEL_NAME, key, done, state_arrays(model, mean, std),
                                {"total_batches": total, "pid": os.getpid()})
            saves += 1
    arrays = state_arrays(model, mean, std)
    loss = log_loss(y, predict_proba(arrays, x))
    return TrainResult(arrays, start, total, key, saves, loss, dict(progress.state) if progress else {})
