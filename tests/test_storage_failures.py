"""Storage failures fail in bounded time: S3 endpoints that hang (a silent socket, a full
accept queue, a SIGSTOPped SeaweedFS of the test's own)."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from contextlib import contextmanager

import pandas as pd
import pytest
from dagster import asset, materialize

from dagster_gravity import GravityIOManager, GravityTopology
from dagster_gravity.runtime import running_at
from dagster_gravity.storage import (
    LocalSiteStorage,
    S3Options,
    S3SiteStorage,
    StorageError,
    replicate,
    storage_for_site,
    unresponsive,
)
from dagster_gravity.storage.replication import PART_SIZE
from tests.support.s3 import start_seaweedfs, write_sites_yaml


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
        assert f"s3://{buckets[0]}/gravity/up.parquet" in str(err)

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
