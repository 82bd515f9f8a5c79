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
  `EXPANSION_LIMIT`). ``auto`` uses it where elimination would build a table bigger than
  `EXACT_TABLE_LIMIT` entries or the plan's elimination work would exceed `EXACT_WORK_LIMIT`.
* ``"milp"`` – the same problem as a MILP (local-polytope linearisation) solved by HiGHS
  through `scipy.optimize.milp`; ``plan_lower_bound`` gives its LP relaxation. Used by the
  benchmark to measure the heuristic's gap.
* ``"brute-force"`` – every assignment of feasible sites, for tests on small plans.
* ``"auto"`` – per connected component: exact when the elimination stays within the
  limits, else the heuristic.
"""

from __future__ import annotations

import heapq
import itertools
import math
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Collection, Mapping, Sequence

import numpy as np

from dagster_gravity.errors import GravityConfigError, GravityError
from dagster_gravity.topology import Topology

# The exact solver builds tables of S^(k) entries for an induced width k-1; beyond this many
# entries in one table `auto` switches to the heuristic.
EXACT_TABLE_LIMIT = 2_000_000
# `auto` keeps the exact solver while the whole plan's elimination builds at most this many
# table entries, so large plans stay within their time budget.
EXACT_WORK_LIMIT = 30_000_000
# The heuristic uses alpha-expansion (one minimum cut per site per sweep) while
# steps x sites stays under this; larger plans get only tree-block descent, in a bounded
# number of rounds, so that the largest plans stay within their time budget.
EXPANSION_LIMIT = 100_000
LARGE_PLAN_BLOCK_ROUNDS = 4

# Weight of transfer seconds added to the pure cost objective inside the plan solvers, to
# break ties among equally cheap plans: small enough not to change which plan is cheaper
# (one GB at $0.01/GB scores 9 s; the tie-break on it is about 1e-11 s).
PLAN_TIE_BREAK = 1e-12

# What one hour of waiting is worth in dollars, so that seconds and dollars add up: about
# the on-demand price of one cloud GPU instance-hour (an A100 40GB is $3-4/h in 2024-2026).
DEFAULT_USD_PER_HOUR = 4.0


# --------------------------------------------------------------------------------------
# Inputs of the decision
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class InputData:
    """One input of a step: data that already exists somewhere."""

    name: str  # e.g. the asset key "raw/events" (for explanations)
    size_bytes: int
    sites: tuple[str, ...]  # sites holding a verified copy, primary first
    residency: str | None = None  # zone the data may not leave (topology.zone_sites)
    role: str = "input"  # how explanations name it: "input", or "output" for a 0-byte stand-in
    # that carries the residency of what the step writes


@dataclass(frozen=True)
class Requirements:
    gpus: int = 0  # pool.gpus must be >= this
    pin: str | None = None  # site name the step must run at
    pool_kind: str | None = None  # pool.kind must equal this


@dataclass(frozen=True)
class Objective:
    """What a placement minimises, as one score in seconds.

    ``score = (1 - weight) * seconds + weight * dollars * 3600 / usd_per_hour``

    ``weight`` 0 is time only, 1 is dollars only (scaled to seconds), in between a mix.
    ``usd_per_hour`` is the exchange rate: what one hour of waiting is worth. The default,
    $4/h, is roughly one cloud GPU instance-hour, the thing an ML pipeline waits with.
    """

    weight: float = 0.0
    usd_per_hour: float = DEFAULT_USD_PER_HOUR

    def __post_init__(self):
        if isinstance(self.weight, bool) or not isinstance(self.weight, (int, float)) or not 0.0 <= self.weight <= 1.0:
            raise GravityConfigError(f"objective weight: got {self.weight!r}; expected a number between 0 and 1")
        if (
            isinstance(self.usd_per_hour, bool)
            or not isinstance(self.usd_per_hour, (int, float))
            or not self.usd_per_hour > 0
            or math.isinf(self.usd_per_hour)
        ):
            raise GravityConfigError(f"objective usd_per_hour: got {self.usd_per_hour!r}; expected a positive number")

    @classmethod
    def parse(cls, value) -> "Objective":
        """``"time"``, ``"cost"``, a weight in [0, 1] (number or numeric string), or an Objective."""
        if isinstance(value, Objective):
            return value
        expected = "'time', 'cost' or a weight between 0 and 1"
        if isinstance(value, str):
            text = value.strip().lower()
            if text == "time":
                return cls(0.0)
            if text in ("cost", "dollars"):
                return cls(1.0)
            try:
                value = float(text)
            except ValueError:
                raise GravityConfigError(f"objective: got {value!r}; expected {expected}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
            raise GravityConfigError(f"objective: got {value!r}; expected {expected}")
        return cls(float(value))

    @property
    def seconds_per_dollar(self) -> float:
        return 3600.0 / self.usd_per_hour

    def score(self, seconds: float, dollars: float) -> float:
        return (1.0 - self.weight) * seconds + self.weight * dollars * self.seconds_per_dollar

    def describe(self) -> str:
        if self.weight == 0:
            return "time"
        if self.weight == 1:
            return "cost"
        return f"{self.weight:g} cost / {1 - self.weight:g} time at ${self.usd_per_hour:g}/h"


# --------------------------------------------------------------------------------------
# Cost model: per-topology link matrices
# --------------------------------------------------------------------------------------


class CostModel:
    """The topology's links as numpy matrices indexed by site position.

    ``sec_per_byte[a, b]``, ``latency[a, b]`` and ``usd_per_byte[a, b]`` reproduce
    `Link.seconds` / `Link.dollars` exactly (0 on the diagonal).
    """

    def __init__(self, topology: Topology):
        self.topology = topology
        self.sites: list[str] = list(topology.sites)
        self.index: dict[str, int] = {s: i for i, s in enumerate(self.sites)}
        n = len(self.sites)
        self.sec_per_byte = np.zeros((n, n))
        self.latency = np.zeros((n, n))
        self.usd_per_byte = np.zeros((n, n))
        for a, src in enumerate(self.sites):
            for b, dst in enumerate(self.sites):
                link = topology.link(src, dst)
                if a != b:
                    self.sec_per_byte[a, b] = 1.0 / link.bandwidth_bytes_per_s
                    self.latency[a, b] = link.latency_s
                self.usd_per_byte[a, b] = link.usd_per_gb / 1e9
        self.pools = list(topology.pools)
        self.pool_site = np.array([self.index[p.site] for p in self.pools], dtype=np.int64)
        self._by_objective: dict[object, tuple[np.ndarray, np.ndarray]] = {}

    def matrices(self, objective: Objective) -> tuple[np.ndarray, np.ndarray]:
        """(per_byte, fixed): moving n > 0 bytes a->b scores ``n * per_byte[a,b] + fixed[a,b]``."""
        got = self._by_objective.get(objective)
        if got is None:
            per_byte = (1 - objective.weight) * self.sec_per_byte + objective.weight * objective.seconds_per_dollar * self.usd_per_byte
            fixed = (1 - objective.weight) * self.latency
            np.fill_diagonal(per_byte, 0.0)  # data already at the site costs nothing
            np.fill_diagonal(fixed, 0.0)
            got = self._by_objective[objective] = (per_byte, fixed)
        return got

    def plan_matrices(self, objective: Objective) -> tuple[np.ndarray, np.ndarray]:
        """`matrices` plus, for the pure cost objective, a tie-break toward fewer seconds.

        Under ``cost`` every move over a link with no egress price scores 0, so many plans
        tie and a solver would return any of them, however many bytes it moves.
        `PLAN_TIE_BREAK` seconds per transfer second make the fastest of the equally cheap
        plans win, as `place_step` prefers fewer bytes among equal scores.
        """
        per_byte, fixed = self.matrices(objective)
        if objective.weight < 1.0:
            return per_byte, fixed  # seconds already count
        key = ("tie", objective)
        got = self._by_objective.get(key)
        if got is None:
            got = self._by_objective[key] = (per_byte + PLAN_TIE_BREAK * self.sec_per_byte, fixed + PLAN_TIE_BREAK * self.latency)
        return got

    def site_index(self, site: str, what: str) -> int:
        try:
            return self.index[site]
        except KeyError:
            raise GravityConfigError(f"{what}: {self.topology.unknown_site(site)}") from None


_COST_MODELS: "OrderedDict[int, tuple[Topology, CostModel]]" = OrderedDict()
_COST_MODELS_LOCK = threading.Lock()  # the executor may place steps from several threads


def cost_model(topology: Topology) -> CostModel:
    """The (cached) CostModel of a topology; topologies are immutable, so keyed by identity."""
    key = id(topology)
    with _COST_MODELS_LOCK:
        hit = _COST_MODELS.get(key)
        if hit is not None and hit[0] is topology:
            _COST_MODELS.move_to_end(key)
            return hit[1]
    model = CostModel(topology)
    with _COST_MODELS_LOCK:
        _COST_MODELS[key] = (topology, model)
        while len(_COST_MODELS) > 16:
            _COST_MODELS.popitem(last=False)
    return model


# --------------------------------------------------------------------------------------
# Per-step decision
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Candidate:
    """One row of the explanation table."""

    pool: str  # pool id "site/name"
    site: str
    bytes_moved: int
    transfer_seconds: float
    wait_seconds: float
    dollars: float
    score: float  # objective value (inf when infeasible)
    feasible: bool
    reason: str  # "" when feasible, else which constraint(s) failed


@dataclass(frozen=True)
class Placement:
    pool: str
    site: str
    candidates: tuple[Candidate, ...]  # all pools, best first, infeasible last
    reason: str  # one-line human explanation of the choice

    def as_table(self) -> list[dict]:
        """JSON-able rows (infinite scores become None)."""
        rows = []
        for c in self.candidates:
            rows.append(
                {
                    "pool": c.pool,
                    "site": c.site,
                    "bytes_moved": int(c.bytes_moved),
                    "transfer_seconds": round(float(c.transfer_seconds), 6),
                    "wait_seconds": round(float(c.wait_seconds), 6),
                    "dollars": round(float(c.dollars), 8),
                    "score": None if math.isinf(c.score) else round(float(c.score), 6),
                    "feasible": c.feasible,
                    "reason": c.reason,
                }
            )
        return rows


class PlacementError(GravityError):
    """No healthy pool/site meets a step's requirements and residency.

    The message names the step and lists every pool (or site) with the constraint it fails.
    """

    def __init__(self, message: str, candidates: Sequence[Candidate] = (), step: str | None = None):
        super().__init__(message)
        self.candidates = tuple(candidates)
        self.step = step


def format_bytes(n: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{int(n)} B"


def _zones_of(inputs: Sequence[InputData]) -> list[tuple[str, str, str]]:
    """(zone, role, name) for every input with a residency zone."""
    return [(i.residency, i.role, i.name) for i in inputs if i.residency is not None]


def _residency_failures(
    topology: Topology, zones: Sequence[tuple[str, str, str]], site: str, what: str | None = None
) -> list[str]:
    out = []
    for zone, role, name in zones:
        if not topology.allows(zone, site):
            out.append(f"residency: {what or role} {name!r} may not leave zone {zone!r}")
    return out


def _requirement_failures(pool, req: Requirements) -> list[str]:
    out = []
    if req.pin is not None and pool.site != req.pin:
        out.append(f"pinned to {req.pin!r}")
    if req.pool_kind is not None and pool.kind != req.pool_kind:
        out.append(f"needs pool kind {req.pool_kind!r}, pool is {pool.kind!r}")
    if pool.gpus < req.gpus:
        out.append(f"needs {req.gpus} GPU{'s' if req.gpus != 1 else ''}, pool has {pool.gpus}")
    return out


def _check_requirements(topology: Topology, req: Requirements, what: str) -> None:
    if req.pin is not None and req.pin not in topology.sites:
        raise PlacementError(
            f"{what} is pinned to site {req.pin!r}, which is not in the topology {topology.source}; "
            f"known sites: {', '.join(topology.sites)}",
            step=what,
        )


def _input_costs(cm: CostModel, inputs: Sequence[InputData], objective: Objective, matrices=None):
    """Per candidate site: (bytes, seconds, dollars, score) of moving every input there.

    Each input comes from its cheapest replica for the objective; inputs already at the
    site cost nothing; transfers add up (sequential).
    """
    n_sites = len(cm.sites)
    per_byte, fixed = matrices if matrices is not None else cm.matrices(objective)
    total_bytes = np.zeros(n_sites)
    total_sec = np.zeros(n_sites)
    total_usd = np.zeros(n_sites)
    total_score = np.zeros(n_sites)
    cols = np.arange(n_sites)
    for item in inputs:
        if not item.sites:
            raise GravityConfigError(f"input {item.name!r} has no site holding a copy; expected at least one site")
        size = item.size_bytes
        if size < 0:
            raise GravityConfigError(f"input {item.name!r}: size_bytes is {size}; expected >= 0")
        if size == 0:
            continue
        rows = np.array([cm.site_index(s, f"input {item.name!r}") for s in item.sites], dtype=np.int64)
        scores = size * per_byte[rows] + fixed[rows]  # (replicas, sites)
        held = np.zeros(n_sites, dtype=bool)
        held[rows] = True
        best = rows[np.argmin(scores, axis=0)]
        moved = ~held
        total_bytes += np.where(moved, size, 0)
        total_sec += np.where(moved, cm.latency[best, cols] + size * cm.sec_per_byte[best, cols], 0.0)
        total_usd += np.where(moved, size * cm.usd_per_byte[best, cols], 0.0)
        total_score += np.where(moved, scores.min(axis=0), 0.0)
    return total_bytes, total_sec, total_usd, total_score


def place_step(
    topology: Topology,
    inputs: Sequence[InputData],
    requirements: Requirements = Requirements(),
    *,
    objective: Objective = Objective(),
    healthy: Collection[str] | None = None,
    expected_wait: Mapping[str, float] | None = None,
    exclude: Collection[str] = (),
    step: str | None = None,
) -> Placement:
    """Choose the pool for one step and explain why.

    Scores every pool: the seconds and dollars to move each input that is not already at
    the pool's site (from its cheapest replica; transfers one after another, so seconds
    add up), plus ``expected_wait[pool]`` seconds until a slot frees. The score is
    ``objective.score(transfer_seconds + wait_seconds, dollars)``; the lowest feasible
    score wins, ties broken by fewer bytes moved, then by fewer GPUs left idle (a CPU
    step does not take a GPU pool's slot when a CPU pool is as good), then topology order.

    A pool is infeasible when it is not in ``healthy`` (None means all healthy), is in
    ``exclude``, fails a requirement (pin, pool kind, GPU count), or its site is outside
    the residency zone of any input. Raises `PlacementError` (with ``.candidates``) when no
    pool is feasible; its message lists every pool and the constraint it fails.
    """
    what = f"step {step!r}" if step else "step"
    objective = Objective.parse(objective)
    _check_requirements(topology, requirements, what)
    cm = cost_model(topology)
    nbytes, seconds, dollars, transfer_score = _input_costs(cm, inputs, objective)
    zones = _zones_of(inputs)
    healthy_set = None if healthy is None else set(healthy)
    exclude_set = set(exclude)
    waits = expected_wait or {}
    residency_cache: dict[str, list[str]] = {}
    rows = []
    for i, pool in enumerate(cm.pools):
        s = cm.pool_site[i]
        reasons = []
        if healthy_set is not None and pool.id not in healthy_set:
            reasons.append("unhealthy")
        if pool.id in exclude_set:
            reasons.append("excluded")
        reasons += _requirement_failures(pool, requirements)
        if zones:
            if pool.site not in residency_cache:
                residency_cache[pool.site] = _residency_failures(topology, zones, pool.site)
            reasons += residency_cache[pool.site]
        wait = float(waits.get(pool.id, 0.0))
        if wait < 0 or math.isnan(wait):
            raise GravityConfigError(f"expected_wait[{pool.id!r}] is {wait}; expected seconds >= 0")
        feasible = not reasons
        score = float(transfer_score[s]) + objective.score(wait, 0.0) if feasible else math.inf
        rows.append(
            (
                0 if feasible else 1,
                score,
                int(nbytes[s]),
                pool.gpus - requirements.gpus,
                i,
                Candidate(
                    pool=pool.id,
                    site=pool.site,
                    bytes_moved=int(nbytes[s]),
                    transfer_seconds=float(seconds[s]),
                    wait_seconds=wait,
                    dollars=float(dollars[s]),
                    score=score,
                    feasible=feasible,
                    reason="; ".join(reasons),
                ),
            )
        )
    rows.sort(key=lambda r: r[:5])
    candidates = tuple(r[5] for r in rows)
    best = candidates[0]
    if not best.feasible:
        lines = "\n".join(f"  {c.pool}: {c.reason}" for c in candidates)
        raise PlacementError(f"no pool can run {what}:\n{lines}", candidates, step=step)
    reason = _explain(best, candidates, objective, inputs)
    return Placement(pool=best.pool, site=best.site, candidates=candidates, reason=reason)


def _explain(
    best: Candidate, candidates: Sequence[Candidate], objective: Objective, inputs: Sequence[InputData]
) -> str:
    if best.bytes_moved == 0:
        has_data = any(i.size_bytes > 0 for i in inputs if i.role == "input")
        what = f"all inputs are already at {best.site}" if has_data else "no known input data to move"
    else:
        what = f"moves {format_bytes(best.bytes_moved)} ({best.transfer_seconds:.3g} s, ${best.dollars:.4g})"
    if best.wait_seconds:
        what += f", waits {best.wait_seconds:.3g} s for a slot"
    runner_up = next((c for c in candidates[1:] if c.feasible and c.site != best.site), None)
    if runner_up is None:
        alt = "the only feasible site"
    else:
        alt = (
            f"next best {runner_up.pool} would move {format_bytes(runner_up.bytes_moved)} "
            f"(score {runner_up.score:.3g} vs {best.score:.3g})"
        )
    outputs = [f"{i.name} (residency {i.residency})" for i in inputs if i.role == "output" and i.residency]
    zone = f"; runs in the residency zone of its output {', '.join(outputs)}" if outputs else ""
    return f"{best.pool}: {what}; {alt}; objective {objective.describe()}{zone}"


# --------------------------------------------------------------------------------------
# Whole-plan decision
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PlanStep:
    key: str
    external_inputs: tuple[InputData, ...] = ()
    upstream: tuple[tuple[str, int], ...] = ()  # (upstream step key, bytes it passes here)
    requirements: Requirements = Requirements()
    output_residency: str | None = None  # zone this step's outputs may not leave


@dataclass(frozen=True)
class PlanPlacement:
    sites: dict[str, str]  # step key -> site
    pools: dict[str, str]  # step key -> pool id
    bytes_moved: int
    seconds: float  # total transfer seconds, summed over every transfer (not a makespan)
    dollars: float
    score: float
    method: str  # the solver that produced it: exact, heuristic, milp, brute-force
    lower_bound: float | None = None  # a proven lower bound on the score, when computed
    exact: bool = False  # True when `score` is proven optimal


@dataclass
class _Problem:
    """A plan as arrays: unary costs (inf = infeasible) and weighted edges."""

    keys: list[str]
    unary: np.ndarray  # (n_steps, n_sites)
    edge_u: np.ndarray  # upstream step index
    edge_v: np.ndarray  # downstream step index
    edge_bytes: np.ndarray  # float bytes, > 0 (parallel edges merged: bytes summed)
    edge_count: np.ndarray  # transfers merged into the edge (each pays the link latency)
    per_byte: np.ndarray  # (S, S)
    fixed: np.ndarray  # (S, S)
    pool_choice: list[list[str | None]]  # [step][site] -> pool id to use there
    cm: CostModel = field(repr=False)

    def edge_cost(self, e: int) -> np.ndarray:
        """(S, S) cost of edge e, indexed [site of upstream, site of downstream]."""
        return self.edge_bytes[e] * self.per_byte + self.edge_count[e] * self.fixed

    def score(self, labels: np.ndarray) -> float:
        total = float(self.unary[np.arange(len(labels)), labels].sum())
        lu, lv = labels[self.edge_u], labels[self.edge_v]
        moved = lu != lv
        total += float((self.edge_bytes * self.per_byte[lu, lv] + self.edge_count * self.fixed[lu, lv])[moved].sum())
        return total


def _build_problem(topology: Topology, steps: Sequence[PlanStep], objective: Objective, healthy) -> _Problem:
    cm = cost_model(topology)
    per_byte, fixed = cm.plan_matrices(objective)
    keys = [s.key for s in steps]
    index: dict[str, int] = {}
    for i, s in enumerate(steps):
        if s.key in index:
            raise GravityConfigError(f"plan: step key {s.key!r} appears more than once; expected unique keys")
        index[s.key] = i
    n, n_sites = len(steps), len(cm.sites)
    unary = np.zeros((n, n_sites))
    healthy_set = None if healthy is None else set(healthy)
    merged: dict[tuple[int, int], list[float]] = {}  # (u, v) -> [bytes, transfers]
    pool_choice: list[list[str | None]] = []
    req_cache: dict[tuple, tuple[np.ndarray, list]] = {}
    zone_masks: dict[str, np.ndarray] = {}
    allowed = np.zeros((n, n_sites), dtype=bool)
    one_step: list[int] = []
    one_site: list[int] = []
    one_size: list[float] = []
    for i, step in enumerate(steps):
        what = f"step {step.key!r}"
        req = step.requirements
        _check_requirements(topology, req, what)
        # Which sites have a pool (healthy, meeting the requirements), and which one to use:
        # the qualifying pool with the fewest GPUs (do not hold GPUs a step does not need).
        got = req_cache.get(req)
        if got is None:
            chosen: list[str | None] = [None] * n_sites
            why: list[list[str]] = [[] for _ in range(n_sites)]
            best_gpus = [math.inf] * n_sites
            for p_i, pool in enumerate(cm.pools):
                s = cm.pool_site[p_i]
                fails = (["unhealthy"] if healthy_set is not None and pool.id not in healthy_set else []) + _requirement_failures(pool, req)
                if fails:
                    why[s].append(f"{pool.id}: {', '.join(fails)}")
                elif pool.gpus < best_gpus[s]:
                    best_gpus[s], chosen[s] = pool.gpus, pool.id
            got = req_cache[req] = (np.array([c is not None for c in chosen]), chosen, why)
        has_pool, chosen, why = got
        zones = _zones_of(step.external_inputs)
        if step.output_residency is not None:
            zones.append((step.output_residency, "output", f"{step.key} (its own output)"))
        for up_key, nbytes in step.upstream:
            if up_key not in index:
                raise GravityConfigError(f"plan: {what} reads upstream step {up_key!r}, which is not in the plan")
            if nbytes < 0:
                raise GravityConfigError(f"plan: {what} reads {nbytes} bytes from {up_key!r}; expected >= 0")
            up = steps[index[up_key]]
            if up.output_residency is not None:
                zones.append((up.output_residency, "output", f"{up_key} (upstream output)"))
            if nbytes > 0 and index[up_key] != i:
                acc = merged.setdefault((index[up_key], i), [0.0, 0])
                acc[0] += float(nbytes)
                acc[1] += 1
        for item in step.external_inputs:
            if not item.sites:
                raise GravityConfigError(f"input {item.name!r} has no site holding a copy; expected at least one site")
            if item.size_bytes < 0:
                raise GravityConfigError(f"input {item.name!r}: size_bytes is {item.size_bytes}; expected >= 0")
            if item.size_bytes == 0:
                continue
            if len(item.sites) == 1:
                one_step.append(i)
                one_site.append(cm.site_index(item.sites[0], f"input {item.name!r}"))
                one_size.append(float(item.size_bytes))
            else:
                _, _, _, transfer = _input_costs(cm, (item,), objective, (per_byte, fixed))
                unary[i] += transfer
        mask = has_pool
        for zone, *_ in zones:
            zmask = zone_masks.get(zone)
            if zmask is None:
                members = topology.zone_sites(zone)
                zmask = zone_masks[zone] = np.array([site in members for site in cm.sites])
            mask = mask & zmask
        if not mask.any():
            failures = {}
            for s, site in enumerate(cm.sites):
                reasons = [] if has_pool[s] else ["no pool qualifies (" + "; ".join(why[s]) + ")"]
                reasons += _residency_failures(topology, zones, site, what="data")
                failures[site] = reasons
            lines = "\n".join(f"  {site}: {'; '.join(r)}" for site, r in failures.items())
            raise PlacementError(f"no site can run {what}:\n{lines}", step=step.key)
        allowed[i] = mask
        pool_choice.append(chosen)
    if one_step:
        # inputs with one replica, all at once: moving from site r costs size*per_byte[r] + fixed[r]
        # (zero at r itself, the diagonal being zero)
        r = np.array(one_site, dtype=np.int64)
        np.add.at(unary, np.array(one_step, dtype=np.int64), np.array(one_size)[:, None] * per_byte[r] + fixed[r])
    unary[~allowed] = math.inf
    pairs = list(merged)
    return _Problem(
        keys=keys,
        unary=unary,
        edge_u=np.array([u for u, _ in pairs], dtype=np.int64),
        edge_v=np.array([v for _, v in pairs], dtype=np.int64),
        edge_bytes=np.array([merged[k][0] for k in pairs], dtype=float),
        edge_count=np.array([merged[k][1] for k in pairs], dtype=float),
        per_byte=per_byte,
        fixed=fixed,
        pool_choice=pool_choice,
        cm=cm,
    )


# -- graph helpers ----------------------------------------------------------------------


def _adjacency(p: _Problem) -> list[dict[int, list[int]]]:
    """node -> {neighbour: [edge ids]}."""
    adj: list[dict[int, list[int]]] = [dict() for _ in p.keys]
    for e, (u, v) in enumerate(zip(p.edge_u.tolist(), p.edge_v.tolist())):
        adj[u].setdefault(v, []).append(e)
        adj[v].setdefault(u, []).append(e)
    return adj


def _components(adj) -> list[list[int]]:
    seen = [False] * len(adj)
    out = []
    for root in range(len(adj)):
        if seen[root]:
            continue
        seen[root] = True
        comp, stack = [], [root]
        while stack:
            v = stack.pop()
            comp.append(v)
            for w in adj[v]:
                if not seen[w]:
                    seen[w] = True
                    stack.append(w)
        out.append(comp)
    return out


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


# -- exact on forests: batched dynamic programme ------------------------------------------

class _Orientation:
    """Min-sum messages across edges whose cost matrix is ``bytes * per_byte + count * fixed``,
    indexed [parent site, child site], with a zero diagonal.

    Exact, but pruned: for each edge it tries the child's K cheapest sites and the parent's
    own site; a parent site whose best value could still be beaten by a site outside those
    (checked with a lower bound from the row minima) is recomputed over all sites.
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
        rows = np.arange(k)[:, None]
        if S <= self.K + 1:
            total = nbytes[:, None, None] * self.per_byte + count[:, None, None] * self.fixed + child[:, None, :]
            arg = np.argmin(total, axis=2)
            return np.take_along_axis(total, arg[:, :, None], axis=2)[:, :, 0], arg
        order = np.argpartition(child, self.K, axis=1)
        top = order[:, : self.K]  # (k, K) the child's cheapest sites
        outside = child[rows[:, 0], order[:, self.K]]  # lowest value among the others
        cand = self.per_byte_t[top]  # (k, K child sites, S parent sites): row gathers
        cand *= nbytes[:, None, None]
        extra = self.fixed_t[top]
        extra *= count[:, None, None]
        cand += extra
        cand += np.take_along_axis(child, top, axis=1)[:, :, None]
        j = np.argmin(cand, axis=1)  # (k, S)
        best = np.take_along_axis(cand, j[:, None, :], axis=1)[:, 0, :]
        arg = top[rows, j]
        stay = child < best  # the child at the parent's own site: no transfer
        best = np.where(stay, child, best)
        arg = np.where(stay, np.arange(S)[None, :], arg)
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



def _forest_dp(p: _Problem, unary: np.ndarray, edges: np.ndarray, nodes: np.ndarray) -> np.ndarray:
    """Exact labels of `nodes` when `edges` (among them) form a forest: O(n·S²), batched by depth.

    `unary` holds the (possibly conditioned) unary costs of every node; returns labels for
    all nodes (only `nodes` are meaningful).
    """
    n, S = unary.shape
    unary = unary.copy()
    parent, pedge, levels, roots = _root_forest(p, edges, nodes)
    orientations = (_Orientation(p.per_byte, p.fixed), _Orientation(p.per_byte.T, p.fixed.T))
    back: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for d in range(len(levels) - 1, 0, -1):
        level = levels[d]
        args = np.empty((len(level), S), dtype=np.int64)
        es = pedge[level]
        flipped = p.edge_u[es] != parent[level]  # the child is upstream of its parent
        for o, sel in ((orientations[0], np.nonzero(~flipped)[0]), (orientations[1], np.nonzero(flipped)[0])):
            for lo in range(0, len(sel), 4096):
                part = sel[lo : lo + 4096]
                vs = level[part]
                best, arg = o.messages(unary[vs], p.edge_bytes[es[part]], p.edge_count[es[part]])
                np.add.at(unary, parent[vs], best)
                args[part] = arg
        back[d] = (level, args)
    labels = np.zeros(n, dtype=np.int64)
    r = roots
    labels[r] = np.argmin(unary[r], axis=1)
    for d in range(1, len(levels)):
        level, args = back[d]
        labels[level] = args[np.arange(len(level)), labels[parent[level]]]
    return labels


# -- exact on low-width graphs: min-sum bucket elimination ---------------------------------


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


# -- heuristic: spanning-forest DP, then tree-block coordinate descent ----------------------


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


def _expansion(p: _Problem, labels: np.ndarray, nodes: np.ndarray, *, sweeps: int = 6) -> np.ndarray:
    """Alpha-expansion moves: for each site a, the best set of steps to move to a at once.

    Each move is a binary problem ("keep my site or switch to a") solved by a minimum cut
    (scipy's maximum_flow). Pairwise terms that break submodularity (a detour through a
    that is cheaper than the direct link) are truncated, so a move is only kept when the
    true score goes down; the score never increases.
    """
    from scipy.sparse import csr_array
    from scipy.sparse.csgraph import breadth_first_order, maximum_flow

    n, S = p.unary.shape
    labels = labels.copy()
    inside = np.zeros(n, dtype=bool)
    inside[nodes] = True
    emask = inside[p.edge_u] & inside[p.edge_v]
    eu, ev, eb, ec = p.edge_u[emask], p.edge_v[emask], p.edge_bytes[emask], p.edge_count[emask]
    # edges to steps outside `nodes` are fixed: they fold into the unary terms
    out1 = np.nonzero(inside[p.edge_u] & ~inside[p.edge_v])[0]
    out2 = np.nonzero(~inside[p.edge_u] & inside[p.edge_v])[0]
    best = p.score(labels)
    idx = np.full(n, -1, dtype=np.int64)
    idx[nodes] = np.arange(len(nodes))
    m = len(nodes)
    src, snk = m, m + 1
    for _ in range(sweeps):
        improved = False
        for alpha in range(S):
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
            lu, lv = labels[eu], labels[ev]
            A = eb * p.per_byte[lu, lv] + ec * p.fixed[lu, lv]
            B = eb * p.per_byte[lu, alpha] + ec * p.fixed[lu, alpha]  # u keeps, v moves
            C = eb * p.per_byte[alpha, lv] + ec * p.fixed[alpha, lv]  # u moves, v keeps
            A = np.minimum(A, B + C)  # truncation keeps the move submodular
            # E(xu, xv) = A + (C - A) xu + (B - C... ) : decomposition with D = 0
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
                continue
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
            move = ~source_side[:m] & ~stay & np.isfinite(new_u)
            if not move.any():
                continue
            trial = labels.copy()
            trial[nodes[move]] = alpha
            score = p.score(trial)
            if score < best - 1e-12 * max(1.0, abs(best)):
                labels, best, improved = trial, score, True
        if not improved:
            break
    return labels

def _solve(p: _Problem, method: str) -> tuple[np.ndarray, bool]:
    """Labels for every step, and whether they are proven optimal.

    Each connected component is solved on its own: by the forest DP when it is a tree, by
    variable elimination when its tables stay within `EXACT_TABLE_LIMIT` (``auto``: and the
    whole plan's elimination work within `EXACT_WORK_LIMIT`), else by the heuristic.
    """
    n, S = p.unary.shape
    adj = _adjacency(p)
    labels = np.argmin(p.unary, axis=1)
    forest_nodes, hard = [], []
    budget = EXACT_WORK_LIMIT if method == "auto" else math.inf
    table_limit = EXACT_TABLE_LIMIT if method == "auto" else math.inf
    for comp in _components(adj):
        n_edges = sum(len(edges) for v in comp for edges in adj[v].values()) // 2
        if n_edges == len(comp) - 1 and method != "heuristic":
            forest_nodes.extend(comp)
            continue
        if method == "heuristic":
            hard.extend(comp)
            continue
        order, work = _elimination_order(adj, comp, S, table_limit)
        if order is not None and work <= budget:
            budget -= work
            _solve_elimination(p, adj, order, labels)
        else:
            hard.extend(comp)
    if forest_nodes:
        nodes = np.array(forest_nodes, dtype=np.int64)
        inside = np.zeros(n, dtype=bool)
        inside[nodes] = True
        edges = np.nonzero(inside[p.edge_u])[0]
        labels[nodes] = _forest_dp(p, p.unary, edges, nodes)[nodes]
    if hard:
        nodes = np.array(hard, dtype=np.int64)
        labels[nodes] = _forest_dp(p, p.unary, _spanning_forest(p, nodes), nodes)[nodes]
        if len(nodes) * S <= EXPANSION_LIMIT:
            # alternate the two kinds of move until neither improves: expansion makes the
            # large jumps, block descent the local repairs
            score = p.score(labels)
            for round_ in range(4):
                labels = _expansion(p, labels, nodes)
                labels = _block_descent(p, adj, labels, hard, seed=round_)
                new = p.score(labels)
                if new >= score - 1e-12 * max(1.0, abs(score)):
                    break
                score = new
        else:
            labels = _block_descent(p, adj, labels, hard, rounds=LARGE_PLAN_BLOCK_ROUNDS, patience=2)
    return labels, not hard


# -- MILP / LP on the local polytope ------------------------------------------------------


def _local_polytope(p: _Problem):
    """Variables x[v,s] (feasible pairs) and y[e,a,b]; returns (c, A_eq, b_eq, n_x, x_index)."""
    from scipy import sparse

    n, S = p.unary.shape
    feasible = np.isfinite(p.unary)
    x_index = -np.ones((n, S), dtype=np.int64)
    x_index[feasible] = np.arange(int(feasible.sum()))
    n_x = int(feasible.sum())
    costs = [p.unary[feasible]]
    rows, cols, vals = [], [], []
    # one site per step
    vv, ss = np.nonzero(feasible)
    rows.append(vv)
    cols.append(x_index[vv, ss])
    vals.append(np.ones(len(vv)))
    n_rows = n
    n_var = n_x
    for e in range(len(p.edge_u)):
        u, v = int(p.edge_u[e]), int(p.edge_v[e])
        a_idx, b_idx = np.nonzero(feasible[u])[0], np.nonzero(feasible[v])[0]
        cost = p.edge_cost(e)[np.ix_(a_idx, b_idx)]
        na, nb = len(a_idx), len(b_idx)
        y = n_var + np.arange(na * nb).reshape(na, nb)
        n_var += na * nb
        costs.append(cost.ravel())
        # sum_b y[a, b] - x[u, a] = 0
        rows.append(np.repeat(n_rows + np.arange(na), nb))
        cols.append(y.ravel())
        vals.append(np.ones(na * nb))
        rows.append(n_rows + np.arange(na))
        cols.append(x_index[u, a_idx])
        vals.append(-np.ones(na))
        n_rows += na
        # sum_a y[a, b] - x[v, b] = 0
        rows.append(n_rows + np.tile(np.arange(nb), na))
        cols.append(y.ravel())
        vals.append(np.ones(na * nb))
        rows.append(n_rows + np.arange(nb))
        cols.append(x_index[v, b_idx])
        vals.append(-np.ones(nb))
        n_rows += nb
    A = sparse.csr_array(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n_rows, n_var)
    )
    b = np.zeros(n_rows)
    b[:n] = 1.0
    return np.concatenate(costs), A, b, n_x, x_index


def _solve_milp(p: _Problem, time_limit: float | None = None) -> tuple[np.ndarray, float, bool]:
    from scipy.optimize import Bounds, LinearConstraint, milp

    c, A, b, n_x, x_index = _local_polytope(p)
    integrality = np.zeros(len(c))
    integrality[:n_x] = 1
    options = {"mip_rel_gap": 0.0}
    if time_limit is not None:
        options["time_limit"] = time_limit
    res = milp(c, constraints=LinearConstraint(A, b, b), integrality=integrality, bounds=Bounds(0, 1), options=options)
    if res.x is None:
        raise GravityError(f"MILP solver failed: {res.message}")
    x = res.x[:n_x]
    labels = np.zeros(len(p.keys), dtype=np.int64)
    for v in range(len(p.keys)):
        idx = x_index[v]
        ok = idx >= 0
        labels[v] = int(np.nonzero(ok)[0][np.argmax(x[idx[ok]])])
    bound = getattr(res, "mip_dual_bound", None)
    return labels, (float(bound) if bound is not None else float(res.fun)), bool(res.status == 0)


def plan_lower_bound(topology: Topology, steps: Sequence[PlanStep], *, objective=Objective(), healthy=None) -> float:
    """LP relaxation (local polytope) of the plan problem: a lower bound on any plan's score."""
    from scipy.optimize import linprog

    p = _build_problem(topology, steps, Objective.parse(objective), healthy)
    if len(p.edge_u) == 0:
        return float(np.min(p.unary, axis=1).sum())
    c, A, b, _, _ = _local_polytope(p)
    res = linprog(c, A_eq=A, b_eq=b, bounds=(0, 1), method="highs")
    if res.status != 0:
        raise GravityError(f"LP solver failed: {res.message}")
    return float(res.fun)


# -- the entry points ----------------------------------------------------------------------


def _result(topology, steps, p: _Problem, labels, objective, method, lower_bound=None, exact=False) -> PlanPlacement:
    sites = {k: p.cm.sites[int(l)] for k, l in zip(p.keys, labels)}
    pools = {k: p.pool_choice[i][int(l)] for i, (k, l) in enumerate(zip(p.keys, labels))}
    nbytes, seconds, dollars, score = _plan_metrics(p, labels, steps, objective)
    return PlanPlacement(sites, pools, nbytes, seconds, dollars, score, method, lower_bound, exact)


def _plan_metrics(p: _Problem, labels: np.ndarray, steps, objective: Objective):
    cm = p.cm
    total_b = total_s = total_d = 0.0
    per_byte, fixed = cm.matrices(objective)
    for i, step in enumerate(steps):
        dst = int(labels[i])
        for item in step.external_inputs:
            size = item.size_bytes
            if size <= 0:
                continue
            srcs = [cm.index[site] for site in item.sites]
            if dst in srcs:
                continue
            src = min(srcs, key=lambda r: size * per_byte[r, dst] + fixed[r, dst])
            total_b += size
            total_s += cm.latency[src, dst] + size * cm.sec_per_byte[src, dst]
            total_d += size * cm.usd_per_byte[src, dst]
    lu, lv = labels[p.edge_u], labels[p.edge_v]
    moved = lu != lv
    nb = p.edge_bytes[moved]
    total_b += nb.sum()
    total_s += (p.edge_count[moved] * cm.latency[lu, lv][moved] + nb * cm.sec_per_byte[lu, lv][moved]).sum()
    total_d += (nb * cm.usd_per_byte[lu, lv][moved]).sum()
    return int(round(total_b)), float(total_s), float(total_d), objective.score(float(total_s), float(total_d))


def place_plan(
    topology: Topology,
    steps: Sequence[PlanStep],
    *,
    objective=Objective(),
    healthy: Collection[str] | None = None,
    method: str = "auto",
) -> PlanPlacement:
    """Choose a site (and pool) for every step of a DAG, minimising the total objective.

    ``method``: ``"auto"`` (exact per connected component - forest DP, or variable
    elimination while its tables stay under `EXACT_TABLE_LIMIT` entries and the plan's
    total work under `EXACT_WORK_LIMIT` - else the heuristic for that component),
    ``"exact"`` (always exact, however long it takes), ``"heuristic"`` (spanning-forest DP,
    then expansion and tree-block coordinate descent, everywhere), ``"milp"`` (HiGHS),
    ``"brute-force"``.
    The result's ``exact`` says whether its score is proven optimal.
    Raises `PlacementError` naming the step when a step has no feasible site.
    """
    objective = Objective.parse(objective)
    if method == "brute-force":
        return brute_force_plan(topology, steps, objective=objective, healthy=healthy)
    if method not in ("auto", "exact", "heuristic", "milp"):
        raise GravityConfigError(f"place_plan method: got {method!r}; expected auto, exact, heuristic, milp or brute-force")
    p = _build_problem(topology, steps, objective, healthy)
    if not p.keys:
        return PlanPlacement({}, {}, 0, 0.0, 0.0, 0.0, method, 0.0, True)
    if method == "milp":
        labels, bound, optimal = _solve_milp(p)
        return _result(topology, steps, p, labels, objective, "milp", bound, optimal)
    labels, exact = _solve(p, method)
    return _result(topology, steps, p, labels, objective, "exact" if exact else "heuristic", None, exact)


def plan_cost(topology: Topology, steps: Sequence[PlanStep], sites: Mapping[str, str], objective=Objective()):
    """(bytes moved, seconds, dollars, score) of running each step at ``sites[step.key]``.

    A reference implementation straight from the `Link` objects (independent of the
    solvers' matrices): external inputs move from their cheapest replica for the
    objective; each upstream edge whose two steps run at different sites moves its bytes;
    seconds add up over all transfers. Waits for slots are not counted. Does not check
    feasibility (see `check_plan`).
    """
    objective = Objective.parse(objective)
    where = {}
    for step in steps:
        if step.key not in sites:
            raise GravityConfigError(f"plan_cost: no site given for step {step.key!r}")
        where[step.key] = sites[step.key]
    total_b = 0
    total_s = total_d = 0.0
    for step in steps:
        dst = where[step.key]
        for item in step.external_inputs:
            if item.size_bytes <= 0 or dst in item.sites:
                continue
            options = [topology.link(src, dst) for src in item.sites]
            link = min(options, key=lambda l: objective.score(l.seconds(item.size_bytes), l.dollars(item.size_bytes)))
            total_b += item.size_bytes
            total_s += link.seconds(item.size_bytes)
            total_d += link.dollars(item.size_bytes)
        for up_key, nbytes in step.upstream:
            src = where[up_key]
            if nbytes <= 0 or src == dst or up_key == step.key:
                continue
            link = topology.link(src, dst)
            total_b += nbytes
            total_s += link.seconds(nbytes)
            total_d += link.dollars(nbytes)
    return total_b, total_s, total_d, objective.score(total_s, total_d)


def check_plan(topology: Topology, steps: Sequence[PlanStep], sites: Mapping[str, str], healthy=None) -> list[str]:
    """Every residency / requirement / health violation of an assignment (empty when valid)."""
    by_key = {s.key: s for s in steps}
    healthy_set = None if healthy is None else set(healthy)
    problems = []
    for step in steps:
        site = sites[step.key]
        zones = [(i.residency, i.name) for i in step.external_inputs if i.residency]
        if step.output_residency:
            zones.append((step.output_residency, step.key))
        zones += [(by_key[u].output_residency, u) for u, _ in step.upstream if by_key[u].output_residency]
        for zone, name in zones:
            if not topology.allows(zone, site):
                problems.append(f"{step.key}: at {site}, but {name!r} may not leave zone {zone!r}")
        ok = [
            p
            for p in topology.site(site).pools
            if not _requirement_failures(p, step.requirements) and (healthy_set is None or p.id in healthy_set)
        ]
        if not ok:
            problems.append(f"{step.key}: no healthy pool at {site} meets {step.requirements}")
    return problems


def brute_force_plan(topology: Topology, steps: Sequence[PlanStep], *, objective=Objective(), healthy=None, max_plans: int = 5_000_000) -> PlanPlacement:
    """The optimum by enumerating every assignment of feasible sites (vectorised, chunked).

    Raises `GravityConfigError` (a ValueError) when there are more than ``max_plans`` assignments.
    """
    objective = Objective.parse(objective)
    p = _build_problem(topology, steps, objective, healthy)
    n = len(p.keys)
    if n == 0:
        return PlanPlacement({}, {}, 0, 0.0, 0.0, 0.0, "brute-force", 0.0, True)
    options = [np.nonzero(np.isfinite(p.unary[v]))[0] for v in range(n)]
    count = math.prod(len(o) for o in options)
    if count > max_plans:
        raise GravityConfigError(f"brute_force_plan: {count} assignments; expected at most {max_plans}")
    best_score, best_labels = math.inf, None
    chunk_vars = 0
    # enumerate the last variables inside numpy, the first ones in Python
    inner = 1
    while chunk_vars < n and inner * len(options[n - 1 - chunk_vars]) <= 200_000:
        inner *= len(options[n - 1 - chunk_vars])
        chunk_vars += 1
    outer_vars = n - chunk_vars
    grids = np.meshgrid(*options[outer_vars:], indexing="ij") if chunk_vars else []
    inner_labels = np.stack([g.ravel() for g in grids], axis=1) if chunk_vars else np.zeros((1, 0), dtype=np.int64)
    for prefix in itertools.product(*options[:outer_vars]):
        labels = np.concatenate(
            [np.broadcast_to(np.array(prefix, dtype=np.int64), (len(inner_labels), outer_vars)), inner_labels], axis=1
        )
        total = p.unary[np.arange(n)[None, :], labels].sum(axis=1)
        for e in range(len(p.edge_u)):
            a, b = labels[:, p.edge_u[e]], labels[:, p.edge_v[e]]
            total = total + p.edge_bytes[e] * p.per_byte[a, b] + p.edge_count[e] * p.fixed[a, b]
        k = int(np.argmin(total))
        if total[k] < best_score:
            best_score, best_labels = float(total[k]), labels[k].copy()
    return _result(topology, steps, p, best_labels, objective, "brute-force", best_score, True)
