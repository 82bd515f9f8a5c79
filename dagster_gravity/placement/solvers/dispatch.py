"""Which solver runs on each connected component of a plan, within the time budget."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from dagster_gravity.placement.solvers.elimination import _elimination_order, _solve_elimination
from dagster_gravity.placement.solvers.forest import _forest_dp
from dagster_gravity.placement.solvers.graph import _adjacency, _components
from dagster_gravity.placement.solvers.heuristic import _heuristic, _spanning_forest
from dagster_gravity.placement.solvers.pruning import _cheaper, _solve_pruned

if TYPE_CHECKING:
    from dagster_gravity.placement.problem import _Problem

# The exact solver builds tables of S^(k) entries for an induced width k-1; beyond this many
# entries in one table `auto` rules sites out first (`pruning`) and eliminates over the sites
# left, and where one table is still too big uses the heuristic.
EXACT_TABLE_LIMIT = 2_000_000
# `auto` keeps the exact solver while the whole plan's elimination (over all sites, then over
# the sites left) builds at most this many table entries, so large plans stay within their
# time budget.
EXACT_WORK_LIMIT = 30_000_000
# `auto` rules sites out on components of at most this many steps (a pipeline is tens of
# steps); larger ones go straight to the heuristic: their bounds take many rounds of a deep
# forest to settle, and the sites left rarely make elimination small enough.
PRUNE_MAX_STEPS = 500


def _solve(p: _Problem, method: str) -> tuple[np.ndarray, bool]:
    """Labels for every step, and whether they are proven optimal.

    Each connected component is solved on its own: by the forest DP when it is a tree, by
    variable elimination when its tables stay within `EXACT_TABLE_LIMIT` and the whole plan's
    elimination work within `EXACT_WORK_LIMIT`; else (``auto``, on components of at most
    `PRUNE_MAX_STEPS` steps) sites that cannot be in a plan cheaper than one in hand are
    ruled out and elimination runs over the sites left, within the same limits; the
    heuristic takes the components where that does not fit, and the larger ones.
    ``exact`` eliminates over all sites without limits, ``heuristic`` uses the heuristic on
    every component, and ``pruned`` (for tests) rules sites out on every component that is
    not a tree, then eliminates without limits.
    """
    n, S = p.unary.shape
    adj = _adjacency(p)
    labels = np.argmin(p.unary, axis=1)
    forest_nodes, hard, large = [], [], []
    limited = method == "auto"
    budget = EXACT_WORK_LIMIT if limited else math.inf
    table_limit = EXACT_TABLE_LIMIT if limited else math.inf
    for comp in _components(adj):
        n_edges = sum(len(edges) for v in comp for edges in adj[v].values()) // 2
        if n_edges == len(comp) - 1 and method != "heuristic":
            forest_nodes.extend(comp)
            continue
        if method in ("heuristic", "pruned"):
            hard.extend(comp)
            continue
        order, work = _elimination_order(adj, comp, int(S), table_limit)
        if order is not None and work <= budget:
            budget -= work
            _solve_elimination(p, adj, order, labels)
        elif limited and len(comp) > PRUNE_MAX_STEPS:
            large.extend(comp)
        else:
            hard.extend(comp)
    if forest_nodes:
        nodes = np.array(forest_nodes, dtype=np.int64)
        inside = np.zeros(n, dtype=bool)
        inside[nodes] = True
        edges = np.nonzero(inside[p.edge_u])[0]
        labels[nodes] = _forest_dp(p, p.unary, edges, nodes)[nodes]
    if hard and method in ("auto", "pruned"):
        # rule out every site that cannot beat the plan in hand, then solve exactly over the
        # sites left; the heuristic only where that does not fit the limits
        tree = _spanning_forest(p, np.array(hard, dtype=np.int64))
        labels, hard = _solve_pruned(p, adj, labels, hard, tree, budget, table_limit)
        if hard:  # each component as the heuristic finds it, or as pruning left it if cheaper
            labels = _cheaper(p, adj, _heuristic(p, adj, labels.copy(), hard + large), labels, hard)
        elif large:
            labels = _heuristic(p, adj, labels, large)
    elif hard or large:
        labels = _heuristic(p, adj, labels, hard + large)
    return labels, not hard and not large
