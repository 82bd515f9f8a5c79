"""A small deterministic generator of new daily partitions at each site's landing area.

    python -m pipelines.datagen --date 2026-01-01 --size 2MB [--drift 1.0] [--sites sites.yaml]

The same (dataset, date, size, drift) always gives the same rows. `--size` is the
approximate Parquet size of the day's raw events (from kilobytes to gigabytes; rows are
written in chunks so memory stays bounded); the reference table is small and fixed, and EU
customer activity is about a fifth of the events. `--drift` > 0 shifts the behaviour of
that day's users (longer dwell, more clicks), which the drift sensor should notice.
"""

from __future__ import annotations

import argparse
import hashlib
import re
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import pandas as pd

from dagster_gravity.topology import Topology, resolve_sites_path
from resources.landing import LandingArea, LandingFile

EVENTS_SITE = "onprem-dc"
REFERENCE_SITE = "aws-us-east-1"
EU_SITE = "eu-colo"

EU_COUNTRIES = ["DE", "FR", "NL", "ES", "IT"]
COUNTRIES = ["US"] * 6 + EU_COUNTRIES  # events: 6/11 US traffic, the rest from the EU
N_ITEMS = 500
N_USERS = 50_000
BYTES_PER_EVENT_ROW = 22  # measured Parquet (snappy) bytes per raw event row
BYTES_PER_EU_ROW = 40
CHUNK_ROWS = 500_000


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    site: str


DATASETS = {
    "events": DatasetSpec("events", EVENTS_SITE),
    "items": DatasetSpec("items", REFERENCE_SITE),
    "eu_customers": DatasetSpec("eu_customers", EU_SITE),
}


def parse_size(text: str | int) -> int:
    """'500KB', '2MB', '1.5GB' or a number of bytes -> bytes."""
    if isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]?B?)\s*", str(text).upper())
    if not m:
        raise ValueError(f"size {text!r}: expected a number of bytes or e.g. 500KB, 2MB, 1GB")
    scale = {"": 1, "B": 1, "K": 1e3, "KB": 1e3, "M": 1e6, "MB": 1e6, "G": 1e9, "GB": 1e9}[m[2]]
    return max(1, int(float(m[1]) * scale))


def _rng(*parts) -> np.random.Generator:
    seed = int.from_bytes(hashlib.sha256("/".join(map(str, parts)).encode()).digest()[:8], "little")
    return np.random.default_rng(seed)


def _day_start(date: str) -> np.datetime64:
    return np.datetime64(pd.Timestamp(date).to_datetime64(), "us")


def base_prices() -> np.ndarray:
    """Every item's base price (fixed across days)."""
    return np.round(_rng("items", "base").lognormal(3.0, 0.6, N_ITEMS), 2)


def items_table(date: str) -> pd.DataFrame:
    """The day's reference table: each item's price at 00:00 plus a few timed price changes."""
    rng = _rng("items", date)
    base = base_prices()
    start = _day_start(date)
    opening = pd.DataFrame({
        "item_id": np.arange(N_ITEMS, dtype=np.int32),
        "valid_from": np.full(N_ITEMS, start),
        "price": base * rng.uniform(0.95, 1.05, N_ITEMS),
        "category": (np.arange(N_ITEMS) % 12).astype(np.int16),
    })
    n_changes = 2 * N_ITEMS
    changed = rng.integers(0, N_ITEMS, n_changes)
    changes = pd.DataFrame({
        "item_id": changed.astype(np.int32),
        "valid_from": start + rng.integers(1, 86_400_000_000, n_changes).astype("timedelta64[us]"),
        "price": base[changed] * rng.uniform(0.7, 1.3, n_changes),
        "category": (changed % 12).astype(np.int16),
    })
    out = pd.concat([opening, changes]).sort_values(["valid_from", "item_id"], kind="stable")
    out["price"] = out["price"].round(2)
    return out.reset_index(drop=True)


def event_chunks(date: str, size_bytes: int, drift: float = 0.0) -> Iterator[pd.DataFrame]:
    rows = max(200, size_bytes // BYTES_PER_EVENT_ROW)
    start = _day_start(date)
    prices = base_prices()
    first_id = int(pd.Timestamp(date).toordinal()) * 10**9
    for index, lo in enumerate(range(0, rows, CHUNK_ROWS)):
        n = min(CHUNK_ROWS, rows - lo)
        rng = _rng("events", date, size_bytes, drift, index)
        item = rng.integers(0, N_ITEMS, n).astype(np.int32)
        dwell = rng.lognormal(2.0 + 0.5 * drift, 0.8, n).astype(np.float32)
        clicks = rng.poisson(1.5 + drift, n).astype(np.int16)
        country = np.array(COUNTRIES)[rng.integers(0, len(COUNTRIES), n)]
        logit = -1.0 + 0.9 * np.log1p(dwell) - 0.6 * np.log(prices[item]) + 0.35 * clicks
        logit += np.where(country == "US", 0.0, 0.4)
        converted = (rng.random(n) < 1 / (1 + np.exp(-(logit - 1.0)))).astype(np.int8)
        ts = start + np.sort(rng.integers(0, 86_400_000_000, n)).astype("timedelta64[us]")
        yield pd.DataFrame({
            "event_id": np.arange(first_id + lo, first_id + lo + n, dtype=np.int64),
            "user_id": rng.integers(0, N_USERS, n).astype(np.int64),
            "item_id": item,
            "ts": ts,
            "country": country,
            "dwell_s": dwell,
            "clicks": clicks,
            "converted": converted,
        })


def eu_customer_chunks(date: str, size_bytes: int, drift: float = 0.0) -> Iterator[pd.DataFrame]:
    rows = max(100, size_bytes // 5 // BYTES_PER_EU_ROW)
    start = _day_start(date)
    for index, lo in enumerate(range(0, rows, CHUNK_ROWS)):
        n = min(CHUNK_ROWS, rows - lo)
        rng = _rng("eu_customers", date, size_bytes, drift, index)
        customer = rng.integers(0, 20_000, n).astype(np.int64)
        yield pd.DataFrame({
            "customer_id": customer,
            "email": [f"c{c}@example.eu" for c in customer],  # personal data: must stay in the EU
            "country": np.array(EU_COUNTRIES)[customer % len(EU_COUNTRIES)],
            "age": (18 + customer % 60).astype(np.int16),
            "ts": start + np.sort(rng.integers(0, 86_400_000_000, n)).astype("timedelta64[us]"),
            "spend": np.round(rng.gamma(2.0, 20.0 * (1 + 0.3 * drift), n), 2),
            "sessions": rng.poisson(3 + drift, n).astype(np.int16),
        })


def generate(topology: Topology, date: str, size: str | int = "2MB", drift: float = 0.0,
             datasets: tuple[str, ...] = tuple(DATASETS)) -> list[LandingFile]:
    """Write the day's partition of each dataset into its site's landing area."""
    size_bytes = parse_size(size)
    written = []
    for name in datasets:
        spec = DATASETS[name]
        area = LandingArea(topology, spec.site)
        if name == "events":
            chunks = event_chunks(date, size_bytes, drift)
        elif name == "items":
            chunks = iter([items_table(date)])
        else:
            chunks = eu_customer_chunks(date, size_bytes, drift)
        written.append(area.write_table(name, date, chunks))
    return written


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--date", action="append", required=True, help="YYYY-MM-DD (repeatable)")
    parser.add_argument("--size", default="2MB", help="raw events per day, e.g. 200KB, 2MB, 1GB")
    parser.add_argument("--drift", type=float, default=0.0)
    parser.add_argument("--sites", default=None, help="sites file (default: $GRAVITY_SITES, else sites.yaml)")
    parser.add_argument("--dataset", action="append", choices=list(DATASETS))
    args = parser.parse_args(argv)
    topology = Topology.from_yaml(resolve_sites_path(args.sites))
    for date in args.date:
        for f in generate(topology, date, args.size, args.drift, tuple(args.dataset or DATASETS)):
            print(f"{f.site:15} {f.dataset:13} {f.partition} {f.size_bytes:>12,d} B  {f.key}")


if __name__ == "__main__":
    main()
