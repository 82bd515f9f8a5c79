"""Where each step runs: the cost model and the solvers. Pure Python + numpy, no Dagster.

Cost model (kept apart from the solvers, like SkyPilot's optimizer):

* Moving ``n > 0`` bytes from site ``a`` to site ``b`` takes ``link.seconds(n)`` =
  latency + n / bandwidth and costs ``link.dollars(n)`` = n / 1e9 * usd_per_gb. Data already
  at the site costs nothing.
* An input with several verified replicas is moved from its *cheapest* replica for the
  objective.
* A step's inputs are moved **one after another**: the step's transfer time is the *sum* of
  its inputs' link seconds. (Sequential is what the IO manager does, and it keeps the
  objective a sum of per-transfer terms, which is what makes the plan problem a pairwise
  labelling that can be solved exactly.)
* The objective (`Objective`) turns seconds and dollars into one score, in seconds:
  ``(1 - weight) * seconds + weight * dollars * 3600 / usd_per_hour``.

Per-step decision (`place_step`): every pool of the topology gets a `Candidate` row; pools
that are unhealthy, excluded, fail the step's requirements (pin, pool kind, GPUs) or sit
outside an input's residency zone are infeasible and say why. The feasible pool with the
lowest score (transfer seconds + expected wait for a slot, and dollars) wins; ties go to
fewer bytes moved, then to fewer idle GPUs, then to topology order, so the choice is
deterministic.

Whole-plan decision (`place_plan`): outputs land where their step runs, so choosing a site
per step is a pairwise labelling problem: a unary cost per (step, site) from external
inputs, plus for each upstream edge a cost ``bytes * per_byte[a, b] + latency[a, b]``
between the two steps' sites. Plan cost counts transfers only, not waits for slots (those
are a runtime matter: the executor re-decides each step with `place_step` as it runs), and
counts each edge's transfer separately (two consumers at another site move the data twice).

Solvers (kept apart from the problem; ``benchmarks/placement.py`` measures them, and
``benchmarks/README.md`` records its figures):

* ``"exact"`` – min-sum variable elimination (bucket elimination) with a greedy min-degree
  order. On forests (chains, in-trees, out-trees) this is the O(n·S²) dynamic programme; on
  DAGs it is exact in O(n·S^(w+1)) for induced width w, which stays small on ML-shaped
  DAGs (features -> join -> train -> evaluation fan-out).
* ``"heuristic"`` – exact DP on a maximum-bytes spanning forest, then alpha-expansion by
  minimum cut alternated with tree-block coordinate descent until neither improves (block
  descent alone, in a bounded number of rounds, once steps x sites exceeds
  `EXPANSION_LIMIT`).
* pruning (inside ``auto``) – where elimination over all sites would build a table bigger
  than `EXACT_TABLE_LIMIT` entries or the plan's elimination work would exceed
  `EXACT_WORK_LIMIT`, on components of at most `PRUNE_MAX_STEPS` steps: lower bounds per (step, site) from a spanning forest's min-marginals
  rule out every site that cannot be in a plan cheaper than one in hand (the bounds' own
  best plan, then the best over each step's few lowest-bound sites), and elimination runs
  over the sites left. On the benchmark's ML-shaped plans of 1,000 and 10,000 steps x 50
  sites this proves the optimum on every component (`benchmarks/README.md`); a component
  where the sites left still make a table too big, or a larger one, gets the heuristic.
* ``"milp"`` – the same problem as a MILP (local-polytope linearisation) solved by HiGHS
  through `scipy.optimize.milp`; ``plan_lower_bound`` gives its LP relaxation. Used by the
  benchmark to measure the heuristic's gap.
* ``"brute-force"`` – every assignment of feasible sites, for tests on small plans.
* ``"auto"`` – per connected component: the forest DP on trees, elimination over all sites
  when it stays within the limits, else pruning, else the heuristic.

Modules: `model` (the cost model, objective, inputs and results), `feasibility`
(requirements and residency), `step` (`place_step`), `problem` (a plan as arrays), `plan`
(`place_plan` and its references) and `solvers` (one module per solver).
"""

from dagster_gravity.placement.model import (
    DEFAULT_USD_PER_HOUR,
    PLAN_TIE_BREAK,
    Candidate,
    CostModel,
    InputData,
    Objective,
    OutputTrip,
    Placement,
    PlacementError,
    Requirements,
    Transfer,
    cost_model,
    format_bytes,
    transfers_to,
)
from dagster_gravity.placement.plan import (
    PlanPlacement,
    brute_force_plan,
    check_plan,
    place_plan,
    plan_cost,
    plan_lower_bound,
)
from dagster_gravity.placement.problem import PlanStep
from dagster_gravity.placement.solvers.dispatch import EXACT_TABLE_LIMIT, EXACT_WORK_LIMIT, PRUNE_MAX_STEPS
from dagster_gravity.placement.solvers.heuristic import EXPANSION_LIMIT, LARGE_PLAN_BLOCK_ROUNDS
from dagster_gravity.placement.step import place_step

__all__ = [
    "DEFAULT_USD_PER_HOUR",
    "EXACT_TABLE_LIMIT",
    "EXACT_WORK_LIMIT",
    "EXPANSION_LIMIT",
    "LARGE_PLAN_BLOCK_ROUNDS",
    "PLAN_TIE_BREAK",
    "PRUNE_MAX_STEPS",
    "Candidate",
    "CostModel",
    "InputData",
    "Objective",
    "OutputTrip",
    "Placement",
    "PlacementError",
    "PlanPlacement",
    "PlanStep",
    "Requirements",
    "Transfer",
    "brute_force_plan",
    "check_plan",
    "cost_model",
    "format_bytes",
    "place_plan",
    "place_step",
    "plan_cost",
    "plan_lower_bound",
    "transfers_to",
]
