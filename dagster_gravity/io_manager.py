"""The site-aware IO manager: outputs are stored where the step runs, inputs are read
locally or replicated in first (verified), and residency zones are enforced.

Formats (nothing is ever pickled): pandas DataFrames and pyarrow Tables as Parquet, numpy
arrays as `.npy` (allow_pickle=False), other JSON-able values as `.json`. Each version of an
asset partition is one immutable object named by its content:
`<asset/key/path>/<partition>@<sha256>.<ext>` (unpartitioned: `<asset/key/path>@<sha256>.<ext>`);
op outputs outside assets go to `ops/<run>/<step>/<output>.<ext>`.

Nothing recorded is lost. A write never replaces the version Dagster last recorded: it adds
a new object, and the materialization records its URI. Reads go to the object the latest
materialization names (its `dagster/uri`, checked against `gravity/sha256`), never to a
mutable "latest" name. So a run killed between the storage commit and the record, a record
that fails (instance database locked), or two runs writing one asset at once all leave the
latest recorded version readable; the unrecorded version is garbage. Superseded versions are
collected (`dagster_gravity.storage.gc`) after a newer materialization has been recorded for
`gc_grace_seconds`: opportunistically after each write, and by `gravity gc`.

Every materialization records `gravity/site`, `gravity/replicas` ([]), `dagster/uri`,
`dagster/size_bytes`, `gravity/sha256`, `gravity/residency` (when the asset has one) and,
for tables, `dagster/row_count` and `dagster/column_schema`.

Reading an asset consults its latest materialization (the truth); an asset with no
materialization at all is looked up at every site, but a latest materialization without
gravity's location metadata (another IO manager, or reported externally) is an error, as
any object gravity holds is older than it. With gravity's metadata, a copy at the reading
site is used only if its sha256 equals the materialization's; otherwise the object is
replicated from the primary site (or, when the primary has lost it or cannot be reached,
from a site holding a current replica), and an AssetObservation on the upstream asset
records `gravity/site` (the primary), `gravity/replicas` (every current replica),
`gravity/sha256` and the copy: `gravity/bytes_moved`,
`gravity/replicated_from`, `gravity/replicated_to`, `gravity/replication_seconds`
(metadata.py). The observation is attached with `InputContext.add_input_metadata`, which
Dagster turns into an ASSET_OBSERVATION event of the step and puts the same keys on the
input's LOADED_INPUT event (both reach the event log through the executor's event stream,
like every other step event; the executor's run summary adds up the LOADED_INPUT ones).
Inputs spanning several partitions cannot use it (it needs a single partition key): they
report each partition's observation through `instance.report_runless_asset_event`, and their
LOADED_INPUT lists the copies under `gravity/transfers`. A copy of an object no
materialization records (op outputs) is on LOADED_INPUT only.

Every storage failure is a StorageError naming the asset, the site and the URI: a full
disk or a denied write says so in words, an object that gravity did not write is a
ForeignObject (not "missing"), and an S3 site that hangs fails a load or store in about
21 s by default (its timeouts: the site's sites.yaml storage settings, else this IO
manager's `s3_*` fields).
"""

# No `from __future__ import annotations` here: Dagster reads the resource fields'
# annotations when the class is created, and a string `ResourceDependency[...]` is not
# recognised as a dependency (pydantic then rejects the resource passed in).
import io
import json
import math
from typing import Any, Optional

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from dagster import (
    AssetKey,
    AssetObservation,
    AssetRecordsFilter,
    ConfigurableIOManager,
    InputContext,
    MetadataValue,
    OutputContext,
    ResourceDependency,
    TableColumn,
    TableSchema,
)
from pydantic import Field

from dagster_gravity import metadata as md
from dagster_gravity.dagster_internals import add_loaded_input_metadata
from dagster_gravity.link_measurements import record_transfer
from dagster_gravity.metadata import DataLocation
from dagster_gravity.recorded_versions import recorded_version
from dagster_gravity.resources import GravityTopology
from dagster_gravity.runtime import current_site
from dagster_gravity.storage import (
    ChecksumMismatch,
    ForeignObject,
    ObjectNotFound,
    ResidencyError,
    S3Options,
    SiteStorage,
    StorageError,
    UnknownSite,
    replicate,
    replicate_once,
    storage_for_site,
)
from dagster_gravity.storage import gc
from dagster_gravity.storage.base import parse_version_key
from dagster_gravity.storage.keys import EXTENSIONS, asset_base, extension_of, recorded_key
from dagster_gravity.errors import GravityConfigError, short_repr
from dagster_gravity.topology import Topology, shown_names


def asset_label(context) -> str:
    if context.has_asset_key:
        return context.asset_key.to_user_string()
    return "/".join(context.get_identifier())


# -- serialisation -------------------------------------------------------------------------


def _extension(obj: Any) -> str:
    import pandas as pd

    if isinstance(obj, (pd.DataFrame, pa.Table)):
        return ".parquet"
    return ".npy" if isinstance(obj, np.ndarray) else ".json"


def _encode(obj: Any, writer, label: str = "?") -> dict[str, Any]:
    """Write `obj` to `writer`; returns the table metadata (if a table)."""
    import pandas as pd

    table = None
    if isinstance(obj, pd.DataFrame):
        try:
            table = pa.Table.from_pandas(obj)
        except (pa.ArrowException, ValueError, TypeError) as exc:
            raise TypeError(
                f"asset {label!r}: the DataFrame cannot be stored as Parquet: "
                f"{_unconvertible_column(obj)}{type(exc).__name__}: {exc}"
            ) from exc
    elif isinstance(obj, pa.Table):
        table = obj
    if table is not None:
        try:
            pq.write_table(table, writer)
        except pa.ArrowException as exc:
            raise TypeError(f"asset {label!r}: the table cannot be stored as Parquet: {type(exc).__name__}: {exc}") from exc
        schema = TableSchema(columns=[TableColumn(name=f.name, type=str(f.type)) for f in table.schema])
        return {md.ROW_COUNT: table.num_rows, md.COLUMN_SCHEMA: MetadataValue.table_schema(schema)}
    if isinstance(obj, np.ndarray):
        buffer = io.BytesIO()
        np.save(buffer, obj, allow_pickle=False)
        writer.write(buffer.getbuffer())
        return {}
    writer.write(json.dumps(obj).encode())
    return {}


def _unconvertible_column(frame) -> str:
    """'column 'x' (dtype object): ' for the first column pyarrow cannot convert, else ''."""
    for name in frame.columns:
        try:
            pa.Table.from_pandas(frame[[name]], preserve_index=False)
        except (pa.ArrowException, ValueError, TypeError):
            return f"column {name!r} (dtype {frame[name].dtype}) holds values Parquet cannot store; "
    return ""


def _check_encodable(obj: Any, label: str) -> None:
    import pandas as pd

    if isinstance(obj, (pd.DataFrame, pa.Table)):
        return
    if isinstance(obj, np.ndarray):
        if obj.dtype.hasobject:
            raise TypeError(f"asset {label!r}: numpy arrays of Python objects cannot be stored without pickle")
        return
    try:
        json.dumps(obj)
    except (TypeError, ValueError) as exc:
        raise TypeError(
            f"asset {label!r}: GravityIOManager stores pandas DataFrames, pyarrow Tables, numpy "
            f"arrays and JSON values (never pickles); got {type(obj).__name__}: {exc}"
        ) from None


def _decode(data: bytes, extension: str, wanted: Any) -> Any:
    if extension == ".parquet":
        table = pq.read_table(pa.BufferReader(data))
        if wanted is pa.Table:
            return table
        if wanted is None or wanted is Any:
            is_pandas = table.schema.metadata is not None and b"pandas" in table.schema.metadata
            return table.to_pandas() if is_pandas else table
        return table.to_pandas()
    if extension == ".npy":
        return np.load(io.BytesIO(data), allow_pickle=False)
    return json.loads(data)


def _wanted_type(context: InputContext) -> Any:
    try:
        return context.dagster_type.typing_type
    except Exception:
        return None


# -- the IO manager ------------------------------------------------------------------------


class GravityIOManager(ConfigurableIOManager):
    """Stores outputs at the site where the step runs and brings inputs to it, verified.

    The site is `dagster_gravity.runtime.current_site()` (set by the gravity executor's
    workers around each step), else `default_site`. Storage locations come from the per-site
    `storage` entries of the topology of the `topology` resource (`GravityTopology`: under
    the gravity executor, the file the executor placed the step by); S3 credentials are each
    site's own (its storage's `profile` or `*_env` variables, read in this process), else the
    normal boto3 chain.
    """

    topology: ResourceDependency[GravityTopology] = Field(
        default_factory=GravityTopology,
        description=(
            "The topology resource whose sites' storage holds the data. Default: GravityTopology(), "
            "which follows the gravity executor's sites file (else $GRAVITY_SITES, else sites.yaml)."
        ),
    )
    default_site: Optional[str] = Field(
        default=None,
        description=(
            "The site to store at and read from when the step is not run by a gravity worker "
            "(e.g. in-process materialize). Unset: such steps fail with a clear error."
        ),
    )
    # Defaults for every S3 site; a site's own `storage:` setting in sites.yaml wins over them.
    s3_connect_timeout_s: float = Field(
        default=S3Options.connect_timeout_s,
        description=(
            "Seconds to wait for an S3 site's endpoint to accept a connection, per attempt. A default: "
            "a site's storage.connect_timeout_seconds in sites.yaml wins."
        ),
    )
    s3_read_timeout_s: float = Field(
        default=S3Options.read_timeout_s,
        description=(
            "Seconds to wait on an open S3 connection for the answer, per attempt (not a limit on a whole "
            "transfer). A default: a site's storage.read_timeout_seconds in sites.yaml wins."
        ),
    )
    s3_max_attempts: int = Field(
        default=S3Options.max_attempts,
        description=(
            "Attempts per S3 request, including the first. A default: a site's storage.max_attempts in "
            "sites.yaml wins. With the defaults (5 s, 10 s, 2) a hung endpoint fails a load or store in "
            "about 21 s: after one timeout, requests to that endpoint fail at once for 30 s."
        ),
    )
    gc_grace_seconds: float = Field(
        default=gc.DEFAULT_GRACE_S,
        description=(
            "Superseded versions of an asset are removed once a newer materialization has been recorded "
            "this many seconds ago (and they are this old themselves); debris of killed writers after as long."
        ),
    )
    gc_on_write: bool = Field(
        default=True,
        description="After each write, remove superseded versions of the same asset partition and debris beside it.",
    )

    # -- helpers -------------------------------------------------------------------------

    def load_topology(self) -> Topology:
        """The topology of the `topology` resource, with this IO manager's settings checked
        against it (pydantic checks types only: a 0 attempts or a site not in the topology
        would otherwise surface, if ever, deep inside a load)."""
        topology = self.topology.load()
        self._check_settings(topology)
        return topology

    def _check_settings(self, topology: Topology) -> None:
        for name, value, ok, expected in (
            ("s3_connect_timeout_s", self.s3_connect_timeout_s, _positive(self.s3_connect_timeout_s), "a finite number of seconds > 0"),
            ("s3_read_timeout_s", self.s3_read_timeout_s, _positive(self.s3_read_timeout_s), "a finite number of seconds > 0"),
            ("s3_max_attempts", self.s3_max_attempts, 1 <= self.s3_max_attempts <= 100, "an integer from 1 to 100 (attempts per S3 request, the first included)"),
            ("gc_grace_seconds", self.gc_grace_seconds, _positive(self.gc_grace_seconds) or self.gc_grace_seconds == 0, "a finite number of seconds >= 0"),
        ):
            if not ok:
                raise GravityConfigError(f"GravityIOManager.{name}: got {short_repr(value)}; expected {expected}")
        if self.default_site is not None and self.default_site not in topology.sites:
            raise UnknownSite(f"GravityIOManager.default_site: {topology.unknown_site(self.default_site)}", site=self.default_site)

    def storage(self, site: str, label: str | None = None) -> SiteStorage:
        options = S3Options(
            connect_timeout_s=self.s3_connect_timeout_s,
            read_timeout_s=self.s3_read_timeout_s,
            max_attempts=self.s3_max_attempts,
        )
        try:
            return storage_for_site(self.load_topology(), site, options)
        except StorageError as err:
            raise err.for_asset(label) from err

    def site_here(self, label: str) -> str:
        site = current_site() or self.default_site
        if not site:
            raise StorageError(
                "no site to store at: the step is not run by a gravity worker (runtime.current_site() "
                "is None) and GravityIOManager.default_site is not configured",
                asset=label,
            )
        topology = self.load_topology()
        if site not in topology.sites:
            raise UnknownSite(
                topology.unknown_site(site),
                site=site,
                asset=label,
            )
        return site

    def check_residency(self, zone: str | None, site: str, label: str, uri: str | None, action: str) -> None:
        if zone is None:
            return
        topology = self.load_topology()
        try:
            allowed = topology.allows(zone, site)
        except KeyError as exc:
            raise ResidencyError(str(exc.args[0]), site=site, uri=uri, asset=label) from None
        if not allowed:
            raise ResidencyError(
                f"residency zone {zone!r} allows only sites {sorted(topology.zone_sites(zone))}; "
                f"refusing to {action} site {site!r}",
                site=site,
                uri=uri,
                asset=label,
            )

    @staticmethod
    def _object_base(context) -> str:
        if context.has_asset_key:
            partition = None
            if context.has_asset_partitions:
                keys = context.asset_partition_keys
                if len(keys) != 1:
                    raise StorageError(
                        f"GravityIOManager stores one object per partition; this output covers "
                        f"{len(keys)} partitions ({keys[0]}..{keys[-1]}); run one partition per step",
                        asset=context.asset_key.to_user_string(),
                    )
                partition = keys[0]
            return asset_base(context.asset_key.path, partition)
        return "ops/" + "/".join(context.get_identifier())

    # -- output --------------------------------------------------------------------------

    def handle_output(self, context: OutputContext, obj: Any) -> None:
        label = asset_label(context)
        site = self.site_here(label)
        zone = md.residency_zone(context.definition_metadata)
        storage = self.storage(site, label)
        base = self._object_base(context)
        self.check_residency(zone, site, label, storage.uri(base), "write it at")
        _check_encodable(obj, label)
        out_meta: dict[str, Any] = {}
        extension = _extension(obj)
        try:
            # assets: a new immutable version; op outputs live for one run, so one name each
            opened = storage.open_version(base, extension) if context.has_asset_key else storage.open_write(base + extension)
            with opened as writer:
                table_meta = _encode(obj, writer, label)
        except StorageError as err:
            raise err.for_asset(label) from err
        info = writer.info
        if context.has_asset_key and self.gc_on_write:
            self._collect_superseded(context, storage, base, info.key, label)
        out_meta.update(
            md.location_metadata(site, residency=zone, uri=info.uri, size_bytes=info.size_bytes, sha256=info.sha256)
        )
        out_meta.update(table_meta)
        context.add_output_metadata(out_meta)

    # -- input ---------------------------------------------------------------------------

    def load_input(self, context: InputContext) -> Any:
        if not context.has_asset_key:
            upstream = context.upstream_output
            if upstream is None:
                raise StorageError("GravityIOManager cannot load an input without an upstream output", asset=context.name)
            label = asset_label(upstream)
            zone = md.residency_zone(upstream.definition_metadata)
            return self._load_unrecorded(context, "ops/" + "/".join(upstream.get_identifier()), label, zone)

        label = context.asset_key.to_user_string()
        if context.has_asset_partitions:
            keys = list(context.asset_partition_keys)
            if len(keys) == 1:
                return self._load_asset(context, label, keys[0], single=True)
            # each partition is replicated on its own; the input's LOADED_INPUT lists the copies
            transfers: list[dict] = []
            values = {pk: self._load_asset(context, label, pk, single=False, transfers=transfers) for pk in keys}
            if transfers:
                add_loaded_input_metadata(context, {md.TRANSFERS: MetadataValue.json(transfers)})
            return values
        return self._load_asset(context, label, None, single=True)

    def _definition_site_note(self, context: InputContext, topology: Topology) -> str:
        """Why a definition's `gravity/site` did not help find the data: it names no site of
        the topology (a typo there otherwise reads as plain "not found")."""
        for source in (context.upstream_output, context):
            meta = getattr(source, "definition_metadata", None) if source is not None else None
            site = md.plain_value((meta or {}).get(md.SITE))
            if site and site not in topology.sites:
                return f"; its definition's metadata {md.SITE} names {topology.unknown_site(str(site))}"
        return ""

    def _definition_residency(self, context: InputContext) -> str | None:
        for source in (context.upstream_output, None):
            meta = source.definition_metadata if source is not None else context.definition_metadata
            zone = md.residency_zone(meta)
            if zone:
                return zone
        return None

    def _load_asset(
        self, context: InputContext, label: str, partition: str | None, single: bool, transfers: list | None = None
    ) -> Any:
        """One partition (or the whole asset). `single`: the input is this one object, so a
        replication is reported on its events; otherwise it is appended to `transfers`."""
        base = asset_base(context.asset_key.path, partition)
        record = _latest_materialization(context.instance, context.asset_key, partition)
        if record is None:
            # never materialized at all (e.g. a direct load in a test): find the object
            return self._load_unrecorded(context, base, label, self._definition_residency(context), transfers)
        loc = DataLocation.from_metadata(
            record.asset_materialization.metadata, what=f"the latest materialization of asset {label!r}"
        )
        zone = loc.residency or self._definition_residency(context)
        if not loc.site or not loc.sha256 or not loc.uri:
            # Some other writer recorded the latest version: any object gravity holds is
            # older than it, so serving one would be serving stale data.
            missing = [k for k, v in ((md.SITE, loc.site), (md.SHA256, loc.sha256), (md.URI, loc.uri)) if not v]
            raise StorageError(
                f"the latest materialization of this input{'' if partition is None else f' (partition {partition!r})'}"
                f" (run {record.run_id or 'none: reported externally'}) was not written by the gravity IO "
                f"manager: its metadata lacks {', '.join(missing)}; gravity's stored copy may be stale, so it "
                "is not served. Materialize the asset with GravityIOManager.",
                asset=label,
            )

        extension = extension_of(loc.uri)
        key = recorded_key(base, loc.sha256, loc.uri)
        here = self.site_here(label)
        wanted = _wanted_type(context)
        primary_error: StorageError | None = None
        damaged = False
        if loc.site == here:
            try:
                return _decode(self._read(here, key, loc.sha256, label), extension, wanted)
            except StorageError as err:
                primary_error = err  # lost or damaged: restore from a replica
        else:
            self.check_residency(zone, here, label, loc.uri, "copy it to")
            existing = self._head(self.storage(here, label), key, label)
            if existing is not None and existing.sha256 == loc.sha256:
                try:
                    return _decode(self._read(here, key, loc.sha256, label), extension, wanted)
                except ChecksumMismatch as err:
                    damaged = True
                    context.log.warning(f"gravity: local replica is damaged, replicating again: {err}")
            elif existing is not None:
                context.log.info(
                    f"gravity: the copy of {label} at {here} is stale (sha256 {existing.sha256[:12]}, latest "
                    f"{loc.sha256[:12]}); replicating the latest from {loc.site}"
                )
        data = self._replicate_here(
            context, record, loc, key, here, label, partition, single, primary_error, damaged, transfers
        )
        return _decode(data, extension, wanted)

    def _replicate_here(
        self, context: InputContext, record, loc: DataLocation, key: str, here: str, label: str,
        partition: str | None, single: bool, primary_error: StorageError | None, damaged: bool = False,
        transfers: list | None = None,
    ) -> bytes:
        """Copy the recorded version to `here` from its primary site, else a current replica
        (checksum verified), record the new replica, and return its bytes."""
        primary, sha = loc.site, loc.sha256
        current_replicas = _current_replicas(context.instance, context.asset_key, partition, record)
        sources = ([] if primary == here else [primary]) + [s for s in current_replicas if s != here]
        errors: list[StorageError] = [primary_error] if primary_error is not None else []
        local = self.storage(here, label)
        result = None
        for source_site in sources:
            try:
                # one copy into this site however many steps read it at once; a damaged
                # local copy is replaced, not reused
                copy = replicate if primary_error is not None or damaged else replicate_once
                result = copy(self.storage(source_site, label), local, key, sha)
                break
            except StorageError as err:
                errors.append(err.for_asset(label))
                if source_site == primary and len(sources) > 1:
                    context.log.warning(f"gravity: cannot copy {label} from its primary site: {err}; trying replicas")
        if result is None:
            first = errors[0] if errors else ObjectNotFound("no site holds a current copy", site=here, asset=label)
            if len(errors) > 1:
                raise type(first)(
                    f"{first.reason}; the current replicas failed too: " + "; ".join(str(e) for e in errors[1:]),
                    site=first.site,
                    uri=first.uri,
                    asset=label,
                ) from first
            raise first
        source_site = result.source.site
        data = self._read(here, key, sha, label)
        where = f"{label}{'' if partition is None else f' [{partition}]'}"
        if result.reused:  # another step brought it here just now, and records the replica
            context.log.info(f"gravity: reused the copy of {where} another step brought to {here}, sha256 verified")
            return data
        self._measure_link(context, source_site, here, result)
        version = parse_version_key(key)
        if self.gc_on_write and version:  # older replicas here are now superseded
            self._collect_superseded(context, local, version[0], key, label, record=record)
        observation = {
            # a whole statement of where the version is now: primary, every current replica
            md.SITE: primary,
            md.REPLICAS: sorted((set(current_replicas) | {here}) - {primary}),
            md.SHA256: sha,
            md.REPLICA_URI: result.replica.uri,
            **_transfer_metadata(source_site, here, result),
        }
        context.log.info(
            f"gravity: replicated {where} from {source_site} to "
            f"{here}: {result.bytes_moved} bytes in {result.seconds:.3f}s, sha256 verified"
        )
        if single:
            context.add_input_metadata(observation, description=f"replicated from {source_site} to {here}")
        else:
            context.instance.report_runless_asset_event(
                AssetObservation(asset_key=context.asset_key, partition=partition, metadata=observation)
            )
            if transfers is not None:
                transfers.append(_transfer_entry(source_site, here, result))
        return data

    def _load_unrecorded(
        self, context: InputContext, base: str, label: str, zone: str | None, transfers: list | None = None
    ) -> Any:
        """No materialization says where the object is: try here, then the other sites. A
        copy is reported on the input's LOADED_INPUT event (or appended to `transfers`), with
        no observation: nothing recorded says where the asset is to add a replica to."""
        here = self.site_here(label)
        topology = self.load_topology()
        wanted = _wanted_type(context)
        problems: list[StorageError] = []
        for site in [here] + [s for s in topology.sites if s != here]:
            storage = self.storage(site, label)
            try:
                found = _newest_unrecorded(storage, base)
            except StorageError as err:
                problems.append(err)
                continue
            if found is not None:
                info, extension = found
                if site != here:
                    self.check_residency(zone, here, label, info.uri, "copy it to")
                    try:
                        result = replicate(storage, self.storage(here, label), info.key, info.sha256)
                    except StorageError as err:
                        raise err.for_asset(label) from err
                    context.log.info(f"gravity: replicated {label} from {site} to {here} ({info.size_bytes} bytes)")
                    self._measure_link(context, site, here, result)
                    if transfers is not None:
                        transfers.append(_transfer_entry(site, here, result))
                    elif context.has_asset_key:
                        add_loaded_input_metadata(context, _transfer_metadata(site, here, result))
                    else:
                        context.add_input_metadata(_transfer_metadata(site, here, result))
                return _decode(self._read(here, info.key, info.sha256, label), extension, wanted)
        where = self.storage(here, label).uri(base + ".parquet")
        # an object that is there but foreign is not "missing": say so (its site and URI first)
        foreign = next((p for p in problems if isinstance(p, ForeignObject)), None)
        if foreign is not None:
            raise ForeignObject(
                f"no object written by gravity for this input at any site ({shown_names(topology.sites)}); "
                f"{foreign.reason}" + "".join(f"; {p}" for p in problems if p is not foreign),
                site=foreign.site,
                uri=foreign.uri,
                asset=label,
            )
        raise ObjectNotFound(
            f"no stored object for this input at any site ({shown_names(topology.sites)})"
            + self._definition_site_note(context, topology)
            + (f"; problems: {'; '.join(str(p) for p in problems)}" if problems else ""),
            site=here,
            uri=where,
            asset=label,
        )

    def _measure_link(self, context: InputContext, src: str, dst: str, result) -> None:
        """Teach placement what the link delivered (link_measurements.py); never fails the step."""
        try:
            record_transfer(context.instance, self.load_topology(), src, dst, result.bytes_moved, result.seconds)
        except Exception as exc:  # noqa: BLE001 - a measurement lost is only a sample lost
            context.log.warning(f"gravity: could not record the {src} -> {dst} link measurement: {exc}")

    def _collect_superseded(
        self, context, storage: SiteStorage, base: str, written: str, label: str, record=None
    ) -> None:
        """Remove versions of `base` at this site that a materialization recorded long enough
        ago supersedes, and debris beside them. Never fails the step: it only saves space."""
        try:
            if record is None:
                instance = _instance_of(context)
                partition = context.asset_partition_key if context.has_asset_partitions else None
                record = _latest_materialization(instance, context.asset_key, partition) if instance else None
            latest = recorded_version(record, base) if record is not None else None
            report = gc.collect_base(storage, base, latest, keep={written}, grace_s=self.gc_grace_seconds)
        except Exception as exc:  # noqa: BLE001 - garbage collection must never fail a write
            context.log.warning(f"gravity: garbage collection beside {label} at {storage.site} failed: {exc}")
            return
        if report.removed:
            context.log.info(f"gravity: {report.summary()}")

    def _head(self, storage: SiteStorage, key: str, label: str):
        try:
            return storage.head(key)
        except StorageError as err:
            raise err.for_asset(label) from err

    def _read(self, site: str, key: str, sha: str, label: str) -> bytes:
        try:
            data, _ = self.storage(site, label).read_bytes(key, sha)
        except StorageError as err:
            raise err.for_asset(label) from err
        return data


def _transfer_metadata(src: str, dst: str, result) -> dict[str, Any]:
    """One replication's keys (metadata.py), for the input's events and the run summary."""
    return {
        md.BYTES_MOVED: result.bytes_moved,
        md.REPLICATED_FROM: src,
        md.REPLICATED_TO: dst,
        md.REPLICATION_SECONDS: round(result.seconds, 6),
    }


def _transfer_entry(src: str, dst: str, result) -> dict[str, Any]:
    """One replication as an entry of md.TRANSFERS."""
    return {"from": src, "to": dst, "bytes": result.bytes_moved, "seconds": round(result.seconds, 6)}


def _latest_materialization(instance, asset_key: AssetKey, partition: str | None):
    result = instance.fetch_materializations(
        AssetRecordsFilter(asset_key=asset_key, asset_partitions=[partition] if partition is not None else None),
        limit=1,
    )
    return result.records[0] if result.records else None


def _current_replicas(instance, asset_key: AssetKey, partition: str | None, record) -> list[str]:
    from dagster_gravity.locations import replicas_since

    return replicas_since(instance, asset_key, partition, record)


def _newest_unrecorded(storage: SiteStorage, base: str):
    """(ObjectInfo, extension) of the newest version of `base` in `storage`, else of an object
    under the fixed name of before versions, else None."""
    versions = [v for v in storage.list_versions(base) if v.key.endswith(EXTENSIONS)]
    newest = storage.head(versions[-1].key) if versions else None  # None: removed since listed
    if newest is not None:
        return newest, extension_of(newest.key)
    for extension in EXTENSIONS:
        info = storage.head(base + extension)
        if info is not None:
            return info, extension
    return None


def _instance_of(context):
    """The step's instance, or None outside a step (e.g. a directly built OutputContext)."""
    try:
        return context.step_context.instance
    except Exception:
        return None


def _positive(value: float) -> bool:
    return math.isfinite(value) and value > 0
