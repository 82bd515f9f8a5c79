"""Exact min-sum variable (bucket) elimination, for components with a small induced width."""

from __future__ import annotations

import heapq
import itertools
import math
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from dagster_gravity.placement.problem import _Problem


def _elimination_order(adj, nodes: list[int], n_sites: int, table_limit: float):
    """Greedy min-degree elimination order of `nodes`, and the work it implies.

    Returns (order, entries): entries = total table entries built (sum of S^(deg+1)), or
    (None, inf) as soon as one table would exceed `table_limit` entries.
    """
    nbrs = {v: set(adj[v]) for v in nodes}
    heap = [(len(nbrs[v]), v) for v in nodes]
    heapq.heapify(heap)
    done = set()
    order, work = [], 0.0
    while heap:
        deg, v = heapq.heappop(heap)
        if v in done or deg != len(nbrs[v]):
            continue
        done.add(v)
        order.append(v)
        entries = float(n_sites) ** (deg + 1)
        if entries > table_limit:
            return None, math.inf
        work += entries
        ns = nbrs.pop(v)
        for a in ns:
            nbrs[a].discard(v)
            nbrs[a] |= ns - {a}
            heapq.heappush(heap, (len(nbrs[a]), a))
    return order, work


def _solve_elimination(p: _Problem, adj, order: list[int], labels: np.ndarray) -> None:
    """Exact min-sum variable elimination along `order`; writes the labels of its nodes."""
    S = p.unary.shape[1]
    factors: dict[int, tuple[tuple[int, ...], np.ndarray]] = {}
    by_var: dict[int, set[int]] = {v: set() for v in order}
    fid = itertools.count()

    def add(scope, table):
        f = next(fid)
        factors[f] = (scope, table)
        for x in scope:
            by_var[x].add(f)

    for v in order:
        add((v,), p.unary[v])
        for w, edges in adj[v].items():
            if v < w:
                cost = np.zeros((S, S))
                for e in edges:
                    c = p.edge_cost(e)
                    cost += c if p.edge_u[e] == v else c.T
                add((v, w), cost)
    record = []
    for v in order:
        fs = []
        for f in sorted(by_var[v]):
            scope, table = factors.pop(f)
            for x in scope:
                by_var[x].discard(f)
            fs.append((scope, table))
        rest = sorted({x for scope, _ in fs for x in scope if x != v})
        axes = [v] + rest
        pos = {x: k for k, x in enumerate(axes)}
        total = np.zeros((S,) * len(axes))
        for scope, table in fs:
            perm = sorted(range(len(scope)), key=lambda k: pos[scope[k]])
            shape = [1] * len(axes)
            for x in scope:
                shape[pos[x]] = S
            total = total + np.transpose(table, perm).reshape(shape)
        arg = np.argmin(total, axis=0)
        record.append((v, rest, arg))
        if rest:
            add(tuple(rest), np.min(total, axis=0))
    for v, rest, arg in reversed(record):
        labels[v] = int(arg[tuple(labels[x] for x in rest)]) if rest else int(arg)
