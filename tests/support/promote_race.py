"""Concurrent promotes from separate processes (multiprocessing spawn), for the CAS tests.

`race_promotes(spec, rounds, racers, versions)` saves `versions` versions of one model per
round (`race0`, `race1`, ...), then starts `racers` spawned processes that, round by round,
wait on a shared barrier and promote at the same moment: racer i promotes version
i % versions + 1 with reason `racer-<i>`. Returns {model: promotion history}.

`spec` says where the store is, in a form a spawned process can rebuild it from:
{"kind": "local", "root": ...} or {"kind": "s3", "bucket", "prefix", "endpoint_url"}.
"""

from __future__ import annotations

import multiprocessing
import sys
import traceback

import numpy as np

BARRIER_TIMEOUT_S = 120.0


def store_from_spec(spec: dict):
    from dagster_gravity.checkpoints import CheckpointStore
    from dagster_gravity.storage import S3SiteStorage

    if spec["kind"] == "local":
        return CheckpointStore.local(spec["root"])
    return CheckpointStore(
        S3SiteStorage("cloud", bucket=spec["bucket"], prefix=spec["prefix"], endpoint_url=spec["endpoint_url"])
    )


def model(round_: int) -> str:
    return f"race{round_}"


def _racer(spec: dict, index: int, rounds: int, versions: int, barrier) -> None:
    try:
        store = store_from_spec(spec)
        for round_ in range(rounds):
            barrier.wait(BARRIER_TIMEOUT_S)
            store.promote(model(round_), index % versions + 1, reason=f"racer-{index}")
    except BaseException:
        traceback.print_exc(file=sys.stderr)
        barrier.abort()  # the others fail fast instead of waiting out the timeout
        raise SystemExit(1)


def race_promotes(spec: dict, rounds: int, racers: int = 20, versions: int = 3) -> dict[str, list[dict]]:
    store = store_from_spec(spec)
    for round_ in range(rounds):
        for v in range(1, versions + 1):
            store.save(model(round_), {"w": np.full(4, float(v))}, lineage={"round": round_})
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(racers)
    procs = [ctx.Process(target=_racer, args=(spec, i, rounds, versions, barrier)) for i in range(racers)]
    for p in procs:
        p.start()
    try:
        for p in procs:
            p.join(BARRIER_TIMEOUT_S * (rounds + 1))
    finally:
        for p in procs:  # only the processes started here, by their own handles
            if p.is_alive():
                p.kill()
                p.join()
    codes = [p.exitcode for p in procs]
    if any(code != 0 for code in codes):
        raise AssertionError(f"racer processes failed (exit codes {codes}); their tracebacks are on stderr")
    return {model(r): store.promotion_history(model(r)) for r in range(rounds)}


def lost_updates(history: list[dict], racers: int) -> list[str]:
    """What is wrong with one round's history: missing racers, or a broken chain."""
    problems = []
    reasons = sorted(e["reason"] for e in history)
    expected = sorted(f"racer-{i}" for i in range(racers))
    if reasons != expected:
        problems.append(f"{len(history)} entries for {racers} promotes (missing: {sorted(set(expected) - set(reasons))})")
    for before, after in zip(history, history[1:]):
        if after["from"] != before["version"]:
            problems.append(f"entry {after['reason']} says from v{after['from']} but follows v{before['version']}")
            break
    return problems
