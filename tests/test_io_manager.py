"""GravityIOManager end to end: real Dagster instance on disk, real SeaweedFS S3 sites and
local sites; the site a step runs at is set with `running_at` as the executor's workers do."""

from __future__ import annotations

import hashlib
from urllib.parse import unquote

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from dagster import (
    AssetKey,
    AssetRecordsFilter,
    DailyPartitionsDefinition,
    In,
    Out,
    asset,
    job,
    materialize,
    op,
)

from dagster_gravity import GravityIOManager, GravityTopology
from dagster_gravity.locations import latest_location
from dagster_gravity.runtime import running_at
from dagster_gravity.storage.base import parse_version_key, version_key
from dagster_gravity.storage.keys import asset_base
from dagster_gravity.storage import (
    ChecksumMismatch,
    ObjectNotFound,
    ResidencyError,
    StorageError,
    UnknownSite,
    storage_for_site,
)
from tests.support.files import flip_byte_s3, visible_files
from tests.support.s3 import write_sites_yaml

# Every test runs Dagster jobs in process on an on-disk instance (its compute-log capture
# starts `tail` processes).
pytestmark = pytest.mark.slow

VERSION = {"n": 1}


@asset
def up() -> pd.DataFrame:
    n = VERSION["n"]
    return pd.DataFrame({"a": [n, n + 1, n + 2], "b": ["x", "y", "z"]})


@asset
def down(up: pd.DataFrame) -> pd.DataFrame:
    return up.assign(c=up["a"] * 2)


@asset(metadata={"gravity/residency": "eu"})
def eu_customers() -> pd.DataFrame:
    return pd.DataFrame({"customer": ["anna", "bernd"], "spend": [10.5, 3.25]})


@asset
def eu_report(eu_customers: pd.DataFrame) -> dict:
    return {"total": float(eu_customers["spend"].sum())}


@pytest.fixture
def sites(tmp_path, seaweedfs, s3_buckets):
    return write_sites_yaml(tmp_path, seaweedfs.endpoint_url, s3_buckets)


@pytest.fixture
def io(sites):
    return GravityIOManager(
        topology=GravityTopology(sites_file=str(sites)), s3_connect_timeout_s=2, s3_read_timeout_s=10, s3_max_attempts=2
    )


def store(io: GravityIOManager, site: str):
    return storage_for_site(io.topology.load(), site)


def run(assets, site, io, instance, selection=None, partition_key=None):
    with running_at(site):
        return materialize(
            assets, selection=selection, resources={"io_manager": io}, instance=instance, partition_key=partition_key
        )


def run_failure(assets, site, io, instance, selection=None) -> BaseException:
    """Run and return the StorageError (or TypeError) that failed the step."""
    with pytest.raises(Exception) as err:
        run(assets, site, io, instance, selection)
    exc: BaseException | None = err.value
    while exc is not None and not isinstance(exc, (StorageError, TypeError)):
        exc = exc.__cause__
    assert exc is not None, f"no StorageError in the cause chain of {err.value!r}"
    return exc


def observations(instance, key: str):
    return instance.fetch_observations(AssetRecordsFilter(asset_key=AssetKey(key)), limit=100).records


def meta_value(metadata, key):
    return getattr(metadata[key], "value", metadata[key])


def latest_key(instance, asset: str = "up", partition: str | None = None, ext: str = ".parquet") -> str:
    """The key of the version the latest materialization of `asset` recorded."""
    base = asset_base(AssetKey.from_user_string(asset).path, partition)
    return version_key(base, latest_location(instance, asset, partition).sha256, ext)


def bases(keys: list[str]) -> list[str]:
    """Stored keys as `<base><ext>`, without the version part."""
    return [f"{b}{suffix}" for b, _sha, suffix in map(parse_version_key, keys)]


# -- writing ---------------------------------------------------------------------------------


def test_output_is_parquet_at_the_step_site_with_location_and_table_metadata(io, instance):
    result = run([up], "s3-a", io, instance)
    meta = result.asset_materializations_for_node("up")[0].metadata
    bucket = store(io, "s3-a").bucket
    assert meta_value(meta, "gravity/site") == "s3-a"
    assert meta_value(meta, "gravity/replicas") == []
    key = latest_key(instance)
    assert meta_value(meta, "dagster/uri") == f"s3://{bucket}/gravity/{key}"
    assert meta_value(meta, "dagster/row_count") == 3
    assert [c.name for c in meta["dagster/column_schema"].schema.columns] == ["a", "b"]
    data, info = store(io, "s3-a").read_bytes(key)
    assert meta_value(meta, "gravity/sha256") == hashlib.sha256(data).hexdigest() == info.sha256
    assert meta_value(meta, "dagster/size_bytes") == len(data)
    assert data[:4] == b"PAR1"


@pytest.mark.parametrize("src,dst", [("s3-a", "us-local"), ("us-local", "s3-b"), ("s3-a", "s3-b")])
def test_input_at_another_site_is_replicated_verified_and_recorded(io, instance, src, dst):
    run([up], src, io, instance)
    primary = latest_location(instance, "up")
    assert store(io, dst).head(latest_key(instance)) is None

    result = run([up, down], dst, io, instance, selection=[down])
    assert result.output_for_node("down")["c"].tolist() == [2, 4, 6]
    replica = store(io, dst).head(latest_key(instance))
    assert replica is not None and replica.sha256 == primary.sha256

    [obs] = observations(instance, "up")
    obs_meta = obs.asset_observation.metadata
    assert meta_value(obs_meta, "gravity/replicas") == [dst]
    assert meta_value(obs_meta, "gravity/sha256") == primary.sha256
    assert meta_value(obs_meta, "gravity/bytes_moved") == primary.size_bytes > 0
    location = latest_location(instance, "up")
    assert location.site == src and location.replicas == (dst,)

    if dst == "us-local":  # the next read at dst uses the verified local copy: nothing moves
        run([up, down], dst, io, instance, selection=[down])
        assert len(observations(instance, "up")) == 1


def test_partitioned_asset_stores_one_object_per_partition(io, instance):
    daily = DailyPartitionsDefinition(start_date="2024-01-01")

    @asset(partitions_def=daily)
    def events(context) -> pd.DataFrame:
        return pd.DataFrame({"day": [context.partition_key] * 2})

    @asset(partitions_def=daily)
    def daily_count(events: pd.DataFrame) -> dict:
        return {"rows": len(events), "day": events["day"].iloc[0]}

    for day in ("2024-01-01", "2024-01-02"):
        result = run([events], "us-local", io, instance, partition_key=day)
        meta = result.asset_materializations_for_node("events")[0].metadata
        assert unquote(meta_value(meta, "dagster/uri")).endswith(latest_key(instance, "events", day))
    assert bases(store(io, "us-local").list_keys("events/")) == ["events/2024-01-01.parquet", "events/2024-01-02.parquet"]

    result = run([events, daily_count], "s3-a", io, instance, selection=[daily_count], partition_key="2024-01-02")
    assert result.output_for_node("daily_count") == {"rows": 2, "day": "2024-01-02"}
    assert store(io, "s3-a").list_keys("events/") == [latest_key(instance, "events", "2024-01-02")]
    assert latest_location(instance, "events", "2024-01-02").replicas == ("s3-a",)
    assert latest_location(instance, "events", "2024-01-01").replicas == ()


def test_arrow_numpy_and_json_outputs_round_trip_without_pickle(io, instance):
    @asset
    def table() -> pa.Table:
        return pa.table({"x": [1.5, 2.5]})

    @asset
    def weights() -> np.ndarray:
        return np.arange(6, dtype=np.float32).reshape(2, 3)

    @asset
    def summary(table: pa.Table, weights: np.ndarray) -> dict:
        assert isinstance(table, pa.Table)
        return {"x": table.column("x").to_pylist(), "w": float(weights.sum())}

    result = run([table, weights, summary], "us-local", io, instance)
    assert result.output_for_node("summary") == {"x": [1.5, 2.5], "w": 15.0}
    assert bases(store(io, "us-local").list_keys()) == ["summary.json", "table.parquet", "weights.npy"]

    @asset
    def unpicklable() -> object:
        return object()

    err = run_failure([unpicklable], "us-local", io, instance)
    assert isinstance(err, TypeError) and "never pickles" in str(err)


def test_op_outputs_outside_assets_are_stored_at_the_site(io, instance):
    @op(out=Out(io_manager_key="io_manager"))
    def make() -> dict:
        return {"k": 1}

    @op(ins={"value": In()})
    def use(value: dict) -> int:
        return value["k"] + 1

    @job(resource_defs={"io_manager": io})
    def ops_job():
        use(make())

    with running_at("eu-local"):
        result = ops_job.execute_in_process(instance=instance)
    assert result.output_for_node("use") == 2
    assert any(k.startswith(f"ops/{result.run_id}/make/") for k in store(io, "eu-local").list_keys())


# -- bad input -------------------------------------------------------------------------------


def test_corrupted_object_fails_the_load_and_is_never_copied(io, instance):
    run([up], "s3-a", io, instance)
    key = latest_key(instance)
    flip_byte_s3(store(io, "s3-a"), key, 10)
    bucket = store(io, "s3-a").bucket

    err = run_failure([up, down], "s3-a", io, instance, selection=[down])
    assert isinstance(err, ChecksumMismatch)
    assert "'up'" in str(err) and "'s3-a'" in str(err) and f"s3://{bucket}/gravity/{key}" in str(err)

    err = run_failure([up, down], "us-local", io, instance, selection=[down])
    assert isinstance(err, ChecksumMismatch) and "'up'" in str(err)
    assert store(io, "us-local").head(key) is None
    assert latest_location(instance, "up").replicas == ()  # no replica recorded by the failed loads
    assert observations(instance, "up") == []


def test_missing_object_fails_with_asset_site_and_uri(io, instance, tmp_path):
    run([up], "us-local", io, instance)
    key = latest_key(instance)
    store(io, "us-local").delete(key)
    err = run_failure([up, down], "us-local", io, instance, selection=[down])
    assert isinstance(err, ObjectNotFound)
    assert "'up'" in str(err) and "'us-local'" in str(err)
    assert (tmp_path / "store/us" / key).as_uri() in str(err)


def test_residency_refuses_copy_out_of_the_zone(io, instance, tmp_path):
    run([eu_customers], "eu-local", io, instance)
    assert latest_location(instance, "eu_customers").residency == "eu"

    err = run_failure([eu_customers, eu_report], "us-local", io, instance, selection=[eu_report])
    assert isinstance(err, ResidencyError)
    assert "'eu_customers'" in str(err) and "'us-local'" in str(err) and "'eu'" in str(err)
    assert visible_files(tmp_path / "store" / "us") == []

    # inside the zone the downstream step works
    result = run([eu_customers, eu_report], "eu-local", io, instance, selection=[eu_report])
    assert result.output_for_node("eu_report") == {"total": 13.75}


def test_residency_refuses_writing_outside_the_zone(io, instance, tmp_path):
    err = run_failure([eu_customers], "s3-b", io, instance)
    assert isinstance(err, ResidencyError) and "'s3-b'" in str(err) and "'eu_customers'" in str(err)
    assert store(io, "s3-b").list_keys() == []


def test_stale_replica_is_never_read(io, instance):
    VERSION["n"] = 1
    try:
        run([up], "s3-a", io, instance)
        run([up, down], "us-local", io, instance, selection=[down])  # replica of v1 at us-local
        assert latest_location(instance, "up").replicas == ("us-local",)

        VERSION["n"] = 10
        run([up], "s3-a", io, instance)  # v2 at the primary: the us-local copy is now stale
        v2 = latest_location(instance, "up")
        assert v2.replicas == ()
        local_versions = store(io, "us-local").list_versions("up")
        assert [v.sha256 for v in local_versions] != [v2.sha256]  # only v1 is at us-local

        # with the primary's object gone, the stale local copy must not be read instead
        store(io, "s3-a").delete(latest_key(instance))
        err = run_failure([up, down], "us-local", io, instance, selection=[down])
        assert isinstance(err, ObjectNotFound) and "'s3-a'" in str(err) and "'up'" in str(err)

        VERSION["n"] = 20
        run([up], "s3-a", io, instance)
        result = run([up, down], "us-local", io, instance, selection=[down])
        assert result.output_for_node("down")["a"].tolist() == [20, 21, 22]
        v3 = latest_location(instance, "up")
        assert v3.replicas == ("us-local",)
        assert store(io, "us-local").head(latest_key(instance)).sha256 == v3.sha256
    finally:
        VERSION["n"] = 1


def test_site_must_be_known(sites, instance, monkeypatch):
    # The site comes only from `runtime.running_at` (else default_site), never the environment.
    monkeypatch.setenv("GRAVITY_SITE", "eu-local")
    no_site = GravityIOManager(topology=GravityTopology(sites_file=str(sites)))
    with pytest.raises(Exception) as err:
        materialize([up], resources={"io_manager": no_site}, instance=instance)
    assert "default_site is not configured" in str(err.value.__cause__ or err.value)

    unknown = GravityIOManager(topology=GravityTopology(sites_file=str(sites)), default_site="mars")
    with pytest.raises(Exception) as err:
        materialize([up], resources={"io_manager": unknown}, instance=instance)
    cause = err.value.__cause__ or err.value
    assert isinstance(cause, UnknownSite) and "'mars'" in str(cause) and "known sites" in str(cause)

    good = GravityIOManager(topology=GravityTopology(sites_file=str(sites)), default_site="us-local")
    result = materialize([up], resources={"io_manager": good}, instance=instance)
    assert meta_value(result.asset_materializations_for_node("up")[0].metadata, "gravity/site") == "us-local"


def test_s3_site_that_refuses_fails_with_a_clear_error(tmp_path, instance, s3_credentials):
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    sites = write_sites_yaml(tmp_path, f"http://127.0.0.1:{port}", ("dead-a", "dead-b"))
    io = GravityIOManager(
        topology=GravityTopology(sites_file=str(sites)), s3_connect_timeout_s=1, s3_read_timeout_s=1, s3_max_attempts=1
    )
    err = run_failure([up], "s3-a", io, instance)
    assert "refused the connection or is unreachable" in str(err) and "EndpointConnectionError" in str(err)
    assert "'up'" in str(err) and "'s3-a'" in str(err) and "s3://dead-a/gravity/up@" in str(err)


def test_lost_primary_is_served_from_a_current_replica(io, instance):
    run([up], "s3-a", io, instance)
    run([up, down], "us-local", io, instance, selection=[down])  # verified replica at us-local
    store(io, "s3-a").delete(latest_key(instance))  # the primary site lost its copy

    result = run([up, down], "s3-b", io, instance, selection=[down])
    assert result.output_for_node("down")["c"].tolist() == [2, 4, 6]
    latest = observations(instance, "up")[0].asset_observation.metadata
    assert meta_value(latest, "gravity/replicated_from") == "us-local"
    assert latest_location(instance, "up").replicas == ("s3-b", "us-local")

    # at the primary site itself, the lost object is restored from a replica
    run([up, down], "s3-a", io, instance, selection=[down])
    assert store(io, "s3-a").head(latest_key(instance)).sha256 == latest_location(instance, "up").sha256


def test_latest_materialization_without_gravity_metadata_is_refused_not_served_stale(io, instance):
    from dagster import AssetMaterialization

    run([up], "us-local", io, instance)  # gravity holds this version...
    # ...then someone else records a newer one (another IO manager, or reported externally)
    instance.report_runless_asset_event(AssetMaterialization(asset_key="up", metadata={"rows": 3}))
    err = run_failure([up, down], "us-local", io, instance, selection=[down])
    assert isinstance(err, StorageError) and not isinstance(err, ObjectNotFound)
    assert "'up'" in str(err) and "not written by the gravity IO manager" in str(err)
    assert "gravity/site" in str(err) and "gravity/sha256" in str(err)


@asset
def mixed_types() -> pd.DataFrame:
    return pd.DataFrame({"ok": [1, 2], "mixed": [1, "x"]})


def test_dataframe_parquet_cannot_store_names_the_asset_and_column(io, instance, tmp_path):
    err = run_failure([mixed_types], "us-local", io, instance)
    assert isinstance(err, TypeError)
    assert "asset 'mixed_types'" in str(err) and "column 'mixed' (dtype object)" in str(err)
    assert visible_files(tmp_path / "store" / "us") == []  # nothing half-written


def test_local_sidecar_free_head_of_a_foreign_file_names_the_uri(io, instance, tmp_path):
    (tmp_path / "store" / "us").mkdir(parents=True, exist_ok=True)
    (tmp_path / "store" / "us" / "up.parquet").write_bytes(b"not written by gravity")
    err = run_failure([up, down], "us-local", io, instance, selection=[down])
    assert "not a gravity object" in str(err) and "'up'" in str(err)
    assert (tmp_path / "store/us/up.parquet").as_uri() in str(err)
