"""Immutable versions in site storage and their garbage collection (local and S3)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from dagster import AssetKey, asset, materialize

from dagster_gravity import GravityIOManager, GravityTopology
from dagster_gravity.cli import main as gravity
from dagster_gravity.recorded_versions import collect, recorded_bases
from dagster_gravity.storage import LocalSiteStorage, S3SiteStorage
from dagster_gravity.storage import gc
from dagster_gravity.storage.base import parse_version_key, version_key
from dagster_gravity.storage.keys import recorded_key
from tests.support.s3 import write_sites_yaml

HOUR = 3600.0


def s3_storage(seaweedfs, bucket: str) -> S3SiteStorage:
    return S3SiteStorage("s3-a", bucket=bucket, prefix="gravity", endpoint_url=seaweedfs.endpoint_url)


@pytest.fixture(params=["local", pytest.param("s3", marks=[pytest.mark.slow, pytest.mark.s3])])
def storage(request, tmp_path):
    if request.param == "local":
        return LocalSiteStorage("here", tmp_path / "store")
    seaweedfs = request.getfixturevalue("seaweedfs")
    return s3_storage(seaweedfs, seaweedfs.make_bucket(f"versions-{os.getpid()}-{time.monotonic_ns()}"))


# -- versions ------------------------------------------------------------------------------


def test_each_version_has_its_own_key_and_both_stay_readable(storage):
    one = storage.put_version("churn", b"v1", ".parquet")
    two = storage.put_version("churn", b"v2", ".parquet")
    assert one.key == version_key("churn", one.sha256, ".parquet") != two.key
    assert storage.read_bytes(one.key, one.sha256)[0] == b"v1"
    assert storage.read_bytes(two.key, two.sha256)[0] == b"v2"
    again = storage.put_version("churn", b"v1", ".parquet")  # same bytes: same key, same content
    assert again.key == one.key and storage.read_bytes(one.key)[0] == b"v1"


def test_versions_are_listed_by_exact_base(storage):
    storage.put_version("churn", b"a", ".parquet")
    storage.put_version("churn-eu", b"b", ".parquet")
    storage.put_version("churn/2024-01-01", b"c", ".parquet")
    storage.put_bytes("churn.parquet", b"old layout")
    listed = storage.list_versions("churn")
    assert [parse_version_key(v.key)[0] for v in listed] == ["churn"]
    assert listed[0].size_bytes == 1 and listed[0].modified > time.time() - 600
    assert [parse_version_key(v.key)[0] for v in storage.list_versions("churn/2024-01-01")] == ["churn/2024-01-01"]


def test_a_failed_write_leaves_no_version(storage):
    with pytest.raises(RuntimeError):
        with storage.open_version("churn", ".npy") as writer:
            writer.write(b"half")
            raise RuntimeError("the encoder failed")
    assert storage.list_versions("churn") == []


def test_recorded_key_follows_the_recorded_uri(tmp_path):
    local = LocalSiteStorage("here", tmp_path / "store")
    info = local.put_version("events/2024-01-01%3A00", b"x", ".parquet")  # a quoted partition segment
    assert recorded_key("events/2024-01-01%3A00", info.sha256, info.uri) == info.key  # file URIs are %-quoted
    old_uri = local.uri("events/2024-01-01%3A00.parquet")  # recorded before versions were immutable
    assert recorded_key("events/2024-01-01%3A00", info.sha256, old_uri) == "events/2024-01-01%3A00.parquet"


# -- superseded versions ---------------------------------------------------------------------


def test_superseded_versions_go_only_after_the_grace_period(storage):
    old = storage.put_version("m", b"old", ".json")
    latest = storage.put_version("m", b"latest", ".json")
    recorded = gc.RecordedVersion(latest.key, recorded_at=time.time())
    later = time.time() + 2 * HOUR

    assert gc.collect_base(storage, "m", None, now=later).removed == []  # nothing recorded: no proof
    assert gc.collect_base(storage, "m", recorded, now=time.time() + 60).removed == []  # record too young

    dry = gc.collect_base(storage, "m", recorded, now=later, dry_run=True)
    assert [item.kind for item in dry.removed] == [gc.SUPERSEDED] and "would remove 1 superseded" in dry.summary()
    assert len(storage.list_versions("m")) == 2

    report = gc.collect_base(storage, "m", recorded, now=later)
    assert [item.uri for item in report.removed] == [storage.uri(old.key)]
    assert [v.key for v in storage.list_versions("m")] == [latest.key]
    assert storage.read_bytes(latest.key, latest.sha256)[0] == b"latest"


def test_a_young_unrecorded_version_is_kept(storage):
    recorded_one = storage.put_version("m", b"recorded", ".json")
    record = gc.RecordedVersion(recorded_one.key, recorded_at=time.time() - 2 * HOUR)
    in_flight = storage.put_version("m", b"written, not yet recorded", ".json")
    assert gc.collect_base(storage, "m", record).removed == []
    assert {v.key for v in storage.list_versions("m")} == {recorded_one.key, in_flight.key}


# -- debris ----------------------------------------------------------------------------------

_KILLED_WRITER = """
import sys, time
from dagster_gravity.storage import LocalSiteStorage
storage = LocalSiteStorage("here", sys.argv[1])
with storage.open_version("big", ".npy") as writer:
    writer.write(b"x" * (4 << 20))
    print("writing", flush=True)
    time.sleep(60)
"""


@pytest.mark.slow
def test_temporary_file_of_a_killed_writer_is_collected(tmp_path):
    storage = LocalSiteStorage("here", tmp_path / "store")
    writer = subprocess.Popen([sys.executable, "-c", _KILLED_WRITER, str(storage.root)], stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline().strip() == "writing"
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait(10)
    [temp] = [p for p in storage.root.iterdir() if ".tmp-" in p.name]
    assert temp.stat().st_size == 4 << 20 and storage.list_versions("big") == []

    assert gc.collect_debris(storage).removed == []  # younger than the grace period
    dry = gc.collect_debris(storage, now=time.time() + 2 * HOUR, dry_run=True)
    assert [item.kind for item in dry.removed] == [gc.TEMPORARY] and temp.exists()
    report = gc.collect_debris(storage, now=time.time() + 2 * HOUR)
    assert [item.size_bytes for item in report.removed] == [4 << 20] and not temp.exists()


def test_orphaned_data_file_is_collected_and_linked_ones_are_not(tmp_path):
    storage = LocalSiteStorage("here", tmp_path / "store")
    live = storage.put_version("m", b"live", ".json")
    # what a writer killed between its two renames leaves: a data file no link names
    orphan = storage.root / f".{Path(live.key).name}.obj-{'0' * 64}-4-abcdef012345"
    orphan.write_bytes(b"lost")
    report = gc.collect_debris(storage, now=time.time() + 2 * HOUR)
    assert [item.kind for item in report.removed] == [gc.ORPHAN] and not orphan.exists()
    assert storage.read_bytes(live.key, live.sha256)[0] == b"live"


@pytest.mark.slow
def test_incomplete_multipart_upload_is_aborted(seaweedfs):
    storage = s3_storage(seaweedfs, seaweedfs.make_bucket(f"uploads-{os.getpid()}"))
    key = storage.object_key("big@" + "0" * 64 + ".npy")
    upload = storage.client.create_multipart_upload(Bucket=storage.bucket, Key=key)
    storage.client.upload_part(Bucket=storage.bucket, Key=key, UploadId=upload["UploadId"], PartNumber=1, Body=b"x" * 1024)

    def pending() -> list[str]:
        listed = storage.client.list_multipart_uploads(Bucket=storage.bucket, Prefix="gravity/")
        return [u["UploadId"] for u in listed.get("Uploads", [])]

    assert pending() == [upload["UploadId"]]
    assert gc.collect_debris(storage).removed == []  # begun just now: perhaps still running
    dry = gc.collect_debris(storage, now=time.time() + 2 * HOUR, dry_run=True)
    assert [item.kind for item in dry.removed] == [gc.UPLOAD] and pending() == [upload["UploadId"]]
    gc.collect_debris(storage, now=time.time() + 2 * HOUR)
    assert pending() == []


# -- through Dagster -------------------------------------------------------------------------

ROUND = {"n": 0}


@asset
def table() -> pd.DataFrame:
    return pd.DataFrame({"round": [ROUND["n"]]})


@asset
def reads_table(table: pd.DataFrame) -> int:
    return int(table["round"].iloc[0])


def _materialize(io, instance, n: int):
    ROUND["n"] = n
    materialize([table], resources={"io_manager": io}, instance=instance)


def _versions(sites: Path) -> list[str]:
    return [v.key for v in LocalSiteStorage("us-local", sites.parent / "store" / "us").list_versions("table")]


@pytest.mark.slow
def test_writes_collect_versions_superseded_by_a_recorded_one(tmp_path, instance):
    sites = write_sites_yaml(tmp_path)
    io = GravityIOManager(topology=GravityTopology(sites_file=str(sites)), default_site="us-local", gc_grace_seconds=0)
    _materialize(io, instance, 1)
    _materialize(io, instance, 2)
    assert len(_versions(sites)) == 2  # v1 is what was recorded when v2 was written: kept
    _materialize(io, instance, 3)
    kept = _versions(sites)
    [record] = instance.fetch_materializations(AssetKey("table"), limit=1).records
    assert len(kept) == 2 and recorded_bases(instance)["table"].key in kept  # v2 (recorded) and v3 (just written)
    assert record.asset_materialization.metadata["gravity/sha256"].value in "".join(kept)


@pytest.mark.slow
def test_gravity_gc_dry_run_lists_and_removes_nothing_recorded(tmp_path, instance, capsys, monkeypatch):
    sites = write_sites_yaml(tmp_path)
    io = GravityIOManager(topology=GravityTopology(sites_file=str(sites)), default_site="us-local", gc_on_write=False)
    for n in (1, 2, 3):
        _materialize(io, instance, n)
    assert len(_versions(sites)) == 3
    latest = recorded_bases(instance)["table"].key

    assert gravity(["gc", "--sites", str(sites), "--dry-run", "--grace-seconds", "0"]) == 0
    out = capsys.readouterr().out
    assert "site us-local: garbage collection would remove 2 superseded versions" in out
    assert latest not in out and len(_versions(sites)) == 3

    assert gravity(["gc", "--sites", str(sites)]) == 0  # default grace: all of it is too young
    assert "removed nothing" in capsys.readouterr().out and len(_versions(sites)) == 3

    assert gravity(["gc", "--sites", str(sites), "--grace-seconds", "0"]) == 0
    assert _versions(sites) == [latest]
    result = materialize([table, reads_table], resources={"io_manager": io}, instance=instance, selection=[reads_table])
    assert result.output_for_node("reads_table") == 3  # the recorded version is intact


def test_gravity_gc_refuses_a_bad_grace(tmp_path, capsys):
    sites = write_sites_yaml(tmp_path)
    assert gravity(["gc", "--sites", str(sites), "--grace-seconds", "nan"]) == 2
    assert "expected a number of seconds >= 0" in capsys.readouterr().err


def test_collect_reports_an_unreachable_site_and_goes_on(tmp_path, instance, s3_credentials):
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    sites = write_sites_yaml(tmp_path, f"http://127.0.0.1:{port}", ("dead-a", "dead-b"))
    from dagster_gravity.topology import Topology

    reports = collect(instance, Topology.from_yaml(sites), grace_s=0)
    assert reports["us-local"].errors == [] and reports["s3-a"].errors
    assert "s3-a" in reports["s3-a"].errors[0]


@pytest.mark.slow
def test_replicating_a_new_version_collects_the_old_replica(tmp_path, instance):
    sites = write_sites_yaml(tmp_path)
    topology = GravityTopology(sites_file=str(sites))
    at_us = GravityIOManager(topology=topology, default_site="us-local", gc_grace_seconds=0)
    at_eu = GravityIOManager(topology=topology, default_site="eu-local", gc_grace_seconds=0)
    eu = LocalSiteStorage("eu-local", sites.parent / "store" / "eu")

    def read_at_eu() -> int:
        result = materialize([table, reads_table], resources={"io_manager": at_eu}, instance=instance, selection=[reads_table])
        return result.output_for_node("reads_table")

    _materialize(at_us, instance, 1)
    assert read_at_eu() == 1
    [first_replica] = [v.key for v in eu.list_versions("table")]
    _materialize(at_us, instance, 2)
    assert read_at_eu() == 2
    assert [v.key for v in eu.list_versions("table")] == [recorded_bases(instance)["table"].key] != [first_replica]


def test_collecting_one_base_touches_only_its_own_debris(tmp_path):
    storage = LocalSiteStorage("here", tmp_path / "store")
    mine = storage.put_version("events/day1", b"a", ".parquet")
    theirs = storage.put_version("events/day2", b"b", ".parquet")
    for key in (mine.key, theirs.key):  # a killed writer's temporary file beside each base
        (storage.root / "events" / f".{key.split('/')[1].split('@')[0]}.parquet.tmp-0123456789ab").write_bytes(b"x")
    later = time.time() + 2 * HOUR
    report = gc.collect_base(storage, "events/day1", gc.RecordedVersion(mine.key, 0.0), now=later)
    assert [Path(item.uri).name for item in report.removed] == [".day1.parquet.tmp-0123456789ab"]
    assert (storage.root / "events" / ".day2.parquet.tmp-0123456789ab").exists()


@pytest.mark.slow
def test_an_abandoned_replication_lease_is_collected(seaweedfs):
    from dagster_gravity.storage.single_flight import LEASE_PREFIX

    storage = s3_storage(seaweedfs, seaweedfs.make_bucket(f"leases-{os.getpid()}"))
    storage.put_new(LEASE_PREFIX + "t@" + "0" * 64 + ".npy", b'{"owner": "dead", "expires": 0}')
    assert gc.collect_debris(storage, grace_s=0).removed == []  # a lease may be live for an hour
    report = gc.collect_debris(storage, now=time.time() + 2 * HOUR)
    assert [item.kind for item in report.removed] == [gc.LEASE]
    assert storage.list_keys(LEASE_PREFIX) == []
