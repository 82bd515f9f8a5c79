"""CheckpointStore: versions, verification, fallback, promotion, rollback, retention."""

from __future__ import annotations

import json

import numpy as np
import pytest

from dagster_gravity.checkpoints import (
    CheckpointCorruptionWarning,
    CheckpointError,
    CheckpointStore,
    CorruptCheckpointError,
    checkpoint_metadata,
)


@pytest.fixture
def store(tmp_path):
    return CheckpointStore.local(tmp_path / "site")


def arrays(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"coef": rng.normal(size=(1, 4)), "intercept": rng.normal(size=1)}


def save(store, seed, **metrics):
    return store.save(
        "m", arrays(seed), lineage={"partitions": [f"2026-01-0{seed}"], "features": "f1"},
        metrics=metrics or {"auc": 0.5 + seed / 100}, code_version="c1",
    )


def visible_names(folder):
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))


def corrupt(store_root, version):
    path = store_root / "checkpoints" / "m" / f"v{version}" / "weights.safetensors"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_save_writes_the_documented_layout_and_loads_verified(store, tmp_path):
    v = save(store, 1)
    assert v.version == 1 and len(v.sha256) == 64
    vdir = tmp_path / "site" / "checkpoints" / "m" / "v1"
    assert visible_names(vdir) == ["claim.json", "manifest.json", "weights.safetensors"]
    # the site storage's layout: each name links to its data, checksum recorded (as on S3)
    info = store.storage.head("checkpoints/m/v1/weights.safetensors")
    assert info.sha256 == v.sha256 and (vdir / "weights.safetensors").is_symlink()
    manifest = json.loads((vdir / "manifest.json").read_text())
    assert manifest["sha256"] == v.sha256 and manifest["lineage"]["features"] == "f1"
    assert manifest["weights_format"] == "safetensors"
    # a plain safetensors file: any safetensors reader gets the arrays back
    from safetensors.numpy import load_file
    np.testing.assert_array_equal(load_file(vdir / "weights.safetensors")["coef"], arrays(1)["coef"])
    assert manifest["code_version"] == "c1" and manifest["created_at"]
    loaded = store.load("m", 1)
    np.testing.assert_array_equal(loaded.arrays["coef"], arrays(1)["coef"])
    assert save(store, 2).version == 2
    assert store.versions("m") == [1, 2]


def test_a_version_without_manifest_is_invisible(store, tmp_path):
    save(store, 1)
    half = tmp_path / "site" / "checkpoints" / "m" / "v2"
    half.mkdir()
    (half / "weights.safetensors").write_bytes(b"partial")
    assert store.versions("m") == [1]
    assert save(store, 2).version == 2  # the unfinished v2 is overwritten, not trusted


def test_corrupted_checkpoint_is_refused_and_previous_good_one_used(store, tmp_path):
    save(store, 1)
    save(store, 2)
    store.promote("m", 2)
    corrupt(tmp_path / "site", 2)
    with pytest.raises(CorruptCheckpointError, match=r"'m' v2 is corrupted.*manifest expects sha256"):
        store.load("m", 2)
    with pytest.warns(CheckpointCorruptionWarning, match="v2 is corrupted"):
        fallback = store.load_usable("m")
    assert fallback.checkpoint.version.version == 1
    assert [e.version for e in fallback.refused] == [2]
    with pytest.warns(CheckpointCorruptionWarning):
        assert store.latest_good("m").version.version == 1
    with pytest.raises(CorruptCheckpointError):
        store.promote("m", 2)


def test_npz_with_objects_is_refused_not_unpickled(store, tmp_path):
    # A manifest whose checksum matches bytes that need pickle to load: still refused.
    import hashlib, io
    buf = io.BytesIO()
    np.savez(buf, coef=np.array([{"x": 1}], dtype=object))
    data = buf.getvalue()
    v = save(store, 1)
    # written through the storage, so every storage-level checksum matches too
    site = store.storage
    site.put_bytes("checkpoints/m/v1/weights.npz", data)
    manifest = json.loads(site.read_bytes("checkpoints/m/v1/manifest.json")[0])
    manifest["sha256"] = hashlib.sha256(data).hexdigest()
    manifest["weights_format"] = "npz"
    site.put_bytes("checkpoints/m/v1/manifest.json", json.dumps(manifest).encode())
    with pytest.raises(CorruptCheckpointError, match="not a valid npz"):
        store.load("m", v.version)


def test_promote_and_rollback_restore_earlier_versions(store):
    for seed in (1, 2, 3):
        save(store, seed)
    assert store.promoted("m") is None
    store.promote("m", 1)
    store.promote("m", 3)
    assert store.promoted("m") == 3 and store.predecessor("m") == 1
    restored = store.rollback("m")
    assert restored.version == 1 and store.promoted("m") == 1
    np.testing.assert_array_equal(store.load("m", store.promoted("m")).arrays["coef"], arrays(1)["coef"])
    store.rollback("m", to=2)
    assert store.promoted("m") == 2
    assert [e["action"] for e in store.promotion_history("m")] == ["promote", "promote", "rollback", "rollback"]
    with pytest.raises(CheckpointError, match="versions are"):
        store.rollback("m", to=9)


def test_rollback_without_history_says_why(store):
    save(store, 1)
    store.promote("m", 1)
    with pytest.raises(CheckpointError, match="no earlier promoted version"):
        store.rollback("m")


def test_retention_never_deletes_promoted_or_its_predecessor(store):
    for seed in range(1, 8):
        save(store, seed)
    store.promote("m", 2)
    store.promote("m", 3)
    deleted = store.apply_retention("m", keep=2)
    assert deleted == [1, 4, 5]
    assert store.versions("m") == [2, 3, 6, 7]
    assert store.rollback("m").version == 2  # the predecessor survived and still verifies
    with pytest.raises(CheckpointError, match="keep=0"):
        store.apply_retention("m", keep=0)


def test_compare_reports_metric_deltas_and_lineage_changes(store):
    save(store, 1, auc=0.7, loss=0.5)
    save(store, 2, auc=0.8, loss=0.4)
    cmp = store.compare("m", 1, 2)
    assert cmp.metrics["auc"]["delta"] == pytest.approx(0.1)
    assert cmp.better("auc") is True and cmp.better("loss", higher_is_better=False) is True
    assert cmp.lineage_changes == {"partitions": {"a": ["2026-01-01"], "b": ["2026-01-02"]}}
    assert not cmp.same_weights and not cmp.code_changed


def test_progress_roundtrip_and_corrupt_progress_starts_over(store, tmp_path):
    assert store.load_progress("m", "run-a") is None
    store.save_progress("m", "run-a", 3, arrays(1), {"seen": 30})
    store.save_progress("m", "run-a", 6, arrays(2), {"seen": 60})
    progress = store.load_progress("m", "run-a")
    assert progress.next_batch == 6 and progress.state == {"seen": 60}
    inter = tmp_path / "site" / "checkpoints" / "m" / "_intermediate" / "run-a"
    assert visible_names(inter) == ["state.json", "weights-000006.safetensors"]
    (inter / "weights-000006.safetensors").write_bytes(b"garbage")
    with pytest.warns(CheckpointCorruptionWarning, match="starting that training from the beginning"):
        assert store.load_progress("m", "run-a") is None
    store.clear_progress("m", "run-a")
    assert not any(inter.iterdir())


def test_checkpoint_metadata_surfaces_version_metrics_and_checksum(store):
    v = save(store, 1, auc=0.9)
    meta = checkpoint_metadata(v, site="onprem-dc")
    assert meta["checkpoint/version"] == 1 and meta["metric/auc"] == 0.9
    assert meta["checkpoint/sha256"] == v.sha256 and meta["gravity/site"] == "onprem-dc"
    assert meta["checkpoint/weights_format"] == "safetensors"


def test_checkpoints_on_an_s3_site_verify_and_fall_back(tmp_path, seaweedfs, s3_buckets):
    from dagster_gravity.topology import Topology

    topology = Topology.from_dict({
        "sites": [{"name": "cloud", "region": "r", "kind": "cloud",
                   "storage": {"kind": "s3", "bucket": s3_buckets[0], "prefix": "site", "endpoint_url": seaweedfs.endpoint_url},
                   "pools": [{"name": "cpu", "slots": 1}]}],
    })
    store = CheckpointStore.for_site(topology, "cloud")
    save(store, 1)
    save(store, 2)
    store.promote("m", 2)
    assert store.versions("m") == [1, 2] and store.promoted("m") == 2
    np.testing.assert_array_equal(store.load("m", 2).arrays["coef"], arrays(2)["coef"])
    # Overwrite v2's weights behind the store's back, keeping the recorded checksum.
    client = seaweedfs.client()
    key = "site/checkpoints/m/v2/weights.safetensors"
    head = client.head_object(Bucket=s3_buckets[0], Key=key)
    client.put_object(Bucket=s3_buckets[0], Key=key, Body=b"not the weights", Metadata=head["Metadata"])
    with pytest.warns(CheckpointCorruptionWarning, match="v2 is corrupted"):
        fallback = store.load_usable("m")
    assert fallback.checkpoint.version.version == 1 and [e.version for e in fallback.refused] == [2]
    assert store.apply_retention("m", keep=1) == [1]  # nothing protects v1: v2 is promoted, no predecessor
    assert store.versions("m") == [2]


def test_local_checkpoints_live_in_the_site_storage_with_checksums(tmp_path):
    from dagster_gravity.storage import storage_for_site
    from dagster_gravity.topology import Topology

    topology = Topology.from_dict({
        "sites": [{"name": "dc", "region": "r", "kind": "onprem",
                   "storage": {"kind": "local", "path": str(tmp_path / "dc")},
                   "pools": [{"name": "cpu", "slots": 1}]}],
    })
    store = CheckpointStore.for_site(topology, "dc")
    v = save(store, 1)
    site = storage_for_site(topology, "dc")
    assert store.storage is site  # the same backend as the IO manager's, not a side door
    assert site.head("checkpoints/m/v1/weights.safetensors").sha256 == v.sha256
    assert site.list_keys("checkpoints/m/") == [f"checkpoints/m/v1/{n}" for n in ("claim.json", "manifest.json", "weights.safetensors")]
    corrupt(tmp_path / "dc", 1)
    with pytest.raises(CorruptCheckpointError, match="v1 is corrupted.*checksum mismatch"):
        store.load("m", 1)


def test_two_rollbacks_walk_back_through_the_promotions(store):
    for seed in (1, 2, 3):
        save(store, seed)
    for version in (1, 2, 3):
        store.promote("m", version)
    assert store.rollback("m").version == 2
    assert store.predecessor("m") == 1  # not v3, the version just rejected
    assert store.rollback("m").version == 1
    assert store.promoted("m") == 1 and store.predecessor("m") is None
    with pytest.raises(CheckpointError, match="no earlier promoted version"):
        store.rollback("m")
    assert [e["from"] for e in store.promotion_history("m")] == [None, 1, 2, 3, 2]


def test_retention_after_rollback_protects_current_and_its_real_predecessor(store):
    for seed in (1, 2, 3):
        save(store, seed)
    for version in (1, 2, 3):
        store.promote("m", version)
    store.rollback("m")  # current v2, predecessor v1; v3 was rejected
    assert store.apply_retention("m", keep=1) == []  # v3 is the newest: kept by keep=1
    save(store, 4)
    assert store.apply_retention("m", keep=1) == [3]
    assert store.versions("m") == [1, 2, 4]
    assert store.rollback("m").version == 1


def test_explicit_rollback_to_a_version_never_promoted_pops_the_rejected_one(store):
    for seed in (1, 2, 3):
        save(store, seed)
    store.promote("m", 1)
    store.promote("m", 3)
    store.rollback("m", to=2)  # v3 rejected; v2 takes its place above v1
    assert store.predecessor("m") == 1
    assert store.rollback("m").version == 1


def save_concurrently(store, savers: int) -> list:
    """`savers` threads save model 'm' at the same moment; returns their Versions."""
    import threading

    barrier = threading.Barrier(savers)
    results: dict[int, object] = {}

    def saver(seed: int) -> None:
        barrier.wait()
        try:
            results[seed] = store.save("m", arrays(seed), lineage={"saver": seed})
        except BaseException as exc:  # noqa: BLE001 - asserted below
            results[seed] = exc

    threads = [threading.Thread(target=saver, args=(seed,)) for seed in range(1, savers + 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    errors = [r for r in results.values() if isinstance(r, BaseException)]
    assert errors == []
    return [results[seed] for seed in range(1, savers + 1)]


def assert_each_version_holds_its_savers_weights(store, saved) -> None:
    assert sorted(v.version for v in saved) == list(range(1, len(saved) + 1))  # distinct
    assert store.versions("m") == list(range(1, len(saved) + 1))
    for seed, v in enumerate(saved, start=1):
        loaded = store.load("m", v.version)  # the manifest's sha256 matches the stored weights
        assert loaded.version.lineage == {"saver": seed} and loaded.version.sha256 == v.sha256
        np.testing.assert_array_equal(loaded.arrays["coef"], arrays(seed)["coef"])


def test_concurrent_saves_get_distinct_versions_each_with_its_own_weights(store):
    save(store, 9)  # v1 exists: the racers start from the same "highest + 1"
    saved = save_concurrently(store, 6)
    assert sorted(v.version for v in saved) == [2, 3, 4, 5, 6, 7]
    for seed, v in enumerate(saved, start=1):
        loaded = store.load("m", v.version)
        assert loaded.version.lineage == {"saver": seed}
        np.testing.assert_array_equal(loaded.arrays["coef"], arrays(seed)["coef"])


def test_a_claimed_but_unfinished_version_is_not_reused(store):
    save(store, 1)
    assert store.storage.put_new("checkpoints/m/v2/claim.json", b"{}") is not None  # a saver that died
    assert store.versions("m") == [1]
    assert save(store, 2).version == 3


def test_concurrent_saves_on_an_s3_site_get_distinct_versions(tmp_path, seaweedfs, s3_buckets):
    from dagster_gravity.topology import Topology

    topology = Topology.from_dict({
        "sites": [{"name": "cloud", "region": "r", "kind": "cloud",
                   "storage": {"kind": "s3", "bucket": s3_buckets[1], "prefix": "race", "endpoint_url": seaweedfs.endpoint_url},
                   "pools": [{"name": "cpu", "slots": 1}]}],
    })
    store = CheckpointStore.for_site(topology, "cloud")
    assert_each_version_holds_its_savers_weights(store, save_concurrently(store, 4))


# -- exact-name listing and name validation ----------------------------------------------


def save_models_sharing_a_prefix(store) -> None:
    """`churn` with 3 versions and `churn-eu` with 8: one name is a string prefix of the other."""
    for seed in range(1, 4):
        store.save("churn", arrays(seed), lineage={"model": "churn"})
    for seed in range(1, 9):
        store.save("churn-eu", arrays(10 + seed), lineage={"model": "churn-eu"})


def assert_models_sharing_a_prefix_stay_apart(store) -> None:
    assert store.versions("churn") == [1, 2, 3]
    assert store.versions("churn-eu") == list(range(1, 9))
    good = store.latest_good("churn")
    assert good.version.version == 3 and good.version.lineage == {"model": "churn"}
    assert store.apply_retention("churn", keep=3) == []  # nothing of churn-eu counts against churn
    assert store.apply_retention("churn-eu", keep=3) == [1, 2, 3, 4, 5]
    assert store.versions("churn") == [1, 2, 3] and store.versions("churn-eu") == [6, 7, 8]
    for v in (1, 2, 3):
        np.testing.assert_array_equal(store.load("churn", v).arrays["coef"], arrays(v)["coef"])
    assert store.latest_good("churn-eu").version.lineage == {"model": "churn-eu"}


def test_models_whose_names_share_a_prefix_are_listed_retained_and_loaded_apart(store):
    save_models_sharing_a_prefix(store)
    assert_models_sharing_a_prefix_stay_apart(store)


def test_models_whose_names_share_a_prefix_stay_apart_on_an_s3_site(seaweedfs, s3_buckets):
    from dagster_gravity.storage import S3SiteStorage

    store = CheckpointStore(S3SiteStorage("cloud", s3_buckets[0], prefix="p", endpoint_url=seaweedfs.endpoint_url))
    save_models_sharing_a_prefix(store)
    assert_models_sharing_a_prefix_stay_apart(store)


def test_clearing_progress_leaves_keys_that_share_its_prefix(store):
    store.save_progress("m", "run-a", 3, arrays(1))
    store.save_progress("m", "run-a2", 3, arrays(2))
    store.clear_progress("m", "run-a")
    assert store.load_progress("m", "run-a") is None
    kept = store.load_progress("m", "run-a2")
    assert kept is not None and kept.next_batch == 3


@pytest.mark.parametrize("bad", [".", "..", ".hidden", "_intermediate", "_x", "a" * 201, "a/b", "", "ü", 7, None])
def test_bad_checkpoint_names_are_refused_naming_the_value_and_what_is_expected(store, bad):
    with pytest.raises(CheckpointError) as info:
        store.save(bad, arrays(1), lineage={})
    message = str(info.value)
    assert repr(bad) in message and "expected 1 to 200 letters, digits" in message and "not starting with" in message
    for call in (lambda: store.versions(bad), lambda: store.promote(bad, 1), lambda: store.load(bad, 1)):
        with pytest.raises(CheckpointError, match="is not allowed"):
            call()
    with pytest.raises(CheckpointError, match=r"progress key .* is not allowed"):
        store.save_progress("m", bad, 1, arrays(1))
    assert store.storage.list_keys("") == []  # refused before anything was written


def test_names_at_the_limits_are_accepted(store):
    for name in ("a" * 200, "churn-eu.v2_x", "9lives"):
        assert store.save(name, arrays(1), lineage={}).version == 1
        assert store.versions(name) == [1]


# -- arrays that could not be loaded back ------------------------------------------------


@pytest.mark.parametrize(
    "value, dtype",
    [
        (np.array([{"x": 1}, None], dtype=object), "object"),
        (np.zeros(2, dtype=[("a", "f8"), ("b", "O")]), "('a', '<f8'), ('b', 'O')"),
        ({"not": "an array"}, "object"),
        (["text", 3, None], "object"),
    ],
)
def test_save_refuses_arrays_that_would_be_pickled_naming_the_array_and_dtype(store, value, dtype):
    with pytest.raises(CheckpointError) as info:
        store.save("m", {"coef": np.ones(3), "vocab": value}, lineage={})
    message = str(info.value)
    assert "'vocab'" in message and dtype in message and "pickling" in message and "'m'" in message
    with pytest.raises(CheckpointError, match=r"array 'vocab' has dtype object"):
        store.save_progress("m", "run-a", 1, {"vocab": np.array([None], dtype=object)})
    assert store.storage.list_keys("") == []  # nothing written: no claim, no weights
    assert store.save("m", arrays(1), lineage={}).version == 1  # and v1 was not used up


def test_save_refuses_a_ragged_array_naming_it(store):
    with pytest.raises(CheckpointError, match=r"array 'rows' is not a regular array"):
        store.save("m", {"rows": [[1, 2], [3]]}, lineage={})


def test_fixed_size_dtypes_round_trip_as_npz(store):
    values = {
        "f": np.arange(3, dtype=np.float32), "b": np.array([True, False]), "s": np.array(["ab", "c"]),
        "by": np.array([b"x", b"yz"]), "rec": np.zeros(2, dtype=[("a", "f8"), ("b", "i4")]), "c": np.array([1 + 2j]),
    }
    v = store.save("m", values, lineage={}, weights_format="npz")
    assert v.weights_file == "weights.npz" and store.storage.head("checkpoints/m/v1/weights.npz") is not None
    loaded = store.load("m", 1).arrays
    for key, value in values.items():
        assert loaded[key].dtype == value.dtype
        np.testing.assert_array_equal(loaded[key], value)


def test_safetensors_round_trips_numeric_arrays_whatever_their_memory_layout(store):
    grid = np.arange(12, dtype=np.float64).reshape(3, 4)
    values = {
        "fortran": np.asfortranarray(grid), "strided": np.arange(10, dtype=np.int64)[::3], "transposed": grid.T,
        "scalar": np.asarray(2.5), "empty": np.zeros((0, 3), dtype=np.float32), "b": np.array([True, False]),
        "u8": np.arange(4, dtype=np.uint8), "half": np.ones(2, dtype=np.float16),
    }
    store.save("m", values, lineage={})
    loaded = store.load("m", 1).arrays
    assert sorted(loaded) == sorted(values)
    for key, value in values.items():  # safetensors writes memory as it lies: these must be copied C-ordered first
        assert loaded[key].dtype == value.dtype and loaded[key].shape == value.shape, key
        np.testing.assert_array_equal(loaded[key], value)
    loaded["fortran"][0, 0] = -1.0  # the loaded arrays are the caller's to change


@pytest.mark.parametrize("value", [np.array(["ab", "c"]), np.zeros(2, dtype=[("a", "f8")]), np.array([1 + 2j])])
def test_safetensors_refuses_what_it_cannot_hold_naming_the_array_the_dtype_and_npz(store, value):
    with pytest.raises(CheckpointError) as info:
        store.save("m", {"coef": np.ones(2), "vocab": value}, lineage={})
    message = str(info.value)
    assert "'vocab'" in message and str(value.dtype) in message and "safetensors cannot store" in message
    assert "weights_format='npz'" in message and "'m'" in message
    assert store.storage.list_keys("") == []  # refused before anything was written
    with pytest.raises(CheckpointError, match="weights_format 'pickle' is not a weights format; expected one of"):
        store.save("m", {"coef": np.ones(2)}, lineage={}, weights_format="pickle")


def write_version_the_old_way(store, name: str, version: int, arrays: dict, **fields) -> None:
    """A version exactly as the store wrote it before safetensors: weights.npz and a manifest
    without a weights_format field."""
    import hashlib
    import io

    buf = io.BytesIO()
    np.savez(buf, **arrays)
    data = buf.getvalue()
    site, folder = store.storage, f"checkpoints/{name}/v{version}"
    site.put_bytes(f"{folder}/claim.json", b"{}")
    site.put_bytes(f"{folder}/weights.npz", data)
    manifest = {"name": name, "version": version, "sha256": hashlib.sha256(data).hexdigest(), "size_bytes": len(data),
                "lineage": {"old": True}, "metrics": {"eval_log_loss": 0.6}, "code_version": "logreg-numpy-1",
                "created_at": "2026-01-01T00:00:00+00:00", "parent": None, **fields}
    site.put_bytes(f"{folder}/manifest.json", json.dumps(manifest).encode())


def test_checkpoints_written_as_npz_before_safetensors_still_load_promote_and_retire(store, tmp_path):
    old = {"coef": np.array([0.5, -1.0, 2.0]), "intercept": np.array([0.1]), "mean": np.zeros(3), "std": np.ones(3)}
    write_version_the_old_way(store, "m", 1, old)
    assert store.versions("m") == [1] and store.manifest("m", 1).weights_format == "npz"
    loaded = store.load("m", 1)
    for key, value in old.items():
        np.testing.assert_array_equal(loaded.arrays[key], value)
    store.promote("m", 1)
    new = save(store, 2)  # the next version is safetensors, beside the npz one
    assert new.weights_format == "safetensors" and store.versions("m") == [1, 2]
    store.update_metrics("m", 1, {"eval_auc": 0.7})  # rewriting an old manifest keeps its format
    assert store.manifest("m", 1).weights_format == "npz" and store.load("m", 1).version.metrics["eval_auc"] == 0.7
    store.promote("m", 2)
    assert store.rollback("m").version == 1  # back onto the old npz version
    assert store.apply_retention("m", keep=1) == []  # v1 promoted, v2 the newest
    # an old version retention deletes goes entirely, its npz weights too
    write_version_the_old_way(store, "old", 1, old)
    store.save("old", old, lineage={})
    assert store.apply_retention("old", keep=1) == [1]
    assert store.storage.list_keys("checkpoints/old/v1/") == []
    # corruption of an old file is caught by the same checksums
    write_version_the_old_way(store, "bad", 1, old)
    (tmp_path / "site" / "checkpoints" / "bad" / "v1" / "weights.npz").write_bytes(b"junk")
    with pytest.raises(CorruptCheckpointError, match="'bad' v1 is corrupted"):
        store.load("bad", 1)


def test_a_manifest_naming_an_unknown_weights_format_is_a_corrupted_version(store):
    write_version_the_old_way(store, "m", 1, {"coef": np.ones(2)}, weights_format="pickle")
    with pytest.raises(CorruptCheckpointError, match=r"weights_format 'pickle'; expected one of \['safetensors', 'npz'\]"):
        store.load("m", 1)


def test_progress_written_as_npz_before_safetensors_still_resumes(store):
    import hashlib
    import io

    buf = io.BytesIO()
    np.savez(buf, coef=np.arange(3.0))
    data = buf.getvalue()
    weights = "checkpoints/m/_intermediate/run-a/weights-000004.npz"
    store.storage.put_bytes(weights, data)
    state = {"next_batch": 4, "weights": weights, "sha256": hashlib.sha256(data).hexdigest(), "state": {"pid": 1}, "at": ""}
    store.storage.put_bytes("checkpoints/m/_intermediate/run-a/state.json", json.dumps(state).encode())
    progress = store.load_progress("m", "run-a")
    assert progress.next_batch == 4 and progress.arrays["coef"].tolist() == [0.0, 1.0, 2.0]
    store.save_progress("m", "run-a", 8, {"coef": np.arange(3.0) + 1})  # the next save replaces it as safetensors
    assert store.storage.list_keys("checkpoints/m/_intermediate/run-a/") == [
        "checkpoints/m/_intermediate/run-a/state.json", "checkpoints/m/_intermediate/run-a/weights-000008.safetensors"]


# -- compare-and-swap updates ------------------------------------------------------------


def test_each_promotion_entry_is_chained_to_the_one_before(store):
    for seed in (1, 2, 3):
        save(store, seed)
    store.promote("m", 1)
    store.promote("m", 2)
    store.rollback("m")
    history = store.promotion_history("m")
    assert [(e["version"], e["from"]) for e in history] == [(1, None), (2, 1), (1, 2)]
    assert len({e["id"] for e in history}) == 3


def test_a_promote_whose_write_landed_but_reply_was_lost_is_recorded_once(store):
    # As on S3 when a conditional PUT succeeds, its response is lost and the SDK's retry
    # then gets 412: the store must see its own entry instead of appending it again.
    for seed in (1, 2):
        save(store, seed)
    store.promote("m", 1)
    real = store.storage.replace_if
    lost = []

    def reply_lost_once(key, data, expected):
        info = real(key, data, expected)
        if not lost and key.endswith("promoted.json"):
            lost.append(info)
            return None
        return info

    store.storage.replace_if = reply_lost_once
    store.promote("m", 2)
    assert lost and [e["version"] for e in store.promotion_history("m")] == [1, 2]


def test_cas_gives_up_after_bounded_attempts_with_a_clear_error(store, monkeypatch):
    import dagster_gravity.checkpoints as checkpoints

    save(store, 1)
    monkeypatch.setattr(checkpoints, "CAS_ATTEMPTS", 3)
    monkeypatch.setattr(checkpoints, "CAS_BACKOFF_S", (0.001, 0.002))
    monkeypatch.setattr(store.storage, "replace_if", lambda key, data, expected: None)  # always loses
    with pytest.raises(CheckpointError, match=r"promotion record of 'm': gave up after 3 compare-and-swap attempts.*promoted\.json"):
        store.promote("m", 1)


def test_concurrent_metric_updates_all_land(store):
    import threading

    save(store, 1, auc=0.5)
    barrier = threading.Barrier(8)
    errors = []

    def update(i):
        barrier.wait()
        try:
            store.update_metrics("m", 1, {f"metric_{i}": float(i)})
        except BaseException as exc:  # noqa: BLE001 - asserted below
            errors.append(exc)

    threads = [threading.Thread(target=update, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert store.manifest("m", 1).metrics == {"auc": 0.5, **{f"metric_{i}": float(i) for i in range(8)}}


def test_metric_update_does_not_resurrect_a_version_retention_deleted(store):
    save(store, 1)
    save(store, 2)
    real = store.storage.replace_if
    deleted = []

    def retention_runs_first(key, data, expected):
        if not deleted:  # between the manifest read and the write: retention removes v1
            deleted.extend(store.apply_retention("m", keep=1))
        return real(key, data, expected)

    store.storage.replace_if = retention_runs_first
    with pytest.raises(CheckpointError, match="has no version v1"):
        store.update_metrics("m", 1, {"auc": 0.9})
    assert deleted == [1] and store.versions("m") == [2]


def assert_concurrent_promotes_are_linearizable(spec, rounds: int = 3, racers: int = 20) -> None:
    from tests.support.promote_race import lost_updates, race_promotes

    histories = race_promotes(spec, rounds=rounds, racers=racers)
    store = race_store(spec)
    for model, history in histories.items():
        assert lost_updates(history, racers) == [], model
        assert history[0]["from"] is None
        assert store.promoted(model) == history[-1]["version"]


def race_store(spec):
    from tests.support.promote_race import store_from_spec

    return store_from_spec(spec)


@pytest.mark.slow
def test_twenty_concurrent_promotes_from_separate_processes_are_all_recorded_locally(tmp_path):
    # Before compare-and-swap this lost updates in 10 of 10 rounds (2 to 9 entries of 20).
    assert_concurrent_promotes_are_linearizable({"kind": "local", "root": str(tmp_path / "site")})


def test_twenty_concurrent_promotes_from_separate_processes_are_all_recorded_on_s3(seaweedfs, s3_buckets):
    # Before compare-and-swap this lost updates in 10 of 10 rounds (1 or 2 entries of 20).
    spec = {"kind": "s3", "bucket": s3_buckets[0], "prefix": "race", "endpoint_url": seaweedfs.endpoint_url}
    assert_concurrent_promotes_are_linearizable(spec)


def test_retention_keeps_every_version_a_rollback_can_return_to(tmp_path):
    store = CheckpointStore.local(tmp_path)
    for v in (1, 2, 3):
        store.save("m", {"w": np.full(2, float(v))}, lineage={"v": v})
        store.promote("m", v)
    assert store.apply_retention("m", keep=1) == []  # v1 and v2 are on the promotion stack
    assert store.rollback("m").version == 2
    assert store.rollback("m").version == 1  # the second rollback still has its target
