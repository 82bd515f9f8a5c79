"""LandingArea over the site storage: atomic checksummed writes, the storage's S3 client
(short timeouts), and read errors that tell a missing file from a broken site."""

from __future__ import annotations

import socket
import time

import pandas as pd
import pytest
import yaml

from dagster_gravity.storage import S3Options, StorageError, storage_for_site
from dagster_gravity.topology import Topology
from resources.landing import LandingArea, s3_client
from tests.support.files import all_files, visible_files
from tests.support.s3 import write_sites_yaml

DAY = "2026-01-05"


def frame(n: int) -> pd.DataFrame:
    return pd.DataFrame({"item": list(range(n)), "price": [1.5] * n})


def s3_topology(tmp_path, endpoint_url: str, bucket: str) -> Topology:
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "sites.yaml"
    path.write_text(yaml.safe_dump({"sites": [{
        "name": "cloud", "region": "us-east-1", "kind": "cloud",
        "storage": {"kind": "s3", "bucket": bucket, "prefix": "ref", "endpoint_url": endpoint_url},
        "pools": [{"name": "cpu", "slots": 1}],
    }]}))
    return Topology.from_yaml(path)


def test_local_landing_write_is_the_storage_atomic_checksummed_write(tmp_path):
    topology = Topology.from_yaml(write_sites_yaml(tmp_path))
    area = LandingArea(topology, "us-local")
    written = area.write_table("items", DAY, iter([frame(3), frame(2)]))
    assert written.partition == DAY and written.size_bytes > 0
    key = LandingArea.key("items", DAY)
    info = storage_for_site(topology, "us-local").head(key)
    assert info is not None and info.size_bytes == written.size_bytes  # checksum recorded
    assert len(area.read("items", DAY)) == 5
    root = tmp_path / "store" / "us"
    assert visible_files(root) == [key]
    area.write_table("items", DAY, iter([frame(4)]))  # a rewrite replaces it in one rename
    assert len(area.read("items", DAY)) == 4 and len(all_files(root)) == 2
    with pytest.raises(FileNotFoundError, match="no landing file for dataset 'items' partition '2026-01-06'"):
        area.read("items", "2026-01-06")


def test_s3_landing_reads_missing_as_not_found_and_other_errors_as_storage_errors(tmp_path, seaweedfs, s3_buckets):
    area = LandingArea(s3_topology(tmp_path, seaweedfs.endpoint_url, s3_buckets[0]), "cloud")
    area.write_table("items", DAY, iter([frame(3)]))
    assert len(area.read("items", DAY)) == 3
    assert area.storage.head("landing/items/2026-01-05.parquet") is not None  # sha256 metadata
    with pytest.raises(FileNotFoundError, match="no landing file"):
        area.read("items", "2026-01-06")
    gone = LandingArea(s3_topology(tmp_path / "gone", seaweedfs.endpoint_url, "no-such-bucket-x1"), "cloud")
    with pytest.raises(StorageError) as err:
        gone.read("items", DAY)
    assert not isinstance(err.value, FileNotFoundError)
    message = str(err.value)
    assert "NoSuchBucket" in message and "'no-such-bucket-x1'" in message
    assert "'ref/landing/items/2026-01-05.parquet'" in message and "'cloud'" in message


def test_landing_s3_clients_use_the_site_storage_timeouts(tmp_path):
    topology = s3_topology(tmp_path, "http://127.0.0.1:9", "b")
    defaults = S3Options()
    for client in (LandingArea(topology, "cloud").client, s3_client(topology.site("cloud").storage)):
        config = client.meta.config
        assert config.connect_timeout == defaults.connect_timeout_s
        assert config.read_timeout == defaults.read_timeout_s
        assert config.retries == {"mode": "standard", "total_max_attempts": defaults.max_attempts}


def test_landing_read_from_a_hanging_s3_site_fails_fast_naming_it(tmp_path, s3_credentials):
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # connections complete in the backlog; nothing ever answers
    try:
        topology = s3_topology(tmp_path, f"http://127.0.0.1:{silent.getsockname()[1]}", "b")
        area = LandingArea(topology, "cloud", S3Options(connect_timeout_s=1, read_timeout_s=1, max_attempts=1))
        started = time.monotonic()
        with pytest.raises(StorageError, match="unreachable") as err:
            area.read("items", DAY)
        assert time.monotonic() - started < 10
        assert "ReadTimeoutError" in str(err.value) and "'cloud'" in str(err.value) and "'b'" in str(err.value)
    finally:
        silent.close()
