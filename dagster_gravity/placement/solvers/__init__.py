"""Solvers of the plan problem (`dagster_gravity.placement.problem._Problem`).

Each works on the problem's arrays alone and returns labels (a site index per step); none
knows about topologies, links or `PlanStep`s.

* `dispatch` – per connected component, which solver runs (``auto``, ``exact``, ``heuristic``)
* `graph` – adjacency and connected components
* `forest` – exact DP on forests, batched by depth
* `elimination` – exact min-sum variable elimination on low-width graphs, over all sites or
  over each step's own list
* `pruning` – lower bounds that rule out sites, then elimination over the sites left (exact,
  with the proof, where it fits)
* `heuristic` – spanning-forest start, tree-block coordinate descent, and how they alternate
  with `expansion` (alpha-expansion moves by minimum cut)
* `milp` – MILP and LP relaxation on the local polytope (HiGHS through scipy)
* `brute_force` – every assignment, for tests and the benchmark
"""
