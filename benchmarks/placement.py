"""Placement benchmark: gravity vs location-blind, round-robin and the Dask rule.

    .venv/bin/python benchmarks/placement.py           # full run (about 2 min)
    .venv/bin/python benchmarks/placement.py --quick   # small sizes, a few seconds
    .venv/bin/python benchmarks/placement.py --optimum # + proven optima of the large ML plans (~25 min)

Generated workloads (seeded): random topologies of 3-50 sites (Topology.from_dict) and
ML-shaped plans - raw datasets at their sites (lognormal sizes: many MB-scale, a few
GB-scale; some under EU residency) -> per-dataset clean + feature builds -> a join (fan-in)
-> GPU training -> evaluation fan-out (each evaluation reads the model and a holdout
feature set) -> a report. Large plans are many such pipelines side by side. A second
family, random DAGs (each step reads 1-3 random earlier steps), is the hard case for the
solver's gap measurement.

The whole-plan solver is also run on one ML-shaped plan per seed (--seeds, 5 by default) of
1,000 and 10,000 steps x 50 sites: auto against the heuristic alone, with medians over the
seeds, and with --optimum against HiGHS's proven optimum (1,000 steps); the target is auto
within 1% of the optimum on 1,000 x 50 and under 1 s on 10,000 x 50.

Gravity is run under both objectives the executor offers, 'time' (its default) and 'cost',
next to the fewest bytes any feasible plan could move (the same solver on a bytes-only cost;
a reference, not an objective). The 5x-fewer-bytes-than-blind target is reported per
objective, per workload, as a median and over all workloads together.

Baselines (all respect residency and requirements, falling back to the first feasible site
in topology order when their rule picks an infeasible one):
  blind        every step at one hub site (the site with the most GPUs)
  round-robin  the i-th step at the i-th feasible site, cycling
  dask         the site holding the most input bytes (distributed's decide_worker rule),
               decided in topological order
"""

from __future__ import annotations

import argparse
import math
import os
import random
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dagster_gravity.placement import (  # noqa: E402
    InputData,
    Objective,
    PlanStep,
    Requirements,
    brute_force_plan,
    place_plan,
    place_step,
    plan_cost,
    plan_lower_bound,
)
from dagster_gravity.placement.problem import _build_problem, _Problem  # noqa: E402
from dagster_gravity.placement.solvers.dispatch import _solve  # noqa: E402
from dagster_gravity.placement.solvers.graph import _adjacency, _components  # noqa: E402
from dagster_gravity.placement.solvers.milp import _solve_milp  # noqa: E402
from dagster_gravity.topology import Topology  # noqa: E402

MB, GB = 10**6, 10**9


# -- workloads ----------------------------------------------------------------------------


def make_topology(rng: random.Random, n_sites: int) -> Topology:
    regions = [f"region-{i}" for i in range(max(2, n_sites // 3))]
    sites = []
    for i in range(n_sites):
        kind = ["cloud", "colo", "onprem"][i % 3]
        pools = [{"name": "cpu", "slots": rng.randint(1, 8)}]
        if i == 0 or rng.random() < 0.25:
            pools.append({"name": "gpu", "slots": rng.randint(1, 4), "gpus": rng.choice([1, 2, 8])})
        sites.append(
            {
                "name": f"site{i:02d}",
                "region": rng.choice(regions),
                "kind": kind,
                "storage": {"kind": "local", "path": f"/tmp/gravity-bench/site{i:02d}"},
                "pools": pools,
            }
        )
    links = []
    for _ in range(n_sites):
        a, b = rng.sample(range(n_sites), 2)
        links.append(
            {
                "from": f"site{a:02d}",
                "to": f"site{b:02d}",
                "bandwidth_gbps": rng.choice([1, 10, 40]),
                "latency_ms": rng.choice([1, 5, 20]),
                "usd_per_gb": rng.choice([0.0, 0.01, 0.02]),
            }
        )
    eu = [f"site{i:02d}" for i in range(1, n_sites, 4)] or ["site00"]
    us = [f"site{i:02d}" for i in range(n_sites) if f"site{i:02d}" not in eu]
    # the last link drawn per pair (links set both directions): a sites file may not set a
    # pair twice differently, and the draws, so the workloads, stay as they were
    links = list({frozenset((link["from"], link["to"])): link for link in links}.values())
    return Topology.from_dict({"sites": sites, "links": links, "residency": {"eu": eu, "us": us or eu}})


def size(rng: random.Random, median: float) -> int:
    """Skewed sizes: lognormal with sigma 1.5 (many MB-scale, a few GB-scale)."""
    return max(1, int(rng.lognormvariate(math.log(median), 1.5)))


def ml_pipeline(rng: random.Random, topo: Topology, prefix: str) -> list[PlanStep]:
    sites = list(topo.sites)
    eu = topo.zone_sites("eu")
    steps: list[PlanStep] = []
    features = []
    for d in range(rng.randint(2, 5)):
        home = rng.choice(sites)
        raw_size = size(rng, 300 * MB)
        zone = "eu" if home in eu and rng.random() < 0.5 else None
        raw = InputData(f"{prefix}raw{d}", raw_size, (home,), zone)
        clean = PlanStep(f"{prefix}clean{d}", (raw,), output_residency=zone)
        cleaned = int(raw_size * rng.uniform(0.3, 0.8))
        feat = PlanStep(f"{prefix}features{d}", upstream=((clean.key, cleaned),))
        steps += [clean, feat]
        features.append((feat.key, int(cleaned * rng.uniform(0.05, 0.3))))
    join = PlanStep(f"{prefix}join", upstream=tuple(features))
    joined = int(sum(b for _, b in features) * 0.6)
    train = PlanStep(f"{prefix}train", upstream=((join.key, joined),), requirements=Requirements(gpus=1))
    steps += [join, train]
    model = size(rng, 200 * MB)
    evals = []
    for e in range(rng.randint(2, 4)):
        holdout = rng.choice(features)
        ev = PlanStep(f"{prefix}eval{e}", upstream=((train.key, model), (holdout[0], holdout[1] // 5)))
        steps.append(ev)
        evals.append((ev.key, size(rng, 1 * MB)))
    steps.append(PlanStep(f"{prefix}report", upstream=tuple(evals)))
    return steps


def ml_workload(rng: random.Random, topo: Topology, n_steps: int) -> list[PlanStep]:
    steps: list[PlanStep] = []
    p = 0
    while len(steps) < n_steps:
        steps += ml_pipeline(rng, topo, f"p{p}/")
        p += 1
    # trim to n_steps without dangling upstream references
    keep = steps[:n_steps]
    keys = {s.key for s in keep}
    return [
        PlanStep(s.key, s.external_inputs, tuple(u for u in s.upstream if u[0] in keys), s.requirements, s.output_residency)
        for s in keep
    ]


def random_dag(rng: random.Random, topo: Topology, n_steps: int) -> list[PlanStep]:
    sites = list(topo.sites)
    steps = []
    for i in range(n_steps):
        inputs = ()
        if i < 3 or rng.random() < 0.3:
            inputs = (InputData(f"raw{i}", size(rng, 100 * MB), (rng.choice(sites),)),)
        upstream = tuple((f"s{u}", size(rng, 50 * MB)) for u in rng.sample(range(max(0, i - 30), i), min(i, rng.randint(1, 3))))
        req = Requirements(gpus=1) if rng.random() < 0.05 else Requirements()
        steps.append(PlanStep(f"s{i}", inputs, upstream, req))
    return steps


# -- baselines ----------------------------------------------------------------------------


def feasible_sites(topo, steps, objective):
    p = _build_problem(topo, steps, objective, None)
    return [[p.cm.sites[s] for s in np.nonzero(np.isfinite(p.unary[v]))[0]] for v in range(len(steps))]


def blind(topo, steps, feasible):
    hub = max(topo.sites, key=lambda s: sum(p.gpus * p.slots for p in topo.sites[s].pools))
    return {s.key: hub if hub in f else f[0] for s, f in zip(steps, feasible)}


def round_robin(topo, steps, feasible):
    out = {}
    for i, (s, f) in enumerate(zip(steps, feasible)):
        out[s.key] = f[i % len(f)]
    return out


def dask_rule(topo, steps, feasible):
    out = {}
    for s, f in zip(steps, feasible):
        held: dict[str, int] = {}
        for item in s.external_inputs:
            for site in item.sites:
                held[site] = held.get(site, 0) + item.size_bytes
        for up, nbytes in s.upstream:
            held[out[up]] = held.get(out[up], 0) + nbytes
        ranked = sorted((site for site in held if site in f), key=lambda site: -held[site])
        out[s.key] = ranked[0] if ranked else f[0]
    return out


BASELINES = {"blind": blind, "round-robin": round_robin, "dask": dask_rule}


# -- runs -------------------------------------------------------------------------------


def timed(fn, repeat=1):
    times, result = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return result, statistics.median(times)


def min_bytes_plan(topo, steps):
    """The plan that moves the fewest bytes (every off-site byte costs 1, no latency), solved
    by the same solver: a reference for how few bytes the workload allows, not an objective
    the executor offers. Returns (plan_cost under 'time', proven optimal)."""
    p = _build_problem(topo, steps, Objective(0.0), None)
    sites = p.cm.sites
    unary = np.zeros_like(p.unary)
    for i, step in enumerate(steps):
        for item in step.external_inputs:
            if item.size_bytes > 0:
                unary[i] += np.array([0.0 if s in item.sites else float(item.size_bytes) for s in sites])
    unary[~np.isfinite(p.unary)] = np.inf  # same feasibility (residency, requirements)
    p.unary, p.per_byte, p.fixed = unary, 1.0 - np.eye(len(sites)), np.zeros((len(sites), len(sites)))
    labels, exact = _solve(p, "auto")
    placed = {k: sites[int(l)] for k, l in zip(p.keys, labels)}
    return plan_cost(topo, steps, placed, "time"), exact


def component_optimum(topo, steps, objective, time_limit=30.0):
    """The plan's optimum by HiGHS, one connected component at a time (they are independent,
    so the sum of their dual bounds bounds the whole plan). Returns (labels, bound, proven)."""
    p = _build_problem(topo, steps, objective, None)
    labels, bound, proven = np.argmin(p.unary, axis=1), 0.0, True
    for comp in _components(_adjacency(p)):
        nodes = np.array(sorted(comp), dtype=np.int64)
        idx = np.full(len(p.keys), -1, dtype=np.int64)
        idx[nodes] = np.arange(len(nodes))
        e = idx[p.edge_u] >= 0
        if not e.any():
            bound += float(p.unary[nodes].min(axis=1).sum())
            continue
        sub = _Problem([p.keys[i] for i in nodes], p.unary[nodes], idx[p.edge_u[e]], idx[p.edge_v[e]], p.edge_bytes[e],
                       p.edge_count[e], p.per_byte, p.fixed, [p.pool_choice[i] for i in nodes], p.cm)
        got, b, ok = _solve_milp(sub, time_limit=time_limit)
        labels[nodes], bound, proven = got, bound + b, proven and ok
    return {k: p.cm.sites[int(l)] for k, l in zip(p.keys, labels)}, bound, proven


OBJECTIVES = {"time": Objective.parse("time"), "cost": Objective.parse("cost")}


def compare(rows, label, topo, steps, objective, brute=False, bound=False, objectives=None):
    """One row per workload: gravity under each objective, the baselines, and (ML rows) the
    fewest bytes any plan could move. Baseline plans do not depend on the objective; their
    seconds/dollars are evaluated under `objective`."""
    objectives = objectives or {"time": objective}
    feasible = feasible_sites(topo, steps, objective)
    row = {"workload": label, "steps": len(steps), "sites": len(topo.sites), "methods": {}, "solve_s": {}}
    for name, obj in objectives.items():
        plan, secs = timed(lambda: place_plan(topo, steps, objective=obj))
        row["methods"][name], row["solve_s"][name] = plan.method, secs
        row["gravity/" + name] = plan_cost(topo, steps, plan.sites, obj)
        if brute:
            bf = brute_force_plan(topo, steps, objective=obj)
            opt = plan_cost(topo, steps, bf.sites, obj)[3]
            row.setdefault("optimum", {})[name] = abs(row["gravity/" + name][3] - opt) <= 1e-9 * max(1, opt)
    for name, rule in BASELINES.items():
        row[name] = plan_cost(topo, steps, rule(topo, steps, feasible), objective)
    if label == "ml":
        row["min_bytes_cost"], row["min_bytes_exact"] = min_bytes_plan(topo, steps)
        row["min_bytes"] = row["min_bytes_cost"][0]
    if bound:
        row["bound"] = plan_lower_bound(topo, steps, objective=objective)
    rows.append(row)
    return row


def fmt_b(n):
    return f"{n / GB:9.2f}"


def ratio(blind_bytes, bytes_):
    if bytes_ == 0:
        return "inf" if blind_bytes else "n/a"
    return f"{blind_bytes / bytes_:.1f}x"


def print_comparison(rows, objectives):
    names = [f"gravity/{o}" for o in objectives] + list(BASELINES)
    print("\n== Plan cost: gravity (per objective) vs baselines; GB moved, transfer seconds summed, dollars ==")
    print("   baselines' seconds and $ under objective 'time' (their plans ignore the objective)")
    head = f"{'workload':<10}{'steps':>6}{'sites':>6}  {'method':<9}{'solve s':>8}"
    for n in names:
        head += f" | {n + ' GB':>14}{'s':>9}{'$':>8}"
    head += " | blind/grav bytes: " + " ".join(f"{o:>6}" for o in objectives) + f" {'min':>6}"
    print(head)
    for r in rows:
        first = next(iter(objectives))
        line = f"{r['workload']:<10}{r['steps']:>6}{r['sites']:>6}  {r['methods'][first]:<9}{r['solve_s'][first]:>8.3f}"
        for n in names:
            b, s, d, _ = r[n]
            line += f" | {b / GB:14.2f}{s:9.1f}{d:8.2f}"
        blind_b = r["blind"][0]
        line += " | " + " " * 18 + " ".join(f"{ratio(blind_b, r['gravity/' + o][0]):>6}" for o in objectives)
        line += f" {ratio(blind_b, r['min_bytes']) if 'min_bytes' in r else '':>6}"
        if "optimum" in r:
            line += "  " + ("= opt" if all(r["optimum"].values()) else "DIFF opt")
        print(line)


def bytes_verdict(ml, key, target=5.0):
    """Ratios blind/x over the ML workloads that move anything under blind; (line, median ok)."""
    per = [r["blind"][0] / max(r[key][0] if key != "min_bytes" else r[key], 1) for r in ml if r["blind"][0] > 0]
    big = [x for r, x in zip([r for r in ml if r["blind"][0] > 0], per) if r["steps"] >= 50]
    moved = sum(r[key][0] if key != "min_bytes" else r[key] for r in ml)
    total = sum(r["blind"][0] for r in ml) / max(1, moved)
    below = [f"{x:.1f}x" for x in per if x < target]
    line = (
        f"median {statistics.median(per):5.1f}x (>= 50 steps: {statistics.median(big):5.1f}x), min {min(per):5.1f}x, "
        f"all together {total:5.1f}x; below {target:g}x on {len(below)}/{len(per)} workloads"
        + (f" ({', '.join(below)})" if below else "")
    )
    return line, statistics.median(big) >= target, not below and total >= target


def whole_plan_seeds(args, objective, failures):
    """Section 5: auto against the heuristic alone (what auto ran on these plans before it
    ruled sites out) and, with --optimum, against HiGHS's proven optimum, on ML-shaped plans
    x 50 sites, one plan per seed; medians over the seeds."""
    seeds = list(range(1, (min(2, args.seeds) if args.quick else args.seeds) + 1))
    sizes = [1000] if args.quick else [1000, 10000]
    print(f"\n== Whole-plan solver on ML-shaped plans x 50 sites, seeds {seeds[0]}-{seeds[-1]} (one plan per seed) ==")
    print("   heuristic: spanning-forest DP + expansion / tree-block descent, the solver auto used on these plans")
    print("   before it ruled sites out; auto: rules out sites that cannot beat a plan in hand, then eliminates")
    print("   over the sites left (proven optimal where that fits); times: wall-clock median of 3")
    if args.optimum:
        print("   optimum: HiGHS MILP per connected component (proven unless marked)")
    head = f"  {'steps':>6} {'seed':>4} | {'heuristic':>10} {'s':>6} | {'auto':>10} {'s':>6} {'proven':>6} | {'heur/auto':>9}"
    print(head + (f" | {'optimum':>10} {'auto/opt':>8} {'heur/opt':>8}" if args.optimum else ""))
    for n_steps in sizes:
        ratios, auto_times, heur_times, gaps, proven = [], [], [], [], 0
        for seed in seeds:
            rng = random.Random(seed)
            topo = make_topology(rng, 50)
            steps = ml_workload(rng, topo, n_steps)
            heur, t_heur = timed(lambda: place_plan(topo, steps, objective=objective, method="heuristic"), repeat=3)
            auto, t_auto = timed(lambda: place_plan(topo, steps, objective=objective), repeat=3)
            ratios.append(heur.score / auto.score)
            auto_times.append(t_auto)
            heur_times.append(t_heur)
            proven += auto.exact
            line = (
                f"  {n_steps:>6} {seed:>4} | {heur.score:10.3f} {t_heur:6.3f} | {auto.score:10.3f} {t_auto:6.3f}"
                f" {'yes' if auto.exact else 'no':>6} | {heur.score / auto.score:9.4f}"
            )
            if args.optimum and n_steps <= 1000:
                sites, bound, ok = component_optimum(topo, steps, objective)
                opt = plan_cost(topo, steps, sites, objective)[3]
                gaps.append(auto.score / opt - 1)
                line += f" | {opt:10.3f}{'' if ok else '?'} {auto.score / opt:8.4f} {heur.score / opt:8.4f}"
            print(line)
            if n_steps == 1000 and not auto.exact and not args.optimum:
                failures.append(f"auto not proven optimal on 1000x50 seed {seed} (run --optimum to measure its gap)")
        summary = (
            f"  {n_steps:>6} median: heuristic/auto {statistics.median(ratios):.4f} (max {max(ratios):.4f}),"
            f" auto proven optimal on {proven}/{len(seeds)}, auto {statistics.median(auto_times):.3f} s,"
            f" heuristic {statistics.median(heur_times):.3f} s"
        )
        if gaps:
            summary += f"; auto above the HiGHS optimum by {statistics.median(gaps) * 100:.3f}% median, {max(gaps) * 100:.3f}% max"
            if max(gaps) > 0.01:
                failures.append(f"auto {max(gaps):.2%} above the optimum on 1000x50")
        print(summary)
        if n_steps >= 10000 and statistics.median(auto_times) >= 1:
            failures.append(f"place_plan {n_steps} steps took {statistics.median(auto_times):.2f} s")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes only (a few seconds)")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument(
        "--optimum", action="store_true",
        help="also solve the ML plans of >= 1,000 steps to proven optimality (HiGHS per component; ~25 min on 2 cores)",
    )
    ap.add_argument("--seeds", type=int, default=5, help="plans per size in the whole-plan solver section (5 by default)")
    args = ap.parse_args(argv)
    rng = random.Random(args.seed)
    objective = Objective.parse("time")
    failures = []
    print("Placement benchmark (objective: time; machine shared by other work, timings are medians)")
    print("load average at start (1, 5, 15 min): " + ", ".join(f"{x:.2f}" for x in os.getloadavg()) + f" on {os.cpu_count()} cores")

    # 1. equal to brute force on every small instance
    n_small = 20 if args.quick else 100
    equal = 0
    for i in range(n_small):
        topo = make_topology(rng, rng.randint(3, 4))
        steps = ml_workload(rng, topo, rng.randint(4, 10)) if i % 2 else random_dag(rng, topo, rng.randint(4, 10))
        obj = Objective(rng.choice([0.0, 0.5, 1.0]))
        plan = place_plan(topo, steps, objective=obj)
        bf = brute_force_plan(topo, steps, objective=obj)
        a, b = plan_cost(topo, steps, plan.sites, obj)[3], plan_cost(topo, steps, bf.sites, obj)[3]
        equal += abs(a - b) <= 1e-9 * max(1.0, b)
    print(f"\nExactness: gravity == brute-force optimum on {equal}/{n_small} instances (4-10 steps x 3-4 sites, mixed objectives)")
    if equal != n_small:
        failures.append("not equal to brute force")

    # 2. side-by-side comparison on ML-shaped workloads
    rows, big_ml = [], []
    sizes = [(10, 4), (50, 10), (200, 20)] if args.quick else [(10, 4), (50, 10), (200, 20), (1000, 50), (10000, 50)]
    for n_steps, n_sites in sizes:
        for rep in range(1 if n_steps >= 1000 else 3):
            topo = make_topology(rng, n_sites)
            steps = ml_workload(rng, topo, n_steps)
            compare(rows, "ml", topo, steps, objective, brute=n_steps <= 10, objectives=OBJECTIVES)
            if n_steps >= 1000:
                big_ml.append((topo, steps))
    for n_steps, n_sites in ([(10, 4), (100, 8)] if args.quick else [(10, 4), (300, 8), (1000, 8)]):
        topo = make_topology(rng, n_sites)
        compare(rows, "random-dag", topo, random_dag(rng, topo, n_steps), objective, brute=n_steps <= 10, objectives=OBJECTIVES)
    print_comparison(rows, OBJECTIVES)
    ml = [r for r in rows if r["workload"] == "ml"]
    for name in BASELINES:
        med = statistics.median(r[name][0] / max(r["gravity/time"][0], 1) for r in ml)
        print(f"  {name:<12} moves {med:6.1f}x the bytes of gravity/time (median)")
    print("\nTarget: at least 5x fewer bytes moved than location-blind on the ML-shaped workloads (blind/gravity bytes)")
    for name in OBJECTIVES:
        line, median_ok, every_ok = bytes_verdict(ml, "gravity/" + name)
        verdict = "met on every workload" if every_ok else ("met on the median only" if median_ok else "NOT met")
        print(f"  objective {name:<5} {line}  -> {verdict}")
    line, _, _ = bytes_verdict(ml, "min_bytes")
    print(f"  fewest bytes possible (reference, not an objective) {line}")
    slow = [r["min_bytes_cost"][1] / r["gravity/time"][1] for r in ml if r["gravity/time"][1] > 0]
    dear = [r["min_bytes_cost"][2] / r["gravity/time"][2] for r in ml if r["gravity/time"][2] > 0]
    print(f"  the fewest-bytes plans take {statistics.median(slow):.2f}x the transfer seconds and {statistics.median(dear):.2f}x the dollars of gravity/time (median)")
    print("  'time' minimises transfer seconds: it moves bigger data over fast links when that is quicker, so it")
    print("   moves more bytes than the fewest possible; 'cost' minimises dollars: free links make moving free.")
    print("   The executor's default objective is 'time'; the target is judged (as before) on the time median.")
    if statistics.median(r["blind"][0] / max(r["gravity/time"][0], 1) for r in ml if r["steps"] >= 50) < 5:
        failures.append("less than 5x fewer bytes than blind (median, objective time)")

    if args.optimum:
        print("\n== Objective 'time': gravity (auto) vs the proven optimum on the large ML plans (HiGHS per component) ==")
        for (topo, steps), r in zip(big_ml, [r for r in ml if r["steps"] >= 1000]):
            (sites, bound, proven), secs = timed(lambda: component_optimum(topo, steps, objective))
            opt = plan_cost(topo, steps, sites, objective)
            heur = r["gravity/time"]
            print(
                f"  {r['steps']:>6} steps x {r['sites']} sites: gravity score {heur[3]:9.2f} ({heur[0] / GB:8.2f} GB, {ratio(r['blind'][0], heur[0])} vs blind)"
                f" | optimum {opt[3]:9.2f} ({opt[0] / GB:8.2f} GB, {ratio(r['blind'][0], opt[0])}), bound {bound:9.2f}"
                f"{' proven' if proven else ' (time limit)'} | gap {(heur[3] - bound) / bound * 100:.2f}% | {secs:.0f} s"
            )

    # 3. gap to the best bound on 1,000-step plans
    print("\n== Gap to the best bound on 1,000-step plans ==")
    print("   bound: ML-shaped = the exact optimum (variable elimination, width 2-4);")
    print("          random DAGs = HiGHS MILP dual bound (its optimum when proven within the time limit)")
    gap_sizes = [(200, 6)] if args.quick else [(1000, 8), (1000, 12)]
    for kind, gen in (("ml", ml_workload), ("random-dag", random_dag)):
        for n_steps, n_sites in gap_sizes:
            topo = make_topology(rng, n_sites)
            steps = gen(rng, topo, n_steps)
            auto, t_auto = timed(lambda: place_plan(topo, steps, objective=objective))
            heur, t_heur = timed(lambda: place_plan(topo, steps, objective=objective, method="heuristic"))
            results = [("auto/" + auto.method, auto.score, t_auto), ("heuristic", heur.score, t_heur)]
            if kind == "ml":
                exact, t_exact = timed(lambda: place_plan(topo, steps, objective=objective, method="exact"))
                bound = exact.score
                results.append(("exact", exact.score, t_exact))
            else:
                p = _build_problem(topo, steps, objective, None)
                (labels, bound, proven), t_milp = timed(lambda: _solve_milp(p, time_limit=10 if args.quick else 20))
                results.append(("milp" + (" (optimal)" if proven else " (time limit)"), p.score(labels), t_milp))
            for name, score, t in results:
                gap = (score - bound) / max(bound, 1e-12)
                print(f"  {kind:<10} {n_steps:>5} steps x {n_sites:>2} sites  {name:<20} score {score:12.3f}  gap {gap * 100:7.3f}%  {t:7.3f} s")
                if name.startswith("auto") and gap > 0.01:
                    failures.append(f"auto gap {gap:.3%} on {kind} {n_steps}x{n_sites}")

    # 4. speed
    print("\n== Speed ==")
    topo = make_topology(rng, 50)
    inputs = [InputData(f"in{i}", size(rng, 300 * MB), tuple(rng.sample(list(topo.sites), 2)), "eu" if i == 0 else None) for i in range(4)]
    waits = {p.id: rng.choice([0.0, 0.0, 30.0]) for p in topo.pools}
    place_step(topo, inputs, expected_wait=waits)  # warm the cost-model cache
    times = []
    for _ in range(300 if not args.quick else 50):
        t0 = time.perf_counter()
        place_step(topo, inputs, Requirements(gpus=rng.choice([0, 1])), expected_wait=waits)
        times.append(time.perf_counter() - t0)
    med = statistics.median(times) * 1000
    print(f"  place_step, 4 inputs, 50 sites ({len(topo.pools)} pools): median {med:.3f} ms, p90 {sorted(times)[len(times) * 9 // 10] * 1000:.3f} ms")
    if med >= 1:
        failures.append("place_step median >= 1 ms")
    n_big = 1000 if args.quick else 10000
    steps = ml_workload(rng, topo, n_big)
    for method in ("auto", "heuristic"):
        plan, secs = timed(lambda: place_plan(topo, steps, objective=objective, method=method), repeat=3)
        print(f"  place_plan {n_big} steps x 50 sites, {method:<9}: median {secs:.3f} s (method {plan.method})")
        if method == "auto" and secs >= 1:
            failures.append(f"place_plan {n_big} steps took {secs:.2f} s")
    whole_plan_seeds(args, objective, failures)
    print("\nload average at end (1, 5, 15 min): " + ", ".join(f"{x:.2f}" for x in os.getloadavg()))
    print("\nRESULT:", "all targets met" if not failures else "MISSED: " + "; ".join(failures))
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
