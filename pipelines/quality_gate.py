"""The quality gate's decision: pure, from the evaluation rows of candidate and promoted model.

Both rows come from the `quality_gate` check (`pipelines.model`), which scores the two
models on the same holdout rows, so the decision and the deltas it reports are one
comparison:

- a promoted model exists: the candidate is promoted unless its log loss is worse than the
  promoted model's by more than `TOLERANCE` (noise); `deltas` are candidate minus promoted,
  per metric, on that holdout;
- nothing is promoted yet ("first model"): there is nothing to compare with, so the
  candidate must pass absolute thresholds, `FIRST_MODEL_THRESHOLDS`: AUC at least 0.6 (it
  ranks conversions better than chance by a margin) and log loss at most 0.69 (better than
  a constant 50/50 guess, ln 2 = 0.693).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

METRIC = "log_loss"  # lower is better
TOLERANCE = 0.002  # a candidate this much worse still counts as "not worse" (noise)
COMPARED = ("log_loss", "auc", "accuracy")
# metric -> (bound, "min" or "max"): what a first model must reach on its own.
FIRST_MODEL_THRESHOLDS: dict[str, tuple[float, str]] = {"auc": (0.6, "min"), "log_loss": (0.69, "max")}
FIRST_MODEL = "first model"

PROMOTED, KEPT, REJECTED = "promoted", "kept", "rejected"


@dataclass(frozen=True)
class GateDecision:
    decision: str  # PROMOTED; KEPT (the promoted model stays); REJECTED (first model failed)
    reason: str
    baseline: str  # "v<N>" of the promoted model compared with, or FIRST_MODEL
    deltas: dict[str, float] = field(default_factory=dict)  # candidate - promoted, same holdout

    @property
    def promotes(self) -> bool:
        return self.decision == PROMOTED


def decide(candidate: Mapping[str, float], promoted: Mapping[str, float] | None) -> GateDecision:
    """`candidate` and `promoted` are evaluation rows (version, log_loss, auc, accuracy, rows)
    scored on the same holdout; `promoted` is None while nothing is promoted."""
    _require(candidate, "candidate")
    cand_v = int(candidate["version"])
    if promoted is None:
        return _first_model(candidate, cand_v)
    _require(promoted, "promoted")
    prom_v = int(promoted["version"])
    deltas = {m: float(candidate[m]) - float(promoted[m]) for m in COMPARED}
    compared = (f"{METRIC} {candidate[METRIC]:.4f} vs {promoted[METRIC]:.4f} of promoted v{prom_v} "
                f"on the same {int(candidate['rows'])} holdout rows")
    if candidate[METRIC] <= promoted[METRIC] + TOLERANCE:
        return GateDecision(PROMOTED, f"candidate v{cand_v}: {compared}", f"v{prom_v}", deltas)
    return GateDecision(KEPT, f"candidate v{cand_v} is worse: {compared} (tolerance {TOLERANCE})", f"v{prom_v}", deltas)


def _first_model(candidate: Mapping[str, float], version: int) -> GateDecision:
    checks, failed = [], []
    for metric, (bound, kind) in FIRST_MODEL_THRESHOLDS.items():
        value = float(candidate[metric])
        ok = value >= bound if kind == "min" else value <= bound
        text = f"{metric} {value:.4f} {'>=' if kind == 'min' else '<='} {bound}"
        checks.append(text)
        if not ok:
            failed.append(text.replace(">=", "is not >=").replace("<=", "is not <="))
    if failed:
        return GateDecision(REJECTED, f"{FIRST_MODEL}: nothing promoted to compare with, and candidate v{version} "
                            f"misses the absolute thresholds: {'; '.join(failed)}", FIRST_MODEL)
    return GateDecision(PROMOTED, f"{FIRST_MODEL}: nothing promoted to compare with; candidate v{version} passes the "
                        f"absolute thresholds: {', '.join(checks)}", FIRST_MODEL)


def _require(row: Mapping[str, float], role: str) -> None:
    missing = [k for k in ("version", "rows", *COMPARED) if k not in row]
    if missing:
        raise ValueError(f"the {role} evaluation row lacks {missing}; has {sorted(row)}")
