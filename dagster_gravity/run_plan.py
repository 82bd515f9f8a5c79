"""The run plan: at run start, the whole run placed at once (`placement.place_plan`).

Each step of the run's execution plan becomes a `PlanStep`: inputs from outside the run are
where the instance says they are; an input produced by another step of the run is an edge
whose bytes are the size of that output's asset at its latest materialization (else its
definition's `dagster/size_bytes`, else `metadata.UNKNOWN_SIZE`, 1 byte: the consumer still
follows its producer). The solver gives each step a planned site; the executor then prices
running a step away from where its consumers are planned (the outputs' trip back,
`OutputTrip`), and re-plans the steps that have not started when reality diverges (a step
ran elsewhere than planned, a compute pool's health changed), with the steps that did start
fixed where they ran.

Dynamic steps are not known at run start; they are placed as they appear, by their inputs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Collection, Mapping

from dagster import MetadataValue

from dagster_gravity import metadata as md
from dagster_gravity.dagster_internals import DagsterEvent, EngineEventData, ExecutionStep
from dagster_gravity.errors import GravityError
from dagster_gravity.input_locations import InputLocations, requirements_for
from dagster_gravity.placement import InputData, Objective, OutputTrip, PlanStep, format_bytes, place_plan
from dagster_gravity.topology import Topology


@dataclass
class RunPlan:
    """Planned site per step, what each step passes to whom, and why a plan is missing."""

    sites: dict[str, str] = field(default_factory=dict)  # step key -> planned site
    pools: dict[str, str] = field(default_factory=dict)
    consumers: dict[tuple[str, str], list[str]] = field(default_factory=dict)  # (step, output) -> consumer steps
    sizes: dict[tuple[str, str], int] = field(default_factory=dict)  # (step, output) -> bytes
    bytes_moved: int = 0
    seconds: float = 0.0
    dollars: float = 0.0
    method: str = ""
    error: str | None = None  # why there is no plan (then nothing is priced by it)
    steps: list[PlanStep] = field(default_factory=list)  # the problem it solved
    _by_producer: dict | None = field(default=None, repr=False)

    def output_trips(self, step_key: str, fixed_sites: Mapping[str, str]) -> list[OutputTrip]:
        """`step_key`'s outputs and the sites their consumers will run at (where they already
        run, else where they are planned)."""
        if self._by_producer is None:
            self._by_producer = {}
            for (producer, output), consumers in self.consumers.items():
                self._by_producer.setdefault(producer, []).append((output, consumers))
        trips = []
        for output, consumers in self._by_producer.get(step_key, ()):
            to = tuple(sorted({fixed_sites.get(c) or self.sites[c] for c in consumers if c in fixed_sites or c in self.sites}))
            if to:
                trips.append(OutputTrip(f"{step_key}.{output}", self.sizes.get((step_key, output), md.UNKNOWN_SIZE), to))
        return trips


def make_run_plan(
    steps: list[ExecutionStep],
    locations: InputLocations,
    topology: Topology,
    objective: Objective,
    healthy: Collection[str],
    fixed_sites: Mapping[str, str] | None = None,
) -> RunPlan:
    """Plan `steps` (those not in `fixed_sites`); steps in `fixed_sites` already run there."""
    fixed_sites = dict(fixed_sites or {})
    plan = RunPlan()
    keys = {s.key for s in steps}
    by_key = {s.key: s for s in steps}
    todo = [s for s in steps if s.key not in fixed_sites]
    plan_steps: list[PlanStep] = []
    try:
        output_sizes = _output_sizes(locations, todo, by_key)
        for step in todo:
            external: list[InputData] = []
            upstream: list[tuple[str, int]] = []
            for step_input in step.step_inputs:
                handles = list(step_input.get_step_output_handle_dependencies())
                in_run = [h for h in handles if h.step_key in keys]
                for h in in_run:
                    size = plan.sizes[(h.step_key, h.output_name)] = output_sizes[(h.step_key, h.output_name)]
                    plan.consumers.setdefault((h.step_key, h.output_name), []).append(step.key)
                    if h.step_key in fixed_sites:
                        external.append(InputData(f"{h.step_key}.{h.output_name}", size, (fixed_sites[h.step_key],)))
                    else:
                        upstream.append((h.step_key, size))
                if handles and len(in_run) == len(handles):
                    continue
                asset_key = locations.input_asset_key(step, step_input.name)
                if asset_key is not None:
                    found = locations.latest_location_of(asset_key)
                    if found is not None:
                        external.append(found)
            residency = next((i.residency for i in locations.output_residency(step)), None)
            plan_steps.append(PlanStep(step.key, tuple(external), tuple(upstream), requirements_for(step), residency))
        plan.steps = plan_steps
        result = place_plan(topology, plan_steps, objective=objective, healthy=healthy)
    except GravityError as exc:  # no site for some step, bad metadata: each step says so when placed
        plan.error = str(exc).splitlines()[0]
        return plan
    plan.sites, plan.pools = dict(result.sites), dict(result.pools)
    plan.bytes_moved, plan.seconds, plan.dollars, plan.method = result.bytes_moved, result.seconds, result.dollars, result.method
    return plan


def _output_sizes(locations: InputLocations, steps: list[ExecutionStep], by_key) -> dict[tuple[str, str], int]:
    """(step key, output name) -> bytes, for every output of this run that `steps` read: its
    asset's latest size, else UNKNOWN_SIZE (all assets' sizes read at once)."""
    asset_keys = {}
    for step in steps:
        for step_input in step.step_inputs:
            for h in step_input.get_step_output_handle_dependencies():
                if h.step_key in by_key:
                    asset_keys[(h.step_key, h.output_name)] = locations.output_asset_key(by_key[h.step_key], h.output_name)
    sizes = locations.latest_sizes_of(k for k in asset_keys.values() if k is not None)
    return {handle: sizes.get(key, 0) or md.UNKNOWN_SIZE for handle, key in asset_keys.items()}


def run_plan_event(plan_context, plan: RunPlan, replanned: str | None = None) -> DagsterEvent:
    """The plan as an engine event: a table of planned compute pools, and its totals."""
    if plan.error:
        return DagsterEvent.engine_event(
            plan_context,
            f"gravity: no run plan ({plan.error}); steps are placed one by one as they become ready",
            EngineEventData(metadata={"gravity/plan_error": MetadataValue.text(plan.error)}),
        )
    rows = "\n".join(f"| {k} | {plan.pools.get(k) or '-'} | {plan.sites[k]} |" for k in plan.sites)
    table = "| step | planned compute pool | site |\n|---|---|---|\n" + rows
    what = f"re-planned {len(plan.sites)} steps ({replanned})" if replanned else f"run plan for {len(plan.sites)} steps"
    return DagsterEvent.engine_event(
        plan_context,
        f"gravity: {what}: {format_bytes(plan.bytes_moved)} to move, {plan.seconds:.3g} s of transfers, "
        f"${plan.dollars:.4g} ({plan.method})",
        EngineEventData(
            metadata={
                "gravity/planned_sites": MetadataValue.json(plan.sites),
                "gravity/plan_table": MetadataValue.md(table),
                "gravity/planned_bytes": MetadataValue.int(int(plan.bytes_moved)),
                "gravity/planned_transfer_seconds": MetadataValue.float(float(plan.seconds)),
                "gravity/planned_dollars": MetadataValue.float(float(plan.dollars)),
                "gravity/plan_method": MetadataValue.text(plan.method),
            }
        ),
    )
