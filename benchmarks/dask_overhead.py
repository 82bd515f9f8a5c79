"""Steps per second on two local Dask workers: the gravity executor's Dask backend beside its
local backend and the stock executors, on the no-op jobs of benchmarks/executor_overhead.py.

    .venv/bin/python benchmarks/dask_overhead.py              # chain20 and fanout2x50, median of 3
    .venv/bin/python benchmarks/dask_overhead.py --repeat 5
    .venv/bin/python benchmarks/dask_overhead.py --quick      # smoke test: tiny jobs, one repeat

The benchmark starts a real `dask scheduler` and two `dask worker` processes on loopback
(`--nthreads 1`, resource `site-bench=1`, Dagster preloaded), and stops them at the end.
Executors, each running the same jobs (built by `executor_overhead._assets`):
  in_process            Dagster's in-process executor
  multiprocess          Dagster's multiprocess executor (forkserver, 2 processes at a time)
  dagster_dask          dagster-dask's `dask_executor` on the same two workers
  gravity_local         gravity executor, one site with a 2-slot pool, local backend
  gravity_dask          gravity executor, the same site on the Dask backend (the two workers)
Wall time is `execute_job` from call to return (run start-up included). Each (job, executor)
runs `--repeat` times, interleaved; medians are reported, with steps per second.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

MODULE = "benchmarks.dask_overhead"
EXECUTORS = ["in_process", "multiprocess", "dagster_dask", "gravity_local", "gravity_dask"]
SITE = "bench"
BENCH_SITES = f"""
sites:
  - name: {SITE}
    region: local
    kind: onprem
    pools:
      - {{name: cpu, kind: cpu, slots: 2}}
"""


def _executor_def(name: str):
    from dagster import in_process_executor, multiprocess_executor
    from dagster_dask import dask_executor

    from dagster_gravity import gravity_executor

    return {
        "in_process": in_process_executor,
        "multiprocess": multiprocess_executor,
        "dagster_dask": dask_executor,
        "gravity_local": gravity_executor,
        "gravity_dask": gravity_executor,
    }[name]


def make_job(shape: str, size: int, executor: str):
    """Module-scope factory: workers of every executor rebuild the job from these arguments."""
    from dagster import Definitions, define_asset_job

    from benchmarks.executor_overhead import _assets

    job_name = f"{shape}{size}_{executor}"
    defs = Definitions(
        assets=_assets(shape, size),
        jobs=[define_asset_job(job_name)],
        executor=_executor_def(executor),
    )
    return defs.resolve_job_def(job_name)


def run_config(executor: str, sites_file: Path, scheduler: str) -> dict:
    if executor == "multiprocess":
        return {"execution": {"config": {"max_concurrent": 2, "start_method": {"forkserver": {}}}}}
    if executor == "dagster_dask":
        return {"execution": {"config": {"cluster": {"existing": {"address": scheduler}}}}}
    if executor == "gravity_local":
        return {"execution": {"config": {"sites_file": str(sites_file)}}}
    if executor == "gravity_dask":
        return {
            "execution": {
                "config": {
                    "sites_file": str(sites_file),
                    "pools": {"default": {"backend": "dask", "scheduler": scheduler}},
                }
            }
        }
    return {}


def time_one(instance, shape: str, size: int, executor: str, sites_file: Path, scheduler: str) -> float:
    from dagster import execute_job
    from dagster._core.definitions.reconstruct import build_reconstructable_job

    recon = build_reconstructable_job(
        MODULE, "make_job", reconstructable_args=(shape, size, executor),
        reconstructor_working_directory=str(REPO),
    )
    start = time.perf_counter()
    result = execute_job(recon, instance=instance, run_config=run_config(executor, sites_file, scheduler))
    elapsed = time.perf_counter() - start
    if not result.success:
        raise RuntimeError(f"{shape}{size} under {executor} failed")
    return elapsed


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="runs per (job, executor); the median is reported")
    parser.add_argument("--quick", action="store_true", help="smoke test: a 3-step chain and a 2x2 fan-out, one repeat")
    parser.add_argument("--executors", default=",".join(EXECUTORS), help="comma-separated subset of " + ",".join(EXECUTORS))
    args = parser.parse_args(argv)
    executors = [e.strip() for e in args.executors.split(",") if e.strip()]
    for e in executors:
        if e not in EXECUTORS:
            parser.error(f"--executors: got {e!r}; expected some of {', '.join(EXECUTORS)}")
    if args.quick:
        jobs, repeat = [("chain", 3, "chain3", 3), ("fanout", 2, "fanout2x2", 5)], 1
    else:
        jobs, repeat = [("chain", 20, "chain20", 20), ("fanout", 50, "fanout2x50", 101)], max(1, args.repeat)

    from dagster import DagsterInstance

    from tests.support.dask_cluster import DaskCluster

    # SIGTERM (e.g. `timeout`) unwinds like Ctrl-C, so the Dask processes are stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    with tempfile.TemporaryDirectory(prefix="gravity-dask-bench-") as tmp:
        home = Path(tmp, "dagster_home")
        home.mkdir()
        (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
        os.environ["DAGSTER_HOME"] = str(home)
        sites_file = Path(tmp, "sites.yaml")
        sites_file.write_text(BENCH_SITES + f"storage_root: {tmp}/sites\n")
        cluster = DaskCluster(workdir=Path(tmp))
        times: dict[tuple[str, str], list[float]] = {}
        try:
            cluster.start_scheduler()
            for n in (1, 2):
                cluster.start_worker(f"{SITE}-{n}", SITE, wait=False)
            cluster.wait_for_workers({f"{SITE}-1", f"{SITE}-2"})
            print(f"dask scheduler {cluster.address}, workers {sorted(cluster.worker_names())}", flush=True)
            with DagsterInstance.get() as instance:
                for r in range(repeat):
                    for shape, size, label, _ in jobs:
                        for executor in executors:
                            t = time_one(instance, shape, size, executor, sites_file, cluster.address)
                            times.setdefault((label, executor), []).append(t)
                            print(f"  run {r + 1}/{repeat}: {label:<11} {executor:<14} {t:7.2f} s", flush=True)
        finally:
            cluster.stop()

    med = {k: statistics.median(v) for k, v in times.items()}
    print()
    print(f"Median of {repeat}: wall seconds (steps per second), 2 Dask workers / 2 slots")
    header = f"{'job':<11} {'steps':>5} " + " ".join(f"{e:>19}" for e in executors)
    print(header)
    print("-" * len(header))
    for _, _, label, steps in jobs:
        cells = [f"{med[(label, e)]:>7.2f} s ({steps / med[(label, e)]:>5.1f}/s)" for e in executors]
        print(f"{label:<11} {steps:>5} " + " ".join(f"{c:>19}" for c in cells))
    print()
    for _, _, label, _ in jobs:
        gd = med.get((label, "gravity_dask"))
        parts = [f"{other}/gravity_dask = {med[(label, other)] / gd:.2f}x" for other in executors if other != "gravity_dask" and gd]
        if parts:
            print(f"{label:<11} " + "; ".join(parts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
