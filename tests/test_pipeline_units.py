"""Unit tests of single pieces of the reference pipeline: point-in-time joins, training
(scikit-learn, resumable), the quality gate, the data generator, drift scoring."""

from __future__ import annotations

import re
import numpy as np
import pandas as pd
import pytest
import yaml
from dagster import Failure, build_asset_context

from dagster_gravity import GravityCheckpoints, GravityTopology
from dagster_gravity.checkpoints import CheckpointStore
from dagster_gravity.topology import Topology
from pipelines import datagen
from pipelines.features import eu_segment_features, event_features, training_set
from pipelines import quality_gate
from pipelines.model import ROLLED_BACK, PromotionConfig, promoted_model, quality_gate_check
from pipelines.ui import TELEMETRY_OFF, UiSetupError, choose_environment, parse_port
from pipelines.training import FEATURES, LABEL, MODEL_NAME, TrainConfig, holdout_mask, matrix, metrics, restore, train_incremental
from resources import CHECKPOINT_SITE
from sensors.drift import drift_scores
from tests.support.pipeline import write_sites

T = pd.Timestamp("2026-01-01")


def events(**cols):
    base = {"event_id": [1, 2], "user_id": [7, 7], "item_id": [3, 3], "ts": [T + pd.Timedelta(hours=1), T + pd.Timedelta(hours=5)],
            "country": ["US", "DE"], "dwell_s": [10.0, 10.0], "clicks": [1, 1], "converted": [0, 1]}
    base.update(cols)
    return pd.DataFrame(base)


def test_event_features_use_the_price_valid_at_the_event_time():
    items = pd.DataFrame({
        "item_id": [3, 3, 3], "valid_from": [T, T + pd.Timedelta(hours=2), T + pd.Timedelta(hours=6)],
        "price": [10.0, 20.0, 999.0], "category": [1, 1, 1],
    })
    out = event_features(build_asset_context(partition_key="2026-01-01"), raw_events=events(), raw_items=items)
    # The 01:00 event sees the 00:00 price, the 05:00 event the 02:00 one; the 06:00 change never leaks back.
    assert np.exp(out["log_price"]).round(6).tolist() == [10.0, 20.0]
    assert out["is_eu"].tolist() == [0.0, 1.0]
    assert "user_id" not in out.columns


def test_training_set_joins_eu_aggregates_known_at_event_time_only():
    feats = pd.DataFrame({"event_id": [1, 2, 3], "ts": [T + pd.Timedelta(minutes=30), T + pd.Timedelta(hours=3, minutes=5), T + pd.Timedelta(hours=3)],
                          "country": ["DE", "DE", "US"], "log_dwell": 1.0, "clicks": 1.0, "log_price": 1.0, "is_eu": [1.0, 1.0, 0.0], "converted": 1})
    segments = pd.DataFrame({"as_of": [T + pd.Timedelta(hours=1), T + pd.Timedelta(hours=3)], "country": ["DE", "DE"],
                             "customers": [5, 9], "eu_mean_spend": [11.0, 33.0], "eu_mean_sessions": [1.0, 3.0]})
    out = training_set(event_features=feats, eu_segment_features=segments).set_index("event_id")
    assert out.loc[1, "eu_mean_spend"] == 0.0  # before the first aggregate existed
    assert out.loc[2, "eu_mean_spend"] == 33.0
    assert out.loc[3, "eu_mean_spend"] == 0.0  # not an EU country


def test_eu_segment_features_are_aggregates_without_identifiers_or_small_groups():
    rng = np.random.default_rng(0)
    raw = pd.DataFrame({
        "customer_id": np.r_[np.arange(10), [99]], "email": [f"c{i}@x.eu" for i in range(11)],
        "country": ["DE"] * 10 + ["FR"], "age": 30, "ts": T + pd.to_timedelta(rng.integers(0, 3600, 11), unit="s"),
        "spend": 10.0, "sessions": 2,
    })
    out = eu_segment_features(raw_eu_customers=raw)
    assert set(out.columns) == {"window_start", "as_of", "country", "customers", "eu_mean_spend", "eu_mean_sessions"}
    assert set(out["country"]) == {"DE"}  # FR has one customer: below k-anonymity, never leaves the EU
    assert out["customers"].min() >= 5


def test_differencing_eu_segment_rows_cannot_isolate_one_customer():
    """A customer joining a country's cohort hour after hour must not be recoverable as
    n·mean(h+1) − (n−1)·mean(h): windows are disjoint and every cell covers >= k customers."""
    from pipelines.features import K_ANONYMITY

    rng = np.random.default_rng(1)
    # Hour h: customers 0..(5+h) are active in DE; each hour one more joins (the attack's set-up).
    rows = [
        {"customer_id": c, "country": "DE", "age": 40, "ts": T + pd.Timedelta(hours=h, minutes=int(rng.integers(0, 60))),
         "spend": float(rng.integers(1, 1000)), "sessions": 1}
        for h in range(6) for c in range(5 + h)
    ]
    rows.append({"customer_id": 500, "country": "DE", "age": 40, "ts": T + pd.Timedelta(hours=6, minutes=5), "spend": 12345.0, "sessions": 1})
    raw = pd.DataFrame(rows)
    out = eu_segment_features(raw_eu_customers=raw)

    assert (out["customers"] >= K_ANONYMITY).all()
    # Windows of one country never overlap: each activity record counts in exactly one row.
    for _, cells in out.groupby("country"):
        cells = cells.sort_values("window_start")
        assert (cells["window_start"].iloc[1:].to_numpy() >= cells["as_of"].iloc[:-1].to_numpy()).all()
    covered = sum(
        ((raw["ts"] >= r.window_start) & (raw["ts"] < r.as_of) & (raw["country"] == r.country)).sum()
        for r in out.itertuples()
    )
    assert covered == len(raw) - 1  # all but the lone customer of hour 6, whose cell is suppressed
    # Each row's totals are exactly its own window's customers: no row is a superset of another.
    for r in out.itertuples():
        inside = raw[(raw["ts"] >= r.window_start) & (raw["ts"] < r.as_of) & (raw["country"] == r.country)]
        assert r.customers == inside["customer_id"].nunique()
        assert r.eu_mean_spend == pytest.approx(inside.groupby("customer_id")["spend"].sum().mean())
    # The differencing attack on consecutive rows yields no newcomer's spend (up to then).
    by_hour = out.sort_values("as_of").reset_index(drop=True)
    assert len(by_hour) == 6
    for a, b in zip(by_hour.iloc[:-1].itertuples(), by_hour.iloc[1:].itertuples()):
        assert b.customers == a.customers + 1  # the cohort grows by one each hour
        leaked = b.customers * b.eu_mean_spend - a.customers * a.eu_mean_spend
        newcomer = b.customers - 1
        spent = raw[(raw["customer_id"] == newcomer) & (raw["ts"] < b.as_of)]["spend"].sum()
        assert leaked != pytest.approx(spent), (a, b)
    assert 12345.0 not in set(out["eu_mean_spend"])


@pytest.mark.slow
def test_importing_the_code_location_leaves_the_environment_alone(tmp_path):
    """No $GRAVITY_SITES appears because a test imported the definitions; resources resolve
    it (else ./sites.yaml) when they are used, so a later setenv is honoured. The IO
    manager, the checkpoints and the raw assets share the one `gravity_topology` resource."""
    import os
    import subprocess
    import sys

    sites = write_sites(tmp_path / "topo")
    code = (
        "import os\n"
        "import pipelines.definitions as d\n"
        "assert 'GRAVITY_SITES' not in os.environ, os.environ['GRAVITY_SITES']\n"
        "res = d.defs.resources\n"
        "io, topology, checkpoints = res['io_manager'], res['gravity_topology'], res['checkpoints']\n"
        "assert io.topology is topology and checkpoints.topology is topology\n"
        "assert str(topology.path()) == os.path.abspath('sites.yaml'), topology.path()\n"
        "default = set(io.load_topology().sites)\n"
        f"os.environ['GRAVITY_SITES'] = {str(sites)!r}\n"
        "print(sorted(default), topology.load().site('onprem-dc').storage.path)\n"
        "print(checkpoints.store().storage.uri(''))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "GRAVITY_SITES"}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count(str(tmp_path / "topo")) == 2, proc.stdout


@pytest.fixture
def checkpoints(tmp_path):
    sites = write_sites(tmp_path / "topo")
    resource = GravityCheckpoints(topology=GravityTopology(sites_file=str(sites)), site=CHECKPOINT_SITE)
    return resource, CheckpointStore.for_site(Topology.from_yaml(sites), "onprem-dc")


def trained(store: CheckpointStore, seed: int = 0, scale: float = 1.0, **metrics) -> int:
    """A saved version of the model trained on synthetic rows (coef scaled by `scale`)."""
    df = synthetic_training_rows(seed=seed)
    result = train_incremental(store, df[~holdout_mask(df)], None, f"k{seed}-{scale}", CONFIG)
    arrays = {**result.arrays, "coef": result.arrays["coef"] * scale}
    return store.save(MODEL_NAME, arrays, lineage={"partitions": [f"2026-01-0{seed + 1}"]}, metrics=metrics).version


def gate(resource, version: int, training_set: pd.DataFrame):
    """The quality gate check on candidate `version`, invoked directly: its result."""
    from dagster import build_asset_check_context

    return quality_gate_check(build_asset_check_context(), checkpoints=resource, training_set=training_set,
                              model_checkpoint=pd.DataFrame([{"model": MODEL_NAME, "version": version}]))


def promote(resource, version: int, config: PromotionConfig | None = None, rollback: bool = False):
    context = build_asset_context(partition_key="2026-01-02", run_tags={"promotion/action": "rollback"} if rollback else None)
    out = promoted_model(context, config=config or PromotionConfig(), checkpoints=resource,
                         model_checkpoint=pd.DataFrame([{"model": MODEL_NAME, "version": version}]))
    return out, context.get_output_metadata("result")


def test_the_gate_fails_a_worse_candidate_and_nothing_is_promoted_then_passes_a_better_one(checkpoints):
    resource, store = checkpoints
    holdout_day = synthetic_training_rows(seed=5)
    store.promote(MODEL_NAME, trained(store, seed=0))
    worse = trained(store, seed=1, scale=0.2)  # shrunken weights: a worse fit of the same signal
    result = gate(resource, worse, holdout_day)
    assert not result.passed and result.severity.value == "ERROR"
    meta = {k: getattr(v, "value", v) for k, v in result.metadata.items()}
    assert meta["gate/decision"] == "kept" and meta["gate/baseline"] == "v1" and "is worse" in meta["gate/reason"]
    with pytest.raises(Failure, match=r"conversion@v2: the quality gate \(check model_checkpoint:quality_gate\) failed it"):
        promote(resource, worse)
    assert store.promoted(MODEL_NAME) == 1

    better = trained(store, seed=2)
    assert gate(resource, better, holdout_day).passed
    out, meta = promote(resource, better)
    assert out["decision"].iloc[0] == "promoted" and store.promoted(MODEL_NAME) == better
    assert meta["gate/reason"] == "passed the quality gate against promoted v1" and meta["gate/baseline"] == "v1"
    assert store.promotion_history(MODEL_NAME)[-1]["reason"] == meta["gate/reason"]


def test_a_rollback_is_a_materialization_of_promoted_model_naming_the_model_now_promoted(checkpoints):
    resource, store = checkpoints
    holdout_day = synthetic_training_rows(seed=5)
    for seed in (0, 2):
        version = trained(store, seed=seed)
        assert gate(resource, version, holdout_day).passed
        out, meta = promote(resource, version)
    assert store.promoted(MODEL_NAME) == 2 and meta["promotion/decision"] == "promoted"
    # the candidate is not what a rollback promotes: it returns to the version before
    with pytest.raises(Failure, match="to_version is 1, but this run promotes the candidate; to_version applies to a rollback"):
        promote(resource, 2, PromotionConfig(to_version=1))
    out, meta = promote(resource, 2, PromotionConfig(reason="v2 mis-scores EU traffic"), rollback=True)
    assert store.promoted(MODEL_NAME) == 1
    assert out.iloc[0][["version", "decision", "rolled_back_from"]].tolist() == [1, ROLLED_BACK, 2]
    assert meta["promotion/decision"] == "rolled back" and meta["gravity/checkpoint"] == f"{MODEL_NAME}@v1"
    assert (meta["rollback/from"], meta["rollback/to"]) == (2, 1)
    assert meta["promotion/reason"] == "rolled back from v2 to v1: v2 mis-scores EU traffic"
    assert store.promotion_history(MODEL_NAME)[-1]["action"] == "rollback"
    with pytest.raises(Exception, match="cannot roll 'conversion' back to v9"):
        promote(resource, 2, PromotionConfig(to_version=9), rollback=True)


def test_promotion_refuses_a_candidate_the_gate_never_ran_on(checkpoints):
    resource, store = checkpoints
    version = trained(store)
    with pytest.raises(Failure, match="has not run on it, so it is not promoted"):
        promote(resource, version)
    assert store.promoted(MODEL_NAME) is None


def test_the_gate_reports_deltas_of_its_own_same_holdout_comparison_not_of_the_manifests(checkpoints):
    """Each version's manifest holds metrics on its own day's holdout (here v1 looks far
    better than v2 will); the gate scores both on one holdout and reports that comparison,
    on the check and on the promotion alike."""
    resource, store = checkpoints
    store.promote(MODEL_NAME, trained(store, seed=0, scale=0.5, eval_log_loss=0.10, eval_auc=0.99))
    candidate = trained(store, seed=1)
    result = gate(resource, candidate, synthetic_training_rows(seed=5))
    assert result.passed
    meta = {k: getattr(v, "value", v) for k, v in result.metadata.items()}
    deltas = meta["gate/metric_deltas"]
    assert deltas == pytest.approx({m: meta[f"candidate/{m}"] - meta[f"promoted/{m}"] for m in ("log_loss", "auc", "accuracy")})
    assert deltas["log_loss"] < 0  # better on the shared holdout, whatever the manifests say
    assert meta["gate/baseline"] == "v1" and meta["gate/lineage_changes"] == ["partitions"]
    assert f"on the same {meta['evaluation/holdout_rows']} holdout rows" in meta["gate/reason"]
    assert store.manifest(MODEL_NAME, candidate).metrics["eval_log_loss"] == pytest.approx(meta["candidate/log_loss"])
    _, promoted = promote(resource, candidate)
    assert promoted["gate/metric_deltas"].value == pytest.approx(deltas)


def test_a_first_model_passes_on_absolute_thresholds_and_says_so(checkpoints):
    """Nothing promoted: the candidate is scored alone, not against itself."""
    resource, store = checkpoints
    version = trained(store)
    result = gate(resource, version, synthetic_training_rows(seed=5))
    meta = {k: getattr(v, "value", v) for k, v in result.metadata.items()}
    assert result.passed and meta["gate/baseline"] == "first model" and meta["gate/metric_deltas"] == {}
    assert not any(k.startswith("promoted/") for k in meta) and "gate/lineage_changes" not in meta
    reason = meta["gate/reason"]
    assert reason.startswith("first model: nothing promoted to compare with") and "auc" in reason and "<= 0.69" in reason
    out, promoted = promote(resource, version)
    assert store.promoted(MODEL_NAME) == version and promoted["gate/baseline"] == "first model"
    assert promoted["gate/reason"] == "passed the quality gate as the first model"


def test_a_first_model_below_the_absolute_thresholds_fails_the_gate(checkpoints):
    resource, store = checkpoints
    version = trained(store, scale=0.0)  # no weights: ranks nothing (AUC 0.5)
    result = gate(resource, version, synthetic_training_rows(seed=5))
    reason = result.metadata["gate/reason"].value
    assert not result.passed and result.metadata["gate/decision"].value == "rejected"
    assert "misses the absolute thresholds: auc 0.5000 is not >= 0.6" in reason
    with pytest.raises(Failure, match="failed it"):
        promote(resource, version)
    assert store.promoted(MODEL_NAME) is None


def test_gate_decisions_and_thresholds():
    row = {"version": 3, "rows": 50, "log_loss": 0.5, "auc": 0.7, "accuracy": 0.7}
    worse = quality_gate.decide(row, {**row, "version": 2, "log_loss": 0.5 - 2 * quality_gate.TOLERANCE})
    assert worse.decision == "kept" and worse.deltas["log_loss"] == pytest.approx(2 * quality_gate.TOLERANCE)
    assert quality_gate.decide(row, {**row, "version": 2, "log_loss": 0.499}).decision == "promoted"  # within noise
    assert quality_gate.decide({**row, "log_loss": 0.70}, None).decision == "rejected"  # worse than a coin flip
    with pytest.raises(ValueError, match=r"the promoted evaluation row lacks \['auc'\]"):
        quality_gate.decide(row, {"version": 2, "rows": 50, "log_loss": 0.5, "accuracy": 0.7})


# -- training ---------------------------------------------------------------------------


def synthetic_training_rows(n: int = 3000, seed: int = 0, shift: float = 0.0) -> pd.DataFrame:
    """Rows with the training features whose label follows a known logistic model."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, len(FEATURES))) * [1.0, 2.0, 0.5, 0.5, 3.0, 1.0] + [2.0, 1.0, 3.0, 0.5, 10.0, 2.0]
    z = 1.5 * (x[:, 0] - 2.0) - 0.8 * (x[:, 1] - 1.0) + shift
    df = pd.DataFrame(x, columns=FEATURES)
    df[LABEL] = (rng.random(n) < 1 / (1 + np.exp(-z))).astype(float)
    df["event_id"] = np.arange(n)
    return df


def fresh_store(tmp_path, name: str) -> CheckpointStore:
    return CheckpointStore.local(tmp_path / name)


CONFIG = TrainConfig(batch_rows=100, epochs=2, checkpoint_every=4)


def test_training_is_scikit_learn_sgd_that_learns_the_signal(tmp_path):
    from sklearn.linear_model import SGDClassifier

    df = synthetic_training_rows()
    train, holdout = df[~holdout_mask(df)], df[holdout_mask(df)]
    result = train_incremental(fresh_store(tmp_path, "s"), train, None, "k1", CONFIG)
    model = restore(result.arrays)
    assert isinstance(model, SGDClassifier) and model.loss == "log_loss"
    assert result.start_batch == 0 and result.total_batches == 2 * 24 and result.intermediate_saves == 11
    assert result.arrays["t"][0] == 1 + 2 * len(train)  # sklearn's step count: one per sample seen
    x, y = matrix(holdout)
    scores = metrics(result.arrays, x, y)
    base_rate = y.mean()
    constant_loss = -(base_rate * np.log(base_rate) + (1 - base_rate) * np.log(1 - base_rate))
    assert scores["auc"] > 0.8 and scores["log_loss"] < constant_loss - 0.1
    # the two informative features carry the weight, with the signs of the true model
    coef = result.arrays["coef"][0]
    assert coef[0] > 0.5 and coef[1] < -0.5 and np.abs(coef[2:]).max() < 0.3


class KilledAfterProgress(CheckpointStore):
    """A store whose training process dies right after its `saves`-th progress save."""

    def __init__(self, storage, saves: int):
        super().__init__(storage)
        self.left = saves

    def save_progress(self, *args, **kwargs):
        super().save_progress(*args, **kwargs)
        self.left -= 1
        if self.left == 0:
            raise SystemExit("killed")


def test_killed_training_resumes_from_its_progress_and_ends_with_the_same_weights(tmp_path):
    df = synthetic_training_rows()
    train = df[~holdout_mask(df)]
    uninterrupted = train_incremental(fresh_store(tmp_path, "a"), train, None, "k1", CONFIG)

    store = fresh_store(tmp_path, "b")
    with pytest.raises(SystemExit):
        train_incremental(KilledAfterProgress(store.storage, saves=3), train, None, "k1", CONFIG)
    assert [k.rsplit("/", 1)[1] for k in store.storage.list_keys(f"checkpoints/{MODEL_NAME}/_intermediate/k1/")] == [
        "state.json", "weights-000012.safetensors"]
    resumed = train_incremental(store, train, None, "k1", CONFIG)
    assert resumed.start_batch == 12 and resumed.total_batches == uninterrupted.total_batches
    assert sorted(resumed.arrays) == sorted(uninterrupted.arrays)
    for key, value in uninterrupted.arrays.items():
        np.testing.assert_array_equal(resumed.arrays[key], value, err_msg=key)


def test_warm_start_continues_the_parents_model_and_schedule(tmp_path):
    store = fresh_store(tmp_path, "s")
    day1, day2 = synthetic_training_rows(seed=1), synthetic_training_rows(seed=2, shift=0.5)
    first = train_incremental(store, day1, None, "d1", CONFIG)
    parent = store.load(MODEL_NAME, store.save(MODEL_NAME, first.arrays, lineage={}).version)  # through safetensors
    assert parent.version.weights_format == "safetensors"
    warm = train_incremental(store, day2, parent, "d2", CONFIG)
    cold = train_incremental(store, day2, None, "d2-cold", CONFIG)
    assert warm.arrays["t"][0] == first.arrays["t"][0] + 2 * len(day2)  # the step sizes keep decaying
    np.testing.assert_array_equal(warm.arrays["mean"], first.arrays["mean"])  # the parent's feature scale
    assert not np.allclose(warm.arrays["coef"], cold.arrays["coef"])
    x, y = matrix(day2)
    assert metrics(warm.arrays, x, y)["log_loss"] < metrics(first.arrays, x, y)["log_loss"]  # it learnt the shift


def test_a_checkpoint_of_the_earlier_numpy_model_restores_predicts_and_warm_starts(tmp_path):
    """Arrays the hand-written numpy model saved (coef of shape (n,), no step count)."""
    rng = np.random.default_rng(3)
    old = {"coef": rng.normal(size=len(FEATURES)), "intercept": np.array([-0.2]),
           "mean": rng.normal(size=len(FEATURES)), "std": rng.random(len(FEATURES)) + 0.5}
    df = synthetic_training_rows(500)
    x, _ = matrix(df)
    z = ((x - old["mean"]) / old["std"]) @ old["coef"] + old["intercept"][0]
    from pipelines.training import predict_proba

    np.testing.assert_allclose(predict_proba(old, x), 1 / (1 + np.exp(-z)), rtol=1e-12)
    store = fresh_store(tmp_path, "s")
    store.save(MODEL_NAME, old, lineage={}, weights_format="npz")
    result = train_incremental(store, df, store.load(MODEL_NAME, 1), "k", CONFIG)
    assert result.arrays["coef"].shape == (1, len(FEATURES)) and result.arrays["t"][0] == 1 + 2 * len(df)


@pytest.mark.parametrize("setting, value, expected", [
    ("batch_rows", 0, "an integer >= 1"), ("epochs", 1.5, "an integer >= 1"), ("checkpoint_every", -1, "an integer >= 1"),
    ("learning_rate", 0.0, "a number > 0"), ("learning_rate", float("nan"), "a number > 0"), ("batch_delay_s", -1.0, "seconds >= 0"),
])
def test_bad_training_config_is_refused_naming_the_setting_value_and_expectation(setting, value, expected):
    with pytest.raises(ValueError, match=rf"training config {setting}={value!r}: expected {expected}"):
        TrainConfig(**{setting: value})


def test_a_checkpoint_without_the_models_arrays_is_refused_naming_them():
    with pytest.raises(ValueError, match=r"lacks arrays \['mean', 'std'\] of the 'conversion' model; has \['coef', 'intercept'\]"):
        restore({"coef": np.ones(len(FEATURES)), "intercept": np.zeros(1)})
    with pytest.raises(ValueError, match=r"expected coef \(1, 6\)"):
        restore({"coef": np.ones(4), "intercept": np.zeros(1), "mean": np.zeros(4), "std": np.ones(4)})


def test_datagen_is_deterministic_and_sized(tmp_path):
    sites = Topology.from_yaml(write_sites(tmp_path / "topo"))
    a = datagen.generate(sites, "2026-01-01", "200KB")
    first = {f.dataset: (tmp_path / "topo" / "sites" / f.site / f.key).read_bytes() for f in a}
    b = datagen.generate(sites, "2026-01-01", "200KB")
    assert {f.dataset: (tmp_path / "topo" / "sites" / f.site / f.key).read_bytes() for f in b} == first
    events = next(f for f in a if f.dataset == "events")
    assert 100_000 < events.size_bytes < 400_000
    assert datagen.parse_size("1.5GB") == 1_500_000_000 and datagen.parse_size("20kb") == 20_000
    with pytest.raises(ValueError, match="expected a number of bytes"):
        datagen.parse_size("lots")


def test_drift_scores_compare_the_partition_with_the_earlier_ones():
    history = {"2026-01-01": {"x": (1.0, 1.0)}, "2026-01-02": {"x": (1.2, 1.0)}, "2026-01-03": {"x": (3.1, 1.0)}}
    assert drift_scores(history, "2026-01-03")["x"] == pytest.approx(2.0)
    assert drift_scores(history, "2026-01-01") == {}


# -- make ui: which Dagster home it opens ------------------------------------------------


def test_make_ui_creates_a_fresh_home_with_telemetry_off(tmp_path):
    env, where = choose_environment(tmp_path, {"PATH": "/bin"})
    home = tmp_path / ".dagster_home"
    assert env["DAGSTER_HOME"] == str(home) and "project's own home" in where
    assert yaml.safe_load((home / "dagster.yaml").read_text()) == {"telemetry": {"enabled": False}}
    assert "GRAVITY_SITES" not in env


def test_make_ui_opens_the_demos_instance_once_the_demo_has_run(tmp_path):
    (tmp_path / ".gravity/demo_home").mkdir(parents=True)
    (tmp_path / ".gravity/demo_home/dagster.yaml").write_text("telemetry:\n  enabled: false\nretention: {}\n")
    (tmp_path / ".gravity/demo_sites").mkdir(parents=True)
    (tmp_path / ".gravity/demo_sites/sites.yaml").write_text("sites: []\n")
    env, where = choose_environment(tmp_path, {})
    assert env["DAGSTER_HOME"] == str(tmp_path / ".gravity/demo_home") and "demo" in where
    assert env["GRAVITY_SITES"] == str(tmp_path / ".gravity/demo_sites/sites.yaml")
    assert "retention" in (tmp_path / ".gravity/demo_home/dagster.yaml").read_text()  # left as it was
    assert not (tmp_path / ".dagster_home").exists()
    # an explicit DAGSTER_HOME (relative: to the project root) wins, and is created
    env, _ = choose_environment(tmp_path, {"DAGSTER_HOME": "mine", "GRAVITY_SITES": "/x.yaml"})
    assert env["DAGSTER_HOME"] == str(tmp_path / "mine") and env["GRAVITY_SITES"] == "/x.yaml"
    assert (tmp_path / "mine/dagster.yaml").read_text() == TELEMETRY_OFF


def test_make_ui_refuses_a_bad_port_or_a_home_that_is_a_file(tmp_path):
    assert parse_port("3001") == 3001
    for bad in ("abc", "0", "70000"):
        with pytest.raises(UiSetupError, match=re.escape(f"the port (make ui PORT=..., or --port) is '{bad}'; expected a TCP port number from 1 to 65535")):
            parse_port(bad)
    (tmp_path / "file").write_text("")
    with pytest.raises(UiSetupError, match="DAGSTER_HOME is .*file'.*expected a directory"):
        choose_environment(tmp_path, {"DAGSTER_HOME": str(tmp_path / "file")})


# -- the UI filters and selects by site ---------------------------------------------------


def test_every_asset_carries_its_site_and_residency_as_tags_the_ui_can_select_by():
    from dagster import AssetSelection

    from pipelines.definitions import defs

    graph = defs.resolve_asset_graph()
    for key in graph.get_all_asset_keys():
        node, label = graph.get(key), key.to_user_string()
        meta = {k: getattr(v, "value", v) for k, v in node.metadata.items()}
        expected = {"gravity/site": meta["gravity/site"]}
        if "gravity/residency" in meta:
            expected["gravity/residency"] = meta["gravity/residency"]
        assert {k: v for k, v in node.tags.items() if k.startswith("gravity/")} == expected, label
        assert any(k.startswith("dagster/kind/") for k in node.tags), f"{label} lost its kinds"
        # the overview's Storage field shows a definition's dagster/uri only
        assert meta["dagster/uri"] == f"gravity://{meta['gravity/site']}/{label}/"
    selected = lambda text: sorted(k.to_user_string() for k in AssetSelection.from_string(text).resolve(graph))  # noqa: E731
    assert selected("tag:gravity/site=onprem-dc") == [
        "event_feature_stats", "event_features", "model_checkpoint", "promoted_model", "raw_events", "training_set"]
    assert selected("tag:gravity/site=aws-us-east-1") == ["raw_items"]
    assert selected("tag:gravity/residency=eu") == ["eu_customer_features", "raw_eu_customers"]


def test_a_site_or_zone_that_is_no_valid_tag_value_is_refused_naming_it():
    from dagster_gravity.errors import GravityConfigError
    from dagster_gravity.metadata import location_tags

    assert location_tags("eu-colo", "eu") == {"gravity/site": "eu-colo", "gravity/residency": "eu"}
    with pytest.raises(GravityConfigError, match=r"asset tag gravity/site is 'on prem'; expected .* at most 63"):
        location_tags("on prem")
    with pytest.raises(GravityConfigError, match="asset tag gravity/residency is 'x{64}'"):
        location_tags("eu-colo", "x" * 64)
