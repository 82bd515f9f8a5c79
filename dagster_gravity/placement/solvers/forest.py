"""Exact labels on a forest: the O(n·S²) dynamic programme, batched by depth in numpy.

Used on its own for tree-shaped components and, on induced forests, inside the heuristic;
its min-marginals (the best cost with one step fixed at each site) bound the plan from
below when sites are ruled out (`pruning`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from dagster_gravity.placement.problem import _Problem


class _Orientation:
    """Min-sum messages across edges whose cost matrix is ``bytes * per_byte + count * fixed``,
    indexed [parent site, child site], with a zero diagonal.

    Exact, but pruned: for each edge it tries the child's K cheapest sites and the parent's
    own site; a parent site whose best value could still be beaten by a site outside those
    (checked with a lower bound from the row minima) is recomputed over all sites. A child
    with at most K sites left (the others infinite) needs only those.
    """

    K = 8

    def __init__(self, per_byte: np.ndarray, fixed: np.ndarray):
        S = per_byte.shape[0]
        self.per_byte, self.fixed = per_byte, fixed
        self.per_byte_t = np.ascontiguousarray(per_byte.T)  # [child site, parent site]
        self.fixed_t = np.ascontiguousarray(fixed.T)
        off = ~np.eye(S, dtype=bool)
        self.per_byte_min = np.where(off, per_byte, np.inf).min(axis=1) if S > 1 else np.zeros(S)
        self.fixed_min = np.where(off, fixed, np.inf).min(axis=1) if S > 1 else np.zeros(S)

    def messages(self, child: np.ndarray, nbytes: np.ndarray, count: np.ndarray):
        """For k edges: best[k, a] = min_b child[k, b] + cost_k[a, b], and its argmin."""
        k, S = child.shape
        if S <= self.K + 1:
            total = nbytes[:, None, None] * self.per_byte + count[:, None, None] * self.fixed + child[:, None, :]
            arg = np.argmin(total, axis=2)
            return np.take_along_axis(total, arg[:, :, None], axis=2)[:, :, 0], arg
        # children with few sites left (the rest ruled out, infinite) need only those: a
        # narrower search, and no site outside it can be better
        width = np.isfinite(child).sum(axis=1)
        groups = [(width <= 1, 1), ((width > 1) & (width <= 3), 3), (width > 3, self.K)]
        groups = [(rows, K) for rows, K in groups if rows.any()]
        if len(groups) == 1:
            return self._search(child, nbytes, count, groups[0][1])
        best = np.empty((k, S))
        arg = np.empty((k, S), dtype=np.int64)
        for rows, K in groups:
            best[rows], arg[rows] = self._search(child[rows], nbytes[rows], count[rows], K)
        return best, arg

    def _search(self, child: np.ndarray, nbytes: np.ndarray, count: np.ndarray, K: int):
        """`messages` over the child's K cheapest sites, then every site where that may miss."""
        k, S = child.shape
        rows = np.arange(k)[:, None]
        order = np.argpartition(child, K, axis=1)
        top = order[:, :K]  # (k, K) the child's cheapest sites
        outside = child[rows[:, 0], order[:, K]]  # lowest value among the others
        cand = self.per_byte_t[top]  # (k, K child sites, S parent sites): row gathers
        cand *= nbytes[:, None, None]
        if (count == 1).all():  # one transfer per edge, the usual case: no scaling
            cand += self.fixed_t[top]
        else:
            cand += self.fixed_t[top] * count[:, None, None]
        cand += np.take_along_axis(child, top, axis=1)[:, :, None]
        j = np.argmin(cand, axis=1)  # (k, S)
        best = np.take_along_axis(cand, j[:, None, :], axis=1)[:, 0, :]
        arg = top[rows, j]
        stay = child < best  # the child at the parent's own site: no transfer
        np.copyto(best, child, where=stay)
        np.copyto(arg, np.arange(S)[None, :], where=stay)
        bound = outside[:, None] + nbytes[:, None] * self.per_byte_min[None, :] + count[:, None] * self.fixed_min[None, :]
        ek, ea = np.nonzero(best > bound)
        if len(ek):
            full = nbytes[ek, None] * self.per_byte[ea] + count[ek, None] * self.fixed[ea] + child[ek]
            fa = np.argmin(full, axis=1)
            fv = full[np.arange(len(ek)), fa]
            better = fv < best[ek, ea]
            best[ek[better], ea[better]] = fv[better]
            arg[ek[better], ea[better]] = fa[better]
        return best, arg


def _root_forest(p: _Problem, edges: np.ndarray, nodes: np.ndarray):
    """Root every tree of the forest (`edges` over `nodes`) at its lowest-numbered node.

    Returns (parent, parent edge, nodes grouped by depth, roots); uses scipy's BFS from a
    virtual node joined to every root, so the work stays in C.
    """
    from scipy.sparse import csr_array
    from scipy.sparse.csgraph import breadth_first_order, connected_components

    n = len(p.keys)
    eu, ev = p.edge_u[edges], p.edge_v[edges]
    graph = csr_array((np.ones(2 * len(edges)), (np.concatenate([eu, ev]), np.concatenate([ev, eu]))), shape=(n, n))
    _, comp = connected_components(graph, directed=False)
    sorted_nodes = np.sort(nodes)
    _, first = np.unique(comp[sorted_nodes], return_index=True)
    roots = sorted_nodes[first]
    rows = np.concatenate([eu, ev, np.full(len(roots), n)])
    cols = np.concatenate([ev, eu, roots])
    rooted = csr_array((np.ones(len(rows)), (rows, cols)), shape=(n + 1, n + 1))
    order, pred = breadth_first_order(rooted, n, directed=True, return_predecessors=True)
    parent = np.full(n, -1, dtype=np.int64)
    inner = order[1:]
    parent[inner] = pred[inner]
    parent[roots] = -1
    depth = np.zeros(n + 1, dtype=np.int64)
    depth_list = depth.tolist()
    pred_list = pred.tolist()
    for v in inner.tolist():
        depth_list[v] = depth_list[pred_list[v]] + 1
    depth = np.array(depth_list[:n], dtype=np.int64) - 1  # roots at depth 0
    # the edge joining each node to its parent
    key = np.minimum(eu, ev) * n + np.maximum(eu, ev)
    by_key = np.argsort(key)
    pedge = np.full(n, -1, dtype=np.int64)
    child = inner[parent[inner] >= 0]
    ck = np.minimum(child, parent[child]) * n + np.maximum(child, parent[child])
    pedge[child] = edges[by_key[np.searchsorted(key[by_key], ck)]]
    by_depth = child[np.argsort(depth[child], kind="stable")]
    cuts = np.searchsorted(depth[by_depth], np.arange(1, int(depth[child].max(initial=0)) + 2))
    levels = [np.empty(0, dtype=np.int64)] + [by_depth[cuts[i] : cuts[i + 1]] for i in range(len(cuts) - 1)]
    return parent, pedge, levels, roots


def _upward(p: _Problem, unary: np.ndarray, tree):
    """The leaves-to-roots pass: each node's subtree value per site, and its message up.

    Returns (subtree, message, argmins): ``subtree[v, s]`` is the best cost of v's subtree
    with v at s, ``message[v, a]`` the best cost of v's subtree with v's parent at a, and
    ``argmins[d]`` (level d's nodes, their best site per parent site) for backtracking.
    """
    n, S = unary.shape
    subtree = unary.copy()
    message = np.zeros((n, S))
    parent, pedge, levels, _ = tree
    orientations = (_Orientation(p.per_byte, p.fixed), _Orientation(p.per_byte.T, p.fixed.T))
    argmins: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for d in range(len(levels) - 1, 0, -1):
        level = levels[d]
        args = np.empty((len(level), S), dtype=np.int64)
        es = pedge[level]
        flipped = p.edge_u[es] != parent[level]  # the child is upstream of its parent
        for o, sel in ((orientations[0], np.nonzero(~flipped)[0]), (orientations[1], np.nonzero(flipped)[0])):
            for lo in range(0, len(sel), 4096):
                part = sel[lo : lo + 4096]
                vs = level[part]
                best, arg = o.messages(subtree[vs], p.edge_bytes[es[part]], p.edge_count[es[part]])
                np.add.at(subtree, parent[vs], best)
                message[vs] = best
                args[part] = arg
        argmins[d] = (level, args)
    return subtree, message, argmins


def _forest_dp(p: _Problem, unary: np.ndarray, edges: np.ndarray, nodes: np.ndarray) -> np.ndarray:
    """Exact labels of `nodes` when `edges` (among them) form a forest: O(n·S²), batched by depth.

    `unary` holds the (possibly conditioned) unary costs of every node; returns labels for
    all nodes (only `nodes` are meaningful).
    """
    n, S = unary.shape
    tree = _root_forest(p, edges, nodes)
    parent, _, levels, roots = tree
    subtree, _, argmins = _upward(p, unary, tree)
    labels = np.zeros(n, dtype=np.int64)
    labels[roots] = np.argmin(subtree[roots], axis=1)
    for d in range(1, len(levels)):
        level, args = argmins[d]
        labels[level] = args[np.arange(len(level)), labels[parent[level]]]
    return labels


def _min_marginals(p: _Problem, unary: np.ndarray, edges: np.ndarray, nodes: np.ndarray) -> np.ndarray:
    """``out[v, s]``: the least cost of v's tree with v at site s, for every node of `nodes`.

    The forest's edges plus `unary` (inf where a site is ruled out); the upward pass, then
    the roots-to-leaves pass of the same messages in the other direction.
    """
    tree = _root_forest(p, edges, nodes)
    parent, pedge, levels, _ = tree
    subtree, message, _ = _upward(p, unary, tree)
    # the parent's orientation reversed: the message goes down, from parent to child
    orientations = (_Orientation(p.per_byte.T, p.fixed.T), _Orientation(p.per_byte, p.fixed))
    out = subtree.copy()
    for d in range(1, len(levels)):
        level = levels[d]
        es = pedge[level]
        flipped = p.edge_u[es] != parent[level]
        up = out[parent[level]]
        rest = np.where(np.isfinite(up), up - message[level], np.inf)  # the parent's side of the tree
        for o, sel in ((orientations[0], np.nonzero(~flipped)[0]), (orientations[1], np.nonzero(flipped)[0])):
            for lo in range(0, len(sel), 4096):
                part = sel[lo : lo + 4096]
                best, _ = o.messages(rest[part], p.edge_bytes[es[part]], p.edge_count[es[part]])
                out[level[part]] += best
    return out
