"""Nothing recorded is ever lost: a crash-consistency property test against a reference model.

In the style of ShardStore (SOSP'21): a Hypothesis state machine drives four sites' storage,
two local directories and two S3 prefixes on SeaweedFS (so replication crosses kinds), and
the checkpoint stores of one local and one S3 site, with random writes, overwrites (new
versions of one asset base), replications, concurrent writers with a concurrent reader,
promotes (also two at once), rollbacks, retention and garbage collection. It injects crashes
(tests/support/crash.py) at the k-th step boundary of an operation, k drawn by Hypothesis:

- in process, an exception before or after each `os.replace`/`os.symlink`/`os.fsync` of
  local storage and each PUT, upload, multipart call, abort or DELETE of the S3 client, and
  at every boundary after it (the process is going down: cleanup that needs them fails);
- a real SIGKILL for a few operations: a forked child runs it and kills itself at the k-th
  boundary, or once it is done, before anything is recorded.

The model plays Dagster's event log: an asset write is "commit in storage", then "record
the version's URI and sha256"; a crash between the two leaves no record. After each crash
the machine recovers (new storage and checkpoint store objects; a killed child's S3 client
dies with it; sometimes garbage collection of debris with `now` far in the future) and checks:

- every recorded version (the latest of each base, at its site and at its current replicas)
  reads back through the recorded key (`keys.recorded_key`) with its exact bytes;
- every object under a final name is whole: it verifies against its stored checksum, is one
  payload the test wrote for that base, and a version's bytes hash to the sha256 its key
  names; no final name links to nothing;
- garbage collection within the grace period removes nothing; past it, it removes exactly
  the superseded versions of recorded bases and all debris (temporary files, orphaned data
  files, incomplete uploads), never a recorded version or a current replica;
- checkpoints: the versions listed (by exact name: `churn` and `churn-eu` side by side), the
  promotion history (one linear chain, also under concurrent promotes), promoted and
  rollback targets loadable with their weights, retention deleting exactly what the model
  says and never the promoted version or one a rollback can return to (the promotion stack).

The asset write/read protocol is `VersionProtocol`, so the same machine can run against
another one (an adapter subclass).

Runtime: by default 40 examples of up to 30 steps, about a minute on two busy cores. For a
longer search set `GRAVITY_PROPERTY_EXAMPLES` (e.g. 500) and optionally
`GRAVITY_PROPERTY_STEPS` (e.g. 50); the pytest timeout grows with them.
`GRAVITY_PROPERTY_SHRINK=0` reports a failure as found, without minimizing it (which can
take minutes). With `CI` set the run is derandomized (the same examples every time). The
counts of what a run did (crashes by boundary, kills, recoveries) are printed (`-s`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

import dagster_gravity.storage.local as local_storage
from dagster_gravity.checkpoints import CheckpointError, CheckpointStore
from dagster_gravity.storage import LocalSiteStorage, S3Options, S3SiteStorage, replicate
from dagster_gravity.storage.s3 import make_client
from tests.support.crash import FAULTS, Checkpoints, Crash, FaultyClient, FaultyOS, Record, promotion_stack, run_killed

EXAMPLES = int(os.environ.get("GRAVITY_PROPERTY_EXAMPLES", "40"))
STEPS = int(os.environ.get("GRAVITY_PROPERTY_STEPS", "30"))
# GRAVITY_PROPERTY_SHRINK=0 reports a failure as found (shrinking one can take minutes).
NO_SHRINK = {"phases": [Phase.explicit, Phase.reuse, Phase.generate]}
SHRINK = {} if os.environ.get("GRAVITY_PROPERTY_SHRINK") != "0" else NO_SHRINK
SETTINGS = settings(
    max_examples=EXAMPLES,
    stateful_step_count=STEPS,
    deadline=None,
    derandomize=bool(os.environ.get("CI")),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    **SHRINK,
)

SITES = {"disk-a": "local", "disk-b": "local", "cloud-a": "s3", "cloud-b": "s3"}
CHECKPOINT_SITES = ("disk-a", "cloud-a")
MODELS = ("churn", "churn-eu")  # one name a prefix of the other
BASES = {"raw/events": ".parquet", "raw/events-eu": ".parquet", "features/2024-01-01": ".npy"}
MIB = 2**20
PART = 5 * MIB  # SeaweedFS's smallest multipart part: a LARGE payload goes into S3 in two
LARGE = PART + 3
MAX_KILLS = 3  # forked, killed writers per example (each costs a fork and fresh clients)
LATER = 30 * 24 * 3600.0  # "now" for garbage collection: every grace period has passed
STATS: Counter = Counter()  # what the run did: crashes by boundary, kills, recoveries (printed)
S3_OPTIONS = S3Options(connect_timeout_s=5, read_timeout_s=30, max_attempts=2)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Large(bytes):
    """A large payload that prints as how it was made, not as 5 MiB of bytes."""

    def __repr__(self) -> str:
        return f"large({self[0] - 65})"


def large(i: int) -> bytes:
    return Large(bytes([65 + i]) * LARGE)


small = st.binary(max_size=24)
# One in five payloads is large (over the multipart part size); it shrinks to small.
payloads = st.tuples(st.integers(0, 4), small, st.integers(0, 2)).map(lambda t: large(t[2]) if t[0] == 4 else t[1])
# No crash, a crash early in the operation (S3 writes have few boundaries), or anywhere.
crash_points = st.one_of(st.none(), st.integers(0, 3), st.integers(0, 11))
checkpoint_crash_points = st.one_of(st.none(), st.integers(0, 5), st.integers(0, 23))
weights = st.lists(st.integers(-3, 3), min_size=1, max_size=3)


class VersionProtocol:
    """Today's asset protocol (storage/__init__.py): each write a new immutable version
    under a content-derived key, reads through the key the record names. (Its imports are
    local so that an adapter can run the machine on code that lacks them.)"""

    collects_garbage = True

    def write(self, storage, base: str, data: bytes, ext: str):
        return storage.put_version(base, data, ext)

    def read_key(self, base: str, sha256: str, uri: str) -> str:
        from dagster_gravity.storage.keys import recorded_key

        return recorded_key(base, sha256, uri)

    def parse(self, key: str) -> tuple[str, str | None] | None:
        """(base, sha256 the key names or None) of an asset object's key."""
        from dagster_gravity.storage.base import parse_version_key

        parsed = parse_version_key(key)
        return (parsed[0], parsed[1]) if parsed else None

    def stored_versions(self, storage, base: str) -> list[str]:
        return [v.key for v in storage.list_versions(base)]

    def collect(self, storage, recorded: dict[str, Record], now: float) -> list[str]:
        """Garbage-collect superseded versions and debris as `gravity gc` does at `now`."""
        from dagster_gravity.storage import gc

        latest = {base: gc.RecordedVersion(r.key, r.recorded_at) for base, r in recorded.items()}
        report = gc.collect_versions(storage, latest, now=now).merge(gc.collect_debris(storage, now=now))
        assert report.errors == []
        return [item.uri for item in report.removed]


class CrashConsistency(RuleBasedStateMachine):
    protocol = VersionProtocol()
    workdir: Path  # set by the test
    endpoint_url: str
    bucket: str
    clients: dict  # site -> S3 client, shared by the examples of one run

    def __init__(self):
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="example-", dir=self.workdir))
        self.s3_prefix = f"example-{uuid.uuid4().hex[:12]}"
        self.records: dict[str, list[Record]] = {}  # base -> its materializations, oldest first
        self.written: dict[str, dict[str, bytes]] = {base: {} for base in BASES}  # every payload tried
        self.models = {(site, name): Checkpoints() for site in CHECKPOINT_SITES for name in MODELS}
        self.kills = 0
        self.open_sites()

    # -- storage as a (re)started process makes it ---------------------------------------

    def storage(self, site: str, *, fresh_client: bool = False):
        """A new storage object for `site`. S3 sites share one client per test run (a
        client keeps nothing but connections, and building one costs ~0.1 s), except in a
        forked child, which must not use its parent's connections."""
        if SITES[site] == "local":
            return LocalSiteStorage(site, self.dir / site)
        if fresh_client or site not in self.clients:
            client = make_client(self.endpoint_url, None, S3_OPTIONS)
            if fresh_client:
                return self._s3(site, client)
            self.clients[site] = client
        return self._s3(site, self.clients[site])

    def _s3(self, site: str, client):
        return S3SiteStorage(site, bucket=self.bucket, prefix=f"{self.s3_prefix}/{site}",
                             endpoint_url=self.endpoint_url, options=S3_OPTIONS, client=FaultyClient(client))

    def open_sites(self) -> None:
        self.sites = {site: self.storage(site) for site in SITES}
        self.stores = {site: CheckpointStore(self.sites[site]) for site in CHECKPOINT_SITES}

    def latest(self, base: str) -> Record | None:
        history = self.records.get(base)
        return history[-1] if history else None

    def record(self, base: str, site: str, info) -> None:
        """What Dagster does after the step's storage commit: record URI and sha256."""
        data = self.written[base][info.sha256]
        self.records.setdefault(base, []).append(Record(site, self.protocol.read_key(base, info.sha256, info.uri),
                                                        info.uri, info.sha256, data, time.time()))

    @staticmethod
    def attempt(crash: int | None, operation, what: str):
        """(result, crashed): `operation()` with a crash armed at boundary `crash`."""
        FAULTS.arm(crash)
        try:
            return operation(), False
        except Crash:
            STATS[f"{what} crashed {FAULTS.crashed}"] += 1
            return None, True
        finally:
            FAULTS.disarm()

    def recover(self, collect: bool, settle=None) -> None:
        """After a crash: new storage objects; `settle` lets the model learn what the crashed
        operation finished (checkpoint stores record their own state); optionally collect
        debris as if much later; then check everything."""
        STATS["recoveries"] += 1
        self.open_sites()
        if settle is not None:
            settle()
        if collect and self.protocol.collects_garbage:
            for storage in self.sites.values():
                self.protocol.collect(storage, self.recorded(), time.time() + LATER)
            self.check_no_debris()
        self.check_everything()

    def recorded(self) -> dict[str, Record]:
        return {base: history[-1] for base, history in self.records.items()}

    # -- assets --------------------------------------------------------------------------

    def do_write(self, base: str, site: str, data: bytes, crash: int | None) -> object:
        """Commit a new version of `base` (an overwrite when it has one); None if it crashed."""
        self.written[base][sha(data)] = data
        write = lambda: self.protocol.write(self.sites[site], base, data, BASES[base])
        info, crashed = self.attempt(crash, write, "write")
        if crashed:
            return None
        assert info.sha256 == sha(data) and info.size_bytes == len(data)
        return info

    def do_replicate(self, base: str, source: int, into: str, crash: int | None) -> bool:
        """Copy the recorded version from its site or a current replica; False if it crashed."""
        latest = self.latest(base)
        src = sorted(latest.holders)[source % len(latest.holders)]
        copy = lambda: replicate(self.sites[src], self.sites[into], latest.key, latest.sha256, part_size=PART)
        result, crashed = self.attempt(crash, copy, "replication")
        if not crashed:
            assert result.replica.sha256 == latest.sha256 and result.replica.key == latest.key
        return not crashed

    def recorded_base(self, pick: int) -> str:
        """A recorded base; the largest recorded version first, so that replications into
        S3 often go multipart (and a killed one leaves an incomplete upload behind)."""
        bases = sorted(self.records, key=lambda base: (-len(self.latest(base).data), base))
        return bases[pick % len(bases)]

    @rule(base=st.sampled_from(sorted(BASES)), site=st.sampled_from(sorted(SITES)), data=payloads)
    def write(self, base, site, data):
        """A step writes a new version, then Dagster records it."""
        self.record(base, site, self.do_write(base, site, data, None))
        STATS["recorded writes"] += 1

    @rule(base=st.sampled_from(sorted(BASES)), site=st.sampled_from(sorted(SITES)), data=payloads,
          crash=crash_points, collect=st.booleans())
    def crashed_write(self, base, site, data, crash, collect):
        """A write that crashes at boundary `crash`, or (None, or a point past its last
        boundary) after its storage commit, before the record: nothing is recorded."""
        self.do_write(base, site, data, crash)
        self.recover(collect)

    @precondition(lambda self: self.records)
    @rule(pick=st.integers(0, 2), source=st.integers(0, 3), into=st.sampled_from(sorted(SITES)))
    def replicate(self, pick, source, into):
        """A step elsewhere copies the recorded version; Dagster records the replica."""
        base = self.recorded_base(pick)
        assert self.do_replicate(base, source, into, None)
        self.latest(base).replicas.add(into)
        STATS["recorded replicas"] += 1

    @precondition(lambda self: self.records)
    @rule(pick=st.integers(0, 2), source=st.integers(0, 3), into=st.sampled_from(sorted(SITES)),
          crash=crash_points, collect=st.booleans())
    def crashed_replication(self, pick, source, into, crash, collect):
        """A replication that crashes at boundary `crash`, or before its replica is recorded."""
        self.do_replicate(self.recorded_base(pick), source, into, crash)
        self.recover(collect)

    @precondition(lambda self: any(len(r.data) >= PART for r in self.recorded().values()))
    @rule(into=st.sampled_from([s for s in sorted(SITES) if SITES[s] == "s3"]), source=st.integers(0, 3),
          crash=st.integers(0, 7), collect=st.booleans())
    def crashed_multipart_replication(self, into, source, crash, collect):
        """A large version's replication into S3 (a multipart upload: create, two parts,
        complete) crashing at `crash`: the upload it began is invisible, and debris."""
        base = self.recorded_base(0)  # the largest recorded version
        self.do_replicate(base, source, into, crash)
        self.recover(collect)

    @rule(base=st.sampled_from(sorted(BASES)), sites=st.tuples(*[st.sampled_from(sorted(SITES))] * 2),
          data=st.tuples(payloads, payloads), first=st.sampled_from([0, 1]))
    def concurrent_writes(self, base, sites, data, first):
        """Two writers of one base at once (while a reader reads the recorded version), then
        their records in either order: both versions stay readable, and the latest."""
        for item in data:
            self.written[base][sha(item)] = item
        before = self.latest(base)
        barrier = threading.Barrier(3)
        results: list = [None, None]
        failures: list[BaseException] = []
        done = threading.Event()

        def writer(i: int) -> None:
            try:
                barrier.wait()
                results[i] = self.protocol.write(self.sites[sites[i]], base, data[i], BASES[base])
            except BaseException as exc:  # noqa: BLE001 - reported below
                failures.append(exc)

        def reader() -> None:
            barrier.wait()
            while True:
                finished = done.is_set()
                if before is not None:
                    try:
                        got, _ = self.sites[before.site].read_bytes(before.key, before.sha256)
                        assert got == before.data, "the recorded version changed under a reader"
                    except BaseException as exc:  # noqa: BLE001 - reported below
                        failures.append(exc)
                        return
                if finished:
                    return

        threads = [threading.Thread(target=writer, args=(i,)) for i in (0, 1)] + [threading.Thread(target=reader)]
        for thread in threads:
            thread.start()
        for thread in threads[:2]:
            thread.join(60)
        done.set()
        threads[2].join(60)
        assert not failures, f"concurrent writers or their reader failed: {failures!r}"
        for i in (first, 1 - first):
            self.record(base, sites[i], results[i])
        STATS["concurrent writes"] += 1
        for i in (0, 1):  # both committed versions, not only the latest record, stay readable
            key = self.protocol.read_key(base, results[i].sha256, results[i].uri)
            assert self.sites[sites[i]].read_bytes(key, results[i].sha256)[0] == data[i]

    @precondition(lambda self: self.kills < MAX_KILLS)
    @rule(base=st.sampled_from(sorted(BASES)), site=st.sampled_from(sorted(SITES)), data=payloads,
          point=crash_points, collect=st.booleans())
    def killed_write(self, base, site, data, point, collect):
        """A writer process SIGKILLed at boundary `point`, or after its commit: no record."""
        self.kills += 1
        STATS["killed writers"] += 1
        self.written[base][sha(data)] = data
        run_killed(point, lambda: self.protocol.write(self.storage(site, fresh_client=True), base, data, BASES[base]))
        self.recover(collect)

    @precondition(lambda self: self.kills < MAX_KILLS and self.records)
    @rule(pick=st.integers(0, 2), source=st.integers(0, 3), into=st.sampled_from(sorted(SITES)),
          point=crash_points, collect=st.booleans())
    def killed_replication(self, pick, source, into, point, collect):
        """A replicating process SIGKILLed at boundary `point`, or before recording the replica."""
        latest = self.latest(self.recorded_base(pick))
        self.kills += 1
        STATS["killed replications"] += 1
        src = sorted(latest.holders)[source % len(latest.holders)]
        fresh = lambda site: self.storage(site, fresh_client=True)
        run_killed(point, lambda: replicate(fresh(src), fresh(into), latest.key, latest.sha256,
                                            part_size=PART))
        self.recover(collect)

    @rule(aged=st.booleans())
    def collect_garbage(self, aged):
        """`gravity gc`: now (everything is inside the grace period: nothing goes) or much
        later (exactly the superseded versions of recorded bases and all debris go)."""
        if not self.protocol.collects_garbage:
            return
        recorded = self.recorded()
        before = {(site, base): self.protocol.stored_versions(storage, base)
                  for site, storage in self.sites.items() for base in BASES}
        for storage in self.sites.values():
            removed = self.protocol.collect(storage, recorded, time.time() + (LATER if aged else 0))
            assert aged or removed == [], f"garbage collection inside the grace period removed {removed}"
            STATS["objects garbage-collected"] += len(removed)
        for (site, base), keys in before.items():
            after = self.protocol.stored_versions(self.sites[site], base)
            if not aged or base not in recorded:
                assert after == keys, f"{base} at {site}: {keys} became {after}"
            else:
                assert after == [k for k in keys if k == recorded[base].key], f"{base} at {site}: {keys} -> {after}"
        if aged:
            self.check_no_debris()

    # -- checkpoints ---------------------------------------------------------------------

    @initialize(counts=st.tuples(*[st.integers(0, 2)] * (len(CHECKPOINT_SITES) * len(MODELS))))
    def seed_checkpoints(self, counts):
        """Start with a few saved versions, so promotions and retention have work."""
        for (site, name), count in zip(sorted(self.models), counts):
            for i in range(count):
                self.save(site, name, [i])

    def settle_checkpoints(self, site: str, name: str, tried: list[int] | None = None,
                           entry: tuple[str, int] | None = None, deleting: list[int] = ()) -> None:
        """After a crashed checkpoint operation: learn from the store whether it finished.
        A save adds at most one version, newer than all; a promotion at most its entry; a
        retention deletes some of what it set out to delete."""
        model, store = self.models[(site, name)], self.stores[site]
        listed = store.versions(name)
        new = sorted(set(listed) - set(model.versions))
        gone = sorted(set(model.versions) - set(listed))
        assert set(gone) <= set(deleting), f"{name} at {site}: versions {gone} vanished in a crash"
        for number in gone:
            del model.versions[number]
            model.deleted.add(number)
        assert len(new) <= (1 if tried is not None else 0), f"{name} at {site}: unexpected new versions {new}"
        for number in new:
            assert number > max(model.versions, default=0) and number not in model.deleted
            loaded = store.load(name, number)
            assert loaded.arrays["w"].tolist() == tried
            model.versions[number] = (loaded.version.sha256, tried)
        history = [(e["action"], e["version"]) for e in store.promotion_history(name)]
        allowed = [model.history] + ([model.history + [entry]] if entry else [])
        assert history in allowed, f"{name} at {site}: history {history}, expected one of {allowed}"
        model.history = history

    def candidate(self, model: Checkpoints, pick: int) -> int:
        """A version number: a finished one, a deleted one, or one never finished."""
        known = set(model.versions) | model.deleted
        numbers = sorted(known | {max(known, default=0) + 1})
        return numbers[pick % len(numbers)]

    def rollback_target(self, model: Checkpoints, to: int | None) -> int | None:
        return model.predecessor if to is None else self.candidate(model, to)

    @rule(site=st.sampled_from(CHECKPOINT_SITES), name=st.sampled_from(MODELS), w=weights)
    def save(self, site, name, w):
        model = self.models[(site, name)]
        version = self.stores[site].save(name, {"w": np.array(w, dtype=np.int64)}, lineage={"w": w})
        assert version.version > max(model.versions, default=0) and version.version not in model.deleted
        model.versions[version.version] = (version.sha256, w)

    @rule(site=st.sampled_from(CHECKPOINT_SITES), name=st.sampled_from(MODELS), pick=st.integers(0, 7))
    def promote(self, site, name, pick):
        """Promote a finished version; a deleted or never finished one is refused."""
        model = self.models[(site, name)]
        number = self.candidate(model, pick)
        if number not in model.versions:
            with pytest.raises(CheckpointError):
                self.stores[site].promote(name, number)
            return
        assert self.stores[site].promote(name, number).version == number
        model.history.append(("promote", number))
        STATS["promotions"] += 1

    @rule(site=st.sampled_from(CHECKPOINT_SITES), name=st.sampled_from(MODELS),
          to=st.one_of(st.none(), st.integers(0, 7)))
    def rollback(self, site, name, to):
        """Roll back to the predecessor (`to` None) or a chosen version; refused when it is
        not there (nothing promoted before, deleted by retention, never finished)."""
        model = self.models[(site, name)]
        target = self.rollback_target(model, to)
        if target not in model.versions:
            with pytest.raises(CheckpointError):
                self.stores[site].rollback(name, None if to is None else target)
            return
        assert self.stores[site].rollback(name, None if to is None else target).version == target
        model.history.append(("rollback", target))
        STATS["rollbacks"] += 1

    @rule(site=st.sampled_from(CHECKPOINT_SITES), name=st.sampled_from(MODELS), keep=st.integers(1, 3))
    def retention(self, site, name, keep):
        model = self.models[(site, name)]
        expected = model.retention(keep)
        deleted = self.stores[site].apply_retention(name, keep)
        assert deleted == expected, f"retention keep={keep} deleted {deleted}, expected {expected}"
        for number in deleted:
            del model.versions[number]
            model.deleted.add(number)
        STATS["checkpoint versions deleted by retention"] += len(deleted)
        for protected in {model.current, *promotion_stack(model.history)}:  # still there, weights intact
            if protected is not None:
                assert self.stores[site].load(name, protected).version.sha256 == model.versions[protected][0]

    @rule(op=st.sampled_from(["save", "promote", "rollback", "retention"]), site=st.sampled_from(CHECKPOINT_SITES),
          name=st.sampled_from(MODELS), w=weights, pick=st.one_of(st.none(), st.integers(0, 7)),
          crash=checkpoint_crash_points, collect=st.booleans())
    def crashed_checkpoint_operation(self, op, site, name, w, pick, crash, collect):
        """A save, promote, rollback (to the predecessor when `pick` is None) or retention
        (keep 1) that crashes at boundary `crash`; the store's own records then say whether
        it finished, and they must say one of the two."""
        model, store = self.models[(site, name)], self.stores[site]
        settle: dict = {}
        if op == "save":
            operation = lambda: store.save(name, {"w": np.array(w, dtype=np.int64)}, lineage={"w": w})
            settle["tried"] = w
        elif op == "retention":
            operation = lambda: store.apply_retention(name, 1)
            settle["deleting"] = model.retention(1)
        else:
            number = self.candidate(model, pick or 0) if op == "promote" else self.rollback_target(model, pick)
            if number not in model.versions:
                return  # refused before it writes anything (see promote and rollback)
            if op == "promote":
                operation = lambda: store.promote(name, number)
            else:
                operation = lambda: store.rollback(name, None if pick is None else number)
            settle["entry"] = (op, number)
        self.attempt(crash, operation, op)
        self.recover(collect, lambda: self.settle_checkpoints(site, name, **settle))

    @rule(site=st.sampled_from(CHECKPOINT_SITES), name=st.sampled_from(MODELS),
          picks=st.tuples(st.integers(0, 7), st.integers(0, 7)))
    def concurrent_promotes(self, site, name, picks):
        """Two promotes at once (two processes' stores): both land, in some order."""
        model = self.models[(site, name)]
        if not model.versions:
            return
        numbers = [sorted(model.versions)[p % len(model.versions)] for p in picks]
        stores = [CheckpointStore(self.storage(site)) for _ in numbers]
        failures: list[BaseException] = []
        barrier = threading.Barrier(2)

        def promote(i: int) -> None:
            try:
                barrier.wait()
                stores[i].promote(name, numbers[i])
            except BaseException as exc:  # noqa: BLE001 - reported below
                failures.append(exc)

        threads = [threading.Thread(target=promote, args=(i,)) for i in (0, 1)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert not failures, f"concurrent promotes failed: {failures!r}"
        history = [(e["action"], e["version"]) for e in self.stores[site].promotion_history(name)]
        added = history[len(model.history):]
        assert history[: len(model.history)] == model.history and sorted(added) == sorted(
            ("promote", n) for n in numbers
        ), f"{name} at {site}: history {history} after promoting {numbers} on {model.history}"
        model.history = history
        STATS["concurrent promotes"] += 1

    # -- checks --------------------------------------------------------------------------

    @invariant()
    def recorded_versions_are_readable(self):
        for base, latest in self.recorded().items():
            for site in sorted(latest.holders):
                key = self.protocol.read_key(base, latest.sha256, latest.uri)
                data, _ = self.sites[site].read_bytes(key, latest.sha256)
                assert data == latest.data, f"{base} at {site}: the recorded version reads other bytes"

    def check_everything(self) -> None:
        self.recorded_versions_are_readable()
        for site, storage in self.sites.items():
            for key in storage.list_keys(""):
                data, info = storage.read_bytes(key)  # verified against its stored checksum
                if key.startswith("checkpoints/"):
                    if key.endswith(".json"):
                        json.loads(data)
                    continue
                parsed = self.protocol.parse(key)
                assert parsed is not None and parsed[0] in BASES, f"{key} at {site}: not an object the test wrote"
                base, named = parsed
                assert named is None or sha(data) == named, f"{key} at {site}: bytes do not hash to the key's sha256"
                assert self.written[base].get(sha(data)) == data, f"{key} at {site}: not a whole payload of {base}"
            for base in BASES:
                for key in self.protocol.stored_versions(storage, base):
                    assert self.protocol.parse(key)[0] == base, f"{base} at {site} lists {key}"
            if isinstance(storage, LocalSiteStorage) and storage.root.exists():
                for path in storage.root.rglob("*"):
                    if path.is_symlink() and not path.name.startswith("."):
                        assert path.exists(), f"{path}: a final name that links to nothing"
        for (site, name), model in self.models.items():
            self.check_checkpoints(site, name, model)

    def check_checkpoints(self, site: str, name: str, model: Checkpoints) -> None:
        store = self.stores[site]
        assert store.versions(name) == sorted(model.versions), f"{name} at {site}"
        for number, (sha256, w) in model.versions.items():
            loaded = store.load(name, number)
            assert loaded.version.sha256 == sha256 and loaded.arrays["w"].tolist() == w
        history = [(e["action"], e["version"]) for e in store.promotion_history(name)]
        assert history == model.history, f"{name} at {site}: history {history}, model {model.history}"
        assert store.promoted(name) == model.current and store.predecessor(name) == model.predecessor
        if model.current is not None:
            assert model.current in model.versions, f"{name} at {site}: promoted v{model.current} is gone"

    def check_no_debris(self) -> None:
        for site, storage in self.sites.items():
            if isinstance(storage, LocalSiteStorage):
                for path in storage.root.rglob(".*") if storage.root.exists() else []:
                    assert ".tmp-" not in path.name, f"{path}: a temporary file survived garbage collection"
                    if ".obj-" in path.name:
                        link = path.with_name(path.name[1:].split(".obj-")[0])
                        assert link.is_symlink() and os.readlink(link) == path.name, f"{path}: an orphan survived"
            else:
                uploads = storage.client.list_multipart_uploads(Bucket=self.bucket, Prefix=storage.prefix + "/")
                assert not uploads.get("Uploads"), f"{site}: incomplete uploads survived: {uploads['Uploads']}"

    def teardown(self):
        try:
            if sys.exc_info()[1] is None:  # after a failed step, report that failure alone
                self.recover(collect=True)  # and whatever killed writers left is collected
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)
            client = self.sites["cloud-a"].client
            uploads = client.list_multipart_uploads(Bucket=self.bucket, Prefix=self.s3_prefix + "/")
            for upload in uploads.get("Uploads", []):
                client.abort_multipart_upload(Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"])
            pages = client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self.s3_prefix + "/")
            for page in pages:
                if page.get("Contents"):
                    objects = [{"Key": item["Key"]} for item in page["Contents"]]
                    client.delete_objects(Bucket=self.bucket, Delete={"Objects": objects, "Quiet": True})


@pytest.mark.slow
@pytest.mark.timeout(max(300, EXAMPLES * STEPS))
def test_nothing_recorded_is_lost(seaweedfs, tmp_path, monkeypatch):
    monkeypatch.setattr(local_storage, "os", FaultyOS())
    monkeypatch.setattr(CrashConsistency, "workdir", tmp_path, raising=False)
    monkeypatch.setattr(CrashConsistency, "endpoint_url", seaweedfs.endpoint_url, raising=False)
    monkeypatch.setattr(CrashConsistency, "clients", {}, raising=False)
    bucket = seaweedfs.make_bucket(f"crash-{uuid.uuid4().hex[:8]}")
    monkeypatch.setattr(CrashConsistency, "bucket", bucket, raising=False)
    STATS.clear()
    run_state_machine_as_test(CrashConsistency, settings=SETTINGS)
    print("crash consistency:", ", ".join(f"{n} {what}" for what, n in sorted(STATS.items())))
