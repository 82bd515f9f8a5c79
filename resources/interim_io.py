"""A stand-in for dagster_gravity.io_manager.GravityIOManager while it is being built.

Writes each DataFrame as Parquet under ``<site root>/assets/<key>/<partition>.parquet`` at
the site the step runs at (`current_site()`, else the asset's `gravity/site`), atomically,
and records the same location metadata. Inputs are read where they were written; no
replication, no residency checks. Only used when the real IO manager is not importable.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from dagster import ConfigurableIOManager, InputContext, OutputContext

from dagster_gravity import metadata as gm
from dagster_gravity.runtime import current_site
from dagster_gravity.topology import Topology


class InterimSiteIOManager(ConfigurableIOManager):
    sites_file: str
    default_site: str

    def _site(self, definition_metadata) -> str:
        return current_site() or gm.plain_value((definition_metadata or {}).get(gm.SITE)) or self.default_site

    def _path(self, site: str, context) -> Path:
        root = Path(Topology.from_yaml(self.sites_file).site(site).storage.path)
        name = "__".join(context.asset_key.path)
        part = context.asset_partition_key if context.has_asset_partitions else "all"
        return root / "assets" / name / f"{part}.parquet"

    def handle_output(self, context: OutputContext, obj: pd.DataFrame) -> None:
        site = self._site(context.definition_metadata)
        path = self._path(site, context)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        os.close(fd)
        pq.write_table(pa.Table.from_pandas(obj, preserve_index=False), tmp)
        os.replace(tmp, path)
        data = path.read_bytes()
        context.add_output_metadata({
            **gm.location_metadata(site, uri=path.as_uri(), size_bytes=len(data), sha256=hashlib.sha256(data).hexdigest()),
            gm.ROW_COUNT: len(obj),
        })

    def load_input(self, context: InputContext) -> pd.DataFrame:
        upstream = context.upstream_output
        site = gm.plain_value((upstream.definition_metadata or {}).get(gm.SITE)) or self.default_site
        return pq.read_table(self._path(site, context)).to_pandas()
