"""Concurrent readers copying one object into one site, from separate processes (spawn).

`race_replications(source, destination, key, sha, readers)` starts `readers` spawned
processes that wait on a barrier and then call `replicate_once` at the same moment; returns
each one's (bytes_moved, reused). Storages are given as specs a spawned process can rebuild:
{"kind": "local", "site", "root"} or {"kind": "s3", "site", "bucket", "prefix", "endpoint_url"}.
"""

from __future__ import annotations

import multiprocessing

BARRIER_TIMEOUT_S = 120.0


def storage_from_spec(spec: dict):
    from dagster_gravity.storage import LocalSiteStorage, S3SiteStorage

    if spec["kind"] == "local":
        return LocalSiteStorage(spec["site"], spec["root"])
    return S3SiteStorage(spec["site"], bucket=spec["bucket"], prefix=spec["prefix"], endpoint_url=spec["endpoint_url"])


def _reader(source: dict, destination: dict, key: str, sha: str, barrier, results) -> None:
    from dagster_gravity.storage import replicate_once

    src, dst = storage_from_spec(source), storage_from_spec(destination)
    try:
        barrier.wait(BARRIER_TIMEOUT_S)
        done = replicate_once(src, dst, key, sha)
        results.put((done.bytes_moved, done.reused))
    except BaseException as exc:
        barrier.abort()
        results.put(("error", repr(exc)))


def race_replications(source: dict, destination: dict, key: str, sha: str, readers: int = 6) -> list[tuple]:
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(readers), ctx.Queue()
    procs = [ctx.Process(target=_reader, args=(source, destination, key, sha, barrier, results)) for _ in range(readers)]
    for p in procs:
        p.start()
    try:
        outcomes = [results.get(timeout=BARRIER_TIMEOUT_S) for _ in procs]
    finally:
        for p in procs:
            p.join(30)
            if p.is_alive():
                p.kill()
                p.join()
    return outcomes
