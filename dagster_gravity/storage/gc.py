"""Garbage collection of site storage: what crashes leave, and versions nothing needs.

Three kinds of garbage, each removed only once it is older than a grace period
(`DEFAULT_GRACE_S`, one hour), so nothing a live writer or reader still uses goes away:

- **temporary files** of local writes (`.<name>.tmp-<id>`) whose writer was killed;
- **orphaned data files** of local storage (`.<name>.obj-...`) that no link names, left by a
  writer killed between its two renames or by the loser of concurrent writes of one key
  (aged by ctime, which the rename that created them set);
- **incomplete multipart uploads** of S3 storage, which S3 keeps (and bills) until aborted,
  and abandoned replication leases (`single_flight.py`) of copiers that died;
- **superseded versions** of an asset partition (`<base>@<sha256><ext>`): any version other
  than the one its latest materialization records, once that record is older than the grace
  period and the version is too. A version written but not (yet) recorded is young, so it is
  kept; a base with no gravity record is never touched (nothing proves its versions unused).
  The recorded version is kept at every site, so current replicas stay.

Checkpoints (`checkpoints.py`) are outside the version scheme: their versions, the promoted
one and its predecessors, are removed only by `CheckpointStore.apply_retention`; here only
their debris is collected.

`collect_base` works on one base (the IO manager calls it after each write);
`collect_debris` on a whole storage; `dagster_gravity.recorded_versions.collect` (the
`gravity gc` command) on every recorded asset at every site.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from dagster_gravity.storage.base import SiteStorage, StorageError
from dagster_gravity.storage.local import _TARGET, LocalSiteStorage
from dagster_gravity.storage.s3 import S3SiteStorage

DEFAULT_GRACE_S = 3600.0
_TEMP = re.compile(r"^\.(?P<name>.+)\.tmp-[0-9a-f]{12}$")

SUPERSEDED = "superseded version"
TEMPORARY = "temporary file"
ORPHAN = "orphaned data file"
UPLOAD = "incomplete multipart upload"
LEASE = "abandoned replication lease"
LEASE_S_FLOOR = 3600.0  # never before a live lease (single_flight.LEASE_S) could have expired


@dataclass(frozen=True)
class RecordedVersion:
    """The version of a base that its latest materialization names, and when it was recorded."""

    key: str
    recorded_at: float  # seconds since the epoch


@dataclass(frozen=True)
class Garbage:
    """One thing that can be removed, and how."""

    site: str
    kind: str
    uri: str
    size_bytes: int
    age_s: float
    remove: Callable[[], None] = field(repr=False, compare=False)

    def text(self) -> str:
        return f"{self.kind} {self.uri} ({_size(self.size_bytes)}, {self.age_s / 3600:.1f} h old)"


@dataclass
class Report:
    """What a collection removed (or, dry, would remove), and what it could not."""

    dry_run: bool = False
    removed: list[Garbage] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def merge(self, other: "Report") -> "Report":
        self.removed += other.removed
        self.errors += other.errors
        return self

    def summary(self) -> str:
        verb = "would remove" if self.dry_run else "removed"
        if not self.removed:
            text = f"garbage collection {verb} nothing"
        else:
            counts: dict[str, list[int]] = {}
            for item in self.removed:
                entry = counts.setdefault(item.kind, [0, 0])
                entry[0] += 1
                entry[1] += item.size_bytes
            parts = [f"{n} {kind}{'s' if n != 1 else ''} ({_size(size)})" for kind, (n, size) in counts.items()]
            text = f"garbage collection {verb} " + ", ".join(parts)
        return text + (f"; {len(self.errors)} error(s)" if self.errors else "")


def _size(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def _apply(items: list[Garbage], dry_run: bool) -> Report:
    report = Report(dry_run=dry_run)
    for item in items:
        if dry_run:
            report.removed.append(item)
            continue
        try:
            item.remove()
        except Exception as exc:  # noqa: BLE001 - one failure must not stop the rest; it is reported
            report.errors.append(f"cannot remove {item.text()}: {exc}")
        else:
            report.removed.append(item)
    return report


# -- superseded versions -------------------------------------------------------------------


def superseded_versions(
    storage: SiteStorage,
    base: str,
    latest: RecordedVersion | None,
    *,
    keep: set[str] = frozenset(),
    grace_s: float = DEFAULT_GRACE_S,
    now: float | None = None,
) -> list[Garbage]:
    """Versions of `base` in `storage` that the recorded `latest` has superseded for `grace_s`."""
    if latest is None:
        return []  # nothing recorded: no proof that any version is unused
    now = time.time() if now is None else now
    if now - latest.recorded_at < grace_s:
        return []  # readers that resolved the previous record may still be reading it
    found = []
    for version in storage.list_versions(base):
        age = now - version.modified
        if version.key == latest.key or version.key in keep or age < grace_s:
            continue
        found.append(
            Garbage(storage.site, SUPERSEDED, storage.uri(version.key), version.size_bytes, age,
                    remove=lambda key=version.key: storage.delete(key))
        )
    return found


# -- debris --------------------------------------------------------------------------------


def debris(storage: SiteStorage, *, under: str = "", grace_s: float = DEFAULT_GRACE_S,
           now: float | None = None, recursive: bool = True, beside: str | None = None) -> list[Garbage]:
    """What killed writers left in `storage` under the folder `under` ('' = everywhere);
    with `beside`, only the hidden files of that name in the folder (local storage)."""
    now = time.time() if now is None else now
    if isinstance(storage, LocalSiteStorage):
        folder = storage.path(under) if under.strip("/") else storage.root
        return _local_debris(storage, folder, grace_s, now, recursive, f".{beside}" if beside else ".")
    if isinstance(storage, S3SiteStorage):
        leases = _s3_leases(storage, grace_s, now) if not under.strip("/") else []
        return _s3_uploads(storage, under, grace_s, now) + leases
    return []


def _local_debris(
    storage: LocalSiteStorage, folder: Path, grace_s: float, now: float, recursive: bool, starts: str
) -> list[Garbage]:
    found: list[Garbage] = []
    walk = os.walk(folder) if recursive else [(str(folder), [], _names(folder))]
    for dirpath, _dirs, names in walk:
        for name in names:
            if not name.startswith(starts):
                continue
            path = Path(dirpath, name)
            try:
                stat = path.lstat()
            except FileNotFoundError:
                continue
            age = now - stat.st_ctime
            if age < grace_s:
                continue
            if _TEMP.match(name):
                kind = TEMPORARY
            elif (m := _TARGET.match(name)) and not _is_linked(path, m["name"]):
                kind = ORPHAN
            else:
                continue
            found.append(
                Garbage(storage.site, kind, path.as_uri(), stat.st_size, age,
                        remove=lambda p=path, k=kind: _remove_local(p, k))
            )
    return found


def _s3_uploads(storage: S3SiteStorage, under: str, grace_s: float, now: float) -> list[Garbage]:
    """Multipart uploads under the storage's prefix begun more than `grace_s` ago."""
    from botocore.exceptions import BotoCoreError, ClientError

    prefix = storage.object_key(under) if under.strip("/") else (storage.prefix + "/" if storage.prefix else "")
    found = []
    try:
        pages = storage.client.get_paginator("list_multipart_uploads").paginate(Bucket=storage.bucket, Prefix=prefix)
        for page in pages:
            for upload in page.get("Uploads", []):
                age = now - upload["Initiated"].timestamp()
                if age < grace_s:
                    continue
                key, upload_id = upload["Key"], upload["UploadId"]
                found.append(
                    Garbage(storage.site, UPLOAD, f"s3://{storage.bucket}/{key}", 0, age,
                            remove=lambda k=key, u=upload_id: storage.client.abort_multipart_upload(
                                Bucket=storage.bucket, Key=k, UploadId=u))
                )
    except (ClientError, BotoCoreError) as exc:
        raise storage._error(exc, "ListMultipartUploads", under) from exc
    return found


def _s3_leases(storage: S3SiteStorage, grace_s: float, now: float) -> list[Garbage]:
    """Replication leases (single_flight.py) whose holder died and that nobody took over."""
    from botocore.exceptions import BotoCoreError, ClientError

    from dagster_gravity.storage.single_flight import LEASE_PREFIX

    found = []
    try:
        pages = storage.client.get_paginator("list_objects_v2").paginate(
            Bucket=storage.bucket, Prefix=storage.object_key(LEASE_PREFIX)
        )
        for page in pages:
            for item in page.get("Contents", []):
                age = now - item["LastModified"].timestamp()
                if age < max(grace_s, LEASE_S_FLOOR):
                    continue
                key = item["Key"][len(storage.prefix) + 1 :] if storage.prefix else item["Key"]
                found.append(
                    Garbage(storage.site, LEASE, storage.uri(key), int(item["Size"]), age,
                            remove=lambda k=key: storage.delete(k))
                )
    except (ClientError, BotoCoreError) as exc:
        raise storage._error(exc, "LIST", LEASE_PREFIX) from exc
    return found


def _names(folder: Path) -> list[str]:
    try:
        return [entry.name for entry in os.scandir(folder) if entry.is_file(follow_symlinks=False) or entry.is_symlink()]
    except FileNotFoundError:
        return []


def _is_linked(data: Path, name: str) -> bool:
    """Whether the link `<name>` beside the data file names it (then it is a live object)."""
    try:
        return os.readlink(data.with_name(name)) == data.name
    except OSError:
        return False


def _remove_local(path: Path, kind: str) -> None:
    m = _TARGET.match(path.name)
    if kind == ORPHAN and m and _is_linked(path, m["name"]):
        return  # linked since it was listed: a live object now
    try:
        path.unlink()
    except FileNotFoundError:
        pass


# -- one base, after a write ---------------------------------------------------------------


def collect_base(
    storage: SiteStorage,
    base: str,
    latest: RecordedVersion | None,
    *,
    keep: set[str] = frozenset(),
    grace_s: float = DEFAULT_GRACE_S,
    dry_run: bool = False,
    now: float | None = None,
) -> Report:
    """Remove the superseded versions of `base` (listed only once the record is older than the
    grace period) and, in local storage, its debris (one listing of its folder); the S3 uploads
    are left to `gravity gc`, as listing them costs a request."""
    items = superseded_versions(storage, base, latest, keep=keep, grace_s=grace_s, now=now)
    if isinstance(storage, LocalSiteStorage):
        folder, _, name = base.rpartition("/")
        items += debris(storage, under=folder, grace_s=grace_s, now=now, recursive=False, beside=name)
    return _apply(items, dry_run)


def collect_debris(storage: SiteStorage, *, grace_s: float = DEFAULT_GRACE_S, dry_run: bool = False,
                   now: float | None = None) -> Report:
    """Remove every temporary file, orphaned data file or incomplete upload in `storage`."""
    return _apply(debris(storage, grace_s=grace_s, now=now), dry_run)


def collect_versions(storage: SiteStorage, recorded: dict[str, RecordedVersion], *, grace_s: float = DEFAULT_GRACE_S,
                     dry_run: bool = False, now: float | None = None) -> Report:
    """Remove the superseded versions of every base in `recorded` (base -> its latest record)."""
    items: list[Garbage] = []
    report = Report(dry_run=dry_run)
    for base, latest in recorded.items():
        try:
            items += superseded_versions(storage, base, latest, grace_s=grace_s, now=now)
        except StorageError as exc:
            report.errors.append(f"cannot list the versions of {base!r} at site {storage.site!r}: {exc}")
    return report.merge(_apply(items, dry_run))
