"""Proving a plan optimal, or finding the optimum, by ruling sites out.

A spanning forest of a component, with each edge left out of it bounded from below (the
edge costs at least its cheapest transfer to a site still allowed at its other end), gives
for every (step, site) a lower bound on the cost of any plan that runs the step there: the
forest's min-marginal. A site whose bound exceeds the cost of a plan in hand cannot be in a
cheaper plan, so it is ruled out; that raises the bounds of the neighbours, so it repeats.
The cheaper the plan in hand, the more goes, so between rounds an exact search over each
step's few sites of lowest bound looks for a cheaper one. On ML-shaped plans almost every
step is left with one site, and exact elimination over the sites left is cheap: the result
is the optimum, with the proof. Components where elimination would still be too large are
reported back (the dispatcher gives them to the heuristic).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from dagster_gravity.placement.solvers.elimination import _elimination_order, _solve_elimination
from dagster_gravity.placement.solvers.forest import _forest_dp, _min_marginals
from dagster_gravity.placement.solvers.graph import _components

if TYPE_CHECKING:
    from dagster_gravity.placement.problem import _Problem

# Rounds of ruling sites out before the first search for a cheaper plan (the first rounds
# rule out most sites; the later ones go faster with the cheaper plan), and at most after.
FIRST_ROUNDS = 2
PRUNE_ROUNDS = 10
# Sites per step (those of lowest bound) in the search for a cheaper plan; doubled for the
# components whose proof did not fit, up to SEARCHES searches.
FEW_SITES = 3
SEARCHES = 3
# A site is ruled out when its bound exceeds the plan in hand by more than this (relative),
# so that rounding in the sums never rules out the plan itself.
RELATIVE_TOLERANCE = 1e-9


def _solve_pruned(p: _Problem, adj, labels: np.ndarray, hard: list[int], tree: np.ndarray, budget: float, table_limit: float):
    """Improve `labels` on the components `hard` (whole components) to their optimum.

    `tree` is a spanning forest of `hard` (edge ids); `budget` bounds the elimination table
    entries built, `table_limit` the entries of one table. Returns the labels (no dearer
    than those given, on every component) and the steps of the components not proven
    optimal: those where elimination over the sites left did not fit.
    """
    state = _Pruning(p, adj, hard, tree, labels)
    active = np.ones(state.n_comps, dtype=bool)
    state.prune(active, FIRST_ROUNDS)
    result = state.labels.copy()
    few, work = FEW_SITES, 0.0
    for _ in range(SEARCHES):
        spent, improved, solved = state.search(active, few, budget - work, table_limit)
        work += spent
        # where the few sites were all the sites left, the search was the exact solve
        result[state.nodes_of(solved)] = state.labels[state.nodes_of(solved)]
        active &= ~solved
        state.prune(active & (improved | state.changing), PRUNE_ROUNDS)
        solved, spent, unproven = state.solve(active, budget - work, table_limit)
        work += spent
        inside = state.nodes_of(active)
        result[inside] = solved[inside]
        active = unproven
        if not active.any():
            break
        few *= 2
    return result, state.nodes_of(active).tolist()


def _cheaper(p: _Problem, adj, labels: np.ndarray, other: np.ndarray, nodes: list[int]) -> np.ndarray:
    """`labels` with each component of `nodes` (whole components) taken from `other` where
    that is cheaper there."""
    nodes_arr = np.array(sorted(nodes), dtype=np.int64)
    comp_of = _component_ids(p, adj, nodes)
    better = _component_costs(p, other, nodes_arr, comp_of) < _component_costs(p, labels, nodes_arr, comp_of)
    take = nodes_arr[better[comp_of[nodes_arr]]]
    out = labels.copy()
    out[take] = other[take]
    return out


def _component_ids(p: _Problem, adj, nodes: list[int]) -> np.ndarray:
    """Per step, the number of its component among those of `nodes` (-1 outside them)."""
    comp_of = np.full(len(p.keys), -1, dtype=np.int64)
    for c, comp in enumerate(_components(adj, nodes)):
        comp_of[comp] = c
    return comp_of


def _component_costs(p: _Problem, labels: np.ndarray, nodes: np.ndarray, comp_of: np.ndarray) -> np.ndarray:
    """The score of `labels` per component of `nodes` (the plan's score splits over them)."""
    k = int(comp_of[nodes].max()) + 1
    cost = np.bincount(comp_of[nodes], weights=p.unary[nodes, labels[nodes]], minlength=k)
    es = np.nonzero(comp_of[p.edge_u] >= 0)[0]
    a, b = labels[p.edge_u[es]], labels[p.edge_v[es]]
    edge = p.edge_bytes[es] * p.per_byte[a, b] + p.edge_count[es] * p.fixed[a, b]
    return cost + np.bincount(comp_of[p.edge_u[es]], weights=edge, minlength=k)


class _Pruning:
    """Ruling sites out on whole components: the sites each step may still take (`allowed`),
    the plan in hand (`labels`) and its cost per component (`ceiling`), the last bounds
    computed (`bound`), and which components' sites changed in their last round
    (`changing`). Any plan cheaper than the plan in hand stays within `allowed`."""

    def __init__(self, p: _Problem, adj, hard: list[int], tree: np.ndarray, labels: np.ndarray):
        self.p, self.adj = p, adj
        self.nodes = np.array(sorted(hard), dtype=np.int64)
        self.comp_of = _component_ids(p, adj, hard)
        self.labels = labels.copy()
        self.ceiling = _component_costs(p, self.labels, self.nodes, self.comp_of)
        self.n_comps = len(self.ceiling)
        self.allowed = np.isfinite(p.unary)
        self.bound = np.zeros(p.unary.shape)
        self.in_tree = np.zeros(len(p.edge_u), dtype=bool)
        self.in_tree[tree] = True
        self.changing = np.ones(self.n_comps, dtype=bool)
        self.narrowed = False  # whether any site has been ruled out yet

    def nodes_of(self, comps: np.ndarray) -> np.ndarray:
        return self.nodes[comps[self.comp_of[self.nodes]]]

    def take(self, trial: np.ndarray) -> np.ndarray:
        """Take `trial` on each component where it is cheaper; which components it was."""
        cost = _component_costs(self.p, trial, self.nodes, self.comp_of)
        better = cost < self.ceiling
        self.labels[self.nodes_of(better)] = trial[self.nodes_of(better)]
        self.ceiling = np.minimum(cost, self.ceiling)
        return better

    def prune(self, active: np.ndarray, rounds: int) -> None:
        """Up to `rounds` rounds on the components marked in `active`; each round recomputes
        only those whose sites changed in the round before. The bounds' own best sites
        make a plan too, taken where it is cheaper."""
        p, comp_of = self.p, self.comp_of
        active = active.copy()
        for _ in range(rounds):
            live = self.nodes_of(active)
            if not len(live):
                break
            edge_live = (comp_of[p.edge_u] >= 0) & active[np.maximum(comp_of[p.edge_u], 0)]
            unary = np.where(self.allowed, p.unary, np.inf)
            if self.narrowed:  # while every site is allowed, the edges' bound is ~0
                _bound_left_out_edges(p, unary, self.allowed, np.nonzero(edge_live & ~self.in_tree)[0])
            bound = _min_marginals(p, unary, np.nonzero(edge_live & self.in_tree)[0], live)
            self.bound[live] = bound[live]
            trial = self.labels.copy()
            trial[live] = np.argmin(bound[live], axis=1)
            self.take(trial)
            limit = self.ceiling + RELATIVE_TOLERANCE * np.maximum(1.0, np.abs(self.ceiling))
            keep = bound[live] <= limit[comp_of[live], None]
            keep[np.arange(len(live)), self.labels[live]] = True  # the plan in hand is never ruled out
            changed = (keep != self.allowed[live]).any(axis=1)
            self.allowed[live] = keep
            self.narrowed = True
            self.changing[active] = False
            self.changing[comp_of[live[changed]]] = True
            active = self.changing & active

    def search(self, active: np.ndarray, few: int, budget: float, table_limit: float):
        """Look for a cheaper plan among each step's `few` allowed sites of lowest bound (an
        exact solve over those); returns (table entries built, components improved,
        components where those were all the sites allowed: solved, and the plan in hand
        is their optimum)."""
        mask = np.zeros_like(self.allowed)
        np.put_along_axis(mask, np.argsort(self.bound, axis=1, kind="stable")[:, :few], True, axis=1)
        mask &= self.allowed
        mask[self.nodes, self.labels[self.nodes]] = True  # the plan in hand is one of them
        nodes = self.nodes_of(active)
        trial, work, unproven = _solve_within(self.p, self.adj, self.labels, nodes, self.comp_of, mask, budget, table_limit)
        improved = self.take(trial) & active
        solved = active.copy()
        solved[self.comp_of[nodes[(mask[nodes] != self.allowed[nodes]).any(axis=1)]]] = False
        solved[self.comp_of[unproven]] = False
        return work, improved, solved

    def solve(self, active: np.ndarray, budget: float, table_limit: float):
        """The optimum over the allowed sites on the components marked in `active`; returns
        (labels, table entries built, components not proven)."""
        labels, work, unproven = _solve_within(
            self.p, self.adj, self.labels, self.nodes_of(active), self.comp_of, self.allowed, budget, table_limit
        )
        out = np.zeros(self.n_comps, dtype=bool)
        out[self.comp_of[unproven]] = True
        return labels, work, out


# Left-out edges whose far end allows at most this many sites are bounded over those sites
# only (a gather); the others over all sites.
NARROW = 8


def _bound_left_out_edges(p: _Problem, unary: np.ndarray, allowed: np.ndarray, edges: np.ndarray) -> None:
    """Add to `unary` a lower bound of each edge in `edges` at one of its ends: for each site
    of that end, the cheapest transfer to a site allowed at the other end.

    The end with more sites allowed takes the bound (its sites are the ones to rule out).
    """
    if not len(edges):
        return
    S = p.unary.shape[1]
    u, v = p.edge_u[edges], p.edge_v[edges]
    width_u, width_v = allowed[u].sum(axis=1), allowed[v].sum(axis=1)
    at_u = width_u >= width_v
    near = np.where(at_u, u, v)  # the end that takes the bound
    far = np.where(at_u, v, u)
    far_width = np.where(at_u, width_v, width_u)
    # per_byte / fixed seen from the near end: [near site, far site]
    for flip in (False, True):
        pb, fx = (p.per_byte.T, p.fixed.T) if flip else (p.per_byte, p.fixed)
        sel = np.nonzero(at_u != flip)[0]
        is_narrow = (far_width[sel] <= NARROW) & (S > NARROW)
        narrow, wide = sel[is_narrow], sel[~is_narrow]
        if len(narrow):
            # the far end's allowed sites, padded with its first one
            order = np.argsort(~allowed[far[narrow]], axis=1, kind="stable")[:, :NARROW]
            pad = np.arange(NARROW)[None, :] < far_width[narrow][:, None]
            sites = np.where(pad, order, order[:, :1])  # (k, NARROW)
            eb, ec = p.edge_bytes[edges[narrow]], p.edge_count[edges[narrow]]
            cost = eb[:, None, None] * pb[:, sites].transpose(1, 0, 2) + ec[:, None, None] * fx[:, sites].transpose(1, 0, 2)
            np.add.at(unary, near[narrow], cost.min(axis=2))
        for lo in range(0, len(wide), 512):
            part = wide[lo : lo + 512]
            eb, ec = p.edge_bytes[edges[part]], p.edge_count[edges[part]]
            cost = eb[:, None, None] * pb[None] + ec[:, None, None] * fx[None]  # [k, near site, far site]
            cost = np.where(allowed[far[part]][:, None, :], cost, np.inf)
            np.add.at(unary, near[part], cost.min(axis=2))


def _solve_within(p: _Problem, adj, labels, nodes, comp_of, allowed, budget: float, table_limit: float):
    """The optimum over the sites left in `allowed` on `nodes` (whole components), part by part.

    Steps left with one site are fixed there; the others fall into independent parts given
    them: tree parts by the forest DP, the rest by elimination while the tables fit `budget`
    in all and `table_limit` each. A part that does not fit keeps its labels, and its
    component is not proven. Returns (labels, table entries built, steps of the components
    not proven).
    """
    labels = labels.copy()
    if not len(nodes):
        return labels, 0.0, nodes
    free = np.zeros(len(p.keys), dtype=bool)
    free[nodes] = allowed[nodes].sum(axis=1) > 1
    fixed = nodes[~free[nodes]]
    labels[fixed] = np.argmax(allowed[fixed], axis=1)
    unary = np.where(allowed, p.unary, np.inf)
    # edges from a free step to a fixed one become part of the free step's unary cost
    up_free, down_free = free[p.edge_u], free[p.edge_v]
    for es, moving, other, moving_is_up in (
        (np.nonzero(up_free & ~down_free)[0], p.edge_u, p.edge_v, True),
        (np.nonzero(~up_free & down_free)[0], p.edge_v, p.edge_u, False),
    ):
        if len(es):
            o = labels[other[es]]
            pb, fx = (p.per_byte[:, o].T, p.fixed[:, o].T) if moving_is_up else (p.per_byte[o], p.fixed[o])
            np.add.at(unary, moving[es], p.edge_bytes[es][:, None] * pb + p.edge_count[es][:, None] * fx)
    free_nodes = nodes[free[nodes]].tolist()
    free_adj = {v: {w: es for w, es in adj[v].items() if free[w]} for v in free_nodes}
    trees, work, unproven = [], 0.0, []
    sizes = allowed.sum(axis=1).tolist()
    for part in _components(free_adj, free_nodes):
        n_edges = sum(len(es) for v in part for es in free_adj[v].values()) // 2
        if n_edges == len(part) - 1:
            trees.extend(part)
            continue
        order, entries = _elimination_order(free_adj, part, sizes, min(table_limit, budget - work))
        if order is None or work + entries > budget:
            unproven.append(int(comp_of[part[0]]))
            continue
        work += entries
        domains = {v: np.nonzero(allowed[v])[0] for v in part}
        _solve_elimination(p, free_adj, order, labels, unary=unary, domains=domains)
    if trees:
        t = np.array(trees, dtype=np.int64)
        inside = np.zeros(len(p.keys), dtype=bool)
        inside[t] = True
        labels[t] = _forest_dp(p, unary, np.nonzero(inside[p.edge_u] & inside[p.edge_v])[0], t)[t]
    return labels, work, nodes[np.isin(comp_of[nodes], unproven)]
