"""What placement needs to know about a step: where its inputs are, where its outputs may go,
and what it requires of a compute pool.

`InputLocations` answers for one run (the executor) or one simulated run (`gravity plan`):

* an input produced earlier in this run is where its step wrote it (the events the workers
  streamed back, `record`), or, for a simulation, where the planner put it
  (`assume_output_at`);
* any other input is where the upstream asset's latest materialization and its current
  replicas are (`locations.latest_location`), else where its definition's metadata says.

Every location is a `metadata.DataLocation`, turned into placement's `InputData` by
`DataLocation.to_input`.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from dagster_gravity import metadata as md
from dagster_gravity.dagster_internals import DagsterEvent, DagsterEventType, ExecutionStep
from dagster_gravity.errors import GravityConfigError, GravityError, short_repr
from dagster_gravity.locations import latest_location, latest_sizes
from dagster_gravity.metadata import DataLocation, zone_sites
from dagster_gravity.placement import InputData, Requirements
from dagster_gravity.topology import Topology


class InputLocations:
    """Where each input of a step of one run is: this run's outputs first, then the instance."""

    def __init__(self, instance, job_def, topology: Topology, partition: str | None = None):
        self.instance = instance
        self.topology = topology
        self.asset_layer = job_def.asset_layer
        self.partition = partition
        self.step_sites: dict[str, str] = {}  # step key -> site it ran at (last attempt)
        # (step key, output name) and asset key -> where this run wrote it, or why that
        # location cannot be read (raised when a consumer is placed, not before).
        self._outputs: dict[tuple[str, str], DataLocation | GravityConfigError] = {}
        self._assets: dict[Any, DataLocation | GravityConfigError] = {}
        # asset key -> (input, notes about sites it names that the topology does not know)
        self._instance_cache: dict[Any, tuple[InputData | None, list[str]]] = {}
        self._size_cache: dict[Any, int] = {}  # asset key -> its latest size (`latest_sizes_of`)

    # -- what this run produced -------------------------------------------------------

    def step_ran_at(self, step_key: str, site: str) -> None:
        """`step_key` (its current attempt) runs at `site`: its outputs land there."""
        self.step_sites[step_key] = site

    def record(self, event: DagsterEvent) -> None:
        """Learn where an output or asset of this run was written, from a worker's event."""
        step_key = event.step_key
        site = self.step_sites.get(step_key or "")
        if site is None:
            return
        if event.event_type == DagsterEventType.ASSET_MATERIALIZATION:
            mat = event.step_materialization_data.materialization
            what = f"asset {mat.asset_key.to_user_string()!r} materialized by step {step_key!r}"
            self._assets[mat.asset_key] = _read(mat.metadata, site, what, mat.asset_key.to_user_string())
        elif event.event_type == DagsterEventType.HANDLED_OUTPUT:
            data = event.event_specific_data
            what = f"output {data.output_name!r} of step {step_key!r}"
            self._outputs[(step_key, data.output_name)] = _read(data.metadata, site, what)
        elif event.event_type == DagsterEventType.STEP_OUTPUT:
            data = event.step_output_data
            key = (step_key, data.step_output_handle.output_name)
            if key not in self._outputs:
                self._outputs[key] = _read(data.metadata, site, f"output {key[1]!r} of step {step_key!r}")

    def assume_output_at(self, step: ExecutionStep, output_name: str, site: str) -> None:
        """For a simulated run: `step`'s output `output_name` is at `site`, with the size
        and residency of its asset's latest version (unknown: 0 bytes, none)."""
        self.step_ran_at(step.key, site)
        asset_key = self.output_asset_key(step, output_name)
        size, residency = 0, None
        if asset_key is not None:
            try:
                found = self.latest_location_of(asset_key)
            except GravityConfigError:  # unreadable metadata of the old version: size unknown
                found = None
            if found is not None:
                size, residency = found.size_bytes, found.residency
            residency = residency or self._definition_residency(asset_key)
        loc = DataLocation(site=site, size_bytes=size, residency=residency, source="run")
        self._outputs[(step.key, output_name)] = loc
        if asset_key is not None:
            self._assets[asset_key] = loc

    # -- what placement scores --------------------------------------------------------

    def inputs_for(self, step: ExecutionStep, notes: list[str] | None = None) -> list[InputData]:
        """Where each input of `step` is. Sites the topology does not know are dropped (and
        said so in `notes`); an input left with no known site counts as unknown location.
        Raises GravityConfigError for location metadata that cannot be read."""
        notes = [] if notes is None else notes
        inputs: list[InputData | None] = []
        for step_input in step.step_inputs:
            asset_key = self.input_asset_key(step, step_input.name)
            handles = list(step_input.get_step_output_handle_dependencies())
            if asset_key is not None and asset_key in self._assets:
                loc = _ok(self._assets[asset_key], asset_key.to_user_string())
                if loc.residency is None:
                    loc = replace(loc, residency=self._definition_residency(asset_key))
                inputs.append(loc.to_input(asset_key.to_user_string(), self.topology, notes))
                continue
            in_run = [self._outputs.get((h.step_key, h.output_name)) for h in handles]
            if handles and all(in_run):
                for h, loc in zip(handles, in_run):
                    name = f"{h.step_key}.{h.output_name}" + (f"[{h.mapping_key}]" if h.mapping_key else "")
                    inputs.append(_ok(loc, name).to_input(name, self.topology, notes))
                continue
            if handles and any(h.step_key in self.step_sites for h in handles):
                # Produced in this run without output events we could read: where it ran.
                for h in handles:
                    site = self.step_sites.get(h.step_key)
                    if site:
                        inputs.append(InputData(f"{h.step_key}.{h.output_name}", md.UNKNOWN_SIZE, (site,), None))
                continue
            if asset_key is not None:
                inputs.append(self.latest_location_of(asset_key, notes))
        known = [i for i in inputs if i is not None]
        for item in known:
            if item.residency is not None:
                zone_sites(self.topology, item.residency, f"input {item.name!r}")
        return known

    def output_residency(self, step: ExecutionStep) -> list[InputData]:
        """The residency zones of the assets the step writes, as placement constraints.

        Each is a 0-byte `InputData` (role "output") held by every site of the zone: it
        moves nothing and costs nothing, but `place_step` only keeps pools inside the zone,
        so a step whose output may not leave zone eu runs in eu (the IO manager would refuse
        the write anywhere else).
        """
        out = []
        for output in step.step_outputs:
            asset_key = self.output_asset_key(step, output.name)
            zone = self._definition_residency(asset_key) if asset_key is not None else None
            if zone is None:
                continue
            name = asset_key.to_user_string()
            sites = tuple(sorted(zone_sites(self.topology, zone, f"asset {name!r}")))
            out.append(InputData(name, 0, sites, zone, role="output"))
        return out

    def output_asset_key(self, step: ExecutionStep, output_name: str):
        try:
            return self.asset_layer.get_asset_key_for_node_output(step.node_handle, output_name)
        except Exception:  # an op output that is no asset
            return None

    # -- the instance and the definitions (the run plan reads these too) ---------------

    def input_asset_key(self, step: ExecutionStep, input_name: str):
        try:
            return self.asset_layer.get_asset_key_for_node_input(step.node_handle, input_name)
        except Exception:  # an op input that is no asset
            return None

    def _definition_residency(self, asset_key) -> str | None:
        if not self.asset_layer.has(asset_key):
            return None
        return md.residency_zone(self.asset_layer.get(asset_key).metadata)

    def latest_location_of(self, asset_key, notes: list[str] | None = None) -> InputData | None:
        """The asset's latest location as placement input, read once per run."""
        if asset_key not in self._instance_cache:
            own_notes: list[str] = []
            self._instance_cache[asset_key] = (self._read_instance(asset_key, own_notes), own_notes)
        found, own_notes = self._instance_cache[asset_key]
        if notes is not None:
            notes.extend(n for n in own_notes if n not in notes)
        return found

    def latest_sizes_of(self, asset_keys) -> dict[Any, int]:
        """Each asset's latest size in bytes (0 when unknown), read once per run as locations
        are (a re-plan asks again): the unpartitioned ones from one query
        (`locations.latest_sizes`), the others (a run of one partition) one by one."""
        wanted = list(dict.fromkeys(asset_keys))
        keys = [k for k in wanted if k not in self._size_cache]
        partitioned = {k for k in keys if self.asset_layer.has(k) and self.asset_layer.get(k).partitions_def is not None}
        unpartitioned = [k for k in keys if k not in partitioned]
        if unpartitioned:
            self._size_cache.update(latest_sizes(self.instance, {
                k: self.asset_layer.get(k).metadata if self.asset_layer.has(k) else None for k in unpartitioned
            }))
        for key in partitioned:
            try:
                found = self.latest_location_of(key)
            except GravityError:
                found = None
            self._size_cache[key] = found.size_bytes if found is not None else 0
        return {k: self._size_cache[k] for k in wanted}

    def _read_instance(self, asset_key, notes: list[str]) -> InputData | None:
        definition_metadata, partition = None, None
        if self.asset_layer.has(asset_key):
            node = self.asset_layer.get(asset_key)
            definition_metadata = node.metadata
            if node.partitions_def is not None:
                partition = self.partition
        name = asset_key.to_user_string()
        try:
            loc = latest_location(self.instance, asset_key, partition=partition, definition_metadata=definition_metadata)
        except GravityConfigError as exc:
            raise GravityConfigError(f"input asset {name!r}: its location metadata cannot be read: {exc}") from None
        return loc.to_input(name, self.topology, notes)


def _read(metadata, site: str, what: str, asset_key: str | None = None) -> DataLocation | GravityConfigError:
    """The location an event's metadata gives (its step's site unless it names one), or
    the error saying why it cannot be read, kept until a consumer needs it."""
    try:
        return DataLocation.from_metadata(metadata, what=what, default_site=site, asset_key=asset_key, source="run")
    except GravityConfigError as exc:
        return exc


def _ok(loc: DataLocation | GravityConfigError, name: str) -> DataLocation:
    if isinstance(loc, GravityConfigError):
        raise GravityConfigError(f"input {name}: {loc}")
    return loc


def requirements_for(step: ExecutionStep) -> Requirements:
    """What `step`'s op tags ask of a compute pool: GPUs, a pinned site, a pool kind."""
    tags = step.tags or {}
    if md.TAG_POOL_RENAMED in tags and md.TAG_POOL_KIND not in tags:
        raise GravityConfigError(
            f"step {step.key!r}: op tag {md.TAG_POOL_RENAMED!r} is no longer read; name the compute "
            f"pool kind with {md.TAG_POOL_KIND!r} (Dagster's own `pool=` is a concurrency pool, "
            "which gravity leaves to Dagster)"
        )
    raw = tags.get(md.TAG_GPU)
    text = str(raw).strip() if raw is not None else ""
    # digits only: int() would also take "-1" (a step no pool can refuse) and "1_000"
    if text and (not (text.isascii() and text.isdigit()) or len(text) > 6):
        raise GravityConfigError(
            f"step {step.key!r}: op tag {md.TAG_GPU!r} is {short_repr(raw)}; expected a whole number of GPUs >= 0"
        )
    gpus = int(text) if text else 0
    return Requirements(gpus=gpus, pin=tags.get(md.TAG_PIN) or None, pool_kind=tags.get(md.TAG_POOL_KIND) or None)
