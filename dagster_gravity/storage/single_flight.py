"""Single-flight replication: one copy of an object version into a site at a time.

Several steps reading the same input at one site (in one process or many, on one host or
many) would each copy it. `replicate_once` lets one of them copy while the others wait for
that copy and reuse it:

- into **local** storage, the copier holds an exclusive `flock` on a hidden lock file beside
  the key (`.<name>.replicating`); the kernel drops it when the process dies;
- into **S3** storage, the copier holds a lease: an object under
  `_gravity/replicating/<key>` created only if absent (`put_new`, a conditional PUT), with
  an expiry (`LEASE_S`). A lease whose holder died expires and is taken over.

A waiter that sees the copy appear (same key, same sha256: keys are content-named) reuses it.
Waiting is bounded (`wait_s`); after that the waiter copies anyway, which is only wasteful:
a second copy of the same bytes under the same name changes nothing a reader can see. An S3
endpoint without conditional PUTs gets copies without single flight, as before.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
import uuid
from contextlib import contextmanager
from dataclasses import replace
from typing import Iterator

from dagster_gravity.storage.base import SiteStorage, StorageError
from dagster_gravity.storage.local import LocalSiteStorage
from dagster_gravity.storage.replication import Replication, replicate

DEFAULT_WAIT_S = 600.0  # a copy of a large object over a slow link takes minutes
LEASE_S = 300.0  # an S3 lease outlives a dead holder by at most this; a copy that takes
# longer lets a waiter start a second copy, which is wasteful but harmless
POLL_S = 0.1
LEASE_PREFIX = "_gravity/replicating/"


def replicate_once(
    source: SiteStorage, destination: SiteStorage, key: str, expected_sha256: str, *, wait_s: float = DEFAULT_WAIT_S
) -> Replication:
    """`replicate(...)`, unless another copier is bringing or has brought the same version
    into `destination`: then wait for it and return its copy (`bytes_moved` 0)."""
    started = time.perf_counter()
    with _exclusive(destination, key, expected_sha256, wait_s):
        present = destination.head(key)
        if present is not None and present.sha256 == expected_sha256:
            source_info = replace(present, site=source.site, uri=source.uri(key))
            return Replication(source_info, present, 0, time.perf_counter() - started, reused=True)
        return replicate(source, destination, key, expected_sha256)


@contextmanager
def _exclusive(destination: SiteStorage, key: str, sha: str, wait_s: float) -> Iterator[None]:
    if isinstance(destination, LocalSiteStorage):
        with _file_lock(destination, key, wait_s):
            yield
    else:
        with _lease(destination, key, sha, wait_s):
            yield


@contextmanager
def _file_lock(storage: LocalSiteStorage, key: str, wait_s: float) -> Iterator[None]:
    final = storage.path(key)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(final.with_name(f".{final.name}.replicating"), os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise StorageError(f"cannot create the replication lock: {exc}", site=storage.site, uri=storage.uri(key)) from exc
    try:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    break  # copy anyway: waiting longer could only save bytes
                time.sleep(POLL_S)
        yield
    finally:
        os.close(fd)  # releases the lock


@contextmanager
def _lease(storage: SiteStorage, key: str, sha: str, wait_s: float) -> Iterator[None]:
    lease_key = LEASE_PREFIX + key
    deadline = time.monotonic() + wait_s
    owner = uuid.uuid4().hex
    held = False
    while not held:
        body = json.dumps({"owner": owner, "expires": time.time() + LEASE_S}).encode()
        try:
            created = storage.put_new(lease_key, body)
        except StorageError:
            break  # no conditional PUT here (or no answer): copy without single flight
        if created is not None:
            held = True
            break
        present = storage.head(key)
        if present is not None and present.sha256 == sha:
            break  # the copy is there: no need to hold anything
        if _expired(storage, lease_key):
            storage.delete(lease_key)  # its holder died; the next put_new takes it over
            continue
        if time.monotonic() >= deadline:
            break
        time.sleep(POLL_S)
    try:
        yield
    finally:
        if held:
            try:
                storage.delete(lease_key)
            except StorageError:
                pass  # an undeleted lease expires (LEASE_S) and `gravity gc` removes it


def _expired(storage: SiteStorage, lease_key: str) -> bool:
    try:
        data, _ = storage.read_bytes(lease_key)
        return float(json.loads(data)["expires"]) < time.time()
    except StorageError:
        return False  # gone in between (the holder finished): try again
    except (ValueError, KeyError, TypeError):
        return True  # unreadable: not a lease anyone can honour
