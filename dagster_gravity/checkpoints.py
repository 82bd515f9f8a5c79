"""Versioned model checkpoints: save, load (verified), compare, promote, roll back, retain.

Layout inside a site's storage (under an optional prefix, default ``checkpoints``)::

    <name>/v<N>/weights.safetensors   the arrays (safetensors; or weights.npz, see below)
    <name>/v<N>/manifest.json    lineage, metrics, code version, weights format, sha256 of
                                 weights, created_at
    <name>/v<N>/claim.json       created exclusively first: the saver that made it owns v<N>
    <name>/promoted.json         the promoted version and the history of promotions
    <name>/_intermediate/<key>/weights-<batch>.safetensors + state.json    resumable training progress

Weights are safetensors by default (`dagster_gravity.checkpoint_weights`); `save(...,
weights_format="npz")` writes numpy .npz (loaded with allow_pickle=False) for arrays that
safetensors cannot hold (strings, structured). The manifest's `weights_format` says which
file a version has; a manifest without one was written before safetensors, as npz, and
loads as such.

A `CheckpointStore` works directly over a site's storage (`dagster_gravity.storage`, the
backend the IO manager writes to): every file is written atomically (one rename commits a
local object, a completed upload an S3 one) with its sha256 recorded and verified on every
read, and the manifest is written after the weights, so a version without a manifest was
never finished and is invisible. Weights are verified against the manifest's sha256 on every
load; a mismatch raises `CorruptCheckpointError`, and `latest_good()` / `load_usable()`
skip such versions with a warning that names the version and both checksums.

Version numbers are allocated as highest finished + 1 and claimed atomically (see
`_claim_version`), so concurrent savers of one model get distinct versions.

A model is listed by its exact name (the keys under `<prefix>/<name>/`), so `churn` never
sees `churn-eu`'s versions. `promoted.json` and a manifest's metrics are updated by
compare-and-swap (`SiteStorage.replace_if`: local, a checked replace under a lock; S3, a
conditional `If-Match` PUT), retried on conflict, so concurrent promotes, rollbacks and
metric updates are never lost: the promotion history is one linear chain.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import re
import time
import uuid
import warnings
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Iterable, Mapping

import numpy as np

from dagster_gravity import checkpoint_weights as weights_io
from dagster_gravity.errors import CheckpointError
from dagster_gravity.storage import (
    LocalSiteStorage,
    ObjectInfo,
    ObjectNotFound,
    SiteStorage,
    StorageError,
    storage_for_site,
)

log = logging.getLogger(__name__)

_VERSION_DIR = re.compile(r"^v(\d+)$")
CLAIM = "claim.json"  # created exclusively: whoever creates it owns the version number
_NAME = re.compile(r"[A-Za-z0-9_.-]{1,200}")
# Compare-and-swap retries: a loser waits a jittered, growing pause and tries again; 20
# racing promoters settle in a few rounds, so the bound only stops a livelock.
CAS_ATTEMPTS = 100
CAS_BACKOFF_S = (0.005, 0.25)  # first pause, longest pause


class CorruptCheckpointError(CheckpointError):
    """Stored weights whose sha256 does not match the manifest (or cannot be read)."""

    def __init__(self, name: str, version: int, expected: str, actual: str | None, detail: str = ""):
        self.name, self.version, self.expected, self.actual = name, version, expected, actual
        got = f"sha256 {actual}" if actual else "unreadable data"
        super().__init__(
            f"checkpoint {name!r} v{version} is corrupted: weights have {got}, manifest expects "
            f"sha256 {expected}{'; ' + detail if detail else ''}"
        )


class CheckpointCorruptionWarning(UserWarning):
    """Emitted when a corrupted checkpoint is skipped in favour of an earlier good one."""


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# -- records -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Version:
    """One saved checkpoint version, as its manifest records it."""

    name: str
    version: int
    sha256: str
    size_bytes: int
    lineage: dict[str, Any]
    metrics: dict[str, float]
    code_version: str
    created_at: str
    parent: int | None = None  # the version it warm-started from, if any
    weights_format: str = weights_io.LEGACY_FORMAT  # manifests written before safetensors name none

    @property
    def label(self) -> str:
        return f"{self.name}@v{self.version}"

    @property
    def weights_file(self) -> str:
        """The name of the version's weights file inside `v<N>/`."""
        return "weights" + weights_io.suffix(self.weights_format)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "Version":
        return cls(
            name=data["name"],
            version=int(data["version"]),
            sha256=data["sha256"],
            size_bytes=int(data["size_bytes"]),
            lineage=dict(data.get("lineage") or {}),
            metrics={k: float(v) for k, v in (data.get("metrics") or {}).items()},
            code_version=str(data.get("code_version", "")),
            created_at=data.get("created_at", ""),
            parent=data.get("parent"),
            weights_format=str(data.get("weights_format") or weights_io.LEGACY_FORMAT),
        )


@dataclass(frozen=True)
class Checkpoint:
    version: Version
    arrays: dict[str, np.ndarray]


@dataclass(frozen=True)
class Comparison:
    a: Version
    b: Version
    metrics: dict[str, dict[str, float | None]]  # metric -> {a, b, delta (b - a)}
    lineage_changes: dict[str, dict[str, Any]]  # key -> {a, b} for keys that differ
    same_weights: bool
    code_changed: bool

    def better(self, metric: str, higher_is_better: bool = True) -> bool | None:
        """Is b better than a on `metric`? None if either lacks it."""
        row = self.metrics.get(metric)
        if not row or row["a"] is None or row["b"] is None:
            return None
        return row["b"] > row["a"] if higher_is_better else row["b"] < row["a"]


@dataclass(frozen=True)
class Fallback:
    """What `load_usable` used, and which versions it refused on the way."""

    checkpoint: Checkpoint | None
    refused: list[CorruptCheckpointError] = field(default_factory=list)


@dataclass(frozen=True)
class Progress:
    """An intermediate training checkpoint: the batch to resume from and the arrays."""

    key: str
    next_batch: int
    arrays: dict[str, np.ndarray]
    state: dict[str, Any]


# -- the store -----------------------------------------------------------------------------


class CheckpointStore:
    """Versioned checkpoints of named models in one site's storage (local or S3).

    Missing objects are `ObjectNotFound`; any other failure to read intact bytes (checksum
    mismatch, an object gravity did not write, an unreachable site) is a `StorageError`, and
    where weights or a manifest cannot be read intact the version counts as corrupted."""

    def __init__(self, storage: SiteStorage, prefix: str = "checkpoints"):
        self.storage = storage
        self.prefix = prefix.strip("/")

    @classmethod
    def local(cls, root: str | os.PathLike, prefix: str = "checkpoints", site: str = "local") -> "CheckpointStore":
        """A store in a local directory (the layout and checksums of a local site's storage)."""
        return cls(LocalSiteStorage(site, root), prefix)

    @classmethod
    def for_site(cls, topology: Any, site: str, prefix: str = "checkpoints") -> "CheckpointStore":
        """The store at a site of the topology, in that site's storage (local or S3)."""
        return cls(storage_for_site(topology, site), prefix)

    def _read(self, key: str) -> bytes:
        """The object's bytes, verified against the checksum its storage recorded."""
        data, _info = self.storage.read_bytes(key)
        return data

    # -- keys --

    def _key(self, *parts: str) -> str:
        return "/".join(p for p in (self.prefix, *parts) if p)

    def _mkey(self, name: str, *parts: str) -> str:
        """A key of model `name` (validated): every key of a model is built here."""
        return self._key(self._check_name(name), *parts)

    @staticmethod
    def _check_name(name: str, what: str = "checkpoint name") -> str:
        # '.'/'..' would leave the model's folder; a leading '.' is storage-hidden and a
        # leading '_' is reserved for the store's own entries (`_intermediate`).
        if not isinstance(name, str) or not _NAME.fullmatch(name) or name[0] in "._":
            raise CheckpointError(
                f"{what} {name!r} is not allowed: expected 1 to 200 letters, digits, '_', '.' or '-', "
                "not starting with '.' or '_' (reserved)"
            )
        return name

    # -- versions --

    def versions(self, name: str) -> list[int]:
        """Finished versions (those with a manifest), oldest first."""
        folder = self._mkey(name) + "/"  # the trailing '/': 'churn' must not list 'churn-eu'
        found = set()
        for key in self.storage.list_keys(folder):
            parts = key[len(folder):].split("/")
            if len(parts) == 2 and parts[1] == "manifest.json":
                m = _VERSION_DIR.match(parts[0])
                if m:
                    found.add(int(m.group(1)))
        return sorted(found)

    def manifest(self, name: str, version: int) -> Version:
        return self._manifest_for_update(name, version)[0]

    def _manifest_for_update(self, name: str, version: int) -> tuple[Version, ObjectInfo]:
        """The manifest and the stored write it came from (what a compare-and-swap expects)."""
        key = self._mkey(name, f"v{version}", "manifest.json")
        try:
            raw, info = self.storage.read_bytes(key)
        except ObjectNotFound:
            raise CheckpointError(
                f"checkpoint {name!r} has no version v{version}; versions: {self.versions(name)}"
            ) from None
        except StorageError as exc:  # checksum mismatch, not written by gravity, unreachable
            raise CorruptCheckpointError(name, version, "(unknown)", None, f"manifest.json unreadable: {exc}") from None
        try:
            return Version.from_json(json.loads(raw)), info
        except (ValueError, KeyError, TypeError) as exc:
            raise CorruptCheckpointError(name, version, "(unknown)", None, f"manifest.json invalid: {exc!r}") from None

    def save(
        self,
        name: str,
        arrays: Mapping[str, np.ndarray],
        lineage: Mapping[str, Any],
        metrics: Mapping[str, float] | None = None,
        code_version: str = "",
        parent: int | None = None,
        weights_format: str = weights_io.DEFAULT_FORMAT,
    ) -> Version:
        """A new version holding `arrays` (in `weights_format`: 'safetensors' or 'npz')."""
        self._check_name(name)
        # Refuses (a bad format, arrays the format cannot hold) before anything is written.
        data = weights_io.encode(arrays, weights_format, f"checkpoint {name!r}")
        number = self._claim_version(name)
        version = Version(
            name=name,
            version=number,
            sha256=sha256_bytes(data),
            size_bytes=len(data),
            lineage=json.loads(json.dumps(dict(lineage), default=str)),
            metrics={k: float(v) for k, v in (metrics or {}).items()},
            code_version=code_version,
            created_at=_now(),
            parent=parent,
            weights_format=weights_format,
        )
        # Weights first, manifest last: the manifest is what makes the version exist.
        self.storage.put_bytes(self._mkey(name, f"v{number}", version.weights_file), data)
        self._write_json(self._mkey(name, f"v{number}", "manifest.json"), version.to_json())
        return version

    def _claim_version(self, name: str) -> int:
        """The next free version number, claimed atomically: `v<N>/claim.json` is created
        only if absent (local: symlink(2) fails on an existing name; S3: a conditional PUT),
        so concurrent savers (a drift sensor's several partitions, a manual retrain) never
        share a number; a loser tries N+1. A claimed version without a manifest (a writer
        that died) stays invisible and its number is not reused."""
        existing = self.versions(name)
        number = (existing[-1] if existing else 0) + 1
        claim = json.dumps({"claimed_at": _now(), "pid": os.getpid(), "host": os.uname().nodename}).encode()
        for _attempt in range(1000):
            if self.storage.put_new(self._mkey(name, f"v{number}", CLAIM), claim) is not None:
                return number
            number += 1
        raise CheckpointError(f"checkpoint {name!r}: could not claim a version number up to v{number}")

    def update_metrics(self, name: str, version: int, metrics: Mapping[str, float]) -> Version:
        """Record evaluation metrics on an existing version. The manifest is rewritten by
        compare-and-swap: concurrent updates all land, and a version that retention deleted
        meanwhile is not brought back (its manifest is gone: CheckpointError)."""
        added = {k: float(v) for k, v in metrics.items()}

        def attempt() -> tuple[ObjectInfo | None, bytes | None, Version]:
            old, info = self._manifest_for_update(name, version)
            new = Version(**{**asdict(old), "metrics": {**old.metrics, **added}})
            return info, _json_bytes(new.to_json()), new

        key = self._mkey(name, f"v{version}", "manifest.json")
        return self._compare_and_swap(key, attempt, f"metrics of checkpoint {name!r} v{version}")

    def load(self, name: str, version: int) -> Checkpoint:
        """The arrays of a version, after checking their sha256 against the manifest."""
        meta = self.manifest(name, version)
        if meta.weights_format not in weights_io.WEIGHTS_FORMATS:
            raise CorruptCheckpointError(
                name, version, meta.sha256, None,
                f"manifest.json names weights_format {meta.weights_format!r}; expected one of {list(weights_io.WEIGHTS_FORMATS)}",
            )
        try:
            data = self._read(self._mkey(name, f"v{version}", meta.weights_file))
        except ObjectNotFound:
            raise CorruptCheckpointError(name, version, meta.sha256, None, f"{meta.weights_file} is missing") from None
        except StorageError as exc:
            raise CorruptCheckpointError(name, version, meta.sha256, None, str(exc)) from None
        actual = sha256_bytes(data)
        if actual != meta.sha256:
            raise CorruptCheckpointError(name, version, meta.sha256, actual)
        try:
            arrays = weights_io.decode(data, meta.weights_format)
        except Exception as exc:  # checksum matched but the bytes are not a valid file of the format
            raise CorruptCheckpointError(
                name, version, meta.sha256, actual, f"not a valid {meta.weights_format}: {exc}"
            ) from None
        return Checkpoint(meta, arrays)

    def verify(self, name: str, version: int) -> bool:
        try:
            self.load(name, version)
            return True
        except CorruptCheckpointError:
            return False

    def latest_good(self, name: str, at_or_below: int | None = None) -> Checkpoint | None:
        """The newest version (at or below a bound) whose weights verify; corrupted ones are
        skipped with a CheckpointCorruptionWarning naming them."""
        return self._newest_good(name, at_or_below).checkpoint

    def _newest_good(self, name: str, at_or_below: int | None) -> Fallback:
        refused: list[CorruptCheckpointError] = []
        for number in reversed(self.versions(name)):
            if at_or_below is not None and number > at_or_below:
                continue
            try:
                return Fallback(self.load(name, number), refused)
            except CorruptCheckpointError as exc:
                refused.append(exc)
                _warn_refused(exc)
        return Fallback(None, refused)

    def load_usable(self, name: str) -> Fallback:
        """The promoted version if it verifies; otherwise the newest good version below it
        (or below the newest version when nothing is promoted). Refusals are returned so the
        caller can report them as events."""
        current = self.promoted(name)
        if current is None:
            return self._newest_good(name, None)
        return self._newest_good(name, current)

    def compare(self, name: str, a: int, b: int) -> Comparison:
        va, vb = self.manifest(name, a), self.manifest(name, b)
        metrics = {}
        for key in sorted(set(va.metrics) | set(vb.metrics)):
            x, y = va.metrics.get(key), vb.metrics.get(key)
            metrics[key] = {"a": x, "b": y, "delta": (y - x) if x is not None and y is not None else None}
        lineage = {
            key: {"a": va.lineage.get(key), "b": vb.lineage.get(key)}
            for key in sorted(set(va.lineage) | set(vb.lineage))
            if va.lineage.get(key) != vb.lineage.get(key)
        }
        return Comparison(va, vb, metrics, lineage, va.sha256 == vb.sha256, va.code_version != vb.code_version)

    # -- promotion --

    def _promotion_record(self, name: str) -> dict[str, Any]:
        return self._promotion_record_for_update(name)[0]

    def _promotion_record_for_update(self, name: str) -> tuple[dict[str, Any], ObjectInfo | None]:
        """The record and the stored write it came from (None: no record yet)."""
        try:
            raw, info = self.storage.read_bytes(self._mkey(name, "promoted.json"))
        except ObjectNotFound:
            return {"name": name, "current": None, "history": []}, None
        return json.loads(raw), info

    def promoted(self, name: str) -> int | None:
        return self._promotion_record(name).get("current")

    def promotion_history(self, name: str) -> list[dict[str, Any]]:
        return list(self._promotion_record(name).get("history", []))

    def predecessor(self, name: str) -> int | None:
        """The version promoted before the current one (what a plain rollback returns to).

        Versions that were rolled back from are not predecessors: see `_promotion_stack`."""
        stack = _promotion_stack(self.promotion_history(name))
        return stack[-2] if len(stack) >= 2 else None

    def promote(self, name: str, version: int, reason: str = "") -> Version:
        """Make `version` the promoted one. Refuses a corrupted version."""
        checkpoint = self.load(name, version)  # verifies
        self._set_current(name, "promote", lambda record: (version, reason), verified={version})
        return checkpoint.version

    def rollback(self, name: str, to: int | None = None, reason: str = "") -> Version:
        """Promote an earlier version: `to`, or the one promoted before the current one
        (decided on the record the rollback commits against, so racing writers cannot make
        it roll back from a version that is no longer current)."""
        listed: list[int] = []

        def choose(record: dict[str, Any]) -> tuple[int, str]:
            current = record.get("current")
            target = to
            if target is None:
                stack = _promotion_stack(record.get("history", []))
                if len(stack) < 2:
                    raise CheckpointError(
                        f"checkpoint {name!r} has no earlier promoted version to roll back to "
                        f"(current: {current}, history: {[e['version'] for e in record.get('history', [])]})"
                    )
                target = stack[-2]
            if not listed:
                listed.extend(self.versions(name))
            if target not in listed:
                raise CheckpointError(f"cannot roll {name!r} back to v{target}: versions are {listed}")
            return target, reason or f"rollback from v{current}"

        return self.manifest(name, self._set_current(name, "rollback", choose))

    def _set_current(
        self,
        name: str,
        action: str,
        choose: Callable[[dict[str, Any]], tuple[int, str]],
        verified: Iterable[int] = (),
    ) -> int:
        """Append one entry to the promotion record by compare-and-swap; returns the version.

        Each attempt re-reads the record, lets `choose` pick the version (and reason) from
        it, verifies that version's weights (once), and writes only if nobody changed the
        record meanwhile; a loser backs off and tries again on the new record. The entry
        carries an id, so an attempt that landed although its reply was lost (an S3 retry
        then sees 412) is recognised instead of appended twice."""
        entry_id = uuid.uuid4().hex
        checked = set(verified)

        def attempt() -> tuple[ObjectInfo | None, bytes | None, int]:
            record, info = self._promotion_record_for_update(name)
            history = record.setdefault("history", [])
            landed = next((e for e in history if e.get("id") == entry_id), None)
            if landed is not None:
                return None, None, int(landed["version"])
            version, reason = choose(record)
            if version not in checked:
                self.load(name, version)  # verifies: never promote or roll back onto corrupted weights
                checked.add(version)
            history.append(
                {"id": entry_id, "version": version, "action": action, "from": record.get("current"),
                 "reason": reason, "at": _now()}
            )
            record["current"] = version
            return info, _json_bytes(record), version

        return self._compare_and_swap(self._mkey(name, "promoted.json"), attempt, f"promotion record of {name!r}")

    def _compare_and_swap(self, key: str, attempt: Callable[[], tuple[ObjectInfo | None, bytes | None, Any]], what: str):
        """Run `attempt` (read, change: returns the write it read, the new bytes, a result)
        and write with `replace_if` until a write lands; jittered exponential backoff between
        tries, `CAS_ATTEMPTS` at most. New bytes of None: nothing to write."""
        first, longest = CAS_BACKOFF_S
        for n in range(CAS_ATTEMPTS):
            expected, data, result = attempt()
            if data is None or self.storage.replace_if(key, data, expected) is not None:
                return result
            time.sleep(random.uniform(0, min(longest, first * 2**n)))
        raise CheckpointError(
            f"{what}: gave up after {CAS_ATTEMPTS} compare-and-swap attempts; every time another "
            f"writer changed {self.storage.uri(key)} first. Retry when fewer writers race on it"
        )

    # -- retention --

    def apply_retention(self, name: str, keep: int) -> list[int]:
        """Delete all but the `keep` newest versions, never the promoted version or any
        version a rollback can return to (the promotion stack, not just the predecessor: after
        one rollback, the next returns to the one before). Returns the deleted version numbers."""
        if keep < 1:
            raise CheckpointError(f"retention keep={keep!r}; expected an integer >= 1")
        versions = self.versions(name)
        protected = {self.promoted(name), *_promotion_stack(self.promotion_history(name))} - {None}
        kept = set(versions[-keep:]) | protected
        deleted = [v for v in versions if v not in kept]
        for number in deleted:
            # Manifest first: the version disappears before its weights do. Each format's
            # file name is deleted (absent ones are no-ops), so a manifest that cannot be read
            # still leaves no weights behind.
            self.storage.delete(self._mkey(name, f"v{number}", "manifest.json"))
            for weights_format in weights_io.WEIGHTS_FORMATS:
                self.storage.delete(self._mkey(name, f"v{number}", "weights" + weights_io.suffix(weights_format)))
            self.storage.delete(self._mkey(name, f"v{number}", CLAIM))
        return deleted

    # -- intermediate progress (resumable training) --

    def save_progress(
        self, name: str, key: str, next_batch: int, arrays: Mapping[str, np.ndarray], state: Mapping[str, Any] | None = None,
        weights_format: str = weights_io.DEFAULT_FORMAT,
    ) -> None:
        """Record that training under `key` finished every batch before `next_batch`."""
        self._check_name(key, "progress key")
        data = weights_io.encode(arrays, weights_format, f"progress {name}/{key}")
        # Weights under a name tied to the batch, then the state that points at them, so a
        # kill between the two writes leaves the previous (consistent) progress in place.
        # The name's ending says the format (progress written before safetensors is .npz).
        weights_key = self._mkey(name, "_intermediate", key, f"weights-{next_batch:06d}{weights_io.suffix(weights_format)}")
        self.storage.put_bytes(weights_key, data)
        previous = self._progress_state(name, key)
        self._write_json(
            self._mkey(name, "_intermediate", key, "state.json"),
            {"next_batch": next_batch, "weights": weights_key, "sha256": sha256_bytes(data),
             "state": dict(state or {}), "at": _now()},
        )
        if previous and previous["weights"] != weights_key:
            self.storage.delete(previous["weights"])

    def _progress_state(self, name: str, key: str) -> dict[str, Any] | None:
        try:
            return json.loads(self._read(self._mkey(name, "_intermediate", key, "state.json")))
        except ObjectNotFound:
            return None

    def load_progress(self, name: str, key: str) -> Progress | None:
        """The latest intermediate checkpoint under `key`, or None (also when it fails its
        checksum, which is warned about: training then starts over)."""
        self._check_name(key, "progress key")
        state = self._progress_state(name, key)
        if state is None:
            return None
        try:
            data = self._read(state["weights"])
        except ObjectNotFound:
            return None
        except StorageError:  # unreadable intact: treated as failing its checksum below
            data = b""
        if sha256_bytes(data) != state["sha256"]:
            warnings.warn(
                f"intermediate checkpoint {name}/{key} at batch {state['next_batch']} fails its "
                "checksum; starting that training from the beginning",
                CheckpointCorruptionWarning,
                stacklevel=2,
            )
            return None
        arrays = weights_io.decode(data, weights_io.format_of(state["weights"]))
        return Progress(key, int(state["next_batch"]), arrays, dict(state.get("state") or {}))

    def clear_progress(self, name: str, key: str) -> None:
        self._check_name(key, "progress key")
        # The trailing '/': clearing 'run-a' must not clear 'run-a2'.
        for stored in self.storage.list_keys(self._mkey(name, "_intermediate", key) + "/"):
            self.storage.delete(stored)

    def _write_json(self, key: str, value: Any) -> None:
        self.storage.put_bytes(key, _json_bytes(value))


def _json_bytes(value: Any) -> bytes:
    return json.dumps(value, indent=2, sort_keys=True).encode()


def _promotion_stack(history: Iterable[Mapping[str, Any]]) -> list[int]:
    """The effective promotion stack replayed from the history, current version on top.

    A promotion pushes (unless it re-promotes the current version). A rollback pops: back
    to the newest stack entry equal to its target, or, for a target not on the stack, the
    rejected current version is popped and the target pushed. So after v1, v2, v3 and a
    rollback to v2, the stack is [v1, v2]: v3 is never a rollback target again."""
    stack: list[int] = []
    for entry in history:
        version = int(entry["version"])
        if entry.get("action") == "rollback":
            if version in stack:
                del stack[len(stack) - stack[::-1].index(version):]
                continue
            if stack:
                stack.pop()
        if not stack or stack[-1] != version:
            stack.append(version)
    return stack


def _warn_refused(exc: CorruptCheckpointError) -> None:
    message = f"refusing {exc}; falling back to an earlier good version"
    log.warning(message)
    warnings.warn(message, CheckpointCorruptionWarning, stacklevel=3)


def checkpoint_metadata(version: Version, site: str | None = None) -> dict[str, Any]:
    """Materialization metadata for a checkpoint asset: version, metrics, checksum, lineage."""
    out: dict[str, Any] = {
        "gravity/checkpoint": version.label,
        "checkpoint/version": version.version,
        "checkpoint/sha256": version.sha256,
        "checkpoint/size_bytes": version.size_bytes,
        "checkpoint/code_version": version.code_version,
        "checkpoint/weights_format": version.weights_format,
        "checkpoint/lineage": version.lineage,
    }
    if version.parent is not None:
        out["checkpoint/parent"] = version.parent
    for key, value in version.metrics.items():
        out[f"metric/{key}"] = float(value)
    if site is not None:
        out["gravity/site"] = site
    return out
