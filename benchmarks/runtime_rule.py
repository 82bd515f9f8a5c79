"""The executor's per-step rule against the whole-run plan, on the placement benchmark's
ML-shaped workloads (no capacity pressure: every compute pool free).

    .venv/bin/python benchmarks/runtime_rule.py            # 20 seeds x 3 sizes (about a minute)
    .venv/bin/python benchmarks/runtime_rule.py --quick    # 5 seeds, small sizes

Each seed's plan is solved by `place_plan` (the run plan the executor makes at start); then
the steps are replayed one at a time in topological order by `place_step`, each with its
inputs where the replay put their producers:

  greedy    inputs only (the executor's rule before the run plan)
  gravity   inputs, plus each output's trip on to its consumers' planned sites (today's rule)

It prints the median and worst ratio of each replay's cost (`plan_cost`, objective time) to
the plan's; the target is gravity within 5% of the plan on every seed.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from placement import make_topology, ml_workload  # noqa: E402

from dagster_gravity.placement import InputData, Objective, OutputTrip, place_plan, place_step, plan_cost  # noqa: E402


def replay(topo, steps, objective, planned: dict[str, str] | None) -> dict[str, str]:
    """Sites chosen one step at a time; with `planned`, outputs are priced on to their
    consumers' planned sites (one trip per consumer, as the plan counts them)."""
    by_key = {s.key: s for s in steps}
    consumers = defaultdict(list)
    for s in steps:
        for up, nbytes in s.upstream:
            consumers[up].append((s.key, nbytes))
    where: dict[str, str] = {}
    for s in steps:  # the workloads list steps in topological order
        inputs = list(s.external_inputs)
        for up, nbytes in s.upstream:
            inputs.append(InputData(up, nbytes, (where[up],), by_key[up].output_residency))
        if s.output_residency:
            inputs.append(InputData(s.key, 0, tuple(topo.zone_sites(s.output_residency)), s.output_residency, role="output"))
        outputs = []
        if planned is not None:
            outputs = [OutputTrip(f"{s.key}->{c}", nbytes, (planned[c],)) for c, nbytes in consumers[s.key]]
        where[s.key] = place_step(topo, inputs, s.requirements, objective=objective, outputs=outputs).site
    return where


def ratios(n_seeds: int, n_steps: int, n_sites: int, seed0: int = 0):
    objective = Objective.parse("time")
    out = {"greedy": [], "gravity": []}
    for seed in range(seed0, seed0 + n_seeds):
        rng = random.Random(seed)
        topo = make_topology(rng, n_sites)
        steps = ml_workload(rng, topo, n_steps)
        plan = place_plan(topo, steps, objective=objective)
        best = plan_cost(topo, steps, plan.sites, objective)[3]
        for name, planned in (("greedy", None), ("gravity", plan.sites)):
            got = plan_cost(topo, steps, replay(topo, steps, objective, planned), objective)[3]
            out[name].append(got / best if best > 0 else (1.0 if got == 0 else float("inf")))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--seeds", type=int, default=20)
    args = ap.parse_args(argv)
    seeds = 5 if args.quick else args.seeds
    sizes = [(10, 4), (50, 10)] if args.quick else [(10, 4), (50, 10), (200, 20)]
    print(f"Runtime rule replayed against place_plan (objective time, {seeds} seeds per size, no capacity pressure)")
    print(f"{'steps x sites':>14}  {'greedy median':>13}  {'greedy worst':>12}  {'gravity median':>14}  {'gravity worst':>13}")
    ok = True
    for n_steps, n_sites in sizes:
        r = ratios(seeds, n_steps, n_sites)
        ok &= max(r["gravity"]) <= 1.05
        print(
            f"{n_steps:>6} x {n_sites:<5}  {statistics.median(r['greedy']):>12.3f}x  {max(r['greedy']):>11.3f}x"
            f"  {statistics.median(r['gravity']):>13.3f}x  {max(r['gravity']):>12.3f}x"
        )
    print("target (gravity within 5% of the plan on every seed):", "met" if ok else "NOT met")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
