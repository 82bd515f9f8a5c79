"""A run simulated before it happens: slots, expected durations and the executor's rule.

`simulate_run` plays a plan's steps through the compute pools' slots in simulated time. A
step is ready when its upstream steps have ended; each ready step is placed the way the
executor places it (`place_step` over its inputs where their producers ran, its outputs'
trip on to their consumers' planned sites, and every busy pool's expected wait from
`waits.expected_wait`); it starts at once where a slot is free, else it waits for its
pool. A step takes its transfers (inputs one after another) and then its expected duration.
A copy shares its link with the copies already in flight on it (`place_step`'s
``link_load``): started while k others run, it gets 1/(k+1) of the bandwidth throughout (an
approximation: the ones already running are not slowed down in turn). As in the storage's
single-flight replication, an object is copied into a site once: a later step there reads
that copy, waiting for it when it is still in flight.

``rule="blind"`` is the location-blind reference: each step goes to the first pool (in
topology order) that meets its requirements and has a free slot, and every input it does not
find there moves. Residency is honoured by both.
"""

from __future__ import annotations

import heapq
from collections import defaultdict
from dataclasses import dataclass, field, replace
from typing import Mapping, Sequence

from dagster_gravity.placement.feasibility import _requirement_failures
from dagster_gravity.errors import GravityError
from dagster_gravity.placement.model import InputData, Objective, OutputTrip, transfers_to
from dagster_gravity.placement.problem import PlanStep
from dagster_gravity.placement.step import place_step
from dagster_gravity.placement.waits import DEFAULT_STEP_SECONDS, expected_wait
from dagster_gravity.topology import Topology


# Decisions (one `place_step` each) a simulation may make: a run start must not stall on
# predicting a huge run; beyond it `simulate_run` raises `SimulationTooLarge`.
MAX_DECISIONS = 50_000


class SimulationTooLarge(GravityError):
    """The run is too large to simulate within `MAX_DECISIONS` decisions."""


@dataclass
class SimulatedRun:
    pools: dict[str, str] = field(default_factory=dict)  # step key -> pool id
    starts: dict[str, float] = field(default_factory=dict)  # step key -> simulated start second
    bytes_per_link: dict[tuple[str, str], int] = field(default_factory=dict)
    seconds_per_link: dict[tuple[str, str], float] = field(default_factory=dict)
    dollars_per_link: dict[tuple[str, str], float] = field(default_factory=dict)
    dollars: float = 0.0
    makespan: float = 0.0

    @property
    def bytes_moved(self) -> int:
        return sum(self.bytes_per_link.values())


def simulate_run(
    topology: Topology,
    steps: Sequence[PlanStep],
    durations: Mapping[str, float] | None = None,
    *,
    planned_sites: Mapping[str, str] | None = None,
    objective: Objective = Objective(),
    healthy=None,
    rule: str = "gravity",
    default_seconds: float = DEFAULT_STEP_SECONDS,
    max_decisions: int = MAX_DECISIONS,
) -> SimulatedRun:
    """Simulate `steps` (in topological order); `durations`: step key -> expected seconds.

    As in the executor, at most as many ready steps as there are slots in all are being
    placed at once (Dagster hands out no more); the others wait their turn in order."""
    if rule not in ("gravity", "blind"):
        raise ValueError(f"simulate_run rule: got {rule!r}; expected 'gravity' or 'blind'")
    durations = durations or {}
    planned = dict(planned_sites or {})
    by_key = {s.key: s for s in steps}
    consumers: dict[str, list[tuple[str, int]]] = defaultdict(list)
    for s in steps:
        for up, nbytes in s.upstream:
            consumers[up].append((s.key, nbytes))
    pools = {p.id: p for p in topology.pools if healthy is None or p.id in healthy}
    running: dict[str, list[float]] = {pid: [] for pid in pools}  # pool -> end times of its steps
    left = {s.key: len({u for u, _ in s.upstream}) for s in steps}
    ready = [s.key for s in steps if left[s.key] == 0]
    limit = max(1, sum(p.slots for p in pools.values()))
    decisions = 0
    ends: list[tuple[float, str]] = []
    copies: dict[tuple[str, str], list[float]] = defaultdict(list)  # link -> end times of its copies
    where: dict[str, str] = {}
    arrivals: dict[str, dict[str, float]] = defaultdict(dict)  # object -> site -> when its copy is there
    out = SimulatedRun()
    now = 0.0
    while ready or ends:
        queued: dict[str, list[float]] = defaultdict(list)
        still: list[str] = []
        in_flight = sum(len(ends_at) for ends_at in running.values())
        considered, later = ready[: max(0, limit - in_flight)], ready[max(0, limit - in_flight):]
        for key in considered:
            decisions += 1
            if decisions > max_decisions:
                raise SimulationTooLarge(
                    f"simulating {len(steps)} steps needs more than {max_decisions} placement decisions; not simulated"
                )
            step = by_key[key]
            inputs = _inputs(topology, step, by_key, where, arrivals)
            load = _in_flight(copies, now)
            pool_id = _choose(topology, step, inputs, pools, running, queued, now, planned, consumers, durations,
                              default_seconds, objective, rule, load)
            free = pools[pool_id].slots - len(running[pool_id])
            if free > 0 and not queued.get(pool_id):
                site = pools[pool_id].site
                transfer = _account(topology, inputs, site, out, objective, load, now, copies, arrivals)
                end = now + transfer + durations.get(key, default_seconds)
                running[pool_id].append(end)
                heapq.heappush(ends, (end, key))
                where[key], out.pools[key], out.starts[key] = site, pool_id, now
            else:
                queued[pool_id].append(durations.get(key, default_seconds))
                still.append(key)
        ready = still + later
        if not ends:
            break  # nothing running and nothing can start: cannot happen with >= 1 slot per pool
        now, key = heapq.heappop(ends)
        running[out.pools[key]].remove(now)
        out.makespan = max(out.makespan, now)
        for consumer, _ in consumers[key]:
            left[consumer] -= 1
        for consumer in dict.fromkeys(c for c, _ in consumers[key]):
            if left[consumer] == 0:
                ready.append(consumer)
    return out


def _inputs(topology: Topology, step: PlanStep, by_key, where, arrivals) -> list[InputData]:
    """The step's inputs, each held where it was produced and wherever it was copied (or
    is being copied) earlier in the run."""
    inputs = [_with_copies(i, arrivals) for i in step.external_inputs]
    for up, nbytes in step.upstream:
        inputs.append(_with_copies(InputData(up, nbytes, (where[up],), by_key[up].output_residency), arrivals))
    if step.output_residency:
        inputs.append(InputData(step.key, 0, tuple(topology.zone_sites(step.output_residency)), step.output_residency, role="output"))
    return inputs


def _choose(topology, step, inputs, pools, running, queued, now, planned, consumers, durations, default_seconds, objective, rule, load) -> str:
    if rule == "blind":
        feasible = place_step(topology, inputs, step.requirements, objective=objective, healthy=set(pools)).candidates
        allowed = [c.pool for c in feasible if c.feasible]
        order = [p for p in pools if p in allowed]
        free = [p for p in order if pools[p].slots - len(running[p]) > 0 and not queued.get(p)]
        return free[0] if free else order[0]
    waits = {}
    for pid, pool in pools.items():
        remaining = [end - now for end in running[pid]]
        if pool.slots - len(remaining) > 0 and not queued.get(pid):
            continue
        waits[pid] = expected_wait(pool.slots, remaining, queued.get(pid, ()))
    outputs = [
        OutputTrip(f"{step.key}->{c}", nbytes, (planned[c],)) for c, nbytes in consumers[step.key] if c in planned
    ]
    return place_step(
        topology, inputs, step.requirements, objective=objective, healthy=set(pools), expected_wait=waits,
        outputs=outputs, step=step.key, link_load=load,
    ).pool


def _with_copies(item: InputData, arrivals) -> InputData:
    copied = [site for site in arrivals.get(item.name, ()) if site not in item.sites]
    return replace(item, sites=(*item.sites, *copied)) if copied else item


def _in_flight(copies: Mapping[tuple[str, str], list[float]], now: float) -> dict[tuple[str, str], int]:
    """How many copies each link carries at `now`."""
    counts = {pair: sum(1 for end in ends_at if end > now) for pair, ends_at in copies.items()}
    return {pair: n for pair, n in counts.items() if n}


def _account(topology: Topology, inputs: Sequence[InputData], site: str, out: SimulatedRun, objective: Objective,
             load, now: float, copies, arrivals) -> float:
    """Move every input not at `site` as `place_step` priced it, one after another, each
    at its share of its link; the seconds until all are there (a copy another step started
    into `site` is waited for, not made again)."""
    total = 0.0
    for move in transfers_to(topology, inputs, site, objective, load):
        pair = (move.src, move.dst)
        dollars = topology.link(move.src, move.dst).dollars(move.size_bytes)
        out.bytes_per_link[pair] = out.bytes_per_link.get(pair, 0) + move.size_bytes
        out.seconds_per_link[pair] = out.seconds_per_link.get(pair, 0.0) + move.seconds
        out.dollars_per_link[pair] = out.dollars_per_link.get(pair, 0.0) + dollars
        out.dollars += dollars
        total += move.seconds
        copies[pair].append(now + total)
        arrivals[move.name][site] = now + total
    pending = [arrivals[i.name][site] - now for i in inputs if site in arrivals.get(i.name, ())]
    return max([total, *pending])
