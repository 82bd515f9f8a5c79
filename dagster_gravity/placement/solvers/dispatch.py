"""Which solver runs on each connected component of a plan, within the time budget."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from dagster_gravity.placement.solvers.elimination import _elimination_order, _solve_elimination
from dagster_gravity.placement.solvers.forest import _forest_dp
from dagster_gravity.placement.solvers.graph import _adjacency, _components
from dagster_gravity.placement.solvers.heuristic import _heuristic

if TYPE_CHECKING:
    from dagster_gravity.placement.problem import _Problem

# The exact solver builds tables of S^(k) entries for an induced width k-1; beyond this many
# entries in one table `auto` switches to the heuristic.
EXACT_TABLE_LIMIT = 2_000_000
# `auto` keeps the exact solver while the whole plan's elimination builds at most this many
# table entries, so large plans stay within their time budget.
EXACT_WORK_LIMIT = 30_000_000


def _solve(p: _Problem, method: str) -> tuple[np.ndarray, bool]:
    """Labels for every step, and whether they are proven optimal.

    Each connected component is solved on its own: by the forest DP when it is a tree, by
    variable elimination when its tables stay within `EXACT_TABLE_LIMIT` (``auto``: and the
    whole plan's elimination work within `EXACT_WORK_LIMIT`), else by the heuristic.
    """
    n, S = p.unary.shape
    adj = _adjacency(p)
    labels = np.argmin(p.unary, axis=1)
    forest_nodes, hard = [], []
    budget = EXACT_WORK_LIMIT if method == "auto" else math.inf
    table_limit = EXACT_TABLE_LIMIT if method == "auto" else math.inf
    for comp in _components(adj):
        n_edges = sum(len(edges) for v in comp for edges in adj[v].values()) // 2
        if n_edges == len(comp) - 1 and method != "heuristic":
            forest_nodes.extend(comp)
            continue
        if method == "heuristic":
            hard.extend(comp)
            continue
        order, work = _elimination_order(adj, comp, S, table_limit)
        if order is not None and work <= budget:
            budget -= work
            _solve_elimination(p, adj, order, labels)
        else:
            hard.extend(comp)
    if forest_nodes:
        nodes = np.array(forest_nodes, dtype=np.int64)
        inside = np.zeros(n, dtype=bool)
        inside[nodes] = True
        edges = np.nonzero(inside[p.edge_u])[0]
        labels[nodes] = _forest_dp(p, p.unary, edges, nodes)[nodes]
    if hard:
        labels = _heuristic(p, adj, labels, hard)
    return labels, not hard
