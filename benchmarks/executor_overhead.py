"""Per-step executor overhead: the same no-op jobs under six executors, side by side.

    .venv/bin/python benchmarks/executor_overhead.py               # full run, median of 3
    .venv/bin/python benchmarks/executor_overhead.py --repeat 5
    .venv/bin/python benchmarks/executor_overhead.py --skip-slow   # no spawn multiprocess / dagster_dask on the 100-step jobs
    .venv/bin/python benchmarks/executor_overhead.py --quick       # smoke test: tiny jobs, one repeat, no Dask
    .venv/bin/python benchmarks/executor_overhead.py --executors in_process,gravity,gravity_dask,dagster_dask

Jobs (assets returning small ints, Dagster's default filesystem IO manager):
  chain20   20 assets, each depending on the previous one
  chain100  100 assets in a chain
  fanout2x50  one root, 50 children of the root, and one grandchild per child (2 levels of 50)

Executors:
  in_process               Dagster's in_process_executor
  multiprocess_spawn       multiprocess_executor, default start method (spawn)
  multiprocess_forkserver  multiprocess_executor with forkserver
  gravity                  gravity_executor on the repository's sites.yaml, local pools
  gravity_run_resources    the same with `resource_lifetime: run` (resources kept per worker
                           for the run, the opt-in; the default initialises them per step)
  gravity_dask             gravity_executor, one site `bench` (a 2-slot pool) on the Dask
                           backend: two `dask worker` processes declaring `site-bench=1`
  dagster_dask             dagster-dask's stock `dask_executor` on the same two workers
When gravity_dask or dagster_dask is selected, a real `dask scheduler` and two `dask worker`
processes (`--nthreads 1`, no nanny, Dagster preloaded) are started on loopback with the
helper the Dask tests use (tests/support/dask_cluster.py) and stopped by pid at the end.
`--quick` selects no Dask executor unless `--executors` names one.

Wall time is `execute_job` from call to return, so run start-up and, for gravity, worker
start-up are included. Each (job, executor) pair runs `--repeat` times, interleaved; the
median is reported with steps per second. A fresh on-disk Dagster instance (sqlite) is used
for the whole run.

Measured 2026-11-26 on the 2-core development machine (shared with other work, load ~1.5;
`--repeat 1`, the four executors before the Dask ones were added):

    job         steps  in_process  mp spawn  mp forkserver  gravity
    chain20        20      1.31 s   36.89 s        20.92 s   1.75 s
    chain100      100      6.60 s  193.74 s       124.72 s   8.62 s
    fanout2x50    101      6.81 s  132.04 s        78.75 s   5.44 s

    gravity/in_process 1.33x, 1.31x, 0.80x; spawn/gravity 21x, 22x, 24x faster;
    gravity per step (start-up included) 87 ms on chain20, 86 ms on chain100 (ratio 0.99).
    `--repeat 3 --executors in_process,gravity`: 1.42 s vs 1.83 s (1.29x), 7.11 s vs 8.22 s
    (1.16x), 6.43 s vs 5.00 s.

With the Dask executors, measured 2026-11-26 on the same machine while other helpers' tests
and an analysis job kept it busy (load 2.5-4 on 2 cores; timings are noisy), `--repeat 1
--executors in_process,gravity,gravity_dask,dagster_dask`, two runs (wall s, steps/s):

    job         steps  in_process        gravity           gravity_dask      dagster_dask
    chain20        20  1.63 / 2.87 s     2.00 / 2.83 s     5.35 / 8.57 s     10.09 / 12.23 s
                       (12.3 / 7.0/s)    (10.0 / 7.1/s)    (3.7 / 2.3/s)     (2.0 / 1.6/s)
    chain100      100  7.54 / 15.89 s    20.60 / 28.04 s   20.13 / 28.27 s   50.77 / 40.38 s
                       (13.3 / 6.3/s)    (4.9 / 3.6/s)     (5.0 / 3.5/s)     (2.0 / 2.5/s)
    fanout2x50    101  16.93 / 7.79 s    12.75 / 10.86 s   23.92 / 12.98 s   29.81 / 30.09 s
                       (6.0 / 13.0/s)    (7.9 / 9.3/s)     (4.2 / 7.8/s)     (3.4 / 3.4/s)

    dagster_dask/gravity_dask 1.9x / 1.4x, 2.5x / 1.4x, 1.2x / 2.3x (gravity's Dask backend
    keeps each run's plan and a Dagster context per worker; dagster-dask opens the instance
    and builds a subset job and an execution plan for every step, `query_on_dask_worker`).
    gravity_dask/gravity (local backend) 2.7x / 3.0x on chain20 (the workers' first step of a
    run builds the run's cache over the network), about 1.0x on chain100. On this loaded
    machine gravity's chain100 was 2-3x its quiet-machine figure above; the runs interleave.

Where the time goes: workers are forked from the run process (no `import dagster`, no code
location load, the run's execution plan inherited); each worker keeps one Dagster execution
context per run (resources and log capture set up once), so a step costs about what an
in-process step costs plus one placement event and one LOGS_CAPTURED event.
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

MODULE = "benchmarks.executor_overhead"
EXECUTORS = [
    "in_process",
    "multiprocess_spawn",
    "multiprocess_forkserver",
    "gravity",
    "gravity_run_resources",
    "gravity_dask",
    "dagster_dask",
]
DASK_EXECUTORS = {"gravity_dask", "dagster_dask"}
QUICK_EXECUTORS = [e for e in EXECUTORS if e not in DASK_EXECUTORS]
# Slow per step (a spawned process, or a code location load per step): --skip-slow skips
# them on the 100-step jobs.
SLOW_EXECUTORS = {"multiprocess_spawn", "dagster_dask"}

DASK_SITE = "bench"
DASK_WORKERS = (f"{DASK_SITE}-1", f"{DASK_SITE}-2")
DASK_SITES_YAML = f"""
sites:
  - name: {DASK_SITE}
    region: local
    kind: onprem
    pools:
      - {{name: cpu, kind: cpu, slots: {len(DASK_WORKERS)}}}
"""


def _executor_def(name: str):
    from dagster import in_process_executor, multiprocess_executor

    from dagster_gravity import gravity_executor

    if name == "dagster_dask":
        from dagster_dask import dask_executor

        return dask_executor
    return {
        "in_process": in_process_executor,
        "multiprocess_spawn": multiprocess_executor,
        "multiprocess_forkserver": multiprocess_executor,
        "gravity": gravity_executor,
        "gravity_run_resources": gravity_executor,
        "gravity_dask": gravity_executor,
    }[name]


def _assets(shape: str, size: int):
    from dagster import AssetIn, asset

    made = []

    def root(name):
        @asset(name=name)
        def _root():
            return 0

        return _root

    def child(name, parent):
        @asset(name=name, ins={"up": AssetIn(parent)})
        def _child(up):
            return up + 1

        return _child

    if shape == "chain":
        made.append(root("c0"))
        for i in range(1, size):
            made.append(child(f"c{i}", f"c{i - 1}"))
    elif shape == "fanout":
        made.append(root("root"))
        for i in range(size):
            made.append(child(f"a{i}", "root"))
            made.append(child(f"b{i}", f"a{i}"))
    else:
        raise ValueError(f"shape: got {shape!r}; expected 'chain' or 'fanout'")
    return made


def make_job(shape: str, size: int, executor: str):
    """Module-scope factory: workers of every executor rebuild the job from these arguments."""
    from dagster import Definitions, define_asset_job

    job_name = f"{shape}{size}_{executor}"
    defs = Definitions(
        assets=_assets(shape, size),
        jobs=[define_asset_job(job_name)],
        executor=_executor_def(executor),
    )
    return defs.resolve_job_def(job_name)


def run_config(executor: str, dask_sites: Path | None = None, scheduler: str = "") -> dict:
    if executor == "multiprocess_forkserver":
        return {"execution": {"config": {"start_method": {"forkserver": {}}}}}
    if executor == "gravity":
        return {"execution": {"config": {"sites_file": str(REPO / "sites.yaml")}}}
    if executor == "gravity_run_resources":  # opt-in reuse of resources across a worker's steps
        return {"execution": {"config": {"sites_file": str(REPO / "sites.yaml"), "resource_lifetime": "run"}}}
    if executor == "gravity_dask":
        return {
            "execution": {
                "config": {
                    "sites_file": str(dask_sites),
                    "pools": {"default": {"dask": {"scheduler": scheduler}}},
                }
            }
        }
    if executor == "dagster_dask":
        return {"execution": {"config": {"cluster": {"existing": {"address": scheduler}}}}}
    return {}


def time_one(instance, shape: str, size: int, executor: str, config: dict) -> float:
    from dagster import execute_job
    from dagster._core.definitions.reconstruct import build_reconstructable_job

    recon = build_reconstructable_job(
        MODULE, "make_job", reconstructable_args=(shape, size, executor),
        reconstructor_working_directory=str(REPO),
    )
    start = time.perf_counter()
    result = execute_job(recon, instance=instance, run_config=config)
    elapsed = time.perf_counter() - start
    if not result.success:
        raise RuntimeError(f"{shape}{size} under {executor} failed")
    return elapsed


def _start_dask(workdir: Path):
    """A loopback scheduler and two workers of site `bench` (stopped by the caller)."""
    from tests.support.dask_cluster import DaskCluster

    cluster = DaskCluster(workdir=workdir)
    try:
        cluster.start_scheduler()
        for name in DASK_WORKERS:
            cluster.start_worker(name, DASK_SITE, wait=False)
        cluster.wait_for_workers(set(DASK_WORKERS))
    except BaseException:
        cluster.stop()
        raise
    print(f"dask scheduler {cluster.address}, workers {sorted(cluster.worker_names())}", flush=True)
    return cluster


def _ratio_lines(med: dict, labels: list[str]) -> list[str]:
    pairs = [  # (numerator, denominator, wording)
        ("gravity", "in_process", "{a}/{b} = {r:.2f}x"),
        ("gravity", "gravity_run_resources", "{a}/{b} = {r:.2f}x"),
        ("multiprocess_spawn", "gravity", "{a}/{b} = {r:.1f}x faster"),
        ("multiprocess_forkserver", "gravity", "{a}/{b} = {r:.1f}x faster"),
        ("gravity_dask", "gravity", "{a}/{b} = {r:.2f}x"),
        ("dagster_dask", "gravity_dask", "{a}/{b} = {r:.2f}x"),
    ]
    lines = []
    for label in labels:
        parts = []
        for a, b, wording in pairs:
            va, vb = med.get((label, a)), med.get((label, b))
            if va and vb:
                parts.append(wording.format(a=a, b=b, r=va / vb))
        if parts:
            lines.append(f"{label:<11} " + "; ".join(parts))
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="runs per (job, executor); the median is reported")
    parser.add_argument("--quick", action="store_true", help="smoke test: 3- and 6-step chains, one repeat, no Dask unless --executors names it")
    parser.add_argument("--skip-slow", action="store_true", help="skip multiprocess_spawn and dagster_dask on the 100-step jobs")
    parser.add_argument(
        "--executors", default=None,
        help="comma-separated subset of " + ",".join(EXECUTORS) + " (default: all; with --quick, all but the Dask ones)",
    )
    args = parser.parse_args(argv)

    from dagster import DagsterInstance

    if args.executors is None:
        executors = QUICK_EXECUTORS if args.quick else EXECUTORS
    else:
        executors = [e.strip() for e in args.executors.split(",") if e.strip()]
    for e in executors:
        if e not in EXECUTORS:
            parser.error(f"--executors: got {e!r}; expected some of {', '.join(EXECUTORS)}")
    if args.quick:
        jobs = [("chain", 3, "chain3"), ("chain", 6, "chain6")]
        small, large = "chain3", "chain6"
        repeat = 1
    else:
        jobs = [("chain", 20, "chain20"), ("chain", 100, "chain100"), ("fanout", 50, "fanout2x50")]
        small, large = "chain20", "chain100"
        repeat = max(1, args.repeat)
    steps = {"chain3": 3, "chain6": 6, "chain20": 20, "chain100": 100, "fanout2x50": 101}

    # SIGTERM (e.g. `timeout`) unwinds like Ctrl-C, so Dask processes are stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    with tempfile.TemporaryDirectory(prefix="gravity-bench-") as tmp:
        home = Path(tmp, "dagster_home")
        home.mkdir()
        (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
        os.environ["DAGSTER_HOME"] = str(home)
        dask_sites = Path(tmp, "dask_sites.yaml")
        dask_sites.write_text(DASK_SITES_YAML + f"storage_root: {tmp}/sites\n")
        cluster = _start_dask(Path(tmp)) if DASK_EXECUTORS & set(executors) else None
        times: dict[tuple[str, str], list[float]] = {}
        skipped: set[tuple[str, str]] = set()
        try:
            with DagsterInstance.get() as instance:
                for r in range(repeat):
                    for shape, size, label in jobs:
                        for executor in executors:
                            if args.skip_slow and executor in SLOW_EXECUTORS and steps[label] > 20:
                                skipped.add((label, executor))
                                continue
                            config = run_config(executor, dask_sites, cluster.address if cluster else "")
                            t = time_one(instance, shape, size, executor, config)
                            times.setdefault((label, executor), []).append(t)
                            print(f"  run {r + 1}/{repeat}: {label:<11} {executor:<24} {t:7.2f} s", flush=True)
        finally:
            if cluster is not None:
                cluster.stop()

    med = {k: statistics.median(v) for k, v in times.items()}
    labels = [label for _, _, label in jobs]
    print()
    print(f"Wall time per run, median of {repeat}, and steps per second")
    if cluster is not None:
        print(f"(gravity_dask and dagster_dask: {len(DASK_WORKERS)} local Dask workers, one thread each)")
    width = 24
    header = f"{'job':<11} {'steps':>5} " + " ".join(f"{e:>{width}}" for e in executors)
    print(header)
    print("-" * len(header))
    for label in labels:
        cells = []
        for e in executors:
            v = med.get((label, e))
            cell = "skipped" if v is None else f"{v:.2f} s ({steps[label] / v:.1f}/s)"
            cells.append(f"{cell:>{width}}")
        print(f"{label:<11} {steps[label]:>5} " + " ".join(cells))
    print()
    for line in _ratio_lines(med, labels):
        print(line)
    for name in ("gravity", "gravity_dask"):
        v_small, v_large = med.get((small, name)), med.get((large, name))
        if v_small and v_large:
            ps, pl = v_small / steps[small], v_large / steps[large]
            print(
                f"\n{name} per-step cost (wall / steps, start-up included): {small} {ps * 1000:.0f} ms, "
                f"{large} {pl * 1000:.0f} ms; ratio {pl / ps:.2f}"
            )
    ip_small, ip_large = med.get((small, "in_process")), med.get((large, "in_process"))
    if ip_small and ip_large:
        print(
            f"in_process per-step cost: {small} {ip_small / steps[small] * 1000:.0f} ms, "
            f"{large} {ip_large / steps[large] * 1000:.0f} ms"
        )
    if skipped:
        print(f"\nskipped (--skip-slow): {', '.join(f'{l} under {e}' for l, e in sorted(skipped))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
