"""Exact min-sum variable (bucket) elimination, for components with a small induced width.

Each variable ranges over all sites or, after pruning (`pruning`), over its own short list
of sites; a table's size is the product of its variables' site counts.
"""

from __future__ import annotations

import heapq
import itertools
import math
from typing import TYPE_CHECKING, Sequence

import numpy as np

if TYPE_CHECKING:
    from dagster_gravity.placement.problem import _Problem


def _elimination_order(adj, nodes: list[int], sizes: int | Sequence[int], table_limit: float):
    """Greedy elimination order of `nodes` (smallest table first), and the work it implies.

    ``sizes``: every node's number of sites, or one number for all (then the order is
    min-degree). Returns (order, entries): entries = total table entries built, or
    (None, inf) as soon as one table would exceed `table_limit` entries.
    """
    nbrs = {v: set(adj[v]) for v in nodes}
    if isinstance(sizes, int):
        def table(v):  # every node has `sizes` sites: the smallest table is the lowest degree
            return sizes ** (len(nbrs[v]) + 1)
    else:
        def table(v):  # exact integers: equal tables tie, and ties go to the lower node
            return math.prod([sizes[w] for w in nbrs[v]]) * sizes[v]

    heap = [(table(v), v) for v in nodes]
    heapq.heapify(heap)
    done = set()
    order, work = [], 0.0
    while heap:
        entries, v = heapq.heappop(heap)
        if v in done or entries != table(v):
            continue
        done.add(v)
        order.append(v)
        if entries > table_limit:
            return None, math.inf
        work += entries
        ns = nbrs.pop(v)
        for a in ns:
            nbrs[a].discard(v)
            nbrs[a] |= ns - {a}
        for a in ns:
            heapq.heappush(heap, (table(a), a))
    return order, work


def _solve_elimination(p: _Problem, adj, order: list[int], labels: np.ndarray, unary=None, domains=None) -> None:
    """Exact min-sum variable elimination along `order`; writes the labels of its nodes.

    ``unary`` replaces ``p.unary`` (e.g. conditioned on fixed neighbours, whose edges then
    are left out of `adj`); ``domains[v]`` (site indices) limits node v to those sites.
    """
    S = p.unary.shape[1]
    unary = p.unary if unary is None else unary
    every = np.arange(S)
    dom = {v: every if domains is None else domains[v] for v in order}
    # every factor's scope is a tuple of nodes in increasing order
    factors: dict[int, tuple[tuple[int, ...], np.ndarray]] = {}
    by_var: dict[int, set[int]] = {v: set() for v in order}
    fid = itertools.count()

    def add(scope, table):
        f = next(fid)
        factors[f] = (scope, table)
        for x in scope:
            by_var[x].add(f)

    # the edges among `order`, read from the arrays once
    ids = [e for v in order for w, edges in adj[v].items() if v < w for e in edges]
    ends = dict(zip(ids, zip(p.edge_u[ids].tolist(), p.edge_bytes[ids].tolist(), p.edge_count[ids].tolist())))
    for v in order:
        add((v,), unary[v][dom[v]])
        for w, edges in adj[v].items():
            if v < w:
                dv, dw = dom[v][:, None], dom[w][None, :]
                cost = 0.0
                for e in edges:
                    up, nbytes, count = ends[e]
                    a, b = (dv, dw) if up == v else (dw.T, dv.T)
                    c = nbytes * p.per_byte[a, b] + count * p.fixed[a, b]
                    cost = cost + (c if up == v else c.T)
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
        total = None
        for scope, table in fs:
            if v in scope and scope[0] != v:  # bring v's axis to the front
                k = scope.index(v)
                table = np.moveaxis(table, k, 0)
                scope = (v,) + scope[:k] + scope[k + 1 :]
            shape = [1] * len(axes)
            for x, size in zip(scope, table.shape):
                shape[pos[x]] = size
            table = table.reshape(shape)
            total = table if total is None else total + table
        # (every axis comes with some factor: the sum has the full shape)
        arg = np.argmin(total, axis=0)
        record.append((v, rest, arg))
        if rest:
            add(tuple(rest), total.min(axis=0))
    # backtrack through positions in each domain, then turn them into sites
    pos_of: dict[int, int] = {}
    for v, rest, arg in reversed(record):
        pos_of[v] = int(arg[tuple(pos_of[x] for x in rest)]) if rest else int(arg)
    for v in order:
        labels[v] = int(dom[v][pos_of[v]])
