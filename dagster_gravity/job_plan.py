"""`gravity plan`: where each step of a job would run and what would move, without running it.

It makes the executor's run plan (`run_plan.make_run_plan`: the whole job solved at once)
and replays the executor's own per-step decision (`InputLocations` + `place_step`, which
prices each step's outputs' trip on to its consumers' planned sites) over the job's
execution plan in topological order, with every compute pool free: inputs
produced earlier in the job are assumed at the site their step was placed at
(`InputLocations.assume_output_at`), with the size of that asset's latest materialization
(or its definition's `dagster/size_bytes`, else 1 byte: `metadata.UNKNOWN_SIZE`, so moving
it costs a link's latency and the step still follows it); other inputs are where the
instance says they are now.

It then simulates the run (`placement.simulate.simulate_run`): the compute pools' slots,
each step's expected duration from its earlier runs (`step_durations`; 0.5 s,
`DEFAULT_STEP_SECONDS`, when unknown) and the same wait-or-move rule, and prints the
predicted makespan, bytes per link and dollars beside a location-blind run's (each step
on the first compute pool with a free slot). Failures are runtime matters and are not simulated.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from dagster_gravity.errors import GravityConfigError, GravityError
from dagster_gravity.placement import Objective, format_bytes, place_step
from dagster_gravity.topology import Topology


RUN_TIME = "(at run time)"


@dataclass(frozen=True)
class PlannedStep:
    step_key: str
    pool: str | None  # None when no pool may run it
    site: str | None
    bytes_moved: int
    transfer_seconds: float
    dollars: float
    moves: tuple[str, ...]  # "input (size) from site" for each input that would move
    reason: str  # the placement's explanation, or the PlacementError message


def load_job(module: str, job_name: str, attribute: str | None = None):
    """A job definition from `module` (its Definitions object, or a job/`defs` attribute)."""
    from dagster import Definitions, JobDefinition

    mod = importlib.import_module(module)
    if attribute:
        target = getattr(mod, attribute, None)
        if target is None:
            raise GravityConfigError(f"module {module!r} has no attribute {attribute!r}")
        candidates = [target]
    else:
        candidates = [v for v in vars(mod).values() if isinstance(v, (Definitions, JobDefinition))]
    for target in candidates:
        if isinstance(target, JobDefinition) and target.name == job_name:
            return target
        if isinstance(target, Definitions):
            try:
                return target.resolve_job_def(job_name)
            except Exception:
                continue
    raise GravityConfigError(f"no job named {job_name!r} in module {module!r}; expected a Definitions object or a job there")


@dataclass(frozen=True)
class Simulation:
    gravity: Any  # placement.simulate.SimulatedRun
    blind: Any
    # steps with no recorded duration (each expected to take `default_seconds`), of `steps`
    unknown_durations: int = 0
    steps: int = 0
    default_seconds: float = 0.0


def plan_job(job_def, instance, topology: Topology, **options) -> list[PlannedStep]:
    """Where each step would run (see `plan_and_simulate`)."""
    return plan_and_simulate(job_def, instance, topology, **options)[0]


def plan_and_simulate(
    job_def,
    instance,
    topology: Topology,
    *,
    objective: Any = "time",
    run_config: Mapping[str, Any] | None = None,
    disabled_pools: Sequence[str] = (),
    partition: str | None = None,
) -> tuple[list[PlannedStep], Simulation | None]:
    """The planned steps, and the simulated run beside a location-blind one (None when the
    run cannot be planned: some step has no site)."""
    from dagster_gravity.dagster_internals import ExecutionStep, create_execution_plan
    from dagster_gravity.placement.simulate import simulate_run
    from dagster_gravity.step_durations import DurationEstimates, expected_durations
    from dagster_gravity.input_locations import InputLocations, requirements_for
    from dagster_gravity.link_measurements import measured_links, with_measured_links
    from dagster_gravity.run_plan import make_run_plan

    objective = Objective.parse(objective)
    plan = create_execution_plan(job_def, run_config=run_config or {})
    topology = with_measured_links(topology, measured_links(instance, topology.sites))  # as the executor does
    locations = InputLocations(instance, job_def, topology, partition=partition)
    healthy = {p.id for p in topology.pools if p.id not in disabled_pools and p.site not in disabled_pools}
    run_plan = make_run_plan(
        [s for s in plan.get_all_steps_in_topo_order() if isinstance(s, ExecutionStep)],
        locations, topology, objective, healthy,
    )
    out: list[PlannedStep] = []
    for step in plan.get_all_steps_in_topo_order():
        if not isinstance(step, ExecutionStep):
            out.append(
                PlannedStep(step.key, RUN_TIME, None, 0, 0.0, 0.0, (), "a dynamic step: placed when its upstream's outputs resolve")
            )
            continue
        notes: list[str] = []
        try:
            inputs = locations.inputs_for(step, notes)
            placement = place_step(
                topology, [*inputs, *locations.output_residency(step)], requirements_for(step),
                objective=objective, healthy=healthy, step=step.key,
                outputs=run_plan.output_trips(step.key, locations.step_sites),
            )
        except GravityError as exc:  # PlacementError, or a bad op tag / location metadata
            out.append(PlannedStep(step.key, None, None, 0, 0.0, 0.0, (), "\n".join([str(exc), *notes])))
            continue
        chosen = next(c for c in placement.candidates if c.pool == placement.pool)
        moves = tuple(
            f"{i.name} ({format_bytes(i.size_bytes) if i.size_bytes > 1 else 'size unknown'}) from {i.sites[0]}"
            for i in inputs
            if i.size_bytes > 0 and placement.site not in i.sites
        )
        out.append(
            PlannedStep(
                step.key, placement.pool, placement.site, int(chosen.bytes_moved),
                float(chosen.transfer_seconds), float(chosen.dollars), moves,
                " | ".join([placement.reason, *notes]),
            )
        )
        for output in step.step_outputs:  # its outputs land where it runs
            locations.assume_output_at(step, output.name, placement.site)
    simulation = None
    from dagster_gravity.placement.simulate import SimulationTooLarge

    if run_plan.error is None:
        estimates = DurationEstimates(expected_durations(instance, job_def.name))
        durations = {s.key: estimates.expected(s.key) for s in run_plan.steps}
        options = dict(objective=objective, healthy=healthy)
        try:
            simulation = Simulation(
                simulate_run(topology, run_plan.steps, durations, planned_sites=run_plan.sites, **options),
                simulate_run(topology, run_plan.steps, durations, rule="blind", **options),
                unknown_durations=sum(not estimates.known(s.key) for s in run_plan.steps),
                steps=len(run_plan.steps), default_seconds=estimates.default,
            )
        except SimulationTooLarge:
            simulation = None  # the plan is still printed; the simulation is left out
    return out, simulation


def format_simulation(sim: Simulation) -> str:
    """Predicted makespan, bytes per link and dollars, gravity beside location-blind."""
    g, b = sim.gravity, sim.blind
    lines = ["simulated run (slots, expected durations, the executor's rule):"]
    lines.append(f"  {'':14} {'makespan s':>10} {'moved':>10} {'$':>8}")
    for name, r in (("gravity", g), ("location-blind", b)):
        lines.append(f"  {name:14} {r.makespan:>10.3g} {format_bytes(r.bytes_moved):>10} {r.dollars:>8.4g}")
    if g.makespan > 0:
        lines.append(f"  location-blind / gravity: {b.makespan / g.makespan:.2f}x makespan, "
                     + (f"{b.bytes_moved / g.bytes_moved:.1f}x bytes" if g.bytes_moved else f"{format_bytes(b.bytes_moved)} vs nothing moved"))
    for (src, dst), nbytes in sorted(g.bytes_per_link.items()):
        lines.append(f"  gravity moves {format_bytes(nbytes)} {src} -> {dst} ({g.seconds_per_link[(src, dst)]:.3g} s)")
    if sim.unknown_durations:  # a first run's makespans are the default's, not the job's
        lines.append(f"  {sim.unknown_durations} of {sim.steps} steps have no recorded duration: each is expected "
                     f"to take {sim.default_seconds:g} s (DEFAULT_STEP_SECONDS) until a run of the job records it")
    return "\n".join(lines)


def format_plan(steps: Sequence[PlannedStep]) -> str:
    rows = [("step", "pool", "moves", "transfer s", "$", "why")]
    for s in steps:
        rows.append(
            (
                s.step_key,
                s.pool or "CANNOT RUN",
                "; ".join(s.moves) if s.moves else "nothing",
                f"{s.transfer_seconds:.3g}",
                f"{s.dollars:.4g}",
                s.reason.splitlines()[0] if s.pool else s.reason.replace("\n", " ").replace("  ", " "),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = []
    for r in rows:
        lines.append("  ".join(r[i].ljust(widths[i]) for i in range(5)) + "  " + r[5])
    total = sum(s.bytes_moved for s in steps)
    dollars = sum(s.dollars for s in steps)
    lines.append(f"\n{len(steps)} steps; {format_bytes(total)} would move; ${dollars:.4g} egress")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------
# The `gravity plan` subcommand (cli.py registers it with `add_plan_command`)
# --------------------------------------------------------------------------------------


def add_plan_command(subparsers) -> None:
    parser = subparsers.add_parser(
        "plan",
        help="where each step of a job would run and what would move, without running it",
        description=__doc__.split("\n\n")[0],
    )
    parser.add_argument("-m", "--module", required=True, help="module holding the Definitions (e.g. pipelines.definitions)")
    parser.add_argument("-j", "--job", required=True, help="job name")
    parser.add_argument("-a", "--attribute", default=None, help="attribute of the module: a Definitions object or a job")
    parser.add_argument("--sites", default=None, help="sites file (default: $GRAVITY_SITES, else sites.yaml)")
    parser.add_argument("--objective", default="time", help="'time', 'cost' or a weight in [0, 1]")
    parser.add_argument("--partition", default=None, help="partition key of the run to plan (default: latest of any)")
    parser.add_argument("--disable", action="append", default=[], help="a pool id or site to treat as out of service (repeatable)")
    parser.add_argument("--json", action="store_true", help="print JSON rows instead of a table")
    parser.set_defaults(func=run_plan_command)


def run_plan_command(args) -> int:
    import json
    import os
    import sys

    from dagster import DagsterInstance

    from dagster_gravity.topology import TopologyError, resolve_sites_path

    def usage_error(message: str) -> int:  # as `gravity sites`: the message, no traceback
        print(f"gravity plan: {message}", file=sys.stderr)
        return 2

    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # `-m pipelines.definitions` from the project root
    try:
        objective = Objective.parse(args.objective)
    except GravityConfigError as exc:
        return usage_error(str(exc))
    try:
        topology = Topology.from_yaml(resolve_sites_path(args.sites))
    except TopologyError as exc:
        return usage_error(str(exc))
    try:
        job_def = load_job(args.module, args.job, args.attribute)
    except ImportError as exc:
        return usage_error(f"cannot import module {args.module!r}: {exc}")
    except GravityConfigError as exc:
        return usage_error(str(exc))
    unknown = [name for name in args.disable if name not in topology.sites and name not in {p.id for p in topology.pools}]
    if unknown:
        return usage_error(
            f"--disable {unknown[0]!r} is neither a site nor a pool of {topology.source}; "
            f"known pools: {', '.join(p.id for p in topology.pools)}"
        )
    # Locations come from the instance when there is one ($DAGSTER_HOME), else definitions only.
    instance = DagsterInstance.get() if os.environ.get("DAGSTER_HOME") else DagsterInstance.ephemeral()
    with instance:
        steps, simulation = plan_and_simulate(
            job_def, instance, topology, objective=objective, disabled_pools=args.disable, partition=args.partition
        )
    if args.json:
        print(json.dumps([s.__dict__ for s in steps], indent=2))
    else:
        print(f"job {job_def.name} on {topology.source} (objective {objective.describe()})\n")
        print(format_plan(steps))
        if simulation is not None:
            print("\n" + format_simulation(simulation))
    return 1 if any(s.pool is None for s in steps) else 0
