"""How assets are named in site storage: one base key per asset partition, one key per version.

`asset_base(["raw", "events"], "2024-01-01")` is `raw/events/2024-01-01`; each version of it
is `<base>@<sha256><ext>` (`base.version_key`). Kept apart from the IO manager so garbage
collection and tools name objects exactly as the IO manager does.
"""

from __future__ import annotations

from typing import Sequence
from urllib.parse import quote, unquote

from dagster_gravity.storage.base import version_key

EXTENSIONS = (".parquet", ".json", ".npy")


def partition_segment(partition_key: str) -> str:
    """A partition key as one path segment (':' and '/' escaped; readable otherwise)."""
    return quote(partition_key, safe="-_.=+,@|")


def asset_base(asset_path: Sequence[str], partition: str | None) -> str:
    """The key every version of the asset (partition) is named after."""
    base = "/".join(asset_path)
    return base if partition is None else f"{base}/{partition_segment(partition)}"


def extension_of(uri: str) -> str:
    return next((e for e in EXTENSIONS if uri.endswith(e)), ".parquet")


def recorded_key(base: str, sha256: str, uri: str) -> str:
    """The key of the object a materialization recorded: its version key when the recorded
    URI names it, else the one fixed name gravity wrote before versions were immutable."""
    extension = extension_of(uri)
    versioned = version_key(base, sha256, extension)
    if uri.endswith(versioned) or unquote(uri).endswith(versioned):  # file URIs are %-quoted
        return versioned
    return base + extension
