"""SiteStorage.replace_if, the compare-and-swap under the checkpoint store's records:
local (a checked replace under a lock) and S3 on SeaweedFS (a conditional If-Match PUT)."""

from __future__ import annotations

import threading

import pytest

from dagster_gravity.storage import LocalSiteStorage, ObjectInfo, S3SiteStorage, StorageError


@pytest.fixture(params=["local", pytest.param("s3", marks=[pytest.mark.slow, pytest.mark.s3])])
def storage(request, tmp_path):
    if request.param == "local":
        return LocalSiteStorage("dc", tmp_path / "dc")
    seaweedfs = request.getfixturevalue("seaweedfs")
    bucket = request.getfixturevalue("s3_buckets")[0]
    return S3SiteStorage("cloud", bucket, prefix="cas", endpoint_url=seaweedfs.endpoint_url)


def test_create_then_replace_only_from_the_version_read(storage):
    first = storage.replace_if("rec/r.json", b"one", None)
    assert first is not None and first.version and first.sha256 == storage.head("rec/r.json").sha256
    assert storage.replace_if("rec/r.json", b"again", None) is None  # exists: a create is refused
    data, read = storage.read_bytes("rec/r.json")
    assert data == b"one" and read.version == first.version and storage.head("rec/r.json").version == first.version
    second = storage.replace_if("rec/r.json", b"two", read)
    assert second is not None and second.version != first.version
    assert storage.replace_if("rec/r.json", b"stale", read) is None  # the version read is gone
    assert storage.read_bytes("rec/r.json")[0] == b"two"
    assert storage.list_keys("rec/") == ["rec/r.json"]  # no lock or other debris listed


def test_a_version_once_replaced_never_matches_again_even_with_the_same_bytes(storage):
    first = storage.replace_if("r", b"same", None)
    again = storage.replace_if("r", b"same", first)
    assert again is not None
    if storage.kind == "local":  # S3's ETag is the bytes' MD5: callers change the bytes (entry ids)
        assert storage.replace_if("r", b"same", first) is None


def test_replace_of_a_deleted_object_is_refused(storage):
    info = storage.replace_if("r", b"x", None)
    storage.delete("r")
    assert storage.replace_if("r", b"y", info) is None
    assert storage.head("r") is None


def test_expected_without_a_version_token_is_a_clear_error(storage):
    storage.put_bytes("r", b"x")
    info = storage.head("r")
    bare = ObjectInfo(info.site, info.key, info.uri, info.size_bytes, info.sha256)
    assert bare == info  # the version token is not part of equality
    with pytest.raises(StorageError, match="replace_if needs the"):
        storage.replace_if("r", b"y", bare)


def test_of_racers_with_the_same_expected_version_exactly_one_wins(storage):
    base = storage.replace_if("r", b"base", None)
    # SeaweedFS queues conditional PUTs of one key in ~1 s steps: fewer rounds there.
    for round_ in range(10 if storage.kind == "local" else 4):
        racers = 8
        barrier = threading.Barrier(racers)
        won: list[int] = []

        def racer(i: int) -> None:
            barrier.wait()
            if storage.replace_if("r", f"{round_}-{i}".encode(), base) is not None:
                won.append(i)

        threads = [threading.Thread(target=racer, args=(i,)) for i in range(racers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(won) == 1, f"round {round_}: winners {won}"
        data, base = storage.read_bytes("r")
        assert data == f"{round_}-{won[0]}".encode()


def test_local_writer_waiting_on_a_lock_file_that_was_removed_locks_the_new_one(tmp_path):
    import fcntl
    import os

    storage = LocalSiteStorage("dc", tmp_path / "dc")
    info = storage.replace_if("r", b"x", None)
    lock = tmp_path / "dc" / ".r.lock"
    old = os.open(lock, os.O_RDWR)
    fcntl.flock(old, fcntl.LOCK_EX)  # a writer in its commit holds the lock
    result: list = []
    waiter = threading.Thread(target=lambda: result.append(storage.replace_if("r", b"y", info)))
    waiter.start()
    waiter.join(0.3)
    assert waiter.is_alive()  # blocked on the lock
    lock.unlink()  # a clean-up removed the lock file; a newcomer locks a new one
    new = os.open(lock, os.O_RDWR | os.O_CREAT)
    fcntl.flock(new, fcntl.LOCK_EX)
    os.close(old)  # the first writer is done: the waiter gets the old inode, which locks nothing now
    waiter.join(0.3)
    assert waiter.is_alive()  # so it waits for the newcomer's lock instead of writing beside it
    os.close(new)
    waiter.join(5)
    assert result and result[0] is not None and storage.read_bytes("r")[0] == b"y"
