"""The optimum by enumeration: every assignment of feasible sites, vectorised in chunks."""

from __future__ import annotations

import itertools
import math
from typing import TYPE_CHECKING

import numpy as np

from dagster_gravity.errors import GravityConfigError

if TYPE_CHECKING:
    from dagster_gravity.placement.problem import _Problem


def _brute_force(p: _Problem, max_plans: int) -> tuple[np.ndarray, float]:
    """The optimal labels of a non-empty plan and their score.

    Raises `GravityConfigError` when there are more than ``max_plans`` assignments.
    """
    n = len(p.keys)
    options = [np.nonzero(np.isfinite(p.unary[v]))[0] for v in range(n)]
    count = math.prod(len(o) for o in options)
    if count > max_plans:
        raise GravityConfigError(f"brute_force_plan: {count} assignments; expected at most {max_plans}")
    best_score, best_labels = math.inf, None
    chunk_vars = 0
    # enumerate the last variables inside numpy, the first ones in Python
    inner = 1
    while chunk_vars < n and inner * len(options[n - 1 - chunk_vars]) <= 200_000:
        inner *= len(options[n - 1 - chunk_vars])
        chunk_vars += 1
    outer_vars = n - chunk_vars
    grids = np.meshgrid(*options[outer_vars:], indexing="ij") if chunk_vars else []
    inner_labels = np.stack([g.ravel() for g in grids], axis=1) if chunk_vars else np.zeros((1, 0), dtype=np.int64)
    for prefix in itertools.product(*options[:outer_vars]):
        labels = np.concatenate(
            [np.broadcast_to(np.array(prefix, dtype=np.int64), (len(inner_labels), outer_vars)), inner_labels], axis=1
        )
        total = p.unary[np.arange(n)[None, :], labels].sum(axis=1)
        for e in range(len(p.edge_u)):
            a, b = labels[:, p.edge_u[e]], labels[:, p.edge_v[e]]
            total = total + p.edge_bytes[e] * p.per_byte[a, b] + p.edge_count[e] * p.fixed[a, b]
        k = int(np.argmin(total))
        if total[k] < best_score:
            best_score, best_labels = float(total[k]), labels[k].copy()
    return best_labels, best_score
