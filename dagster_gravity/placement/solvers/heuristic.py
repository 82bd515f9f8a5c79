"""The heuristic for components too wide to solve exactly.

It starts from the exact DP on a maximum-bytes spanning forest, then improves with moves
that never raise the score: alpha-expansion (`expansion`) and tree-block coordinate descent
(re-solving a random induced forest exactly, the rest fixed).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from dagster_gravity.placement.solvers.expansion import _expansion
from dagster_gravity.placement.solvers.forest import _forest_dp

if TYPE_CHECKING:
    from dagster_gravity.placement.problem import _Problem

# The heuristic uses alpha-expansion (one minimum cut per site per sweep) while
# steps x sites stays under this; larger plans get only tree-block descent, in a bounded
# number of rounds, so that the largest plans stay within their time budget.
EXPANSION_LIMIT = 100_000
LARGE_PLAN_BLOCK_ROUNDS = 4


def _heuristic(p: _Problem, adj, labels: np.ndarray, hard: list[int]) -> np.ndarray:
    """Labels for the steps in `hard` (whole components), the other labels unchanged.

    Writes the spanning-forest start into `labels`, then returns improved labels.
    """
    S = p.unary.shape[1]
    nodes = np.array(hard, dtype=np.int64)
    labels[nodes] = _forest_dp(p, p.unary, _spanning_forest(p, nodes), nodes)[nodes]
    if len(nodes) * S > EXPANSION_LIMIT:
        return _block_descent(p, adj, labels, hard, rounds=LARGE_PLAN_BLOCK_ROUNDS, patience=2)
    # alternate the two kinds of move until neither improves: expansion makes the large
    # jumps, block descent the local repairs
    score = p.score(labels)
    for round_ in range(4):
        labels = _expansion(p, labels, nodes)
        labels = _block_descent(p, adj, labels, hard, seed=round_)
        new = p.score(labels)
        if new >= score - 1e-12 * max(1.0, abs(score)):
            break
        score = new
    return labels


def _spanning_forest(p: _Problem, nodes: np.ndarray) -> np.ndarray:
    """Edge ids of a maximum-bytes spanning forest of the subgraph on `nodes` (Kruskal)."""
    inside = np.zeros(len(p.keys), dtype=bool)
    inside[nodes] = True
    parent = list(range(len(p.keys)))

    def find(x):
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    keep = []
    cand = np.nonzero(inside[p.edge_u] & inside[p.edge_v])[0]
    for e in cand[np.argsort(-p.edge_bytes[cand], kind="stable")].tolist():
        a, b = find(int(p.edge_u[e])), find(int(p.edge_v[e]))
        if a != b:
            parent[a] = b
            keep.append(e)
    return np.array(sorted(keep), dtype=np.int64)


def _induced_forest(p: _Problem, nbrs: list[list[int]], multi: list[set], nodes: list[int], rng: np.random.Generator):
    """A random set of nodes whose induced subgraph is a forest, and the edges among them.

    Greedy in random order: a node joins when its neighbours already in the set lie in
    different trees (and it has only one edge to each), so joining closes no cycle.
    """
    n = len(nbrs)
    parent = list(range(n))
    inside = [False] * n
    for v in rng.permutation(nodes).tolist():
        roots = []
        ok = True
        for w in nbrs[v]:
            if inside[w]:
                if multi[v] and w in multi[v]:
                    ok = False
                    break
                r = w
                while parent[r] != r:
                    parent[r] = parent[parent[r]]
                    r = parent[r]
                if r in roots:
                    ok = False
                    break
                roots.append(r)
        if ok:
            inside[v] = True
            for r in roots:
                parent[r] = v
    mask = np.array(inside)
    chosen = np.nonzero(mask)[0]
    return chosen, np.nonzero(mask[p.edge_u] & mask[p.edge_v])[0]


def _block_descent(p: _Problem, adj, labels: np.ndarray, nodes: list[int], *, rounds: int = 40, patience: int = 4, seed: int = 0) -> np.ndarray:
    """Tree-block coordinate descent: re-solve a random induced forest exactly, the rest fixed.

    Each round can only lower the score (the current labels are one candidate of the
    block's exact DP); stops after `patience` rounds without improvement.
    """
    rng = np.random.default_rng(seed)
    labels = labels.copy()
    nbrs = [list(a) for a in adj]
    multi = [{w for w, es in a.items() if len(es) > 1} for a in adj]
    best = p.score(labels)
    stale = 0
    for _ in range(rounds):
        block, block_edges = _induced_forest(p, nbrs, multi, nodes, rng)
        in_block = np.zeros(len(p.keys), dtype=bool)
        in_block[block] = True
        unary = p.unary.copy()
        bu, bv = in_block[p.edge_u], in_block[p.edge_v]
        e1 = np.nonzero(bu & ~bv)[0]  # upstream in the block, downstream fixed
        if len(e1):
            b = labels[p.edge_v[e1]]
            np.add.at(unary, p.edge_u[e1], p.edge_bytes[e1][:, None] * p.per_byte[:, b].T + p.edge_count[e1][:, None] * p.fixed[:, b].T)
        e2 = np.nonzero(~bu & bv)[0]  # downstream in the block, upstream fixed
        if len(e2):
            a = labels[p.edge_u[e2]]
            np.add.at(unary, p.edge_v[e2], p.edge_bytes[e2][:, None] * p.per_byte[a] + p.edge_count[e2][:, None] * p.fixed[a])
        new = _forest_dp(p, unary, block_edges, block)
        trial = labels.copy()
        trial[block] = new[block]
        score = p.score(trial)
        if score < best - 1e-12 * max(1.0, abs(best)):
            labels, best, stale = trial, score, 0
        else:
            stale += 1
            if stale >= patience:
                break
    return labels
