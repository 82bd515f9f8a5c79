"""Copy one object from one site's storage to another's, verified by sha256.

Into S3, worker threads fetch byte ranges from the source and hand them to the S3 part sink
(UploadPart), while the calling thread hashes the parts in order. From S3 into a local
directory, one streaming GET is hashed and written chunk by chunk. Between two local
directories the kernel copies the file while a second thread hashes it. The copy becomes
visible only if the bytes hash to the expected sha256; otherwise the sink is aborted and
nothing is left behind. Fetching and storing overlap, so a replica costs about as much as
the slower of the two ends (see benchmarks/replication.py).
"""

from __future__ import annotations

import hashlib
import mmap
import os
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from dagster_gravity.storage.base import ChecksumMismatch, ObjectInfo, ObjectNotFound, SiteStorage, StorageError
from dagster_gravity.storage.local import LocalSiteStorage
from dagster_gravity.storage.oserrors import os_error_reason

PART_SIZE = 8 * 1024 * 1024
CONCURRENCY = 8
STREAM_CHUNK = 4 * 1024 * 1024


@dataclass(frozen=True)
class Replication:
    """What one replication did: the new replica, bytes moved and how long it took."""

    source: ObjectInfo
    replica: ObjectInfo
    bytes_moved: int
    seconds: float
    reused: bool = False  # True: another copier had just brought this version (single_flight.py)

    @property
    def mb_per_s(self) -> float:
        return self.bytes_moved / 1e6 / self.seconds if self.seconds > 0 else float("inf")


class _Counter:
    """Bytes moved by this process, per (source site, destination site)."""

    def __init__(self):
        self._lock = threading.Lock()
        self.by_link: dict[tuple[str, str], int] = {}

    def add(self, src: str, dst: str, n: int) -> None:
        with self._lock:
            self.by_link[(src, dst)] = self.by_link.get((src, dst), 0) + n

    @property
    def total(self) -> int:
        return sum(self.by_link.values())


bytes_moved = _Counter()


def replicate(
    source: SiteStorage,
    destination: SiteStorage,
    key: str,
    expected_sha256: str | None = None,
    *,
    dest_key: str | None = None,
    part_size: int = PART_SIZE,
    concurrency: int = CONCURRENCY,
) -> Replication:
    """Copy `key` from `source` to `destination` (under `dest_key`, default the same key).

    The bytes must hash to the source's recorded sha256 and, when given, `expected_sha256`
    (the latest materialization's); a mismatch raises ChecksumMismatch and leaves no copy.
    """
    dest_key = dest_key or key
    started = time.perf_counter()
    info = source.head(key)
    if info is None:
        raise ObjectNotFound("no stored object to replicate under this key", site=source.site, uri=source.uri(key))
    if expected_sha256 is not None and info.sha256 != expected_sha256:
        raise ChecksumMismatch(
            f"the source copy records sha256 {info.sha256} but the latest materialization "
            f"recorded {expected_sha256} (stale or foreign copy); refusing to replicate it",
            site=source.site,
            uri=info.uri,
        )
    size = info.size_bytes
    sink = destination.part_sink(dest_key, size, info.sha256, part_size)
    try:
        if isinstance(source, LocalSiteStorage) and isinstance(destination, LocalSiteStorage):
            actual, received = _copy_file_hashing(source, key, sink)
        elif isinstance(destination, LocalSiteStorage):
            actual, received = _stream_hashing(source, key, sink)
        else:
            actual, received = _copy_parts_hashing(source, key, sink, size, part_size, concurrency)
        if received != size or actual != info.sha256:
            raise ChecksumMismatch(
                f"replication read {received} bytes with sha256 {actual}, but the source records "
                f"{size} bytes with sha256 {info.sha256} (corrupted or truncated source); no copy was made",
                site=source.site,
                uri=info.uri,
            )
        replica = sink.commit(actual, size)
    except BaseException as exc:
        sink.abort()
        if isinstance(exc, StorageError):
            raise
        if isinstance(exc, OSError):
            raise StorageError(
                f"replication to site {destination.site!r} ({destination.uri(dest_key)}) failed: "
                + os_error_reason(exc, "copying"),
                site=source.site,
                uri=info.uri,
            ) from exc
        raise
    bytes_moved.add(source.site, destination.site, size)
    return Replication(info, replica, size, time.perf_counter() - started)


def _copy_parts_hashing(source, key, sink, size, part_size, concurrency) -> tuple[str, int]:
    """Threads move parts source -> sink; this thread hashes them in order."""
    digest = hashlib.sha256()
    received = 0
    offsets = list(range(0, size, part_size)) or [0]

    def move(number: int, offset: int) -> bytes:
        data = source.read_range(key, offset, min(part_size, size - offset)) if size else b""
        sink.write_part(number, offset, data)
        return data

    with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="gravity-replicate") as pool:
        window: deque[Future] = deque()
        pending = iter(enumerate(offsets))
        try:
            for _ in range(concurrency * 2):  # bounded memory: at most 2x concurrency parts in flight
                _submit(pool, window, pending, move)
            while window:
                data = window.popleft().result()
                digest.update(data)
                received += len(data)
                _submit(pool, window, pending, move)
        except BaseException:
            for future in window:
                future.cancel()
            raise
    return digest.hexdigest(), received


def _stream_hashing(source: SiteStorage, key: str, sink) -> tuple[str, int]:
    """Remote to local file: one streaming GET, hashed and written chunk by chunk. On a busy
    machine this beats parallel ranged GETs, whose parts can only be hashed in order."""
    digest = hashlib.sha256()
    offset = 0
    stream = source.open_stream(key)
    try:
        while chunk := stream.read(STREAM_CHUNK):
            digest.update(chunk)
            sink.write_part(0, offset, chunk)
            offset += len(chunk)
    finally:
        stream.close()
    return digest.hexdigest(), offset


def _copy_file_hashing(source: LocalSiteStorage, key: str, sink) -> tuple[str, int]:
    """Local to local: the kernel copies the file (sendfile) while another thread hashes the
    same open file through mmap, so the copy costs about max(copy, hash), not their sum.
    Both use one file descriptor, so they see the same bytes even if the source is replaced."""
    fd = os.open(source.path(key), os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        result: dict[str, object] = {}

        def hash_file() -> None:
            try:
                digest = hashlib.sha256()
                if size:
                    with mmap.mmap(fd, size, access=mmap.ACCESS_READ) as mapped:
                        view = memoryview(mapped)
                        try:
                            for offset in range(0, size, PART_SIZE):
                                digest.update(view[offset : offset + PART_SIZE])
                        finally:
                            view.release()
                result["sha256"] = digest.hexdigest()
            except BaseException as exc:  # re-raised in the calling thread
                result["error"] = exc

        hasher = threading.Thread(target=hash_file, name="gravity-hash", daemon=True)
        hasher.start()
        try:
            offset = 0
            while offset < size:
                sent = os.sendfile(sink.fd, fd, offset, size - offset)
                if sent == 0:
                    break
                offset += sent
        finally:
            hasher.join()
        if "error" in result:
            raise result["error"]  # type: ignore[misc]
        return str(result["sha256"]), offset
    finally:
        os.close(fd)


def _submit(pool, window, pending, move) -> None:
    item = next(pending, None)
    if item is not None:
        window.append(pool.submit(move, *item))
