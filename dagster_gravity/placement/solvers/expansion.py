"""Alpha-expansion: move many steps to one site at once, each move chosen by a minimum cut."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from dagster_gravity.placement.problem import _Problem


def _expansion(p: _Problem, labels: np.ndarray, nodes: np.ndarray, *, sweeps: int = 6) -> np.ndarray:
    """Alpha-expansion moves: for each site a, the best set of steps to move to a at once.

    Each move is a binary problem ("keep my site or switch to a") solved by a minimum cut
    (scipy's maximum_flow). Pairwise terms that break submodularity (a detour through a
    that is cheaper than the direct link) are truncated, so a move is only kept when the
    true score goes down; the score never increases.
    """
    n, S = p.unary.shape
    labels = labels.copy()
    inside = np.zeros(n, dtype=bool)
    inside[nodes] = True
    emask = inside[p.edge_u] & inside[p.edge_v]
    inner = p.edge_u[emask], p.edge_v[emask], p.edge_bytes[emask], p.edge_count[emask]
    # edges to steps outside `nodes` are fixed: they fold into the unary terms
    out1 = np.nonzero(inside[p.edge_u] & ~inside[p.edge_v])[0]
    out2 = np.nonzero(~inside[p.edge_u] & inside[p.edge_v])[0]
    best = p.score(labels)
    idx = np.full(n, -1, dtype=np.int64)
    idx[nodes] = np.arange(len(nodes))
    for _ in range(sweeps):
        improved = False
        for alpha in range(S):
            move = _expansion_move(p, labels, nodes, idx, alpha, inner, out1, out2)
            if move is None or not move.any():
                continue
            trial = labels.copy()
            trial[nodes[move]] = alpha
            score = p.score(trial)
            if score < best - 1e-12 * max(1.0, abs(best)):
                labels, best, improved = trial, score, True
        if not improved:
            break
    return labels


def _expansion_move(p: _Problem, labels, nodes, idx, alpha: int, inner, out1, out2) -> np.ndarray | None:
    """Which of `nodes` to move to site `alpha` (a mask over `nodes`), or None when the
    move's energy is zero everywhere.

    Node i keeps its site (x_i = 0) or moves to alpha (x_i = 1); `inner` holds the edges
    among `nodes` (upstream, downstream, bytes, transfers), `out1`/`out2` the ids of the
    edges whose downstream/upstream step is outside `nodes`.
    """
    eu, ev, eb, ec = inner
    lab = labels[nodes]
    cur_u, new_u = _move_unaries(p, labels, nodes, idx, alpha, out1, out2)
    lu, lv = labels[eu], labels[ev]
    A = eb * p.per_byte[lu, lv] + ec * p.fixed[lu, lv]
    B = eb * p.per_byte[lu, alpha] + ec * p.fixed[lu, alpha]  # u keeps, v moves
    C = eb * p.per_byte[alpha, lv] + ec * p.fixed[alpha, lv]  # u moves, v keeps
    A = np.minimum(A, B + C)  # truncation keeps the move submodular
    # E(xu, xv) with E(1, 1) = 0 (both at alpha):
    # E = A + (C - A) xu + (0 - C) xv + (B + C - A)(1 - xu) xv
    lin_u = C - A
    lin_v = -C
    w = B + C - A
    a_u, a_v = idx[eu], idx[ev]
    # unary: E_i(0) = cur, E_i(1) = new (infinite where alpha is infeasible)
    e1 = new_u.copy()
    e0 = cur_u.copy()
    stay = lab == alpha
    e1[stay] = e0[stay]  # already at alpha: moving changes nothing
    np.add.at(e1, a_u, lin_u)
    np.add.at(e1, a_v, lin_v)
    finite = np.isfinite(e1)
    base = np.minimum(e0, np.where(finite, e1, e0))
    e0, e1 = e0 - base, np.where(finite, e1 - base, 0.0)
    total = float(e0.sum() + e1[finite].sum() + w.sum())
    if total <= 0:
        return None
    source_side = _min_cut_source_side(e0, e1, finite, w, a_u, a_v, total)
    return ~source_side & ~stay & np.isfinite(new_u)


def _move_unaries(p: _Problem, labels, nodes, idx, alpha: int, out1, out2) -> tuple[np.ndarray, np.ndarray]:
    """Per node of `nodes`: its cost where it is and at `alpha`, edges to fixed steps included."""
    lab = labels[nodes]
    cur_u = p.unary[nodes, lab].copy()
    new_u = p.unary[nodes, alpha].copy()
    for es, fixed_end, moving_is_up in ((out1, p.edge_v, True), (out2, p.edge_u, False)):
        if len(es):
            other = labels[fixed_end[es]]
            mv = idx[(p.edge_u if moving_is_up else p.edge_v)[es]]
            mine = labels[nodes][mv]
            if moving_is_up:
                c0 = p.edge_bytes[es] * p.per_byte[mine, other] + p.edge_count[es] * p.fixed[mine, other]
                c1 = p.edge_bytes[es] * p.per_byte[alpha, other] + p.edge_count[es] * p.fixed[alpha, other]
            else:
                c0 = p.edge_bytes[es] * p.per_byte[other, mine] + p.edge_count[es] * p.fixed[other, mine]
                c1 = p.edge_bytes[es] * p.per_byte[other, alpha] + p.edge_count[es] * p.fixed[other, alpha]
            np.add.at(cur_u, mv, c0)
            np.add.at(new_u, mv, c1)
    return cur_u, new_u


def _min_cut_source_side(e0, e1, finite, w, a_u, a_v, total: float) -> np.ndarray:
    """The nodes on the source side (they keep their site) of a minimum cut of the move's graph.

    Source -> i costs e1[i] (paid when i moves; infinite where it may not), i -> sink e0[i]
    (paid when i keeps), u -> v w (paid when u keeps and v moves).
    """
    from scipy.sparse import csr_array
    from scipy.sparse.csgraph import breadth_first_order, maximum_flow

    m = len(e0)
    src, snk = m, m + 1
    # integer capacities (scipy's max flow): scaled so that any cut - and so the
    # flow - stays below 2**30; keeping everyone (cut all sink edges) costs less
    # than an infinite edge, so a minimum cut never takes one
    scale = 2.0**30 / total
    big = 2**30
    cap_t = np.round(e0 * scale).astype(np.int64)  # v -> sink: paid when v keeps
    cap_s = np.where(finite, np.round(e1 * scale), big).astype(np.int64)  # source -> v: paid when v moves
    cap_w = np.round(w * scale).astype(np.int64)
    rows = np.concatenate([np.full(m, src), np.arange(m), a_u])
    cols = np.concatenate([np.arange(m), np.full(m, snk), a_v])
    caps = np.concatenate([cap_s, cap_t, cap_w])
    keep = caps > 0
    graph = csr_array((caps[keep].astype(np.int32), (rows[keep], cols[keep])), shape=(m + 2, m + 2))
    graph.sum_duplicates()
    flow = maximum_flow(graph, src, snk, method="dinic").flow
    residual = (graph - flow).tocsr()
    residual.data = np.where(residual.data > 0, residual.data, 0)
    residual.eliminate_zeros()
    source_side = np.zeros(m + 2, dtype=bool)
    source_side[breadth_first_order(residual, src, directed=True, return_predecessors=False)] = True
    return source_side[:m]
