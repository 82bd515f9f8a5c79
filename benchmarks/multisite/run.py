"""Multi-site benchmark: the same jobs under gravity and a location-blind deployment, on sites
joined by shaped links (root only: network namespaces, veth, tc tbf).

    sudo .venv/bin/python benchmarks/multisite/run.py --rounds 3

Sites: `onprem-dc` (holds the raw data, 2 CPU slots) and `aws-us-east-1` (2 CPU slots), each
a network namespace with its own SeaweedFS S3 server and two single-thread Dask workers
declaring `site-<name>=1`; one Dask scheduler and the Dagster run (this process) in the root
namespace, which forwards between the sites. Every site's veth is shaped with tbf (--rate,
100 Mbit/s) at both ends, so both directions of every site's link are shaped.

Deployments, each run --rounds times per workload (raw data re-materialized at onprem-dc,
unshaped, before every run, so no run starts with a copy an earlier run made):
  gravity     the gravity executor, default settings (Dask pools per site, per-site S3)
  blind       Dagster's dask_executor + dagster-aws S3PickleIOManager on one hub bucket (at
              onprem-dc, where the data is)
  local       the gravity run with the shaping removed: the all-local bound
  never-move  (workload long only) gravity with aws-us-east-1 disabled: every step waits
              for the data's site

Workloads: `ml` (4 x --raw-mb raw partitions, 4 feature builds on a site with 2 slots, then
join, train, evaluate) and `long` (6 steps of 8 s reading one 5 MB input: moving is right).

Printed per workload: median makespan (Dagster's run start to end), median MB through each
site's link (up = left the site, down = entered it; from the root-side veth's interface
statistics, so it includes the small scheduler and event traffic), median dollars (bytes that
left each site x the sites.yaml link's usd_per_gb in that direction), ratios against the
all-local bound and gravity's speed-up over the location-blind deployment.

Everything made (namespaces, veths, qdiscs, processes by pid, the work directory unless
--keep) is removed in a `finally` and at exit, also when a run fails.
"""

from __future__ import annotations

import argparse
import atexit
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path[:0] = [str(REPO), str(HERE)]

import yaml  # noqa: E402

from netns import Network, SiteNet  # noqa: E402

ONPREM, CLOUD = "onprem-dc", "aws-us-east-1"
SITES = [ONPREM, CLOUD]
WORKERS_PER_SITE = 2
# Egress prices of the one link (sites.yaml): leaving the cloud is billed, leaving on-prem little.
PRICE = {(ONPREM, CLOUD): 0.02, (CLOUD, ONPREM): 0.09}
# Dagster's console logger at WARNING: the per-run lines below are what this prints.
QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
DEPLOYMENTS = {"ml": ["gravity", "blind", "local"], "long": ["gravity", "never-move", "blind", "local"]}


# ---------------------------------------------------------------------------------------
# Processes (all stopped by pid)
# ---------------------------------------------------------------------------------------

class Processes:
    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []
        self.weeds: list = []

    def start(self, args: list[str], log: Path, env: dict, cwd: Path) -> subprocess.Popen:
        with open(log, "wb") as out:
            proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=cwd)
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        from tests.support.dask_cluster import stop_process

        for proc in reversed(self.procs):
            stop_process(proc)
        self.procs.clear()
        for weed in self.weeds:
            weed.stop()
        self.weeds.clear()


def start_weed(procs: Processes, site: SiteNet, workdir: Path, env: dict):
    """`weed server -s3` inside the site's namespace, bound to the site's address."""
    from tests.support.s3 import SeaweedFS, _wait_until_writable, weed_binary

    data = workdir / "data"
    data.mkdir(parents=True)
    # Distinct ports per site: weed's gRPC unix sockets under /tmp are named by port.
    base = 21000 + 100 * site.index
    names = ["master", "master_grpc", "volume", "volume_grpc", "filer", "filer_grpc", "s3", "s3_grpc"]
    ports = {n: base + i for i, n in enumerate(names)}
    ip = site.address
    args = [
        *site.exec_prefix(), weed_binary(), "server", f"-ip={ip}", f"-ip.bind={ip}", f"-dir={data}",
        "-master.telemetry=false", f"-master.port={ports['master']}", f"-master.port.grpc={ports['master_grpc']}",
        "-master.volumeSizeLimitMB=512", "-volume.max=0", "-volume.preStopSeconds=0",
        f"-volume.port={ports['volume']}", f"-volume.port.grpc={ports['volume_grpc']}",
        "-filer", f"-filer.port={ports['filer']}", f"-filer.port.grpc={ports['filer_grpc']}",
        f"-filer.localSocket={workdir / 'filer.sock'}",
        "-s3", f"-s3.port={ports['s3']}", f"-s3.port.grpc={ports['s3_grpc']}",
        "-s3.port.iceberg=0", "-s3.port.lance=0", f"-s3.localSocket={workdir / 's3.sock'}",
    ]
    log = workdir / "weed.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                cwd=workdir, env={**env, "TMPDIR": str(workdir)})
    server = SeaweedFS(proc, f"http://{ip}:{ports['s3']}", workdir, log, ports)
    procs.weeds.append(server)
    _wait_until_writable(server, 90)
    return server


def start_cluster(procs: Processes, net: Network, work: Path, env: dict) -> str:
    """One scheduler in the root namespace (on the first site's gateway), workers in the sites."""
    import json

    dask = str(Path(sys.executable).with_name("dask"))
    scheduler_file = work / "scheduler.json"
    procs.start([dask, "scheduler", "--host", net.sites[0].gateway, "--port", "0", "--no-dashboard",
                 "--scheduler-file", str(scheduler_file)], work / "scheduler.log", env, work)
    deadline = time.monotonic() + 60
    while not scheduler_file.exists() or not scheduler_file.read_text().strip():
        if time.monotonic() > deadline:
            raise TimeoutError(f"dask scheduler did not write {scheduler_file}; see {work / 'scheduler.log'}")
        time.sleep(0.2)
    time.sleep(0.2)
    address = json.loads(scheduler_file.read_text())["address"]
    names = []
    for site in net.sites:
        for n in range(1, WORKERS_PER_SITE + 1):
            name = f"{site.name}-{n}"
            names.append(name)
            procs.start([*site.exec_prefix(), dask, "worker", address, "--name", name,
                         "--resources", f"site-{site.name}=1", "--nthreads", "1", "--nworkers", "1",
                         "--no-nanny", "--host", site.address, "--no-dashboard",
                         "--local-directory", str(work / f"worker-{name}"), "--death-timeout", "60",
                         "--preload", "dagster_gravity.pools.dask"], work / f"worker-{name}.log", env, work)
    from distributed import Client

    deadline = time.monotonic() + 120
    with Client(address, timeout=30) as client:
        while len(client.scheduler_info(n_workers=-1)["workers"]) < len(names):
            if time.monotonic() > deadline:
                raise TimeoutError(f"not all of {names} joined {address}; see {work}/worker-*.log")
            time.sleep(0.5)
        # Long-lived workers have the code loaded: import the jobs in every worker now, so the
        # first measured run does not pay each worker's first import (seconds on shared cores).
        client.run(_warm_up)
    return address


def _warm_up() -> None:
    import multisite_jobs

    for fn in (multisite_jobs.gravity_ml_job, multisite_jobs.gravity_long_job,
               multisite_jobs.blind_ml_job, multisite_jobs.blind_long_job):
        fn()


# ---------------------------------------------------------------------------------------
# One run
# ---------------------------------------------------------------------------------------

def write_sites(path: Path, servers: dict) -> Path:
    sites = [
        {"name": ONPREM, "region": "us-east", "kind": "onprem",
         "storage": {"kind": "s3", "bucket": "gravity", "prefix": "onprem", "endpoint_url": servers[ONPREM].endpoint_url},
         "pools": [{"name": "cpu", "kind": "cpu", "slots": WORKERS_PER_SITE}]},
        {"name": CLOUD, "region": "us-east-1", "kind": "cloud",
         "storage": {"kind": "s3", "bucket": "gravity", "prefix": "cloud", "endpoint_url": servers[CLOUD].endpoint_url},
         "pools": [{"name": "cpu", "kind": "cpu", "slots": WORKERS_PER_SITE}]},
    ]
    links = [{"from": ONPREM, "to": CLOUD, "bandwidth_gbps": 0.1, "latency_ms": 1,
              "usd_per_gb": PRICE[(ONPREM, CLOUD)], "reverse_usd_per_gb": PRICE[(CLOUD, ONPREM)]}]
    path.write_text(yaml.safe_dump({"sites": sites, "links": links, "residency": {"us": SITES}}))
    return path


def materialize_raw(workload: str, deployment: str, sites_file: Path, instance) -> None:
    """The raw data at onprem-dc, freshly: new bytes (a new salt), so no copy an earlier run
    made is a replica of them (versions are content-named)."""
    os.environ["MULTISITE_SALT"] = str(time.monotonic_ns())
    from dagster import AssetSelection, materialize

    import multisite_jobs as jobs

    if deployment == "blind":
        io = jobs.blind_defs.resources["io_manager"]
    else:
        from dagster_gravity import GravityIOManager, GravityTopology

        io = GravityIOManager(topology=GravityTopology(sites_file=str(sites_file)), default_site=ONPREM)
    result = materialize(jobs.GROUPS[workload], selection=AssetSelection.assets(*jobs.RAW[workload]),
                         resources={"io_manager": io}, instance=instance, raise_on_error=True, run_config=QUIET)
    assert result.success


def run_once(workload: str, deployment: str, net: Network, sites_file: Path, scheduler: str, instance) -> dict:
    from dagster import DagsterEventType, execute_job, reconstructable

    import multisite_jobs as jobs

    net.unshape()
    materialize_raw(workload, deployment, sites_file, instance)
    if deployment != "local":
        net.shape()
    if deployment == "blind":
        job_fn = getattr(jobs, f"blind_{workload}_job")
        config = {"execution": {"config": {"cluster": {"existing": {"address": scheduler}}}}}
    else:
        job_fn = getattr(jobs, f"gravity_{workload}_job")
        execution = {"sites_file": str(sites_file), "pools": {"default": {"dask": {"scheduler": scheduler}}}}
        if deployment == "never-move":
            execution["disabled_pools"] = [CLOUD]
        config = {"execution": {"config": execution}}
    predicted = None
    if deployment == "gravity":  # what `gravity plan` predicts for this run, just before it
        from dagster_gravity.job_plan import plan_and_simulate
        from dagster_gravity.topology import Topology

        _, simulation = plan_and_simulate(job_fn(), instance, Topology.from_yaml(sites_file))
        if simulation is not None:
            predicted = {"makespan": simulation.gravity.makespan, "bytes": simulation.gravity.bytes_moved}
    before = net.counters()
    started = time.monotonic()
    with execute_job(reconstructable(job_fn), instance=instance, run_config={**config, **QUIET}) as result:
        wall = time.monotonic() - started
        after = net.counters()
        if not result.success:
            failures = [e.message for e in result.all_events if e.event_type == DagsterEventType.STEP_FAILURE]
            raise RuntimeError(f"{workload}/{deployment} run {result.run_id} failed: {failures[:3]}")
        run_id = result.run_id
        # the bytes gravity's IO managers copied, from the run summary event
        summaries = [e.event_specific_data.metadata for e in result.all_events
                     if e.event_type == DagsterEventType.ENGINE_EVENT
                     and "gravity/links" in (e.event_specific_data.metadata or {})]
        copied = summaries[-1]["gravity/bytes_moved"].value if summaries else None
    stats = instance.get_run_stats(run_id)
    links = {s: {d: after[s][d] - before[s][d] for d in ("up", "down")} for s in after}
    # Bytes that left each site toward the other, priced at that direction's link price.
    usd = sum(links[a]["up"] / 1e9 * PRICE[(a, b)] for a, b in PRICE)
    return {"makespan": stats.end_time - stats.start_time, "wall": wall, "links": links, "usd": usd,
            "where": placements(instance, run_id), "predicted": predicted, "copied": copied}


def placements(instance, run_id: str) -> dict[str, int]:
    """Steps per site, from the gravity/site of each step's worker-started event (gravity), or
    from the Dask worker's name (the blind executor says nothing of sites: counted as '?')."""
    from dagster import DagsterEventType

    counts: dict[str, int] = {}
    records = instance.get_records_for_run(run_id, of_type=DagsterEventType.STEP_WORKER_STARTED).records
    for record in records:
        entry = record.event_log_entry
        event = entry.dagster_event
        metadata = getattr(event.event_specific_data, "metadata", None) or {}
        site = metadata.get("gravity/site")
        site = getattr(site, "value", site) or "?"
        counts[site] = counts.get(site, 0) + 1
    return counts


# ---------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------

def report(workload: str, results: dict[str, list[dict]]) -> None:
    med = lambda xs: statistics.median(xs)  # noqa: E731
    rows = {}
    for deployment, runs in results.items():
        rows[deployment] = {
            "makespan": med([r["makespan"] for r in runs]),
            "runs": ", ".join(f"{r['makespan']:.1f}" for r in runs),
            "usd": med([r["usd"] for r in runs]),
            **{f"{s}/{d}": med([r["links"][s][d] for r in runs]) / 1e6 for s in SITES for d in ("up", "down")},
            "where": " ".join(f"{k}:{v}" for k, v in sorted(runs[-1]["where"].items())),
        }
    bound = rows.get("local", {}).get("makespan")
    print(f"\nworkload {workload}: median of {len(next(iter(results.values())))} round(s)")
    head = f"{'deployment':<11} {'makespan s':>10} {'x local':>8}  " + "  ".join(
        f"{s[:6] + ' ' + d:>12}" for s in SITES for d in ("up", "down")) + f"  {'$':>9}  runs (s); steps per site (last run)"
    print(head)
    print("-" * len(head))
    for deployment, row in rows.items():
        ratio = f"{row['makespan'] / bound:8.2f}" if bound else f"{'':>8}"
        mb = "  ".join(f"{row[f'{s}/{d}']:9.1f} MB" for s in SITES for d in ("up", "down"))
        print(f"{deployment:<11} {row['makespan']:10.2f} {ratio}  {mb}  {row['usd']:9.5f}  {row['runs']}; {row['where']}")
    if "gravity" in rows:
        g = rows["gravity"]["makespan"]
        for other in ("blind", "never-move"):
            if other in rows:
                ratio = rows[other]["makespan"] / g
                print(f"{other} / gravity makespan: {ratio:.2f}x (gravity {'faster' if ratio > 1 else 'slower'}); "
                      f"{other} ${rows[other]['usd']:.5f} vs gravity ${rows['gravity']['usd']:.5f}")
        if bound:
            print(f"gravity / all-local bound makespan: {g / bound:.2f}x")
        for i, r in enumerate(results["gravity"]):
            p = r.get("predicted")
            if p is None:
                print(f"gravity plan, round {i + 1}: no simulation")
                continue
            print(f"gravity plan, round {i + 1}: predicted makespan {p['makespan']:.2f} s vs {r['makespan']:.2f} s "
                  f"({p['makespan'] / r['makespan']:.2f}x), bytes moved {p['bytes'] / 1e6:.1f} MB vs "
                  f"{(r['copied'] or 0) / 1e6:.1f} MB copied")


# ---------------------------------------------------------------------------------------

def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rate", default="100mbit", help="tbf rate of every link, each direction")
    parser.add_argument("--workloads", default="ml,long")
    parser.add_argument("--deployments", default=None, help="comma list (default: all for the workload)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        parser.error("needs root (network namespaces, veth, tc): sudo .venv/bin/python benchmarks/multisite/run.py")

    work = Path(tempfile.mkdtemp(prefix="gravity-multisite-"))
    procs = Processes()
    net: Network | None = None

    def cleanup() -> None:
        procs.stop_all()
        if net is not None:
            net.teardown()
        if not args.keep:
            subprocess.run(["rm", "-rf", str(work)])

    atexit.register(cleanup)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        net = Network.create(SITES, args.rate)
        from tests.support.s3 import ensure_test_credentials

        ensure_test_credentials()
        home = work / "dagster_home"
        home.mkdir()
        (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
        os.environ.update(DAGSTER_HOME=str(home), DAGSTER_DISABLE_TELEMETRY="1")
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(HERE)]),
               "DASK_DISTRIBUTED__LOGGING__DISTRIBUTED": "warning"}
        servers = {}
        for site in net.sites:
            (work / site.name).mkdir()
            servers[site.name] = start_weed(procs, site, work / site.name, env)
            servers[site.name].make_bucket("gravity")
        hub = servers[ONPREM].make_bucket(f"hub-{uuid.uuid4().hex[:6]}")
        os.environ.update(MULTISITE_HUB_ENDPOINT=servers[ONPREM].endpoint_url, MULTISITE_HUB_BUCKET=hub)
        env.update(MULTISITE_HUB_ENDPOINT=servers[ONPREM].endpoint_url, MULTISITE_HUB_BUCKET=hub)
        scheduler = start_cluster(procs, net, work, env)
        sites_file = write_sites(work / "sites.yaml", servers)
        os.chdir(work)

        from dagster import DagsterInstance

        # One instance per deployment: gravity learns link speeds and step durations from its
        # own earlier runs, and the unshaped bound's links must not teach the shaped run.
        instances: dict[str, DagsterInstance] = {}

        def instance_for(deployment: str) -> DagsterInstance:
            if deployment not in instances:
                own = work / f"dagster_home_{deployment}"
                own.mkdir()
                (own / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
                instances[deployment] = DagsterInstance.from_config(str(own))
            return instances[deployment]

        for workload in args.workloads.split(","):
            deployments = args.deployments.split(",") if args.deployments else DEPLOYMENTS[workload]
            results: dict[str, list[dict]] = {d: [] for d in deployments}
            for round_ in range(args.rounds):
                for deployment in deployments:  # interleaved, so drift hits every deployment alike
                    r = run_once(workload, deployment, net, sites_file, scheduler, instance_for(deployment))
                    print(f"  {workload} round {round_ + 1} {deployment:<10} {r['makespan']:6.2f} s  "
                          f"{ {s: {d: round(v / 1e6, 1) for d, v in l.items()} for s, l in r['links'].items()} }  "
                          f"${r['usd']:.5f}  {r['where']}", flush=True)
                    results[deployment].append(r)
            report(workload, results)
    finally:
        if args.keep:
            print(f"work directory kept: {work}")
        cleanup()
        atexit.unregister(cleanup)
    return 0


if __name__ == "__main__":
    sys.exit(main())
