"""The run summary: at the end of every gravity run (succeeded, failed or interrupted), one
engine event saying where each step ran and what moved between sites, as it happened, beside
what the run plan predicted when there is one.

What it counts comes from the events the workers stream back to the executor:

- where a step ran: the executor's own placements (`step_placed`, one per attempt handed
  to a compute pool), and the step's end (STEP_SUCCESS / STEP_FAILURE / STEP_UP_FOR_RETRY);
- what moved: each input's LOADED_INPUT event, on which the IO manager states every copy it
  made into the step's site (metadata.py: `gravity/bytes_moved`, `gravity/replicated_from`,
  `gravity/replicated_to`, `gravity/replication_seconds`, or the list `gravity/transfers`).
  A copy another step had just brought (single flight) moved nothing and is not counted
  again. Dollars are the topology's `usd_per_gb` of the directed link times the bytes.

A link's seconds are the sum of its copies' wall seconds (concurrent copies each count).
The makespan is the executor loop's wall time, from its start to the summary.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping

from dagster import MetadataValue

from dagster_gravity import metadata as md
from dagster_gravity.dagster_internals import DagsterEvent, DagsterEventType, EngineEventData
from dagster_gravity.errors import GravityConfigError
from dagster_gravity.placement import format_bytes
from dagster_gravity.topology import Topology

STEPS = "gravity/steps"  # step key -> {pool_id, site, attempts, status, bytes_in}
LINKS = "gravity/links"  # "src->dst" -> {bytes, seconds, dollars, copies}
MAKESPAN = "gravity/makespan_seconds"
PREDICTED = "gravity/predicted"  # the run plan's figures, same shape (when given)
TABLE = "gravity/summary"  # the markdown the run's log shows
SUMMARY_PREFIX = "gravity run summary: "

_ENDS = {
    DagsterEventType.STEP_SUCCESS: "succeeded",
    DagsterEventType.STEP_FAILURE: "failed",
    DagsterEventType.STEP_UP_FOR_RETRY: "up for retry",
}
NOT_ENDED = "did not end"  # placed, but no end event came back (run interrupted, worker lost)


def link_name(src: str, dst: str) -> str:
    return f"{src}->{dst}"


@dataclass
class LinkFigures:
    """Bytes moved over one directed link, the copies' seconds and what they cost."""

    bytes: int = 0
    seconds: float = 0.0
    dollars: float = 0.0
    copies: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {"bytes": self.bytes, "seconds": round(self.seconds, 6), "dollars": self.dollars,
                "copies": self.copies}


@dataclass
class StepFigures:
    pool_id: str
    site: str
    attempts: set[int] = field(default_factory=set)  # Dagster's attempt numbers handed to pools
    pools: list[str] = field(default_factory=list)  # every compute pool it was handed to, in order
    status: str = NOT_ENDED
    bytes_in: int = 0
    seconds_in: float = 0.0  # spent copying its inputs into its site (part of its step duration)

    def as_dict(self) -> dict[str, Any]:
        out = {"pool_id": self.pool_id, "site": self.site, "attempts": len(self.attempts) or 1,
               "status": self.status, "bytes_in": self.bytes_in}
        if len(set(self.pools)) > 1:
            out["pools"] = list(self.pools)
        return out


@dataclass(frozen=True)
class RunFigures:
    """What a run plan predicted, in the summary's own shape, so the two compare line by line.

    As a mapping (`from_mapping`)::

        {"links": {"onprem-dc->cloud": {"bytes": 5_000_000, "seconds": 0.4, "dollars": 0.00045}},
         "steps": {"features": "onprem-dc/cpu"},      # optional: the planned compute pool
         "makespan_seconds": 12.5}                    # optional

    A link may also be keyed by a (src, dst) pair; "seconds" and "dollars" are optional."""

    links: Mapping[str, LinkFigures] = field(default_factory=dict)
    steps: Mapping[str, str] = field(default_factory=dict)
    makespan_seconds: float | None = None

    @classmethod
    def from_mapping(cls, value: Mapping[str, Any] | "RunFigures", what: str = "predicted run figures") -> "RunFigures":
        if isinstance(value, RunFigures):
            return value
        if not isinstance(value, Mapping):
            raise GravityConfigError(f"{what}: got {type(value).__name__}; expected a mapping with 'links', "
                                     "'steps' and 'makespan_seconds'")
        unknown = set(value) - {"links", "steps", "makespan_seconds"}
        if unknown:
            raise GravityConfigError(f"{what}: unknown keys {sorted(unknown)}; expected links, steps, makespan_seconds")
        links = {}
        for key, figures in (value.get("links") or {}).items():
            name = link_name(*key) if isinstance(key, tuple) else str(key)
            if "->" not in name or not isinstance(figures, Mapping) or "bytes" not in figures:
                raise GravityConfigError(
                    f"{what}: link {key!r}: {figures!r}; expected 'src->dst' (or (src, dst)) mapped to "
                    "{'bytes': int, 'seconds': float, 'dollars': float}"
                )
            links[name] = LinkFigures(int(figures["bytes"]), float(figures.get("seconds", 0.0)),
                                      float(figures.get("dollars", 0.0)), int(figures.get("copies", 0)))
        makespan = value.get("makespan_seconds")
        return cls(links, {str(k): str(v) for k, v in (value.get("steps") or {}).items()},
                   None if makespan is None else float(makespan))

    def as_dict(self) -> dict[str, Any]:
        return {"links": {k: v.as_dict() for k, v in self.links.items()}, "steps": dict(self.steps),
                "makespan_seconds": self.makespan_seconds}


class RunSummary:
    """The accounting of one run, fed by the executor; `event` is the summary."""

    def __init__(self, topology: Topology, clock: Callable[[], float] = time.monotonic):
        self.topology = topology
        self.clock = clock
        self.started = clock()
        self.steps: dict[str, StepFigures] = {}
        self.links: dict[str, LinkFigures] = {}
        self.notes: list[str] = []

    # -- what the executor feeds ---------------------------------------------------------

    def step_placed(self, step_key: str, pool_id: str, site: str, attempt: int = 0) -> None:
        """`step_key` was handed to compute pool `pool_id` at `site` (Dagster attempt number
        `attempt`; a step handed over again without running keeps its attempt)."""
        step = self.steps.get(step_key)
        if step is None:
            step = self.steps[step_key] = StepFigures(pool_id, site)
        step.pool_id, step.site = pool_id, site
        step.attempts.add(attempt)
        step.pools.append(pool_id)
        step.status = NOT_ENDED

    def observe(self, event) -> None:
        """One step event: its end, or the copies its input loads made."""
        key = event.step_key
        if key is None:
            return
        if event.event_type in _ENDS:
            if key in self.steps:
                self.steps[key].status = _ENDS[event.event_type]
            return
        if event.event_type == DagsterEventType.LOADED_INPUT:
            metadata = getattr(event.event_specific_data, "metadata", None) or {}
            here = self.steps[key].site if key in self.steps else None
            try:
                copies = list(_copies(metadata, here))
            except (TypeError, ValueError, KeyError, AttributeError) as exc:
                # another IO manager's values under gravity's keys: a note, never a failed run
                self.notes.append(f"step {key}: unreadable copy metadata on LOADED_INPUT ({exc!r}); not counted")
                return
            for src, dst, nbytes, seconds in copies:
                self.transfer(src, dst, nbytes, seconds, step_key=key)

    def transfer(self, src: str, dst: str | None, nbytes: int, seconds: float, step_key: str | None = None) -> None:
        if not dst:
            self.notes.append(f"a copy of {nbytes} bytes from {src} named no destination site; not counted")
            return
        figures = self.links.setdefault(link_name(src, dst), LinkFigures())
        figures.bytes += int(nbytes)
        figures.seconds += float(seconds)
        figures.copies += 1
        try:
            figures.dollars += self.topology.link(src, dst).dollars(nbytes)
        except KeyError as exc:  # a site the run's topology does not know: no price for it
            note = f"link {link_name(src, dst)} has no price: {exc.args[0]}"
            if note not in self.notes:
                self.notes.append(note)
        if step_key in self.steps:
            self.steps[step_key].bytes_in += int(nbytes)
            self.steps[step_key].seconds_in += float(seconds)

    # -- the summary ---------------------------------------------------------------------

    def actual(self) -> RunFigures:
        return RunFigures(dict(self.links), {k: s.pool_id for k, s in self.steps.items()},
                          round(self.clock() - self.started, 3))

    def metadata(self, predicted: Mapping[str, Any] | RunFigures | None = None) -> dict[str, MetadataValue]:
        actual = self.actual()
        plan = RunFigures.from_mapping(predicted) if predicted is not None else None
        out = {
            STEPS: MetadataValue.json({k: s.as_dict() for k, s in self.steps.items()}),
            LINKS: MetadataValue.json({k: v.as_dict() for k, v in self.links.items()}),
            md.BYTES_MOVED: MetadataValue.int(sum(v.bytes for v in self.links.values())),
            "gravity/transfer_seconds": MetadataValue.float(round(float(sum(v.seconds for v in self.links.values())), 6)),
            "gravity/dollars": MetadataValue.float(float(sum(v.dollars for v in self.links.values()))),
            MAKESPAN: MetadataValue.float(actual.makespan_seconds),
            TABLE: MetadataValue.md(markdown(self.steps, actual, plan, self.notes)),
        }
        if plan is not None:
            out[PREDICTED] = MetadataValue.json(plan.as_dict())
        if self.notes:
            out["gravity/notes"] = MetadataValue.text("; ".join(self.notes))
        return out

    def message(self) -> str:
        pools = {s.pool_id for s in self.steps.values()}
        total = sum(v.bytes for v in self.links.values())
        where = f"{len(self.steps)} step{'s' * (len(self.steps) != 1)} on {len(pools)} compute pool{'s' * (len(pools) != 1)}"
        if not total:
            return SUMMARY_PREFIX + where + "; no data moved between sites"
        seconds = sum(v.seconds for v in self.links.values())
        dollars = sum(v.dollars for v in self.links.values())
        n = len([v for v in self.links.values() if v.bytes])
        return (SUMMARY_PREFIX + where + f"; moved {format_bytes(total)} over {n} link{'s' * (n != 1)} "
                f"({seconds:.3g} s of copying, ${_money(dollars)})")

    def event(self, plan_context, predicted: Mapping[str, Any] | RunFigures | None = None) -> DagsterEvent:
        """The run-level engine event. `predicted`: the run plan's figures (RunFigures, or
        the mapping `RunFigures.from_mapping` reads); the table then shows them beside the
        actual ones."""
        return DagsterEvent.engine_event(plan_context, self.message(), EngineEventData(metadata=self.metadata(predicted)))


def _copies(metadata: Mapping[str, Any], here: str | None) -> Iterator[tuple[str, str | None, int, float]]:
    """(src, dst, bytes, seconds) of each copy a LOADED_INPUT's metadata states."""
    value = lambda key: md.plain_value(metadata.get(key))  # noqa: E731
    listed = value(md.TRANSFERS)
    if listed:
        for entry in listed:
            yield str(entry["from"]), entry.get("to") or here, int(entry["bytes"]), float(entry.get("seconds") or 0.0)
        return
    src, nbytes = value(md.REPLICATED_FROM), value(md.BYTES_MOVED)
    if src and nbytes is not None:
        seconds = value(md.REPLICATION_SECONDS)
        yield str(src), value(md.REPLICATED_TO) or here, int(nbytes), float(seconds or 0.0)


def _money(dollars: float) -> str:
    """Dollars readable at any size: 12.35, 0.0001, 0.000001 (never 9.2e-07)."""
    if dollars >= 0.01 or dollars == 0:
        return f"{dollars:,.2f}" if dollars else "0"
    return f"{dollars:.6f}".rstrip("0").rstrip(".") if dollars >= 5e-7 else "<0.000001"


def _num(x: float | None, fmt: str = ".3g") -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)


def markdown(steps: Mapping[str, StepFigures], actual: RunFigures, plan: RunFigures | None, notes=()) -> str:
    """Two tables: where each step ran, and what moved per link (with the plan's figures
    beside the actual ones when there is a plan), then the makespan."""
    planned = plan.steps if plan else {}
    head = "| step | compute pool | attempts | status | bytes in |" + (" planned pool |" if plan else "")
    lines = ["**Where each step ran**", "", head, "|---" * (6 if plan else 5) + "|"]
    for key, s in steps.items():
        row = f"| {key} | {s.pool_id} | {len(s.attempts) or 1} | {s.status} | {format_bytes(s.bytes_in)} |"
        lines.append(row + (f" {planned.get(key, '-')} |" if plan else ""))
    lines += ["", "**What moved between sites**", ""]
    names = list(dict.fromkeys([*actual.links, *(plan.links if plan else {})]))
    if plan:
        lines += ["| link | bytes predicted | bytes actual | copy s predicted | copy s actual | $ predicted | $ actual |",
                  "|---|---|---|---|---|---|---|"]
    else:
        lines += ["| link | bytes | copies | copy s | $ |", "|---|---|---|---|---|"]
    zero = LinkFigures()
    for name in names + ["total"]:
        if name == "total":
            if not names:
                break
            a = _sum(actual.links.values())
            p = _sum(plan.links.values()) if plan else zero
        else:
            a = actual.links.get(name, zero)
            p = plan.links.get(name, zero) if plan else zero
        label = f"**{name}**" if name == "total" else name
        if plan:
            lines.append(f"| {label} | {format_bytes(p.bytes)} | {format_bytes(a.bytes)} | {_num(p.seconds)} "
                         f"| {_num(a.seconds)} | {_money(p.dollars)} | {_money(a.dollars)} |")
        else:
            lines.append(f"| {label} | {format_bytes(a.bytes)} | {a.copies} | {_num(a.seconds)} | {_money(a.dollars)} |")
    if not names:
        lines.append("| (no data moved) | | | | |" + (" | |" if plan else ""))
    makespan = f"Makespan: {_num(actual.makespan_seconds)} s"
    if plan and plan.makespan_seconds is not None:
        makespan += f" (predicted {_num(plan.makespan_seconds)} s)"
    lines += ["", makespan]
    lines += [f"- {n}" for n in notes]
    return "\n".join(lines)


def _sum(links) -> LinkFigures:
    total = LinkFigures()
    for v in links:
        total.bytes += v.bytes
        total.seconds += v.seconds
        total.dollars += v.dollars
        total.copies += v.copies
    return total
