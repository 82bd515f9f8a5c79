"""A site's storage as a directory on the local filesystem (the embedded default).

Layout: `<root>/<key>` holds the bytes, `<root>/<key>.sha256` a JSON sidecar with the
sha256 and size. Writes go to a hidden temporary file in the same directory, are fsynced
and then renamed over the final name, data first and sidecar second; an object counts as
present only when both exist, so a writer killed at any point leaves nothing visible.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

from dagster_gravity.storage.base import (
    AtomicWrite,
    HashingWriter,
    ObjectInfo,
    ObjectNotFound,
    PartSink,
    SiteStorage,
    StorageError,
    verify,
)

SIDECAR_SUFFIX = ".sha256"


def _temp_path(final: Path) -> Path:
    return final.with_name(f".{final.name}.tmp-{uuid.uuid4().hex[:12]}")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LocalSiteStorage(SiteStorage):
    kind = "local"

    def __init__(self, site: str, root: str | os.PathLike):
        super().__init__(site)
        self.root = Path(root)

    # -- addressing ----------------------------------------------------------------------

    def path(self, key: str) -> Path:
        parts = [p for p in key.split("/") if p]
        if any(p in (".", "..") for p in parts) or not parts:
            raise StorageError(f"invalid object key {key!r}: expected a relative path without '.' or '..'", site=self.site)
        return self.root.joinpath(*parts)

    def uri(self, key: str) -> str:
        target = self.path(key) if key else self.root
        return target.resolve().as_uri()

    # -- reads ---------------------------------------------------------------------------

    def head(self, key: str) -> ObjectInfo | None:
        path = self.path(key)
        try:
            record = json.loads(path.with_name(path.name + SIDECAR_SUFFIX).read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise StorageError(f"unreadable checksum sidecar: {exc}", site=self.site, uri=self.uri(key)) from exc
        if not path.exists():
            return None
        return ObjectInfo(self.site, key, self.uri(key), int(record["size_bytes"]), str(record["sha256"]))

    def _require(self, key: str) -> ObjectInfo:
        info = self.head(key)
        if info is None:
            raise ObjectNotFound("no stored object under this key", site=self.site, uri=self.uri(key))
        return info

    def read_bytes(self, key: str, expected_sha256: str | None = None) -> tuple[bytes, ObjectInfo]:
        info = self._require(key)
        try:
            data = self.path(key).read_bytes()
        except FileNotFoundError:
            raise ObjectNotFound("the object disappeared while reading", site=self.site, uri=info.uri) from None
        verify(data, info, expected_sha256)
        return data, info

    def open_stream(self, key: str):
        try:
            return open(self.path(key), "rb", buffering=0)
        except FileNotFoundError:
            raise ObjectNotFound("no stored object under this key", site=self.site, uri=self.uri(key)) from None

    def read_range(self, key: str, offset: int, length: int) -> bytes:
        try:
            fd = os.open(self.path(key), os.O_RDONLY)
        except FileNotFoundError:
            raise ObjectNotFound("no stored object under this key", site=self.site, uri=self.uri(key)) from None
        try:
            return os.pread(fd, length, offset)
        finally:
            os.close(fd)

    # -- writes --------------------------------------------------------------------------

    def open_write(self, key: str) -> AtomicWrite:
        return _LocalWrite(self, key)

    def part_sink(self, key: str, size: int, sha256: str, part_size: int) -> PartSink:
        return _LocalPartSink(self, key)

    def commit_file(self, key: str, temp: Path, sha256: str, size: int) -> ObjectInfo:
        """Publish a fully written and fsynced temporary file under `key` with its checksum."""
        final = self.path(key)
        sidecar = final.with_name(final.name + SIDECAR_SUFFIX)
        sidecar_temp = _temp_path(sidecar)
        with open(sidecar_temp, "w") as f:
            json.dump({"sha256": sha256, "size_bytes": size}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, final)
        os.replace(sidecar_temp, sidecar)
        _fsync_dir(final.parent)
        return ObjectInfo(self.site, key, self.uri(key), size, sha256)

    def list_keys(self, prefix: str = "") -> list[str]:
        keys = []
        for dirpath, _dirs, files in os.walk(self.root):
            for name in files:
                if name.startswith(".") or not name.endswith(SIDECAR_SUFFIX):
                    continue
                data_name = name[: -len(SIDECAR_SUFFIX)]
                if not os.path.exists(os.path.join(dirpath, data_name)):
                    continue
                key = Path(dirpath, data_name).relative_to(self.root).as_posix()
                if key.startswith(prefix):
                    keys.append(key)
        return sorted(keys)

    def delete(self, key: str) -> None:
        final = self.path(key)
        for path in (final.with_name(final.name + SIDECAR_SUFFIX), final):
            try:
                path.unlink()
            except FileNotFoundError:
                pass


class _LocalWrite(AtomicWrite):
    def __init__(self, storage: LocalSiteStorage, key: str):
        self.storage = storage
        self.key = key
        self.final = storage.path(key)

    def __enter__(self) -> HashingWriter:
        try:
            self.final.parent.mkdir(parents=True, exist_ok=True)
            self.temp = _temp_path(self.final)
            self.file = open(self.temp, "wb")
        except OSError as exc:
            raise StorageError(f"cannot write: {exc}", site=self.storage.site, uri=self.storage.uri(self.key)) from exc
        self.writer = HashingWriter(self.file)
        return self.writer

    def __exit__(self, exc_type, exc, tb):
        try:
            if exc_type is None:
                self.file.flush()
                os.fsync(self.file.fileno())
            self.file.close()
            if exc_type is None:
                self.info = self.storage.commit_file(self.key, self.temp, self.writer.hexdigest(), self.writer.size)
                self.writer.info = self.info
        except OSError as err:
            raise StorageError(f"cannot write: {err}", site=self.storage.site, uri=self.storage.uri(self.key)) from err
        finally:
            if self.temp.exists():
                self.temp.unlink()
        return None


class _LocalPartSink(PartSink):
    def __init__(self, storage: LocalSiteStorage, key: str):
        self.storage = storage
        self.key = key
        final = storage.path(key)
        final.parent.mkdir(parents=True, exist_ok=True)
        self.temp = _temp_path(final)
        self.fd = os.open(self.temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)

    def write_part(self, number: int, offset: int, data: bytes) -> None:
        view = memoryview(data)
        while view:
            written = os.pwrite(self.fd, view, offset)
            view = view[written:]
            offset += written

    def commit(self, sha256: str, size: int) -> ObjectInfo:
        try:
            os.fsync(self.fd)
            os.close(self.fd)
            self.fd = -1
            return self.storage.commit_file(self.key, self.temp, sha256, size)
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        try:
            self.temp.unlink()
        except FileNotFoundError:
            pass
