"""The plan problem as a MILP on the local polytope, solved by HiGHS through scipy; its LP
relaxation is a lower bound on any plan's score. Used to measure the heuristic's gap."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from dagster_gravity.errors import GravityError

if TYPE_CHECKING:
    from dagster_gravity.placement.problem import _Problem


def _local_polytope(p: _Problem):
    """Variables x[v,s] (feasible pairs) and y[e,a,b]; returns (c, A_eq, b_eq, n_x, x_index)."""
    from scipy import sparse

    n, S = p.unary.shape
    feasible = np.isfinite(p.unary)
    x_index = -np.ones((n, S), dtype=np.int64)
    x_index[feasible] = np.arange(int(feasible.sum()))
    n_x = int(feasible.sum())
    costs = [p.unary[feasible]]
    rows, cols, vals = [], [], []
    # one site per step
    vv, ss = np.nonzero(feasible)
    rows.append(vv)
    cols.append(x_index[vv, ss])
    vals.append(np.ones(len(vv)))
    n_rows = n
    n_var = n_x
    for e in range(len(p.edge_u)):
        u, v = int(p.edge_u[e]), int(p.edge_v[e])
        a_idx, b_idx = np.nonzero(feasible[u])[0], np.nonzero(feasible[v])[0]
        cost = p.edge_cost(e)[np.ix_(a_idx, b_idx)]
        na, nb = len(a_idx), len(b_idx)
        y = n_var + np.arange(na * nb).reshape(na, nb)
        n_var += na * nb
        costs.append(cost.ravel())
        # sum_b y[a, b] - x[u, a] = 0
        rows.append(np.repeat(n_rows + np.arange(na), nb))
        cols.append(y.ravel())
        vals.append(np.ones(na * nb))
        rows.append(n_rows + np.arange(na))
        cols.append(x_index[u, a_idx])
        vals.append(-np.ones(na))
        n_rows += na
        # sum_a y[a, b] - x[v, b] = 0
        rows.append(n_rows + np.tile(np.arange(nb), na))
        cols.append(y.ravel())
        vals.append(np.ones(na * nb))
        rows.append(n_rows + np.arange(nb))
        cols.append(x_index[v, b_idx])
        vals.append(-np.ones(nb))
        n_rows += nb
    A = sparse.csr_array(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n_rows, n_var)
    )
    b = np.zeros(n_rows)
    b[:n] = 1.0
    return np.concatenate(costs), A, b, n_x, x_index


def _solve_milp(p: _Problem, time_limit: float | None = None) -> tuple[np.ndarray, float, bool]:
    from scipy.optimize import Bounds, LinearConstraint, milp

    c, A, b, n_x, x_index = _local_polytope(p)
    integrality = np.zeros(len(c))
    integrality[:n_x] = 1
    options = {"mip_rel_gap": 0.0}
    if time_limit is not None:
        options["time_limit"] = time_limit
    res = milp(c, constraints=LinearConstraint(A, b, b), integrality=integrality, bounds=Bounds(0, 1), options=options)
    if res.x is None:
        raise GravityError(f"MILP solver failed: {res.message}")
    x = res.x[:n_x]
    labels = np.zeros(len(p.keys), dtype=np.int64)
    for v in range(len(p.keys)):
        idx = x_index[v]
        ok = idx >= 0
        labels[v] = int(np.nonzero(ok)[0][np.argmax(x[idx[ok]])])
    bound = getattr(res, "mip_dual_bound", None)
    return labels, (float(bound) if bound is not None else float(res.fun)), bool(res.status == 0)


def _lp_bound(p: _Problem) -> float:
    """The LP relaxation's optimum: a lower bound on any plan's score."""
    from scipy.optimize import linprog

    if len(p.edge_u) == 0:
        return float(np.min(p.unary, axis=1).sum())
    c, A, b, _, _ = _local_polytope(p)
    res = linprog(c, A_eq=A, b_eq=b, bounds=(0, 1), method="highs")
    if res.status != 0:
        raise GravityError(f"LP solver failed: {res.message}")
    return float(res.fun)
