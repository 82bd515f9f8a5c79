"""The cost model and what goes in and out of a decision.

A topology's links become numpy matrices (`CostModel`, cached per topology by `cost_model`);
an `Objective` turns seconds and dollars into one score. `InputData` and `Requirements`
describe a step; `Candidate`, `Placement` and `PlacementError` are what a decision returns
or raises.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from dagster_gravity.errors import GravityConfigError, GravityError
from dagster_gravity.topology import Links, Topology, default_link

# Weight of transfer seconds added to the pure cost objective inside the plan solvers, to
# break ties among equally cheap plans: small enough not to change which plan is cheaper
# (one GB at $0.01/GB scores 9 s; the tie-break on it is about 1e-11 s).
PLAN_TIE_BREAK = 1e-12

# What one hour of waiting is worth in dollars, so that seconds and dollars add up: about
# the on-demand price of one cloud GPU instance-hour (an A100 40GB is $3-4/h in 2024-2026).
DEFAULT_USD_PER_HOUR = 4.0


@dataclass(frozen=True)
class InputData:
    """One input of a step: data that already exists somewhere."""

    name: str  # e.g. the asset key "raw/events" (for explanations)
    size_bytes: int
    sites: tuple[str, ...]  # sites holding a verified copy, primary first
    residency: str | None = None  # zone the data may not leave (topology.zone_sites)
    role: str = "input"  # how explanations name it: "input", or "output" for a 0-byte stand-in


@dataclass(frozen=True)
class OutputTrip:
    """An output of the step that consumers planned at other sites will need there: running
    the step away from them pays for its trip back (one copy per consumer site)."""

    name: str
    size_bytes: int
    to_sites: tuple[str, ...]  # the sites its consumers are planned at


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
        links = topology.links
        if isinstance(links, Links):
            # default links by array (n**2 Link objects would take minutes at 1,000 sites),
            # then the configured ones; the same floats as Link.seconds/dollars
            self.sec_per_byte, self.latency, self.usd_per_byte = _default_matrices(topology)
            pairs = [((self.index[src], self.index[dst]), link) for (src, dst), link in links.configured.items()]
        else:  # any other mapping of every pair
            self.sec_per_byte, self.latency, self.usd_per_byte = np.zeros((n, n)), np.zeros((n, n)), np.zeros((n, n))
            pairs = [((a, b), topology.link(src, dst)) for a, src in enumerate(self.sites) for b, dst in enumerate(self.sites)]
        for (a, b), link in pairs:
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


def _default_matrices(topology: Topology) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(sec_per_byte, latency, usd_per_byte) of every pair by `default_link` (0 on the diagonal)."""
    sites = list(topology.sites.values())
    n = len(sites)
    _, region = np.unique([s.region for s in sites], return_inverse=True)
    cloud = np.array([s.kind == "cloud" for s in sites])
    # 0: same region, 1: both cloud, 2: otherwise, in default_link's order of rules
    category = np.where(region[:, None] == region[None, :], 0, np.where(cloud[:, None] & cloud[None, :], 1, 2))
    examples = _category_examples()
    sec = np.array([1.0 / link.bandwidth_bytes_per_s for link in examples])[category]
    latency = np.array([link.latency_s for link in examples])[category]
    usd = np.array([link.usd_per_gb / 1e9 for link in examples])[category]
    for matrix in (sec, latency, usd):
        np.fill_diagonal(matrix, 0.0)  # a site's link to itself: free and instant
    return sec.reshape(n, n), latency.reshape(n, n), usd.reshape(n, n)


def _category_examples():
    """default_link of one pair per category: same region, cloud to cloud, other."""
    from dagster_gravity.topology import Site, StorageSpec

    def site(name, region, kind):
        return Site(name, region, kind, StorageSpec("local"), ())

    return (
        default_link(site("a", "r", "cloud"), site("b", "r", "cloud")),
        default_link(site("a", "r1", "cloud"), site("b", "r2", "cloud")),
        default_link(site("a", "r1", "onprem"), site("b", "r2", "cloud")),
    )


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


def check_link_load(link_load: Mapping[tuple[str, str], int] | None) -> dict[tuple[str, str], int]:
    """`link_load` as a plain dict, refusing what is not {(src, dst): transfers >= 0}."""
    out: dict[tuple[str, str], int] = {}
    for pair, count in (link_load or {}).items():
        if not (isinstance(pair, tuple) and len(pair) == 2 and all(isinstance(s, str) for s in pair)):
            raise GravityConfigError(f"link_load key {pair!r}: expected a (source site, destination site) pair")
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise GravityConfigError(f"link_load[{pair!r}] is {count!r}; expected a whole number of transfers >= 0")
        if count and pair[0] != pair[1]:
            out[pair] = count
    return out


def _replica_scores(cm: CostModel, item: InputData, rows: np.ndarray, per_byte, fixed, objective: Objective, link_load):
    """(score, seconds per byte) of copying `item` from each replica row to each site.

    A link that already carries k transfers gives a new one 1/(k+1) of its bandwidth, so
    its per-byte seconds (and the time part of its score) are k+1 times the nominal."""
    sec_per_byte = cm.sec_per_byte[rows]
    if not link_load:
        return item.size_bytes * per_byte[rows] + fixed[rows], sec_per_byte
    share = np.ones((len(rows), len(cm.sites)))
    for (src, dst), count in link_load.items():
        a = cm.site_index(src, f"input {item.name!r}: link_load source")
        share[rows == a, cm.site_index(dst, f"input {item.name!r}: link_load destination")] = 1.0 + count
    extra = (1 - objective.weight) * sec_per_byte * (share - 1.0)
    return item.size_bytes * (per_byte[rows] + extra) + fixed[rows], sec_per_byte * share


def _input_costs(cm: CostModel, inputs: Sequence[InputData], objective: Objective, matrices=None, link_load=None):
    """Per candidate site: (bytes, seconds, dollars, score) of moving every input there.

    Each input comes from its cheapest replica for the objective; inputs already at the
    site cost nothing; transfers add up (sequential). ``link_load`` (see `check_link_load`)
    counts the transfers already in flight per directed link: they share its bandwidth.
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
        scores, sec_per_byte = _replica_scores(cm, item, rows, per_byte, fixed, objective, link_load)
        held = np.zeros(n_sites, dtype=bool)
        held[rows] = True
        pick = np.argmin(scores, axis=0)
        best = rows[pick]
        moved = ~held
        total_bytes += np.where(moved, size, 0)
        total_sec += np.where(moved, cm.latency[best, cols] + size * sec_per_byte[pick, cols], 0.0)
        total_usd += np.where(moved, size * cm.usd_per_byte[best, cols], 0.0)
        total_score += np.where(moved, scores.min(axis=0), 0.0)
    return total_bytes, total_sec, total_usd, total_score


@dataclass(frozen=True)
class Transfer:
    """One input copy a placement implies: over which directed link, how many bytes, and the
    seconds it is expected to take (at its share of the link's bandwidth)."""

    name: str
    src: str
    dst: str
    size_bytes: int
    seconds: float


def transfers_to(
    topology: Topology,
    inputs: Sequence[InputData],
    site: str,
    objective: Objective = Objective(),
    link_load: Mapping[tuple[str, str], int] | None = None,
) -> list[Transfer]:
    """The copies running a step at `site` implies: each input not held there, from the
    replica `place_step` priced (the cheapest for the objective, at the links' loads)."""
    cm = cost_model(topology)
    load = check_link_load(link_load)
    d = cm.site_index(site, "transfer destination")
    per_byte, fixed = cm.matrices(objective)
    out = []
    for item in inputs:
        if item.size_bytes <= 0 or site in item.sites:
            continue
        rows = np.array([cm.site_index(s, f"input {item.name!r}") for s in item.sites], dtype=np.int64)
        scores, sec_per_byte = _replica_scores(cm, item, rows, per_byte, fixed, objective, load)
        k = int(np.argmin(scores[:, d]))
        seconds = float(cm.latency[rows[k], d] + item.size_bytes * sec_per_byte[k, d])
        out.append(Transfer(item.name, cm.sites[rows[k]], site, item.size_bytes, seconds))
    return out


def _output_costs(cm: CostModel, outputs: Sequence[OutputTrip], objective: Objective):
    """Per candidate site: (bytes, seconds, dollars, score) of moving each output from there
    to every consumer site other than the candidate's own."""
    n_sites = len(cm.sites)
    per_byte, fixed = cm.matrices(objective)
    totals = [np.zeros(n_sites) for _ in range(4)]
    for trip in outputs:
        size = trip.size_bytes
        if size < 0:
            raise GravityConfigError(f"output {trip.name!r}: size_bytes is {size}; expected >= 0")
        if size == 0:
            continue
        for dst_site in dict.fromkeys(trip.to_sites):
            d = cm.site_index(dst_site, f"consumer site of output {trip.name!r}")
            moved = np.arange(n_sites) != d
            totals[0] += np.where(moved, size, 0)
            totals[1] += np.where(moved, cm.latency[:, d] + size * cm.sec_per_byte[:, d], 0.0)
            totals[2] += np.where(moved, size * cm.usd_per_byte[:, d], 0.0)
            totals[3] += np.where(moved, size * per_byte[:, d] + fixed[:, d], 0.0)
    return tuple(totals)


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
    output_bytes: int = 0  # outputs' bytes to move on to consumers planned elsewhere
    output_seconds: float = 0.0  # ... and the seconds that takes (dollars include it)


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
                    "output_bytes": int(c.output_bytes),
                    "output_seconds": round(float(c.output_seconds), 6),
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
