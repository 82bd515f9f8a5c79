"""Graph helpers shared by the solvers: who is next to whom, and the connected components."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dagster_gravity.placement.problem import _Problem


def _adjacency(p: _Problem) -> list[dict[int, list[int]]]:
    """node -> {neighbour: [edge ids]}."""
    adj: list[dict[int, list[int]]] = [dict() for _ in p.keys]
    for e, (u, v) in enumerate(zip(p.edge_u.tolist(), p.edge_v.tolist())):
        adj[u].setdefault(v, []).append(e)
        adj[v].setdefault(u, []).append(e)
    return adj


def _components(adj, nodes=None) -> list[list[int]]:
    """Connected components of `nodes` (all of `adj`'s by default); `adj` maps each node to
    its neighbours, which must be among `nodes`."""
    seen = set()
    out = []
    for root in range(len(adj)) if nodes is None else nodes:
        if root in seen:
            continue
        seen.add(root)
        comp, stack = [], [root]
        while stack:
            v = stack.pop()
            comp.append(v)
            for w in adj[v]:
                if w not in seen:
                    seen.add(w)
                    stack.append(w)
        out.append(comp)
    return out
