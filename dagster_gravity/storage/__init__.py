"""Site storage: a local directory or an S3 bucket per site, checksums, replication.

`storage_for_site(topology, "aws-us-east-1")` returns the site's `SiteStorage` as the
topology's `StorageSpec` describes it; `replicate(src, dst, key, sha)` copies an object
between two sites, verified.

The protocol that loses nothing recorded: an asset version is written once, under a key
named by its content (`<base>@<sha256><ext>`, `base.version_key`), atomically; Dagster then
records that key's URI and sha256 on the materialization, and reads resolve through the
record (`keys.recorded_key`). A crash or a failed record between the two steps leaves the
previously recorded version untouched and the new one unreferenced; `gc.py` removes
superseded versions only after a newer one has been recorded for a grace period, and the
temporary files, orphaned data files and incomplete uploads that killed writers leave.
"""

from __future__ import annotations

import threading

from dagster_gravity.storage.base import (
    ChecksumMismatch,
    ForeignObject,
    ObjectInfo,
    ObjectNotFound,
    ResidencyError,
    SiteStorage,
    StorageError,
    UnknownSite,
)
from dagster_gravity.storage.local import LocalSiteStorage
from dagster_gravity.storage.replication import Replication, bytes_moved, replicate
from dagster_gravity.storage.credentials import SiteCredentialsError, session_for
from dagster_gravity.storage.s3 import S3Options, S3SiteStorage, make_client, site_options
from dagster_gravity.storage.single_flight import replicate_once

__all__ = [
    "ChecksumMismatch",
    "ForeignObject",
    "LocalSiteStorage",
    "ObjectInfo",
    "ObjectNotFound",
    "Replication",
    "ResidencyError",
    "S3Options",
    "S3SiteStorage",
    "SiteCredentialsError",
    "SiteStorage",
    "StorageError",
    "UnknownSite",
    "bytes_moved",
    "replicate",
    "replicate_once",
    "storage_for_site",
]

_cache: dict[tuple, SiteStorage] = {}
_cache_lock = threading.Lock()


def storage_for_site(topology, site_name: str, s3_options: S3Options | None = None) -> SiteStorage:
    """The storage of `site_name` in `topology` (cached: S3 clients are costly to build).

    An S3 site's client settings are what its sites.yaml storage sets (connect_timeout_seconds,
    read_timeout_seconds, max_attempts), else `s3_options` (the IO manager's), else the defaults;
    its credentials are the ones its storage names (`credentials.py`), resolved in this process.
    """
    if site_name not in topology.sites:
        raise UnknownSite(
            topology.unknown_site(site_name),
            site=site_name,
        )
    spec = topology.sites[site_name].storage
    options = site_options(spec, s3_options)
    settings_at = f"sites[{list(topology.sites).index(site_name)}].storage"  # named by timeout errors
    # the site's credentials, resolved now: rotated keys make a new client, an unset variable fails here
    # (no credentials named: the process-wide chain, looked up when the client is made)
    session = session_for(spec.credentials, site_name, settings_at, topology.source) if spec.credentials else None
    cache_key = (site_name, spec, options, settings_at, topology.source, id(session))
    with _cache_lock:
        storage = _cache.get(cache_key)
        if storage is None:
            if spec.kind == "local":
                storage = LocalSiteStorage(site_name, spec.path)
            elif spec.kind == "s3":
                storage = S3SiteStorage(
                    site_name,
                    bucket=spec.bucket,
                    prefix=spec.prefix,
                    region=spec.region,
                    endpoint_url=spec.endpoint_url,
                    options=options,
                    settings_at=settings_at,
                    settings_file=topology.source,
                    credentials=spec.credentials,
                    client=make_client(spec.endpoint_url, spec.region, options, session=session),
                )
            else:
                raise StorageError(f"unknown storage kind {spec.kind!r}; expected 'local' or 's3'", site=site_name)
            _cache[cache_key] = storage
    return storage
