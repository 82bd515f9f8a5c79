"""The metadata keys that put location on assets, and helpers to read them back.

Keys live on asset definitions (where data is expected to be) and on every
materialization (where it actually is: the runtime truth the executor places by).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

from dagster_gravity.errors import GravityConfigError, short_repr
from dagster_gravity.placement import InputData

if TYPE_CHECKING:
    from dagster_gravity.topology import Topology

SITE = "gravity/site"  # the site that holds the data (str)
REPLICAS = "gravity/replicas"  # other sites holding a verified copy (list of str)
RESIDENCY = "gravity/residency"  # the zone the data may not leave (str, optional)
SHA256 = "gravity/sha256"  # checksum of the stored bytes
URI = "dagster/uri"  # Dagster's own keys, so the UI shows them
SIZE_BYTES = "dagster/size_bytes"
ROW_COUNT = "dagster/row_count"
COLUMN_SCHEMA = "dagster/column_schema"

# Op tags a step may carry.
TAG_GPU = "gravity/gpu"  # number of GPUs the step needs
TAG_PIN = "gravity/pin"  # a site name the step must run at
TAG_POOL_KIND = "gravity/pool_kind"  # a compute pool kind such as "gpu"
TAG_POOL_RENAMED = "gravity/pool"  # the old name of TAG_POOL_KIND: refused with a clear error

# Engine-event metadata: the compute pool a step was placed on ("site/name").
POOL_ID = "gravity/pool_id"

# A replication into the reading step's site, on the input's LOADED_INPUT event (and on the
# ASSET_OBSERVATION of the upstream asset): what moved over which directed link, and how long
# it took. The executor's run summary (run_summary.py) adds these up per link.
BYTES_MOVED = "gravity/bytes_moved"  # bytes copied (int)
REPLICATED_FROM = "gravity/replicated_from"  # the site copied from (str)
REPLICATED_TO = "gravity/replicated_to"  # the site copied into: where the step runs (str)
REPLICATION_SECONDS = "gravity/replication_seconds"  # wall seconds of the copy (float)
REPLICA_URI = "gravity/replica_uri"  # not dagster/uri: the UI would show it as the asset's address
# An input that needed several copies (it spans partitions, each replicated on its own) lists
# them instead, on LOADED_INPUT only: [{"from": site, "to": site, "bytes": int, "seconds": float}].
TRANSFERS = "gravity/transfers"

# An input whose site is known but size is not counts as one byte: moving it costs a link's
# latency, so among otherwise equal pools the step goes to the data.
UNKNOWN_SIZE = 1


def location_metadata(
    site: str,
    *,
    replicas: Sequence[str] = (),
    residency: str | None = None,
    uri: str | None = None,
    size_bytes: int | None = None,
    sha256: str | None = None,
) -> dict[str, Any]:
    """Metadata for an asset definition or materialization that says where the data lives."""
    out: dict[str, Any] = {SITE: site, REPLICAS: list(replicas)}
    if residency is not None:
        out[RESIDENCY] = residency
    if uri is not None:
        out[URI] = uri
    if size_bytes is not None:
        out[SIZE_BYTES] = int(size_bytes)
    if sha256 is not None:
        out[SHA256] = sha256
    return out


def definition_uri(site: str, asset_path: Sequence[str]) -> str:
    """The `dagster/uri` of an asset definition, `gravity://<site>/<asset/key/path>/`: where
    in gravity its versions live (the site, and the key's place in that site's storage). The
    UI's Storage field shows only a definition's URI; the storage root behind it is resolved
    at run time, and each materialization's `dagster/uri` is the exact object."""
    return f"gravity://{site}/{'/'.join(asset_path)}/"


def location_tags(site: str, residency: str | None = None) -> dict[str, str]:
    """Asset tags `gravity/site` (and `gravity/residency`), so the UI can filter and select
    assets by where they live (`tag:gravity/site=onprem-dc`). Metadata says the same, but
    the UI filters only by tags. Values must pass Dagster's rule for asset tag values; one
    that does not is refused here, naming the tag, the value and the rule."""
    from dagster_gravity.dagster_internals import VALID_STRICT_TAG_VALUE_REGEX, is_valid_strict_tag_value

    tags = {SITE: site}
    if residency is not None:
        tags[RESIDENCY] = residency
    for key, value in tags.items():
        if not isinstance(value, str) or not value or not is_valid_strict_tag_value(value):
            raise GravityConfigError(
                f"asset tag {key} is {short_repr(value)}; expected a non-empty string of at most 63 characters "
                f"from A-Z, a-z, 0-9, '_', '-', '.' (Dagster's rule for asset tag values, "
                f"{VALID_STRICT_TAG_VALUE_REGEX.pattern}), so name the site or zone that way"
            )
    return tags


def plain_value(value: Any) -> Any:
    """The Python value behind a Dagster MetadataValue (or the value itself)."""
    return getattr(value, "value", value)


def residency_zone(metadata: Any) -> str | None:
    """The residency zone that definition metadata declares (`gravity/residency`), or None."""
    zone = plain_value((metadata or {}).get(RESIDENCY))
    return str(zone) if zone else None


@dataclass(frozen=True)
class DataLocation:
    """Where one version of some data is: the one type for it in gravity.

    Produced from metadata (`from_metadata`: a materialization's, an output's, a
    definition's) and turned into what placement scores in one place (`to_input`).
    """

    asset_key: str | None = None  # "a/b" user string; None for an op output of this run
    partition: str | None = None
    site: str | None = None  # primary: where it was written
    replicas: tuple[str, ...] = ()  # other sites with a verified, current copy
    size_bytes: int = 0  # 0 if unknown
    residency: str | None = None
    sha256: str | None = None
    source: str = "unknown"  # "materialization" | "definition" | "run" | "unknown"
    uri: str | None = None

    @property
    def sites(self) -> tuple[str, ...]:
        """Every site holding a current copy, primary first."""
        return ((self.site,) if self.site else ()) + self.replicas

    @classmethod
    def from_metadata(
        cls, metadata: Mapping[str, Any] | None, *, what: str, default_site: str | None = None, **fields: Any
    ) -> "DataLocation":
        """The location the gravity keys of `metadata` describe (`default_site` when it names
        none). `fields` set the rest (asset_key, partition, source). Raises
        GravityConfigError naming `what` when a value cannot be read."""
        get = lambda key: plain_value((metadata or {}).get(key))  # noqa: E731
        size = get(SIZE_BYTES)
        try:
            size_bytes = int(size) if size is not None else 0
        except (TypeError, ValueError, OverflowError):  # OverflowError: an infinite float
            size_bytes = -1
        if size_bytes < 0 or isinstance(size, bool):
            raise GravityConfigError(
                f"{what}: metadata {SIZE_BYTES} is {short_repr(size)}; expected a whole number of bytes >= 0"
            )
        replicas = get(REPLICAS) or []
        if isinstance(replicas, (str, bytes, Mapping)) or not isinstance(replicas, Iterable):
            raise GravityConfigError(f"{what}: metadata {REPLICAS} is {short_repr(replicas)}; expected a list of site names")
        sha256, uri = get(SHA256), get(URI)
        # types only: the value is compared with stored checksums, never parsed
        if sha256 is not None and not isinstance(sha256, str):
            raise GravityConfigError(f"{what}: metadata {SHA256} is {short_repr(sha256)}; expected a sha256 hex string")
        if uri is not None and not isinstance(uri, str):
            raise GravityConfigError(f"{what}: metadata {URI} is {short_repr(uri)}; expected a URI string")
        site = get(SITE) or default_site
        residency = get(RESIDENCY)
        return cls(
            site=str(site) if site else None,
            replicas=tuple(dict.fromkeys(str(r) for r in replicas if str(r) != site)),
            size_bytes=size_bytes,
            residency=str(residency) if residency else None,
            sha256=sha256,
            uri=uri,
            **fields,
        )

    def to_input(self, name: str, topology: "Topology", notes: list[str]) -> InputData | None:
        """What placement scores for this data: its copies at sites the topology knows
        (others are dropped, and `notes` say so). With no known site it may be anywhere in
        its residency zone (size unknown), or it does not steer placement (None). A known
        site with an unknown size counts as UNKNOWN_SIZE bytes."""
        known = []
        for i, site in enumerate(self.sites):
            if site in topology.sites:
                if site not in known:
                    known.append(site)
                continue
            note = f"{name}: {'site' if i == 0 else 'replica'} {site!r} is not in {Path(topology.source).name}; ignored"
            if note not in notes:
                notes.append(note)
        if known:
            return InputData(name, self.size_bytes or UNKNOWN_SIZE, tuple(known), self.residency)
        if self.residency:
            return InputData(name, 0, tuple(sorted(zone_sites(topology, self.residency, f"input {name!r}"))), self.residency)
        return None


def zone_sites(topology: "Topology", zone: str, what: str) -> frozenset[str]:
    """The sites of residency zone `zone`; GravityConfigError naming `what` if unknown."""
    try:
        return topology.zone_sites(zone)
    except KeyError:
        raise GravityConfigError(
            f"{what}: {RESIDENCY} is {zone!r}, which is not a residency zone of "
            f"{topology.source}; known zones: {', '.join(topology.zones) or '(none)'}"
        ) from None
