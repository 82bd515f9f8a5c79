"""The engine events that explain placement: what the executor writes to a run's log.

Every placement is an engine event on its step whose metadata holds the chosen site and
compute pool, the reason, and every candidate's bytes, seconds and dollars (as JSON and as
a markdown table the Dagster UI renders). A step no compute pool may run gets an event
with the same table and then its step failure.
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

from dagster import MetadataValue

from dagster_gravity import metadata as md
from dagster_gravity.dagster_internals import DagsterEvent, EngineEventData, SerializableErrorInfo, StepFailureData
from dagster_gravity.errors import GravityError
from dagster_gravity.placement import Placement, PlacementError, format_bytes


def placement_event(
    step_context, placement: Placement, notes: Sequence[str], waited: float = 0.0, spilled_from: str | None = None
) -> DagsterEvent:
    """The decision for one step, with every candidate's score."""
    chosen = next(c for c in placement.candidates if c.pool == placement.pool)
    rows = placement.as_table()
    metadata: dict[str, Any] = {
        md.SITE: MetadataValue.text(placement.site),
        md.POOL_ID: MetadataValue.text(placement.pool),
        "gravity/reason": MetadataValue.text(placement.reason),
        "gravity/bytes_moved": MetadataValue.int(int(chosen.bytes_moved)),
        "gravity/transfer_seconds": MetadataValue.float(float(chosen.transfer_seconds)),
        "gravity/dollars": MetadataValue.float(float(chosen.dollars)),
        "gravity/candidates": MetadataValue.json(rows),
        "gravity/candidates_table": MetadataValue.md(markdown_table(rows)),
    }
    if spilled_from:
        metadata["gravity/waited_seconds"] = MetadataValue.float(round(waited, 3))
        metadata["gravity/spilled_from"] = MetadataValue.text(spilled_from)
    failovers = [n for n in notes if "failed over" in n]
    if failovers:
        metadata["gravity/failover"] = MetadataValue.text("; ".join(failovers))
    if notes:
        metadata["gravity/notes"] = MetadataValue.text("; ".join(notes))
    moved = f"moves {format_bytes(chosen.bytes_moved)}" if chosen.bytes_moved else "no data moves"
    message = f"gravity: step {step_context.step.key} -> compute pool {placement.pool} ({moved}). {placement.reason}"
    if notes:
        message += " | " + "; ".join(notes)
    return DagsterEvent.engine_event(step_context, message, EngineEventData(metadata=metadata))


def unplaceable_events(step_context, exc: GravityError, notes: Iterable[str]) -> tuple[DagsterEvent, DagsterEvent]:
    """Why no compute pool may run the step (requirements, residency, health) or why what
    placement needs to know about it is invalid (op tags, location metadata): an engine
    event with the candidates, and the step's failure."""
    key = step_context.step.key
    if isinstance(exc, PlacementError):
        message = (
            f"gravity: cannot place step {key!r}; data is not moved out of its zone "
            f"and no healthy compute pool meets its requirements.\n{exc}"
        )
    else:
        message = f"gravity: cannot place step {key!r}: {exc}"
    notes = list(notes)
    if notes:
        message += "\n" + "\n".join(notes)
    error = SerializableErrorInfo(message=message, stack=[], cls_name=type(exc).__name__)
    rows = [
        {"pool": c.pool, "site": c.site, "feasible": c.feasible, "reason": c.reason}
        for c in getattr(exc, "candidates", ())
    ]
    explanation = DagsterEvent.engine_event(
        step_context,
        error.message,
        EngineEventData(metadata={"gravity/candidates": MetadataValue.json(rows)} if rows else {}, error=error),
    )
    failure = DagsterEvent.step_failure_event(
        step_context=step_context, step_failure_data=StepFailureData(error=error, user_failure_data=None)
    )
    return explanation, failure


def pool_unhealthy_event(plan_context, pool_id: str, reason: str) -> DagsterEvent:
    return DagsterEvent.engine_event(
        plan_context,
        f"gravity: compute pool {pool_id} marked unhealthy ({reason}); its steps fail over",
        EngineEventData(
            metadata={md.POOL_ID: MetadataValue.text(pool_id), "gravity/reason": MetadataValue.text(reason)}
        ),
    )


def pool_healthy_event(plan_context, pool_id: str) -> DagsterEvent:
    return DagsterEvent.engine_event(
        plan_context,
        f"gravity: compute pool {pool_id} is healthy again; it takes steps",
        EngineEventData(metadata={md.POOL_ID: MetadataValue.text(pool_id)}),
    )


def markdown_table(rows: list[dict]) -> str:
    head = "| compute pool | site | bytes moved in | transfer s | outputs on to consumers | wait s | $ | score | feasible / why not |\n"
    head += "|---|---|---|---|---|---|---|---|---|\n"
    lines = []
    for r in rows:
        score = "-" if r["score"] is None else f"{r['score']:.4g}"
        why = "yes" if r["feasible"] else f"no: {r['reason']}"
        lines.append(
            f"| {r['pool']} | {r['site']} | {format_bytes(r['bytes_moved'])} | {r['transfer_seconds']:.4g} "
            f"| {format_bytes(r['output_bytes'])} ({r['output_seconds']:.3g} s) "
            f"| {r['wait_seconds']:.4g} | {r['dollars']:.4g} | {score} | {why} |"
        )
    return head + "\n".join(lines)
