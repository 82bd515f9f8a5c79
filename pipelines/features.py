"""The feature store: feature tables computed at the site of their data, with
point-in-time correct joins and per-partition statistics for drift."""


import numpy as np
import pandas as pd
from dagster import AssetExecutionContext, AssetIn, asset

from pipelines.common import DAILY, EU_ZONE, GROUPS, TRAINING_GROUP, TRAINING_SITE, at_site, site_tags
from pipelines.datagen import EU_COUNTRIES, EU_SITE, EVENTS_SITE

K_ANONYMITY = 5  # an EU aggregate row leaves the EU only if it covers at least this many customers
EVENT_FEATURES = ["log_dwell", "clicks", "log_price"]
EU_FEATURES = ["spend", "sessions", "age"]


def feature_stats(df: pd.DataFrame, columns: list[str], partition: str) -> pd.DataFrame:
    """Mean/std/count per feature: what the drift sensor compares across partitions."""
    return pd.DataFrame({
        "partition": partition,
        "feature": columns,
        "mean": [float(df[c].mean()) for c in columns],
        "std": [float(df[c].std(ddof=0)) for c in columns],
        "count": [int(df[c].count()) for c in columns],
    })


def stats_metadata(stats: pd.DataFrame) -> dict:
    return {f"stats/{row.feature}/mean": float(row.mean) for row in stats.itertuples()} | {
        f"stats/{row.feature}/std": float(row.std) for row in stats.itertuples()
    }


@asset(
    partitions_def=DAILY, group_name=GROUPS[EVENTS_SITE], metadata=at_site(EVENTS_SITE, asset="event_features"),
    tags=site_tags(EVENTS_SITE), code_version="1",
    kinds={"parquet"},
)
def event_features(context: AssetExecutionContext, raw_events: pd.DataFrame, raw_items: pd.DataFrame) -> pd.DataFrame:
    """Per-event features, with the item price *as of the event time* (point-in-time join:
    a price change after the event never leaks into it)."""
    events = raw_events.sort_values("ts", kind="stable")
    items = raw_items.sort_values("valid_from", kind="stable")
    joined = pd.merge_asof(
        events, items[["item_id", "valid_from", "price"]], left_on="ts", right_on="valid_from",
        by="item_id", direction="backward",
    )
    missing = int(joined["price"].isna().sum())
    if missing:
        context.log.warning(f"{missing} events have no item price at or before their time; dropped")
        joined = joined.dropna(subset=["price"])
    return pd.DataFrame({
        "event_id": joined["event_id"].to_numpy(),
        "ts": joined["ts"].to_numpy(),
        "country": joined["country"].to_numpy(),
        "log_dwell": np.log1p(joined["dwell_s"].to_numpy(np.float64)),
        "clicks": joined["clicks"].to_numpy(np.float64),
        "log_price": np.log(joined["price"].to_numpy(np.float64)),
        "is_eu": joined["country"].isin(EU_COUNTRIES).to_numpy(np.float64),
        "converted": joined["converted"].to_numpy(np.int8),
    })


@asset(
    partitions_def=DAILY, group_name=GROUPS[EVENTS_SITE], metadata=at_site(EVENTS_SITE, asset="event_feature_stats"),
    tags=site_tags(EVENTS_SITE), code_version="1",
    kinds={"parquet"},
)
def event_feature_stats(context: AssetExecutionContext, event_features: pd.DataFrame) -> pd.DataFrame:
    stats = feature_stats(event_features, EVENT_FEATURES, context.partition_key)
    context.add_output_metadata(stats_metadata(stats))
    return stats


@asset(
    partitions_def=DAILY, group_name=GROUPS[EU_SITE], metadata=at_site(EU_SITE, EU_ZONE, asset="eu_customer_features"),
    tags=site_tags(EU_SITE, EU_ZONE), code_version="1",
    kinds={"parquet"},
)
def eu_customer_features(raw_eu_customers: pd.DataFrame) -> pd.DataFrame:
    """Per-customer daily features. Still personal (one row per customer): stays in the EU."""
    g = raw_eu_customers.groupby("customer_id", sort=True)
    return pd.DataFrame({
        "customer_id": g["customer_id"].first(),
        "country": g["country"].first(),
        "age": g["age"].first().astype(np.float64),
        "spend": g["spend"].sum(),
        "sessions": g["sessions"].sum().astype(np.float64),
        "last_seen": g["ts"].max(),
    }).reset_index(drop=True)


SEGMENT_WINDOW = pd.Timedelta(hours=1)
SEGMENT_COLUMNS = ["window_start", "as_of", "country", "customers", "eu_mean_spend", "eu_mean_sessions"]


def segment_aggregates(raw_eu_customers: pd.DataFrame, k: int = K_ANONYMITY, window: pd.Timedelta = SEGMENT_WINDOW) -> pd.DataFrame:
    """Country aggregates of EU customer activity per *non-overlapping* time window
    [window_start, as_of): each cell covers only the activity inside its window, and a cell
    with fewer than `k` distinct customers is suppressed.

    Disjoint windows are what makes the k threshold mean something: with cumulative
    snapshots, a customer count that grows by one between two snapshots lets
    n·mean(t+1) − (n−1)·mean(t) isolate the newcomer's spend. Here no published row shares
    a single activity record with another, so differencing rows recovers nothing finer than
    one cell of ≥ k customers.
    """
    df = raw_eu_customers
    if df.empty:
        return pd.DataFrame(columns=SEGMENT_COLUMNS)
    start = df["ts"].min().floor("D")
    index = ((df["ts"] - start) // window).astype("int64")
    windowed = df.assign(window_start=start + index * window)
    per_customer = windowed.groupby(["window_start", "country", "customer_id"]).agg(
        spend=("spend", "sum"), sessions=("sessions", "sum")
    )
    g = per_customer.groupby(level=["window_start", "country"])
    agg = pd.DataFrame({
        "customers": g.size(), "eu_mean_spend": g["spend"].mean(), "eu_mean_sessions": g["sessions"].mean(),
    })
    agg = agg[agg["customers"] >= k].reset_index()
    agg["as_of"] = agg["window_start"] + window
    return agg[SEGMENT_COLUMNS].sort_values(["as_of", "country"], kind="stable").reset_index(drop=True)


@asset(
    partitions_def=DAILY, group_name=GROUPS[EU_SITE],
    # Aggregated over disjoint windows and k-anonymous (no row describes fewer than
    # K_ANONYMITY customers, no identifiers, no two rows share a record to difference):
    # this output may leave the EU, so it declares no residency.
    metadata=at_site(EU_SITE, asset="eu_segment_features", **{"gravity/derived_from_residency": EU_ZONE, "k_anonymity": K_ANONYMITY}),
    tags=site_tags(EU_SITE),
    code_version="2", kinds={"parquet"},
)
def eu_segment_features(raw_eu_customers: pd.DataFrame) -> pd.DataFrame:
    """Hourly country-level aggregates of EU customer activity, one per non-overlapping hour
    (see `segment_aggregates`); `as_of` is the hour's end, so consumers join them
    point-in-time (an event sees the latest hour that ended at or before it)."""
    return segment_aggregates(raw_eu_customers)


@asset(
    partitions_def=DAILY, group_name=GROUPS[EU_SITE],
    # Summary statistics only (no rows about individuals): may leave the EU.
    metadata=at_site(EU_SITE, asset="eu_feature_stats"),
    tags=site_tags(EU_SITE), code_version="1", kinds={"parquet"},
)
def eu_feature_stats(context: AssetExecutionContext, eu_customer_features: pd.DataFrame) -> pd.DataFrame:
    stats = feature_stats(eu_customer_features, EU_FEATURES, context.partition_key)
    context.add_output_metadata(stats_metadata(stats))
    return stats


@asset(
    partitions_def=DAILY, group_name=TRAINING_GROUP, metadata=at_site(TRAINING_SITE, asset="training_set"),
    tags=site_tags(TRAINING_SITE), code_version="1",
    kinds={"parquet"},
)
def training_set(event_features: pd.DataFrame, eu_segment_features: pd.DataFrame) -> pd.DataFrame:
    """Events joined point-in-time with the EU country aggregates known at the event's time
    (the latest `as_of` <= ts). Non-EU events get zeros."""
    events = event_features.sort_values("ts", kind="stable")
    segments = eu_segment_features.sort_values("as_of", kind="stable")
    segments = segments.astype({"eu_mean_spend": "float64", "eu_mean_sessions": "float64"})
    joined = pd.merge_asof(
        events, segments[["as_of", "country", "eu_mean_spend", "eu_mean_sessions"]],
        left_on="ts", right_on="as_of", by="country", direction="backward",
    )
    joined[["eu_mean_spend", "eu_mean_sessions"]] = joined[["eu_mean_spend", "eu_mean_sessions"]].fillna(0.0)
    return joined.drop(columns=["as_of"]).reset_index(drop=True)


FEATURE_ASSETS = [event_features, event_feature_stats, eu_customer_features, eu_segment_features, eu_feature_stats, training_set]
STATS_ASSETS = {"event_feature_stats": EVENT_FEATURES, "eu_feature_stats": EU_FEATURES}
