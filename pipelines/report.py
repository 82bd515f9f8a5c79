"""What the demo prints: where each step ran, bytes moved, the promoted checkpoint, and
what a location-blind run of the same jobs would have moved.

Everything is read back from the Dagster instance: the executor's placement engine events
(`gravity/site`, `gravity/pool_id`), the IO manager's replication observations
(`gravity/bytes_moved`), and materialization metadata (`gravity/site`, `dagster/size_bytes`).
The location-blind figure runs the same steps through `placement.plan_cost` with every step
at one hub site (except steps reading EU-resident data, which no run may move out of the EU).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from dagster import AssetKey, DagsterEventType

from dagster_gravity import metadata as gm
from dagster_gravity.metadata import DataLocation
from dagster_gravity.placement import InputData, PlanStep, format_bytes, plan_cost
from dagster_gravity.topology import Topology

HUB_SITE = "aws-us-east-1"


@dataclass
class StepRun:
    run_id: str
    job: str
    partition: str
    step: str
    site: str | None = None
    pool: str | None = None
    materialized: dict[str, DataLocation] = field(default_factory=dict)  # asset -> where it was written


def _value(v):
    return gm.plain_value(v)


def collect_runs(instance, run_ids: list[str]) -> tuple[list[StepRun], int, list[tuple[str, str, int]]]:
    """Steps of the runs with their placement; total bytes replicated; (asset, to, bytes) moves."""
    steps: list[StepRun] = []
    moved_total = 0
    moves = []
    for run_id in run_ids:
        run = instance.get_run_by_id(run_id)
        partition = run.tags.get("dagster/partition", "")
        by_step: dict[str, StepRun] = {}
        for entry in instance.all_logs(run_id):
            event = entry.dagster_event
            if event is None or entry.step_key is None:
                continue
            sr = by_step.setdefault(entry.step_key, StepRun(run_id, run.job_name, partition, entry.step_key))
            if event.event_type == DagsterEventType.ENGINE_EVENT:
                md = event.engine_event_data.metadata or {}
                if "gravity/site" in md and "gravity/pool_id" in md:
                    sr.site, sr.pool = _value(md["gravity/site"]), _value(md["gravity/pool_id"])
            elif event.event_type == DagsterEventType.ASSET_MATERIALIZATION:
                mat = event.step_materialization_data.materialization
                sr.materialized[mat.asset_key.to_user_string()] = DataLocation.from_metadata(mat.metadata, what=f"asset {mat.asset_key.to_user_string()!r}")
            elif event.event_type == DagsterEventType.ASSET_OBSERVATION:
                obs = event.asset_observation_data.asset_observation
                n = _value(obs.metadata.get("gravity/bytes_moved"))
                if n:
                    moved_total += int(n)
                    moves.append((obs.asset_key.to_user_string(), sr.site or "?", int(n)))
        steps.extend(by_step.values())
    return steps, moved_total, moves


def plan_steps(steps: list[StepRun], asset_graph, instance, landing_sizes: dict[tuple[str, str], tuple[str, int]]):
    """PlanSteps for plan_cost: upstream edges inside a run, external inputs otherwise."""
    out = []
    for run_id in dict.fromkeys(s.run_id for s in steps):
        in_run = {s.step: s for s in steps if s.run_id == run_id}
        for s in in_run.values():
            node = _node(asset_graph, s.step)
            external, upstream = [], []
            if s.step.startswith("raw_") and asset_graph.has(AssetKey(s.step)):  # not a raw asset's check
                site, size = landing_sizes[(s.step, s.partition)]
                external.append(InputData(f"landing/{s.step}", size, (site,), _residency(asset_graph, node.key)))
            for parent in node.parent_entity_keys:
                name = parent.to_user_string()
                size = _size(instance, parent, s.partition, in_run)
                if name in in_run:
                    upstream.append((name, size))
                else:
                    loc = _latest(instance, parent, s.partition)
                    external.append(InputData(name, size, (loc.site,), loc.residency))
            out.append(PlanStep(f"{run_id[:8]}:{s.step}", tuple(external), tuple((f"{run_id[:8]}:{u}", b) for u, b in upstream)))
    return out


def _node(asset_graph, step: str):
    """The asset a step materializes, or the asset check it evaluates (its parents are the
    checked asset and the check's other inputs)."""
    key = AssetKey(step)
    if asset_graph.has(key):
        return asset_graph.get(key)
    for check_key in asset_graph.asset_check_keys:
        if asset_graph.assets_def_for_key(check_key).node_def.name == step:
            return asset_graph.get(check_key)
    raise KeyError(f"step {step!r} is neither an asset nor an asset check of the definitions")


def _residency(asset_graph, key: AssetKey):
    return gm.residency_zone(asset_graph.get(key).metadata)


def _latest(instance, key: AssetKey, partition: str) -> DataLocation:
    from dagster import AssetRecordsFilter

    recs = instance.fetch_materializations(AssetRecordsFilter(asset_key=key, asset_partitions=[partition]), limit=1).records
    if not recs:
        return DataLocation()
    return DataLocation.from_metadata(recs[0].asset_materialization.metadata, what=f"asset {key.to_user_string()!r}")


def _size(instance, key: AssetKey, partition: str, in_run: dict) -> int:
    s = in_run.get(key.to_user_string())
    if s and key.to_user_string() in s.materialized:
        return s.materialized[key.to_user_string()].size_bytes
    return _latest(instance, key, partition).size_bytes


def blind_sites(topology: Topology, steps: list[PlanStep], hub: str) -> dict[str, str]:
    """Every step at the hub, except where residency forbids it (EU data stays in the EU)."""
    zone_of: dict[str, str | None] = {}
    sites = {}
    for step in steps:  # plan steps come in run order, upstream first
        zones = {i.residency for i in step.external_inputs if i.residency}
        zones |= {zone_of.get(u) for u, _ in step.upstream if zone_of.get(u)}
        zone = next(iter(zones), None)
        sites[step.key] = hub if topology.allows(zone, hub) else sorted(topology.zone_sites(zone))[0]
        # A step reading resident data writes resident data only if it is itself resident;
        # the aggregation steps declare none, so their consumers are free again.
        zone_of[step.key] = zone if step.key.split(":", 1)[1] in _RESIDENT_OUTPUTS else None
    return sites


_RESIDENT_OUTPUTS: set[str] = set()


def render(topology: Topology, instance, run_ids: list[str], asset_graph, landing_sizes, promoted: dict, hub: str = HUB_SITE) -> str:
    _RESIDENT_OUTPUTS.clear()
    for key in asset_graph.get_all_asset_keys():
        if _residency(asset_graph, key):
            _RESIDENT_OUTPUTS.add(key.to_user_string())
    steps, measured, moves = collect_runs(instance, run_ids)
    psteps = plan_steps(steps, asset_graph, instance, landing_sizes)
    actual_sites = {f"{s.run_id[:8]}:{s.step}": s.site or getattr(s.materialized.get(s.step), "site", None) for s in steps}
    aware_b, aware_s, aware_d, _ = plan_cost(topology, psteps, actual_sites)
    blind = blind_sites(topology, psteps, hub)
    blind_b, blind_s, blind_d, _ = plan_cost(topology, psteps, blind)

    lines = ["", "=" * 78, "dagster-gravity demo report", "=" * 78, "", "Where each step ran:"]
    per_step: dict[str, set] = defaultdict(set)
    counts: dict[str, int] = defaultdict(int)
    for s in steps:
        per_step[s.step].add(s.pool or s.site or "?")
        counts[s.step] += 1
    width = max([22, *map(len, per_step)])  # asset check steps have longer names
    for step, pools in per_step.items():
        asset_site = {getattr(s.materialized.get(step), "site", None) for s in steps if s.step == step} - {None}
        lines.append(f"  {step:{width}} {', '.join(sorted(pools)):30} x{counts[step]}  data at {', '.join(sorted(asset_site)) or '-'}")
    lines += ["", "Bytes moved across sites:"]
    for asset, to, n in moves:
        lines.append(f"  {asset:22} -> {to:15} {format_bytes(n):>10}")
    lines += [
        f"  measured (IO manager replications): {format_bytes(measured)}",
        f"  cost model, location-aware run:     {format_bytes(aware_b)}  ({aware_s:.3f} s transfer, ${aware_d:.4f})",
        f"  location-blind run (all at {hub}, EU-resident steps kept in the EU):",
        f"                                      {format_bytes(blind_b)}  ({blind_s:.3f} s transfer, ${blind_d:.4f})",
        f"  -> location-aware moves {blind_b / max(aware_b, 1):.1f}x fewer bytes"
        if aware_b else f"  -> location-aware moves nothing; location-blind would move {format_bytes(blind_b)}",
        "",
        "Promoted checkpoint:",
    ]
    for k, v in promoted.items():
        lines.append(f"  {k:22} {v}")
    lines.append("=" * 78)
    return "\n".join(lines)


def summary_numbers(topology, instance, run_ids, asset_graph, landing_sizes, hub: str = HUB_SITE) -> dict:
    """The numbers behind the report (for tests)."""
    _RESIDENT_OUTPUTS.clear()
    for key in asset_graph.get_all_asset_keys():
        if _residency(asset_graph, key):
            _RESIDENT_OUTPUTS.add(key.to_user_string())
    steps, measured, _ = collect_runs(instance, run_ids)
    psteps = plan_steps(steps, asset_graph, instance, landing_sizes)
    actual = {f"{s.run_id[:8]}:{s.step}": s.site for s in steps}
    return {
        "measured": measured,
        "aware": plan_cost(topology, psteps, actual)[0],
        "blind": plan_cost(topology, psteps, blind_sites(topology, psteps, hub))[0],
        "sites": {s.step: s.site for s in steps},
    }
