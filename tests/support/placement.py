"""Random small topologies and plans for the placement tests (seeded, no Dagster)."""

from __future__ import annotations

import random

from dagster_gravity.placement import InputData, PlanStep, Requirements
from dagster_gravity.topology import Topology


def random_topology(rng: random.Random, n_sites: int, *, zones: bool = True) -> Topology:
    sites = []
    for i in range(n_sites):
        pools = [{"name": "cpu", "slots": rng.randint(1, 3)}]
        if rng.random() < 0.5:
            pools.append({"name": "gpu", "slots": 1, "gpus": rng.choice([1, 2, 4])})
        sites.append(
            {
                "name": f"s{i}",
                "region": rng.choice(["r1", "r2", "r3"]),
                "kind": rng.choice(["cloud", "colo", "onprem"]),
                "storage": {"kind": "local", "path": f"/tmp/gravity-test/s{i}"},
                "pools": pools,
            }
        )
    links = []
    for _ in range(rng.randint(0, n_sites)):
        a, b = rng.sample(range(n_sites), 2) if n_sites > 1 else (0, 0)
        if a != b:
            links.append(
                {
                    "from": f"s{a}",
                    "to": f"s{b}",
                    "bandwidth_gbps": rng.choice([0.1, 1, 10, 40]),
                    "latency_ms": rng.choice([0, 1, 50, 200]),
                    "usd_per_gb": rng.choice([0.0, 0.01, 0.05, 0.12]),
                    "reverse_usd_per_gb": rng.choice([0.0, 0.02, 0.09]),
                }
            )
    residency = {}
    if zones and n_sites > 1:
        residency["z1"] = [f"s{i}" for i in sorted(rng.sample(range(n_sites), rng.randint(1, n_sites - 1)))]
        residency["z2"] = [f"s{i}" for i in sorted(rng.sample(range(n_sites), rng.randint(1, n_sites)))]
    return Topology.from_dict({"sites": sites, "links": _last_per_pair(links), "residency": residency})


def random_plan(rng: random.Random, topology: Topology, n_steps: int, *, p_zone: float = 0.15) -> list[PlanStep]:
    """A random DAG (edges only go to earlier steps) with inputs, pins, GPU needs, zones."""
    site_names = list(topology.sites)
    zones = list(topology.zones)
    steps = []
    for i in range(n_steps):
        inputs = []
        for j in range(rng.choice([0, 0, 1, 1, 2])):
            holders = tuple(rng.sample(site_names, rng.randint(1, min(2, len(site_names)))))
            zone = rng.choice(zones) if zones and rng.random() < p_zone else None
            if zone is not None:
                holders = tuple(s for s in holders if topology.allows(zone, s)) or (sorted(topology.zone_sites(zone))[0],)
            inputs.append(InputData(f"in{i}.{j}", int(10 ** rng.uniform(3, 11)), holders, zone))
        upstream = []
        if i:
            for u in rng.sample(range(i), rng.randint(0, min(3, i))):
                upstream.append((f"t{u}", int(10 ** rng.uniform(0, 11))))
        req = Requirements(
            gpus=rng.choice([0, 0, 0, 0, 0, 1, 2]),
            pin=rng.choice(site_names) if rng.random() < 0.05 else None,
        )
        out_zone = rng.choice(zones) if zones and rng.random() < p_zone else None
        steps.append(PlanStep(f"t{i}", tuple(inputs), tuple(upstream), req, out_zone))
    return steps


def ml_topology(rng: random.Random, n_sites: int) -> Topology:
    """Sites in a few regions (default links between most of them, a few explicit fast or
    slow ones), a CPU pool everywhere and GPU pools at some: the shape of the placement
    benchmark's topologies, small."""
    sites = []
    for i in range(n_sites):
        pools = [{"name": "cpu", "slots": 2}]
        if i == 0 or rng.random() < 0.3:
            pools.append({"name": "gpu", "slots": 1, "gpus": 1})
        sites.append(
            {
                "name": f"s{i}",
                "region": f"r{rng.randrange(max(2, n_sites // 3))}",
                "kind": ["cloud", "colo", "onprem"][i % 3],
                "storage": {"kind": "local", "path": f"/tmp/gravity-test/s{i}"},
                "pools": pools,
            }
        )
    links = []
    for _ in range(n_sites):
        a, b = rng.sample(range(n_sites), 2)
        links.append(
            {
                "from": f"s{a}",
                "to": f"s{b}",
                "bandwidth_gbps": rng.choice([1, 10, 40]),
                "latency_ms": rng.choice([1, 5, 20]),
                "usd_per_gb": rng.choice([0.0, 0.01, 0.02]),
            }
        )
    return Topology.from_dict({"sites": sites, "links": _last_per_pair(links)})


def ml_pipelines(rng: random.Random, topology: Topology, n_pipelines: int) -> list[PlanStep]:
    """ML-shaped pipelines side by side (raw data -> clean -> features -> join -> GPU train ->
    evaluations that also read a holdout feature set -> report): their holdout reads and
    the report's fan-in close cycles, so components are not trees."""
    site_names = list(topology.sites)
    steps: list[PlanStep] = []
    for p in range(n_pipelines):
        features = []
        for d in range(rng.randint(2, 4)):
            raw = InputData(f"p{p}/raw{d}", int(10 ** rng.uniform(6, 10)), (rng.choice(site_names),))
            clean = PlanStep(f"p{p}/clean{d}", (raw,))
            feat = PlanStep(f"p{p}/features{d}", upstream=((clean.key, int(raw.size_bytes * rng.uniform(0.3, 0.8))),))
            steps += [clean, feat]
            features.append((feat.key, int(10 ** rng.uniform(6, 9))))
        steps.append(PlanStep(f"p{p}/join", upstream=tuple(features)))
        steps.append(PlanStep(f"p{p}/train", upstream=((f"p{p}/join", int(10 ** rng.uniform(7, 9))),), requirements=Requirements(gpus=1)))
        evals = []
        for e in range(rng.randint(2, 4)):
            holdout = rng.choice(features)[0]
            ev = PlanStep(f"p{p}/eval{e}", upstream=((f"p{p}/train", int(10 ** rng.uniform(7, 9))), (holdout, int(10 ** rng.uniform(5, 8)))))
            steps.append(ev)
            evals.append((ev.key, int(10 ** rng.uniform(4, 7))))
        steps.append(PlanStep(f"p{p}/report", upstream=tuple(evals)))
    return steps


def _last_per_pair(links: list[dict]) -> list[dict]:
    """The last link drawn between each pair of sites (both_ways: it sets both directions):
    a sites file may not set one pair twice differently, and the draws stay as they were."""
    last = {frozenset((link["from"], link["to"])): link for link in links}
    return list(last.values())
