"""The site storage interface: one object store per site, every object with a sha256.

A backend writes atomically (nothing is visible under the final name until every byte is
written and its checksum recorded) and verifies the checksum on every read. Replication
between two backends goes through `RangeSource`/`PartSink` (see `replication.py`) so any
pair of backends copies in parallel chunks while hashing.

Versions. An asset's data is never overwritten in place: each version is an immutable
object under a key derived from its content, `<base>@<sha256><suffix>` (`version_key`),
written with `open_version`/`put_version`. Writing a new version therefore cannot destroy
the one Dagster last recorded, whatever happens between the storage commit and the
materialization record (a killed process, a locked database, a concurrent writer); old
versions are removed only by garbage collection (`gc.py`), once a newer one is recorded.
"""

from __future__ import annotations

import hashlib
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import BinaryIO

from dagster_gravity.errors import GravityError


class StorageError(GravityError):
    """A storage operation that failed; the message names the asset, site and URI."""

    def __init__(self, message: str, *, site: str | None = None, uri: str | None = None, asset: str | None = None):
        self.reason = message
        self.site = site
        self.uri = uri
        self.asset = asset
        where = ", ".join(
            f"{name} {value!r}" for name, value in (("asset", asset), ("site", site), ("uri", uri)) if value
        )
        super().__init__(f"{message} ({where})" if where else message)

    def for_asset(self, asset: str | None) -> "StorageError":
        """The same error, re-raised with the asset it concerns named in the message."""
        if asset is None or self.asset is not None:
            return self
        err = type(self)(self.reason, site=self.site, uri=self.uri, asset=asset)
        err.__cause__ = self.__cause__ or self
        return err


class ObjectNotFound(StorageError):
    """No object under the key at that site."""


class ForeignObject(StorageError):
    """An object exists under the key but gravity did not write it (no recorded sha256), so
    it cannot be verified or served; unlike ObjectNotFound, something is there."""


class ChecksumMismatch(StorageError):
    """The stored bytes do not hash to the recorded sha256 (corrupted, truncated or stale)."""


class ResidencyError(StorageError):
    """Data would be written or copied to a site outside its residency zone."""


class UnknownSite(StorageError):
    """A site name that is not in the topology."""


VERSION_MARK = "@"
_VERSION_KEY = re.compile(r"^(?P<base>.+)@(?P<sha256>[0-9a-f]{64})(?P<suffix>(?:\.[A-Za-z0-9]+)*)$")


def version_key(base: str, sha256: str, suffix: str = "") -> str:
    """The key of the version of `base` whose bytes hash to `sha256`."""
    return f"{base}{VERSION_MARK}{sha256}{suffix}"


def parse_version_key(key: str) -> tuple[str, str, str] | None:
    """(base, sha256, suffix) of a version key, or None for any other key."""
    m = _VERSION_KEY.match(key)
    return (m["base"], m["sha256"], m["suffix"]) if m else None


@dataclass(frozen=True)
class StoredVersion:
    """One stored version of a base key, as listed (for garbage collection)."""

    key: str
    sha256: str
    size_bytes: int
    modified: float  # seconds since the epoch when it was committed


@dataclass(frozen=True)
class ObjectInfo:
    """One stored object: where it is, how big, and the sha256 of its bytes.

    `version` is the backend's opaque token for this one write of the key (local: the
    link's target name; S3: the ETag), set by `head`, `read_bytes` and `replace_if`; it
    is what `replace_if` compares. Not part of equality: the same bytes are the same object."""

    site: str
    key: str
    uri: str
    size_bytes: int
    sha256: str
    version: str | None = field(default=None, compare=False)


class HashingWriter:
    """A write-only file object that hashes and counts what passes through it."""

    info: ObjectInfo | None = None  # set by the storage once the write is committed

    def __init__(self, raw: BinaryIO):
        self._raw = raw
        self._hash = hashlib.sha256()
        self.size = 0

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        self._raw.write(view)
        self._hash.update(view)
        self.size += len(view)
        return len(view)

    def hexdigest(self) -> str:
        return self._hash.hexdigest()

    # pyarrow and numpy probe these on file-like objects
    def writable(self) -> bool:
        return True

    def readable(self) -> bool:
        return False

    def seekable(self) -> bool:
        return False

    def tell(self) -> int:
        return self.size

    def flush(self) -> None:
        self._raw.flush()

    @property
    def closed(self) -> bool:
        return False

    def close(self) -> None:  # the storage commits; callers' close() must not end the write
        pass


class PartSink(ABC):
    """The receiving end of a replication: parts arrive in any order, then commit or abort."""

    @abstractmethod
    def write_part(self, number: int, offset: int, data: bytes) -> None: ...

    @abstractmethod
    def commit(self, sha256: str, size: int) -> ObjectInfo: ...

    @abstractmethod
    def abort(self) -> None: ...


class SiteStorage(ABC):
    """Where one site keeps its objects. Keys are '/'-separated relative paths."""

    kind: str = "abstract"

    def __init__(self, site: str):
        self.site = site

    @abstractmethod
    def uri(self, key: str) -> str:
        """The address of the key, e.g. file:///... or s3://bucket/prefix/key."""

    @abstractmethod
    def head(self, key: str) -> ObjectInfo | None:
        """The stored object's size and recorded sha256, or None when there is none."""

    @abstractmethod
    def open_write(self, key: str) -> "AtomicWrite":
        """A context manager yielding a HashingWriter; the object appears only on clean exit."""

    @abstractmethod
    def open_version(self, base: str, suffix: str = "") -> "AtomicWrite":
        """Like `open_write`, but the object is committed under `version_key(base, sha256,
        suffix)` once its bytes are known; `writer.info.key` names it. Writing the same
        bytes twice yields the same key and changes nothing a reader could notice."""

    @abstractmethod
    def list_versions(self, base: str) -> list[StoredVersion]:
        """The committed versions of exactly `base` (not of other bases it is a prefix of)."""

    @abstractmethod
    def read_bytes(self, key: str, expected_sha256: str | None = None) -> tuple[bytes, ObjectInfo]:
        """The object's bytes, verified against its recorded sha256 (and `expected_sha256`)."""

    @abstractmethod
    def open_stream(self, key: str):
        """A readable binary stream of the object's raw bytes (unverified; the reader hashes)."""

    @abstractmethod
    def read_range(self, key: str, offset: int, length: int) -> bytes:
        """Raw bytes [offset, offset+length) of the object, unverified (replication hashes them)."""

    @abstractmethod
    def part_sink(self, key: str, size: int, sha256: str, part_size: int) -> PartSink:
        """A sink that assembles a replica of `size` bytes; visible only after commit."""

    @abstractmethod
    def delete(self, key: str) -> None: ...

    @abstractmethod
    def list_keys(self, prefix: str = "") -> list[str]:
        """Keys of the committed objects under `prefix` (a '/'-separated key prefix)."""

    def put_bytes(self, key: str, data: bytes) -> ObjectInfo:
        with self.open_write(key) as writer:
            writer.write(data)
        return writer_info(writer)

    def put_version(self, base: str, data: bytes, suffix: str = "") -> ObjectInfo:
        with self.open_version(base, suffix) as writer:
            writer.write(data)
        return writer_info(writer)

    def put_new(self, key: str, data: bytes) -> ObjectInfo | None:
        """Store `data` under `key` only if no object is there yet, atomically (of two
        concurrent callers exactly one succeeds); None when an object already exists."""
        raise NotImplementedError(f"{type(self).__name__} cannot create objects exclusively (put_new)")

    def replace_if(self, key: str, data: bytes, expected: ObjectInfo | None) -> ObjectInfo | None:
        """Compare-and-swap: store `data` under `key` only if the key still holds the write
        `expected` describes (its `version`, as `read_bytes` or `head` returned it), or, with
        `expected=None`, only if no object is there. Returns the new object's info (with its
        version) or None when the precondition failed: re-read and try again. For small
        objects (one request); of concurrent callers with the same `expected` at most one wins."""
        raise NotImplementedError(f"{type(self).__name__} cannot replace objects conditionally (replace_if)")

    def describe(self) -> str:
        return f"{self.kind} storage of site {self.site!r} at {self.uri('')}"


class AtomicWrite(ABC):
    """Context manager protocol shared by the backends' writers."""

    info: ObjectInfo | None = None

    @abstractmethod
    def __enter__(self) -> HashingWriter: ...

    @abstractmethod
    def __exit__(self, exc_type, exc, tb) -> bool | None: ...


def writer_info(writer: HashingWriter) -> ObjectInfo:
    info = getattr(writer, "info", None)
    if info is None:
        raise RuntimeError("the write has not been committed")
    return info


def verify(data: bytes, info: ObjectInfo, expected_sha256: str | None) -> None:
    """Raise ChecksumMismatch unless `data` hashes to the recorded and the expected sha256."""
    actual = hashlib.sha256(data).hexdigest()
    if len(data) != info.size_bytes or actual != info.sha256:
        raise ChecksumMismatch(
            f"checksum mismatch: the stored object has {len(data)} bytes with sha256 {actual}, "
            f"but {info.size_bytes} bytes with sha256 {info.sha256} were recorded when it was written "
            "(corrupted or truncated copy)",
            site=info.site,
            uri=info.uri,
        )
    if expected_sha256 is not None and actual != expected_sha256:
        raise ChecksumMismatch(
            f"checksum mismatch: the stored object has sha256 {actual}, but the latest "
            f"materialization recorded sha256 {expected_sha256} (stale or foreign copy)",
            site=info.site,
            uri=info.uri,
        )
