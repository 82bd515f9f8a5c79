"""The metadata keys that put location on assets, and helpers to read them back.

Keys live on asset definitions (where data is expected to be) and on every
materialization (where it actually is: the runtime truth the executor places by).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

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
TAG_POOL = "gravity/pool"  # a pool kind such as "gpu"


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


def plain_value(value: Any) -> Any:
    """The Python value behind a Dagster MetadataValue (or the value itself)."""
    return getattr(value, "value", value)


def read_location(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """site, replicas, residency, size_bytes, uri, sha256 from any metadata mapping."""
    get = lambda key: plain_value(metadata.get(key))  # noqa: E731
    replicas = get(REPLICAS) or []
    size = get(SIZE_BYTES)
    return {
        "site": get(SITE),
        "replicas": [str(r) for r in replicas],
        "residency": get(RESIDENCY),
        "size_bytes": int(size) if size is not None else None,
        "uri": get(URI),
        "sha256": get(SHA256),
    }
