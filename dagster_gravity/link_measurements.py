"""What the links really deliver, learned from gravity's own replications.

A link's configured bandwidth is a guess; a copy over it is a measurement. Every replication
the IO manager makes records its link, bytes and seconds (`record_transfer`), and placement
prices a link by what it measured once `MIN_SAMPLES` copies of at least `MIN_BYTES` each
have been seen (`with_measured_links`); until then, by its configuration.

The estimate is an exponentially weighted mean of each copy's throughput (bytes over
seconds minus the link's latency), so it follows a link that gets slower or faster. It is
kept in the Dagster instance's key-value store (the daemon cursor storage: SQLite on one
machine, the shared Postgres beyond one), one entry per source site, so the tenth run knows
what the first learned, on every host. Concurrent recorders may overwrite each other's
update; an estimate loses a sample then, never its meaning.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, replace
from typing import Mapping

from dagster_gravity.topology import Links, Topology

KEY_PREFIX = "gravity/links-from/"
MIN_SAMPLES = 3
MIN_BYTES = 1_000_000  # smaller copies are dominated by per-request latency
WEIGHT = 0.3  # of the newest sample in the moving mean


@dataclass(frozen=True)
class LinkMeasurement:
    src: str
    dst: str
    samples: int
    bandwidth_bytes_per_s: float  # the moving mean of the samples' throughput
    last_bytes: int
    last_seconds: float
    updated_at: float

    @property
    def trusted(self) -> bool:
        return self.samples >= MIN_SAMPLES


def _key(src: str) -> str:
    return KEY_PREFIX + src


def read_json_entry(instance, key: str) -> dict:
    """A JSON object kept under `key` in the instance's key-value store ({} when absent or
    unreadable: an estimate starts again rather than fail a step or a run)."""
    raw = instance.daemon_cursor_storage.get_cursor_values({key}).get(key)
    try:
        value = json.loads(raw) if raw else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _read(instance, src: str) -> dict[str, dict]:
    return read_json_entry(instance, _key(src))


def record_transfer(instance, topology: Topology, src: str, dst: str, nbytes: int, seconds: float) -> LinkMeasurement | None:
    """Fold one copy of `nbytes` from `src` to `dst` taking `seconds` into the link's estimate.
    Copies too small or too quick to say anything about bandwidth are ignored (None)."""
    if src == dst or nbytes < MIN_BYTES or not seconds > 0:
        return None
    latency = topology.link(src, dst).latency_s if (src, dst) in topology.links else 0.0
    throughput = nbytes / max(seconds - latency, seconds * 0.1)
    if not math.isfinite(throughput):
        return None
    entries = _read(instance, src)
    previous = entries.get(dst) or {}
    samples = int(previous.get("samples", 0))
    mean = float(previous.get("bandwidth_bytes_per_s", throughput))
    mean = throughput if samples == 0 else (1 - WEIGHT) * mean + WEIGHT * throughput
    measurement = LinkMeasurement(src, dst, samples + 1, mean, int(nbytes), float(seconds), time.time())
    entries[dst] = {k: v for k, v in asdict(measurement).items() if k not in ("src", "dst")}
    instance.daemon_cursor_storage.set_cursor_values({_key(src): json.dumps(entries, sort_keys=True)})
    return measurement


def measured_links(instance, sites) -> dict[tuple[str, str], LinkMeasurement]:
    """Every directed link out of `sites` with at least one recorded copy."""
    keys = {_key(src) for src in sites}
    stored = instance.daemon_cursor_storage.get_cursor_values(keys) if keys else {}
    found = {}
    for key, raw in stored.items():
        src = key[len(KEY_PREFIX) :]
        try:
            entries = json.loads(raw)
        except ValueError:
            continue
        for dst, entry in (entries.items() if isinstance(entries, dict) else []):
            try:
                found[(src, dst)] = LinkMeasurement(
                    src, dst, int(entry["samples"]), float(entry["bandwidth_bytes_per_s"]),
                    int(entry["last_bytes"]), float(entry["last_seconds"]), float(entry["updated_at"]),
                )
            except (KeyError, TypeError, ValueError):
                continue
    return found


def with_measured_links(topology: Topology, measurements: Mapping[tuple[str, str], LinkMeasurement]) -> Topology:
    """`topology` with each link that has a trusted measurement priced at its measured
    bandwidth (latency and $/GB stay as configured). The same object when nothing changes."""
    measured = {}
    for pair, measurement in measurements.items():
        if pair not in topology.links or not measurement.trusted or measurement.bandwidth_bytes_per_s <= 0:
            continue
        measured[pair] = replace(topology.links[pair], bandwidth_bytes_per_s=measurement.bandwidth_bytes_per_s)
    if not measured:
        return topology
    links = topology.links
    # Links builds the others on demand; a plain mapping of every pair is copied
    links = links.with_overrides(measured) if isinstance(links, Links) else {**links, **measured}
    return replace(topology, links=links)
