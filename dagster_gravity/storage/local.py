"""A site's storage as a directory on the local filesystem (the embedded default).

Layout: `<root>/<key>` is a symbolic link to a hidden sibling data file
`.<name>.obj-<sha256>-<size>-<unique>`; the link's target name records the checksum and
size, so the bytes and their checksum are published together by ONE rename.

What is guaranteed (POSIX rename semantics, one filesystem):
- A write goes to a hidden temporary file, is fsynced, renamed to its hidden data name,
  and then a link to it, made under a hidden temporary name, is renamed over `<key>`.
  That last rename is the commit point: before it readers see the previous version (or
  nothing), after it the new one, with a checksum that matches; a writer killed at any
  point leaves only hidden files (`.<name>.tmp-*` or an orphaned `.<name>.obj-*`), never a
  half-written or mismatched object under a final name.
- After committing, a writer deletes the data file of the version it replaced. A reader
  resolves the link once and reads that target; if it was deleted in between, the read
  retries on the new version, so concurrent overwrites cause no spurious mismatch.
- `put_new` creates a key only if absent (the link is made with symlink(2), which fails
  atomically when the name exists): two writers never both create the same key.
- Concurrent overwrites of one key: the last commit wins; the loser's data file may stay
  behind as a hidden orphan.
- `replace_if` (compare-and-swap) holds an exclusive flock(2) on the hidden `.<name>.lock`
  beside the key, re-reads the link and commits only if it still names the data file the
  caller read (the target name is unique per write, so an old version never matches again).
  It excludes other `replace_if` and `put_new` callers, not plain overwrites.
- Versions (`open_version`): the key `<base>@<sha256><suffix>` is known only once the bytes
  are, so the temporary file sits beside `<base><suffix>` and the commit links it under the
  version's name. Two writers of the same bytes produce the same key and the same content.

Hidden temporary files and orphaned data files left by killed writers are removed by
`dagster_gravity.storage.gc` once they are older than its threshold.
"""

from __future__ import annotations

import fcntl
import os
import re
import uuid
from contextlib import contextmanager
from pathlib import Path

from dagster_gravity.storage.base import (
    AtomicWrite,
    ForeignObject,
    HashingWriter,
    ObjectInfo,
    ObjectNotFound,
    PartSink,
    SiteStorage,
    StorageError,
    StoredVersion,
    parse_version_key,
    verify,
    version_key,
)
from dagster_gravity.storage.oserrors import os_error_reason

_TARGET = re.compile(r"^\.(?P<name>.+)\.obj-(?P<sha256>[0-9a-f]{64})-(?P<size>\d+)-[0-9a-f]+$")


def _temp_path(final: Path) -> Path:
    return final.with_name(f".{final.name}.tmp-{uuid.uuid4().hex[:12]}")


def _data_name(final: Path, sha256: str, size: int) -> str:
    return f".{final.name}.obj-{sha256}-{size}-{uuid.uuid4().hex[:12]}"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unlink_quietly(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


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
        if not key:
            return self.root.resolve().as_uri()
        path = self.path(key)  # the link's own address, not its hidden data file's
        return (path.parent.resolve() / path.name).as_uri()

    # -- reads ---------------------------------------------------------------------------

    def _target(self, key: str) -> tuple[Path, ObjectInfo] | None:
        """The data file the link at `key` names, with the checksum and size it records."""
        final = self.path(key)
        try:
            target = os.readlink(final)
        except FileNotFoundError:
            return None
        except OSError as exc:  # EINVAL: a plain file, not a link written by this storage
            raise ForeignObject(
                f"not a gravity object: expected a link to a checksummed data file, found {exc.strerror.lower()}",
                site=self.site,
                uri=self.uri(key),
            ) from exc
        m = _TARGET.match(target)
        if m is None or "/" in target or m["name"] != final.name:
            raise ForeignObject(
                f"not a gravity object: the link names {target!r}, expected "
                f"'.{final.name}.obj-<sha256>-<size>-<id>' beside it (key {key!r})",
                site=self.site,
                uri=self.uri(key),
            )
        info = ObjectInfo(self.site, key, self.uri(key), int(m["size"]), m["sha256"], version=target)
        return final.with_name(target), info

    def head(self, key: str) -> ObjectInfo | None:
        found = self._target(key)
        if found is None or not found[0].exists():
            return None
        return found[1]

    def _require(self, key: str) -> tuple[Path, ObjectInfo]:
        found = self._target(key)
        if found is None:
            raise ObjectNotFound("no stored object under this key", site=self.site, uri=self.uri(key))
        return found

    def read_bytes(self, key: str, expected_sha256: str | None = None) -> tuple[bytes, ObjectInfo]:
        seen = None
        for _attempt in range(1000):
            target, info = self._require(key)
            if target == seen:
                break  # the link still names the missing file: the data is gone
            try:
                data = target.read_bytes()
            except FileNotFoundError:
                seen = target  # a writer replaced the object and removed this version: read the new one
                continue
            except OSError as exc:  # e.g. permission denied
                raise StorageError(os_error_reason(exc, f"reading {target}"), site=self.site, uri=info.uri) from exc
            verify(data, info, expected_sha256)
            return data, info
        raise ObjectNotFound("the object disappeared while reading", site=self.site, uri=self.uri(key))

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

    def open_version(self, base: str, suffix: str = "") -> AtomicWrite:
        if not base or base.endswith("/"):
            raise StorageError(f"invalid version base {base!r}: expected a key that does not end with '/'", site=self.site)
        return _LocalWrite(self, base + suffix, version_of=(base, suffix))

    def list_versions(self, base: str) -> list[StoredVersion]:
        anchor = self.path(base)
        versions = []
        try:
            entries = list(os.scandir(anchor.parent))
        except FileNotFoundError:
            return []
        for entry in entries:
            parsed = parse_version_key(entry.name)
            if parsed is None or parsed[0] != anchor.name or not entry.is_symlink():
                continue
            target = _TARGET.match(os.readlink(entry.path))
            if target is None or not os.path.exists(entry.path):
                continue  # a dangling link is not a committed version
            key = base[: len(base) - len(anchor.name)] + entry.name
            versions.append(StoredVersion(key, target["sha256"], int(target["size"]), entry.stat(follow_symlinks=False).st_mtime))
        return sorted(versions, key=lambda v: (v.modified, v.key))

    def part_sink(self, key: str, size: int, sha256: str, part_size: int) -> PartSink:
        return _LocalPartSink(self, key)

    def commit_file(self, key: str, temp: Path, sha256: str, size: int, *, exclusive: bool = False) -> ObjectInfo | None:
        """Publish a fully written and fsynced temporary file under `key` with its checksum.

        The rename of the link over `key` is the one commit point. With `exclusive`, the
        link is created only if `key` does not exist yet (returns None when it does)."""
        final = self.path(key)
        data = final.with_name(_data_name(final, sha256, size))
        os.replace(temp, data)  # still invisible: a hidden name nothing points to
        try:
            if exclusive:
                try:
                    os.symlink(data.name, final)
                except FileExistsError:
                    _unlink_quietly(data)
                    return None
                previous = None
            else:
                try:
                    previous = os.readlink(final)
                except OSError:
                    previous = None
                link = _temp_path(final)
                os.symlink(data.name, link)
                try:
                    os.replace(link, final)  # the commit point
                except BaseException:
                    _unlink_quietly(link)
                    raise
        except BaseException:
            if not (final.is_symlink() and os.readlink(final) == data.name):
                _unlink_quietly(data)
            raise
        _fsync_dir(final.parent)
        if previous and previous != data.name and _TARGET.match(previous):
            _unlink_quietly(final.with_name(previous))
        return ObjectInfo(self.site, key, self.uri(key), size, sha256, version=data.name)

    def put_new(self, key: str, data: bytes) -> ObjectInfo | None:
        """Store `data` under `key` only if no object is there yet; None if one is."""
        return _LocalWrite(self, key, exclusive=True).write_all(data)

    def replace_if(self, key: str, data: bytes, expected: ObjectInfo | None) -> ObjectInfo | None:
        """Store `data` only if `key` still holds the write `expected` names (None: no object);
        None when it does not. Checked and committed under the key's lock (module docstring)."""
        if expected is not None and not expected.version:
            raise StorageError(
                f"replace_if needs the version token that head or read_bytes returned; got {expected!r}",
                site=self.site,
                uri=self.uri(key),
            )
        final = self.path(key)
        with self._locked(key, final):
            try:
                current = os.readlink(final)
            except FileNotFoundError:
                current = None
            except OSError:  # a plain file: not the gravity object the caller read
                current = ""
            if current != (expected.version if expected is not None else None):
                return None
            return _LocalWrite(self, key, exclusive=expected is None).write_all(data)

    @contextmanager
    def _locked(self, key: str, final: Path):
        """An exclusive flock on `.<name>.lock` beside the key, held for the block."""
        lock = final.with_name(f".{final.name}.lock")
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
            while True:
                fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX)
                    # A lock file unlinked while we waited locks nothing: lock the one there now.
                    try:
                        if os.stat(lock).st_ino == os.fstat(fd).st_ino:
                            break
                    except FileNotFoundError:
                        pass
                except BaseException:
                    os.close(fd)
                    raise
                os.close(fd)
        except OSError as exc:
            raise StorageError(f"cannot lock the key for a conditional write: {exc}", site=self.site, uri=self.uri(key)) from exc
        try:
            yield
        finally:
            os.close(fd)  # releases the lock

    def list_keys(self, prefix: str = "") -> list[str]:
        keys = []
        folder = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        start = self.path(folder) if folder.strip("/") else self.root  # walk only under the prefix
        for dirpath, _dirs, files in os.walk(start):
            for name in files:
                path = Path(dirpath, name)
                if name.startswith(".") or not path.is_symlink():
                    continue
                target = _TARGET.match(os.readlink(path))
                if target is None or not path.exists():
                    continue
                key = path.relative_to(self.root).as_posix()
                if key.startswith(prefix):
                    keys.append(key)
        return sorted(keys)

    def delete(self, key: str) -> None:
        final = self.path(key)
        try:
            target = os.readlink(final)
        except FileNotFoundError:
            return
        except OSError:
            target = None
        _unlink_quietly(final)  # the object disappears here
        if target and _TARGET.match(target):
            _unlink_quietly(final.with_name(target))


class _LocalWrite(AtomicWrite):
    def __init__(
        self, storage: LocalSiteStorage, key: str, exclusive: bool = False, version_of: tuple[str, str] | None = None
    ):
        self.storage = storage
        self.key = key  # for a version: `<base><suffix>`, beside which the temporary file goes
        self.final = storage.path(key)
        self.exclusive = exclusive
        self.version_of = version_of

    def write_all(self, data: bytes) -> ObjectInfo | None:
        with self as writer:
            writer.write(data)
        return self.info

    def _failed(self, exc: OSError, doing: str) -> StorageError:
        return StorageError(os_error_reason(exc, doing), site=self.storage.site, uri=self.storage.uri(self.key))

    def __enter__(self) -> HashingWriter:
        try:
            self.final.parent.mkdir(parents=True, exist_ok=True)
            self.temp = _temp_path(self.final)
            self.file = open(self.temp, "wb")
        except OSError as exc:
            raise self._failed(exc, f"creating a temporary file in {self.final.parent}") from exc
        self.writer = HashingWriter(self.file)
        return self.writer

    def __exit__(self, exc_type, exc, tb):
        doing = f"writing {self.temp}"
        try:
            if exc_type is None:
                self.file.flush()
                os.fsync(self.file.fileno())
            self.file.close()  # flushes what is buffered, so a full disk may show only here
            if exc_type is None:
                doing = f"committing {self.temp.name} as {self.final}"
                sha = self.writer.hexdigest()
                if self.version_of is not None:
                    self.key = version_key(self.version_of[0], sha, self.version_of[1])
                self.info = self.storage.commit_file(self.key, self.temp, sha, self.writer.size, exclusive=self.exclusive)
                self.writer.info = self.info
        except OSError as err:
            raise self._failed(err, doing) from err
        finally:
            _unlink_quietly(self.temp)
        if isinstance(exc, OSError):
            # raised by the caller's writes into the temporary file (the encoder), e.g. disk full
            raise self._failed(exc, doing) from exc
        return None


class _LocalPartSink(PartSink):
    def __init__(self, storage: LocalSiteStorage, key: str):
        self.storage = storage
        self.key = key
        final = storage.path(key)
        self.fd = -1
        self.temp = _temp_path(final)
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
            self.fd = os.open(self.temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except OSError as exc:
            raise self._failed(exc, f"creating a temporary file in {final.parent}") from exc

    def _failed(self, exc: OSError, doing: str) -> StorageError:
        return StorageError(os_error_reason(exc, doing), site=self.storage.site, uri=self.storage.uri(self.key))

    def write_part(self, number: int, offset: int, data: bytes) -> None:
        view = memoryview(data)
        try:
            while view:
                written = os.pwrite(self.fd, view, offset)
                view = view[written:]
                offset += written
        except OSError as exc:
            raise self._failed(exc, f"writing the replica into {self.temp}") from exc

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
