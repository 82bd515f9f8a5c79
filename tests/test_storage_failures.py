"""Storage failures say what failed and where, and fail in bounded time: a full disk (a real
256 KiB tmpfs), a read-only filesystem, a write denied to an unprivileged user, foreign S3
objects, and S3 endpoints that hang (a silent socket, a full accept queue, a SIGSTOPped
SeaweedFS of the test's own)."""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from dagster import AssetKey, asset, build_output_context, materialize

from dagster_gravity import GravityIOManager, GravityTopology
from dagster_gravity.runtime import running_at
from dagster_gravity.storage import (
    ForeignObject,
    LocalSiteStorage,
    S3Options,
    S3SiteStorage,
    StorageError,
    replicate,
    storage_for_site,
    unresponsive,
)
from dagster_gravity.locations import latest_location
from dagster_gravity.storage.base import version_key
from dagster_gravity.storage.replication import PART_SIZE
from tests.support.files import all_files
from tests.support.s3 import start_seaweedfs, write_sites_yaml

REPO = Path(__file__).resolve().parents[1]
MiB = 1024 * 1024


# -- a small real filesystem ---------------------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)
MS_RDONLY = 1
MNT_DETACH = 2


@contextmanager
def small_tmpfs(path: Path, size_kib: int = 256, readonly: bool = False):
    """A tmpfs of `size_kib` mounted at `path` (mount(2) directly: no process), unmounted after."""
    path.mkdir(parents=True, exist_ok=True)
    flags = MS_RDONLY if readonly else 0
    if _libc.mount(b"tmpfs", os.fsencode(path), b"tmpfs", flags, f"size={size_kib}k".encode()) != 0:
        code = ctypes.get_errno()
        if code == errno.EPERM:
            pytest.skip("mounting a small tmpfs to fill needs CAP_SYS_ADMIN (run as root)")
        raise OSError(code, os.strerror(code), str(path))
    try:
        yield path
    finally:
        _libc.umount2(os.fsencode(path), MNT_DETACH)


def root_cause(exc: BaseException) -> BaseException:
    while exc.__cause__ is not None:
        exc = exc.__cause__
    return exc


def local_sites(tmp_path: Path, root: Path) -> Path:
    path = tmp_path / "sites.yaml"
    site = {"name": "tiny", "region": "r", "kind": "onprem", "storage": {"kind": "local", "path": str(root)}}
    path.write_text(yaml.safe_dump({"sites": [{**site, "pools": [{"name": "cpu", "slots": 1}]}]}))
    return path


OUTPUTS = {
    "numpy": (lambda: np.random.default_rng(0).random(64 * 1024), ".npy"),  # 512 KiB
    "parquet": (lambda: pd.DataFrame({"x": np.random.default_rng(1).random(64 * 1024)}), ".parquet"),
    "json": (lambda: list(range(100_000)), ".json"),
}


@pytest.mark.parametrize("kind", sorted(OUTPUTS))
def test_full_disk_on_an_output_names_asset_site_and_uri_and_keeps_the_recorded_version(tmp_path, kind):
    make, extension = OUTPUTS[kind]
    with small_tmpfs(tmp_path / "disk") as root:
        io = GravityIOManager(topology=GravityTopology(sites_file=str(local_sites(tmp_path, root))), default_site="tiny")
        small = {"numpy": np.arange(3.0), "parquet": pd.DataFrame({"x": [1.0]}), "json": [1, 2]}[kind]
        io.handle_output(build_output_context(asset_key=AssetKey("big")), small)
        tiny = storage_for_site(io.load_topology(), "tiny")
        [recorded] = [v.key for v in tiny.list_versions("big")]
        before = tiny.read_bytes(recorded)[0]

        with pytest.raises(StorageError) as err:
            io.handle_output(build_output_context(asset_key=AssetKey("big")), make())
        message = str(err.value)
        assert "disk full (ENOSPC) while writing" in message, message
        assert err.value.asset == "big" and err.value.site == "tiny"
        assert err.value.uri == (root / f"big{extension}").as_uri() and err.value.uri in message
        assert root_cause(err.value).errno == errno.ENOSPC
        # the temporary file is gone and the version before is untouched
        assert tiny.read_bytes(recorded)[0] == before and [v.key for v in tiny.list_versions("big")] == [recorded]
        assert len(all_files(root)) == 2  # the link and its data file


def test_full_disk_in_a_replication_names_both_sites(tmp_path):
    source = LocalSiteStorage("src", tmp_path / "src")
    payload = os.urandom(MiB)
    source.put_bytes("m/weights.bin", payload)
    with small_tmpfs(tmp_path / "disk") as root:
        dest = LocalSiteStorage("tiny", root)
        with pytest.raises(StorageError) as err:
            replicate(source, dest, "m/weights.bin")
        message = str(err.value)
        assert "disk full (ENOSPC)" in message and "'tiny'" in message and (root / "m/weights.bin").as_uri() in message
        assert "'src'" in message and source.uri("m/weights.bin") in message
        assert dest.head("m/weights.bin") is None and all_files(root) == []


def test_full_local_disk_while_spooling_an_s3_upload_names_site_and_uri(tmp_path, monkeypatch):
    """An S3 write spools to a local temporary file past 8 MiB; that disk filling up is named
    as such (no request is sent: the failure comes first)."""
    with small_tmpfs(tmp_path / "spool") as spool:
        monkeypatch.setattr(tempfile, "tempdir", str(spool))
        store = S3SiteStorage("s3-a", "bucket", prefix="gravity", endpoint_url="http://127.0.0.1:9")
        with pytest.raises(StorageError) as err:
            store.put_bytes("m/weights.bin", os.urandom(9 * MiB))
        message = str(err.value)
        assert "disk full (ENOSPC) while spooling the upload to a local temporary file" in message, message
        assert "'s3-a'" in message and "s3://bucket/gravity/m/weights.bin" in message


def test_read_only_filesystem_names_the_reason_site_and_uri(tmp_path):
    with small_tmpfs(tmp_path / "ro", readonly=True) as root:
        store = LocalSiteStorage("frozen", root)
        for key in ("top.bin", "deep/er.bin"):
            with pytest.raises(StorageError) as err:
                store.put_bytes(key, b"x")
            message = str(err.value)
            assert "read-only filesystem (EROFS)" in message and "'frozen'" in message
            assert store.uri(key) in message


UNPRIVILEGED = textwrap.dedent(
    """
    import os, sys
    sys.path.insert(0, {repo!r})
    from dagster_gravity.storage import LocalSiteStorage, StorageError
    # imported as root (Python's own files may be readable only by root); now become nobody
    os.setgroups([])
    os.setgid(65534)
    os.setuid(65534)
    store = LocalSiteStorage("locked", sys.argv[1])
    for action, call in (("write", lambda: store.put_bytes("new/obj.bin", b"x")),
                         ("read", lambda: store.read_bytes("secret.bin"))):
        try:
            call()
            print(action, "succeeded")
        except StorageError as err:
            print(action, type(err).__name__, err)
    """
)


@pytest.mark.slow
def test_permission_denied_names_the_reason_site_and_uri(tmp_path):
    """Root is never denied by file modes, so the storage runs in a child that drops to user
    nobody (uid 65534), against a root-owned directory (0755) holding an object only root reads."""
    if os.geteuid() != 0:
        pytest.skip("switching to another user to be denied needs root")
    top = Path(tempfile.mkdtemp(prefix="gravity-locked-"))  # /tmp: tmp_path's parents are 0700
    try:
        top.chmod(0o755)
        root = top / "store"
        store = LocalSiteStorage("locked", root)
        store.put_bytes("secret.bin", b"only root reads this")
        data_file = store.path("secret.bin").resolve()
        data_file.chmod(0o600)
        script = top / "child.py"
        script.write_text(UNPRIVILEGED.format(repo=str(REPO)))
        script.chmod(0o644)
        done = subprocess.run(
            [sys.executable, str(script), str(root)],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "HOME": str(top)},
        )
        assert done.returncode == 0, done.stderr
        write, read = done.stdout.splitlines()
        assert write.startswith("write StorageError permission denied (EACCES) while creating a temporary file")
        assert "'locked'" in write and store.uri("new/obj.bin") in write
        assert read.startswith("read StorageError permission denied (EACCES) while reading")
        assert "'locked'" in read and store.uri("secret.bin") in read
    finally:
        shutil.rmtree(top)


# -- foreign S3 objects ----------------------------------------------------------------------


def test_s3_object_without_gravity_metadata_is_foreign_not_missing(seaweedfs, s3_buckets, tmp_path):
    store = S3SiteStorage("s3-a", s3_buckets[0], prefix="gravity", endpoint_url=seaweedfs.endpoint_url)
    store.client.put_object(Bucket=store.bucket, Key="gravity/up.parquet", Body=b"uploaded by hand")
    uri = f"s3://{store.bucket}/gravity/up.parquet"
    for call in (lambda: store.head("up.parquet"), lambda: store.read_bytes("up.parquet")):
        with pytest.raises(ForeignObject) as err:
            call()
        assert "exists" in str(err.value) and "foreign" in str(err.value) and "no sha256 metadata" in str(err.value)
        assert err.value.site == "s3-a" and err.value.uri == uri
    with pytest.raises(ForeignObject) as err:
        replicate(store, LocalSiteStorage("here", tmp_path / "here"), "up.parquet")
    assert "foreign" in str(err.value) and uri in str(err.value)
    assert store.head("missing.parquet") is None  # a key with nothing under it is still just absent


@asset
def up() -> pd.DataFrame:
    return pd.DataFrame({"a": [1, 2, 3]})


@asset
def down(up: pd.DataFrame) -> pd.DataFrame:
    return up.assign(b=up["a"] * 2)


def run(assets, site, io, instance, selection=None):
    with running_at(site):
        return materialize(assets, selection=selection, resources={"io_manager": io}, instance=instance)


def run_failure(assets, site, io, instance, selection=None) -> StorageError:
    with pytest.raises(Exception) as err:
        run(assets, site, io, instance, selection)
    exc: BaseException | None = err.value
    while exc is not None and not isinstance(exc, StorageError):
        exc = exc.__cause__
    assert exc is not None, f"no StorageError in the cause chain of {err.value!r}"
    return exc


@pytest.mark.slow  # Dagster's compute-log capture starts processes
def test_io_manager_load_of_a_foreign_s3_object_says_foreign(tmp_path, seaweedfs, s3_buckets, instance):
    sites = write_sites_yaml(tmp_path, seaweedfs.endpoint_url, s3_buckets)
    io = GravityIOManager(topology=GravityTopology(sites_file=str(sites)))
    client = seaweedfs.client()
    # never materialized: the only object for `up` is foreign
    client.put_object(Bucket=s3_buckets[1], Key="gravity/up.parquet", Body=b"by hand")
    err = run_failure([up, down], "us-local", io, instance, selection=[down])
    assert isinstance(err, ForeignObject) and "no object written by gravity for this input" in str(err)
    assert err.asset == "up" and err.site == "s3-b" and err.uri == f"s3://{s3_buckets[1]}/gravity/up.parquet"

    # recorded at s3-a, then replaced there by a foreign object: the load says so
    run([up], "s3-a", io, instance)
    recorded = version_key("up", latest_location(instance, "up").sha256, ".parquet")
    client.put_object(Bucket=s3_buckets[0], Key=f"gravity/{recorded}", Body=b"replaced by hand")
    err = run_failure([up, down], "us-local", io, instance, selection=[down])
    assert isinstance(err, ForeignObject) and "foreign" in str(err) and "'up'" in str(err)
    assert err.site == "s3-a" and f"s3://{s3_buckets[0]}/gravity/{recorded}" in str(err)


# -- S3 endpoints that do not answer -----------------------------------------------------------


@contextmanager
def silent_endpoint():
    """A loopback endpoint that accepts TCP connections and never answers."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept():
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                pass

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(5)
        for conn in held:
            conn.close()
        server.close()


def test_a_read_timeout_marks_the_endpoint_and_later_calls_fail_at_once(s3_credentials):
    options = S3Options(connect_timeout_s=1, read_timeout_s=1, max_attempts=1, unresponsive_for_s=3)
    with silent_endpoint() as endpoint:
        a = S3SiteStorage("s3-a", "bucket-a", endpoint_url=endpoint, options=options, settings_at="sites[2].storage", settings_file="/x/sites.yaml")
        b = S3SiteStorage("s3-b", "bucket-b", endpoint_url=endpoint, options=options)
        started = time.monotonic()
        with pytest.raises(StorageError) as err:
            a.read_bytes("k.bin")
        assert 0.9 < time.monotonic() - started < 10
        message = str(err.value)
        assert f"S3 GET timed out after 1 s at {endpoint} (site 's3-a', bucket 'bucket-a')" in message, message
        assert "accepted the connection but did not answer within 1 s (1 attempt)" in message
        assert "raise sites[2].storage.read_timeout_seconds in /x/sites.yaml (now 1 s)" in message
        assert "ReadTimeoutError" in message and "s3://bucket-a/k.bin" in message

        # the same endpoint, another site and bucket: refused without being sent
        started = time.monotonic()
        for call in (lambda: b.head("k.bin"), lambda: b.put_bytes("k.bin", b"x"), lambda: b.list_keys()):
            with pytest.raises(StorageError) as err:
                call()
            message = str(err.value)
            assert f"not sent to {endpoint} (site 's3-b', bucket 'bucket-b')" in message, message
            assert "a GetObject to it timed out" in message and "fail at once for 3 s" in message
            assert "raise the site's storage.read_timeout_seconds" in message
        assert time.monotonic() - started < 0.5

        time.sleep(3.1)  # after the window the endpoint is tried again
        started = time.monotonic()
        with pytest.raises(StorageError, match="timed out after 1 s"):
            b.head("k.bin")
        assert time.monotonic() - started > 0.9


def test_an_answer_clears_the_mark():
    store = S3SiteStorage("s3-a", "b", endpoint_url="http://127.0.0.1:9", options=S3Options())
    unresponsive.mark(store.endpoint, "read", "GetObject", 10, 2, 30)
    assert unresponsive.current(store.endpoint) is not None
    # botocore emits after-call for every HTTP answer (errors included): the endpoint answered
    store.client.meta.events.emit("after-call.s3.HeadObject", http_response=None, parsed={}, model=None, context={})
    assert unresponsive.current(store.endpoint) is None


def test_an_endpoint_that_accepts_no_connection_times_out_naming_the_connect_setting(s3_credentials):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)  # an accept queue of one, never accepted: further SYNs are dropped
    filler = socket.create_connection(server.getsockname(), timeout=2)
    try:
        endpoint = f"http://127.0.0.1:{server.getsockname()[1]}"
        store = S3SiteStorage("dark", "b", endpoint_url=endpoint, options=S3Options(connect_timeout_s=1, max_attempts=2))
        started = time.monotonic()
        with pytest.raises(StorageError) as err:
            store.head("k")
        assert 1.9 < time.monotonic() - started < 10  # two attempts of 1 s
        message = str(err.value)
        assert f"S3 HEAD timed out after 1 s at {endpoint}" in message, message
        assert "did not accept a connection within 1 s (2 attempts)" in message
        assert "check that the endpoint is up and reachable, or raise the site's storage.connect_timeout_seconds" in message
        assert "ConnectTimeoutError" in message
    finally:
        filler.close()
        server.close()


class _StopsTheServer(LocalSiteStorage):
    """A replication source that SIGSTOPs the S3 server once the third part is read, so the
    destination hangs in the middle of a multipart upload."""

    def __init__(self, site, root, pid):
        super().__init__(site, root)
        self.pid = pid
        self.stopped = threading.Event()

    def read_range(self, key, offset, length):
        if offset >= 2 * PART_SIZE and not self.stopped.is_set():
            self.stopped.set()
            os.kill(self.pid, signal.SIGSTOP)
        return super().read_range(key, offset, length)


def elapsed_since(started: float) -> float:
    return time.monotonic() - started


@pytest.mark.slow
def test_a_sigstopped_seaweedfs_fails_reads_writes_and_replication_within_30_s(tmp_path, instance):
    """Default settings throughout: the server's kernel still accepts connections but nothing
    answers, as in a hung S3 endpoint. Each operation is timed with no mark left by the one
    before (`forget_all`), except the last, which shows the mark making a call fail at once."""
    server = start_seaweedfs(tmp_path / "weed")
    source: _StopsTheServer | None = None
    stopped = False
    try:
        buckets = (server.make_bucket("hung-a"), server.make_bucket("hung-b"))
        sites = write_sites_yaml(tmp_path, server.endpoint_url, buckets)
        io = GravityIOManager(topology=GravityTopology(sites_file=str(sites)))
        assert (io.s3_connect_timeout_s, io.s3_read_timeout_s, io.s3_max_attempts) == (5, 10, 2)
        run([up], "s3-a", io, instance)  # recorded at s3-a while the server answers
        topology = io.load_topology()

        # 1. a multipart replication into S3; the server stops after the first parts
        source = _StopsTheServer("us-local", tmp_path / "src", server.pid)
        source.put_bytes("big.bin", os.urandom(12 * PART_SIZE))
        dest = storage_for_site(topology, "s3-b")
        started = time.monotonic()
        with pytest.raises(StorageError) as err:
            replicate(source, dest, "big.bin")
        took = elapsed_since(started)
        stopped = source.stopped.is_set()
        print(f"multipart replication into the hung endpoint failed in {took:.1f} s: {err.value}")
        assert stopped and took < 30, (took, str(err.value))
        assert "timed out after 10 s" in str(err.value) and "'s3-b'" in str(err.value)
        unresponsive.forget_all()

        # 2. a write through the IO manager
        started = time.monotonic()
        err = run_failure([up], "s3-b", io, instance)
        took = elapsed_since(started)
        print(f"IO-manager store failed in {took:.1f} s: {err}")
        assert took < 30, (took, str(err))
        message = str(err)
        assert f"S3 upload timed out after 10 s at {server.endpoint_url} (site 's3-b', bucket 'hung-b')" in message
        assert "did not answer within 10 s (2 attempts)" in message and err.asset == "up"
        assert f"raise sites[3].storage.read_timeout_seconds in {sites.resolve()} (now 10 s)" in message, message
        unresponsive.forget_all()

        # 3. a read through the IO manager (the recorded version, at the reading site)
        started = time.monotonic()
        err = run_failure([up, down], "s3-a", io, instance, selection=[down])
        took = elapsed_since(started)
        print(f"IO-manager load failed in {took:.1f} s: {err}")
        assert took < 30, (took, str(err))
        assert "S3 GET timed out after 10 s" in str(err) and "'s3-a'" in str(err) and err.asset == "up"
        assert f"s3://{buckets[0]}/gravity/up@" in str(err)

        # 4. the endpoint is now marked: the next call fails at once with the same explanation
        started = time.monotonic()
        with pytest.raises(StorageError) as err:
            storage_for_site(topology, "s3-b").head("up.parquet")
        print(f"a call while marked failed in {elapsed_since(started):.3f} s: {err.value}")
        assert elapsed_since(started) < 2
        assert "not sent to" in str(err.value) and "timed out" in str(err.value) and "'s3-b'" in str(err.value)

        os.kill(server.pid, signal.SIGCONT)
        stopped = False
        unresponsive.forget_all()
        assert storage_for_site(topology, "s3-b").head("big.bin") is None  # the failed copy is not visible
    finally:
        if stopped or (source is not None and source.stopped.is_set()):
            os.kill(server.pid, signal.SIGCONT)
        server.stop()
