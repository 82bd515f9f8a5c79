"""Site storage backends and replication, against a real filesystem and a real S3 server
(SeaweedFS started by the session fixture)."""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from dagster_gravity.storage import (
    ChecksumMismatch,
    LocalSiteStorage,
    ObjectNotFound,
    S3Options,
    S3SiteStorage,
    StorageError,
    UnknownSite,
    bytes_moved,
    replicate,
    storage_for_site,
)
from dagster_gravity.topology import Topology
from tests.support.files import all_files, flip_byte_local, flip_byte_s3, visible_files
from tests.support.s3 import write_sites_yaml

MiB = 1024 * 1024
REPO = Path(__file__).resolve().parents[1]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def s3_pair(seaweedfs, s3_buckets):
    a, b = s3_buckets
    return (
        S3SiteStorage("s3-a", a, prefix="gravity", endpoint_url=seaweedfs.endpoint_url),
        S3SiteStorage("s3-b", b, endpoint_url=seaweedfs.endpoint_url),
    )


# -- local backend -------------------------------------------------------------------------


def test_local_write_read_records_sha256_in_the_link_to_the_data(tmp_path):
    store = LocalSiteStorage("here", tmp_path / "root")
    info = store.put_bytes("a/b/c.bin", b"hello")
    assert info.sha256 == sha(b"hello") and info.size_bytes == 5
    assert info.uri == (tmp_path / "root/a/b/c.bin").as_uri()
    assert store.head("a/b/c.bin") == info
    data, read_info = store.read_bytes("a/b/c.bin", expected_sha256=sha(b"hello"))
    assert data == b"hello" and read_info == info
    assert visible_files(tmp_path / "root") == ["a/b/c.bin"]
    assert os.readlink(tmp_path / "root/a/b/c.bin").startswith(f".c.bin.obj-{sha(b'hello')}-5-")
    assert (tmp_path / "root/a/b/c.bin").read_bytes() == b"hello"  # any tool can read the uri
    assert store.list_keys() == ["a/b/c.bin"] and store.list_keys("a/b/") == ["a/b/c.bin"]
    store.delete("a/b/c.bin")
    assert store.head("a/b/c.bin") is None and store.list_keys() == []
    assert all_files(tmp_path / "root") == []


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_local_read_detects_corrupted_or_truncated_copy(tmp_path, damage):
    store = LocalSiteStorage("here", tmp_path)
    store.put_bytes("x.bin", os.urandom(4096))
    if damage == "flip":
        flip_byte_local(store, "x.bin", 1000)
    else:
        os.truncate(store.path("x.bin"), 100)
    with pytest.raises(ChecksumMismatch) as err:
        store.read_bytes("x.bin")
    assert "'here'" in str(err.value) and store.uri("x.bin") in str(err.value)


def test_local_read_refuses_a_copy_that_is_not_the_expected_version(tmp_path):
    store = LocalSiteStorage("here", tmp_path)
    store.put_bytes("x.bin", b"old version")
    with pytest.raises(ChecksumMismatch, match="stale"):
        store.read_bytes("x.bin", expected_sha256=sha(b"new version"))


def test_local_missing_object_names_site_and_uri(tmp_path):
    store = LocalSiteStorage("here", tmp_path)
    with pytest.raises(ObjectNotFound) as err:
        store.read_bytes("nope.parquet")
    assert "site 'here'" in str(err.value) and store.uri("nope.parquet") in str(err.value)


def test_local_failed_write_leaves_nothing(tmp_path):
    store = LocalSiteStorage("here", tmp_path)
    with pytest.raises(RuntimeError):
        with store.open_write("d/x.bin") as writer:
            writer.write(b"partial")
            raise RuntimeError("writer crashed")
    assert store.head("d/x.bin") is None
    assert visible_files(tmp_path) == []


def test_local_overwrite_killed_before_its_commit_rename_keeps_the_previous_version(tmp_path, monkeypatch):
    store = LocalSiteStorage("here", tmp_path)
    old = store.put_bytes("x.bin", b"version 1")
    real_replace = os.replace
    calls = []

    def replace_then_die(src, dst):
        calls.append((src, dst))
        if len(calls) == 2:  # the process dies after the first rename of the overwrite
            raise KeyboardInterrupt("killed")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace_then_die)
    with pytest.raises(KeyboardInterrupt):
        store.put_bytes("x.bin", b"version 2")
    monkeypatch.setattr(os, "replace", real_replace)
    assert len(calls) == 2
    data, info = store.read_bytes("x.bin", expected_sha256=old.sha256)  # readable and verified
    assert data == b"version 1" and info == old
    assert visible_files(tmp_path) == ["x.bin"]
    # nothing of the failed write is left, hidden or not: just the link and its data
    assert [p.name for p in all_files(tmp_path)] == [os.readlink(tmp_path / "x.bin"), "x.bin"]


def test_local_overwrite_deletes_the_replaced_data_and_readers_never_see_a_mismatch(tmp_path):
    store = LocalSiteStorage("here", tmp_path)
    versions = [os.urandom(64 * 1024) for _ in range(2)]
    known = {sha(v) for v in versions}
    store.put_bytes("x.bin", versions[0])
    stop = threading.Event()
    errors: list[BaseException] = []

    def reader():
        while not stop.is_set():
            try:
                data, info = store.read_bytes("x.bin")
                assert sha(data) == info.sha256 and info.sha256 in known
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)
                return

    threads = [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        for i in range(200):
            store.put_bytes("x.bin", versions[i % 2])
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert errors == []
    assert len(all_files(tmp_path)) == 2  # the link and the current data; replaced ones deleted


def test_local_object_not_written_by_gravity_is_a_clear_error(tmp_path):
    store = LocalSiteStorage("here", tmp_path)
    (tmp_path / "plain.bin").write_bytes(b"dropped in by hand")
    with pytest.raises(StorageError, match="not a gravity object") as err:
        store.head("plain.bin")
    assert store.uri("plain.bin") in str(err.value)
    os.symlink("somewhere-else", tmp_path / "odd.bin")
    with pytest.raises(StorageError, match="'odd.bin'") as err:
        store.read_bytes("odd.bin")
    assert "'here'" in str(err.value) and store.uri("odd.bin") in str(err.value)


def test_storage_for_site_rejects_unknown_site(tmp_path):
    topology = Topology.from_yaml(write_sites_yaml(tmp_path))
    with pytest.raises(UnknownSite, match="'mars'.*known sites: us-local, eu-local"):
        storage_for_site(topology, "mars")
    store = storage_for_site(topology, "us-local")
    assert isinstance(store, LocalSiteStorage) and store.root == tmp_path / "store" / "us"


# -- killing a writer mid-write --------------------------------------------------------------

WRITER = textwrap.dedent(
    """
    import sys, time
    sys.path.insert(0, {repo!r})
    from dagster_gravity.storage import LocalSiteStorage, S3SiteStorage
    kind, target, key = sys.argv[1], sys.argv[2], sys.argv[3]
    if kind == "local":
        store = LocalSiteStorage("victim", target)
    else:
        endpoint, bucket = target.split("|")
        store = S3SiteStorage("victim", bucket, endpoint_url=endpoint)
    chunk = b"x" * (1024 * 1024)
    if kind == "s3-multipart":
        sink = store.part_sink(key, 64 * len(chunk), "0" * 64, 8 * len(chunk))
        sink.write_part(0, 0, chunk * 8)
        print("writing", flush=True)
        time.sleep(60)
    with store.open_write(key) as writer:
        for i in range(64):
            writer.write(chunk)
            if i == 8:
                print("writing", flush=True)
            time.sleep(0.5 if i >= 8 else 0)
    """
)


def kill_writer_mid_write(kind: str, target: str, key: str, tmp_path: Path) -> None:
    script = tmp_path / "writer.py"
    script.write_text(WRITER.format(repo=str(REPO)))
    proc = subprocess.Popen(
        [sys.executable, str(script), kind, target, key], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        line = proc.stdout.readline()
        assert line.strip() == "writing", proc.stderr.read()
        time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    assert proc.returncode == -signal.SIGKILL


@pytest.mark.slow
def test_killed_local_writer_leaves_no_visible_object(tmp_path):
    root = tmp_path / "root"
    kill_writer_mid_write("local", str(root), "big/object.bin", tmp_path)
    store = LocalSiteStorage("victim", root)
    assert store.head("big/object.bin") is None
    assert not store.path("big/object.bin").exists()
    assert store.list_keys() == []
    # only the hidden temporary file remains, never anything under the final name
    assert visible_files(root) == []
    assert all(p.name.startswith(".object.bin.tmp-") for p in all_files(root))


@pytest.mark.parametrize("kind", ["s3", "s3-multipart"])
def test_killed_s3_writer_leaves_no_visible_object(tmp_path, seaweedfs, s3_buckets, kind):
    bucket = s3_buckets[0]
    kill_writer_mid_write(kind, f"{seaweedfs.endpoint_url}|{bucket}", "big/object.bin", tmp_path)
    store = S3SiteStorage("victim", bucket, endpoint_url=seaweedfs.endpoint_url)
    assert store.head("big/object.bin") is None
    assert store.list_keys() == []


# -- S3 backend ------------------------------------------------------------------------------


def test_s3_write_read_with_sha256_metadata(s3_pair):
    a, _ = s3_pair
    payload = os.urandom(9 * MiB + 17)  # above the multipart threshold
    info = a.put_bytes("t/big.bin", payload)
    assert info.uri == f"s3://{a.bucket}/gravity/t/big.bin" and info.sha256 == sha(payload)
    head = a.client.head_object(Bucket=a.bucket, Key="gravity/t/big.bin")
    assert head["Metadata"]["sha256"] == sha(payload) and head["ContentLength"] == len(payload)
    assert a.read_bytes("t/big.bin", sha(payload))[0] == payload
    assert a.list_keys() == ["t/big.bin"]


def test_s3_read_detects_flipped_byte(s3_pair):
    a, _ = s3_pair
    a.put_bytes("x.bin", os.urandom(5000))
    flip_byte_s3(a, "x.bin", 4000)
    with pytest.raises(ChecksumMismatch) as err:
        a.read_bytes("x.bin")
    assert "s3-a" in str(err.value) and f"s3://{a.bucket}/gravity/x.bin" in str(err.value)


def test_s3_missing_object_names_site_and_uri(s3_pair):
    a, _ = s3_pair
    assert a.head("missing.parquet") is None
    with pytest.raises(ObjectNotFound) as err:
        a.read_bytes("missing.parquet")
    assert "s3-a" in str(err.value) and f"s3://{a.bucket}/gravity/missing.parquet" in str(err.value)


FAST_FAIL = S3Options(connect_timeout_s=1, read_timeout_s=1, max_attempts=1)


def test_s3_endpoint_that_refuses_fails_fast_with_a_clear_error(s3_credentials):
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    store = S3SiteStorage("dark-site", "bucket", endpoint_url=f"http://127.0.0.1:{port}", options=FAST_FAIL)
    started = time.monotonic()
    with pytest.raises(StorageError) as err:
        store.read_bytes("a/b.parquet")
    assert time.monotonic() - started < 10
    message = str(err.value)
    assert "refused the connection or is unreachable" in message and "EndpointConnectionError" in message
    assert "dark-site" in message and "s3://bucket/a/b.parquet" in message


def test_s3_endpoint_that_hangs_times_out_with_a_clear_error(s3_credentials):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)  # accepts TCP connections but never answers
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept_and_hold():
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(server.accept()[0])
            except OSError:
                pass

    thread = threading.Thread(target=accept_and_hold, daemon=True)
    thread.start()
    try:
        port = server.getsockname()[1]
        store = S3SiteStorage("slow-site", "bucket", endpoint_url=f"http://127.0.0.1:{port}", options=FAST_FAIL)
        started = time.monotonic()
        with pytest.raises(StorageError) as err:
            store.head("a/b.parquet")
        assert time.monotonic() - started < 10
        assert "timed out" in str(err.value) and "ReadTimeoutError" in str(err.value) and "slow-site" in str(err.value)
        assert "s3://bucket/a/b.parquet" in str(err.value)
    finally:
        stop.set()
        thread.join(5)
        for conn in accepted:
            conn.close()
        server.close()


# -- replication -----------------------------------------------------------------------------


def test_replicate_s3_to_s3_multipart(s3_pair):
    a, b = s3_pair
    payload = os.urandom(12 * MiB + 3)
    info = a.put_bytes("m/obj.bin", payload)
    before = bytes_moved.by_link.get(("s3-a", "s3-b"), 0)
    result = replicate(a, b, "m/obj.bin", info.sha256, part_size=5 * MiB)
    assert result.replica.uri == f"s3://{b.bucket}/m/obj.bin" and result.bytes_moved == len(payload)
    assert bytes_moved.by_link[("s3-a", "s3-b")] - before == len(payload)
    assert b.read_bytes("m/obj.bin", info.sha256)[0] == payload


def test_replicate_s3_to_local_and_back(s3_pair, tmp_path):
    a, _ = s3_pair
    local = LocalSiteStorage("local", tmp_path / "local")
    payload = os.urandom(3 * MiB + 1)
    info = a.put_bytes("o.bin", payload)
    replicate(a, local, "o.bin", info.sha256, part_size=1 * MiB)
    assert local.read_bytes("o.bin", info.sha256)[0] == payload
    replicate(local, a, "o.bin", info.sha256, dest_key="copy/o.bin")
    assert a.read_bytes("copy/o.bin", info.sha256)[0] == payload
    assert visible_files(tmp_path / "local") == ["o.bin"]


def test_replicate_local_to_local(tmp_path):
    src = LocalSiteStorage("src", tmp_path / "src")
    dst = LocalSiteStorage("dst", tmp_path / "dst")
    payload = os.urandom(2 * MiB + 5)
    info = src.put_bytes("k/v.bin", payload)
    result = replicate(src, dst, "k/v.bin", info.sha256, part_size=256 * 1024)
    assert result.replica.sha256 == info.sha256
    assert dst.read_bytes("k/v.bin")[0] == payload


def test_replicate_corrupted_s3_source_leaves_no_copy(s3_pair, tmp_path):
    a, b = s3_pair
    local = LocalSiteStorage("local", tmp_path / "local")
    payload = os.urandom(11 * MiB)
    info = a.put_bytes("c.bin", payload)
    flip_byte_s3(a, "c.bin", 10 * MiB)
    with pytest.raises(ChecksumMismatch, match="corrupted or truncated source"):
        replicate(a, b, "c.bin", info.sha256, part_size=5 * MiB)
    with pytest.raises(ChecksumMismatch):
        replicate(a, local, "c.bin", info.sha256, part_size=5 * MiB)
    assert b.head("c.bin") is None and b.list_keys() == []
    assert visible_files(tmp_path / "local") == []


def test_replicate_refuses_a_source_of_another_version(tmp_path):
    src = LocalSiteStorage("src", tmp_path / "src")
    dst = LocalSiteStorage("dst", tmp_path / "dst")
    src.put_bytes("v.bin", b"version 1")
    with pytest.raises(ChecksumMismatch, match="stale or foreign"):
        replicate(src, dst, "v.bin", sha(b"version 2"))
    assert visible_files(tmp_path / "dst") == []


def test_replicate_missing_source_names_site_and_uri(tmp_path):
    src = LocalSiteStorage("src", tmp_path / "src")
    dst = LocalSiteStorage("dst", tmp_path / "dst")
    with pytest.raises(ObjectNotFound) as err:
        replicate(src, dst, "none.bin")
    assert "'src'" in str(err.value) and src.uri("none.bin") in str(err.value)


def test_replicate_corrupted_local_source_leaves_no_copy(tmp_path):
    src = LocalSiteStorage("src", tmp_path / "src")
    dst = LocalSiteStorage("dst", tmp_path / "dst")
    info = src.put_bytes("c.bin", os.urandom(3 * MiB))
    flip_byte_local(src, "c.bin", 2 * MiB)
    with pytest.raises(ChecksumMismatch, match="corrupted or truncated source"):
        replicate(src, dst, "c.bin", info.sha256)
    assert visible_files(tmp_path / "dst") == []


def test_put_new_creates_only_when_absent_local_and_s3(tmp_path, s3_pair):
    for store in (LocalSiteStorage("here", tmp_path / "local"), s3_pair[0]):
        first = store.put_new("claims/v1", b"mine")
        assert first is not None and first.sha256 == sha(b"mine")
        assert store.put_new("claims/v1", b"theirs") is None
        assert store.read_bytes("claims/v1")[0] == b"mine"  # the loser changed nothing
    assert visible_files(tmp_path / "local") == ["claims/v1"] and len(all_files(tmp_path / "local")) == 2
