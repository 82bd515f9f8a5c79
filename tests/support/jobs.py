"""A test code location for the executor: real, importable jobs that workers reconstruct.

Assets store their values as JSON under $GRAVITY_TEST_STORE through `SiteRecordingIOManager`,
which also writes, on every output, where the step ran (`gravity/site`, from
`runtime.current_site()`), the sites file the step was told it was placed by
(`runtime.run_sites_file()`), the worker's pid and a declared size (`dagster/size_bytes`), so the
executor's next decision sees runtime locations exactly as with the real IO manager.

Topology used by the tests (`write_test_sites`): three sites, one slot per pool.
  alpha (onprem): alpha/cpu, alpha/gpu (1 GPU)    zone us = [alpha, beta]
  beta  (cloud):  beta/cpu                        zone eu = [gamma]
  gamma (colo):   gamma/cpu
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

from dagster import (
    AssetIn,
    AssetKey,
    AssetSpec,
    Definitions,
    DynamicOut,
    DynamicOutput,
    InputContext,
    IOManager,
    OutputContext,
    RetryPolicy,
    asset,
    define_asset_job,
    in_process_executor,
    job,
    op,
    resource,
)

from dagster_gravity import gravity_executor, runtime
from dagster_gravity.metadata import SITE, SIZE_BYTES
from dagster_gravity.pools import BackendCapabilities

STORE_ENV = "GRAVITY_TEST_STORE"
MB = 1_000_000
GB = 1_000_000_000

TEST_SITES_YAML = """
sites:
  - name: alpha
    region: r-alpha
    kind: onprem
    pools:
      - {name: cpu, kind: cpu, slots: 1}
      - {name: gpu, kind: gpu, slots: 1, gpus: 1}
  - name: beta
    region: r-beta
    kind: cloud
    pools:
      - {name: cpu, kind: cpu, slots: 1}
  - name: gamma
    region: r-gamma
    kind: colo
    pools:
      - {name: cpu, kind: cpu, slots: 1}
residency:
  us: [alpha, beta]
  eu: [gamma]
"""


def write_test_sites(directory: Path) -> Path:
    path = Path(directory) / "sites.yaml"
    path.write_text(TEST_SITES_YAML)
    return path


def store_dir() -> Path:
    return Path(os.environ[STORE_ENV])


def ran_at(key: str) -> dict:
    """Where the step that produced `key` ran: {"site": ..., "pid": ...}."""
    return json.loads((store_dir() / f"{key}.where.json").read_text())


class SiteRecordingIOManager(IOManager):
    """JSON values on disk; output metadata says where the step ran and how big the data is."""

    def _path(self, key_path) -> Path:
        return store_dir() / ("__".join(key_path) + ".json")

    def handle_output(self, context: OutputContext, obj) -> None:
        # Op outputs: step, output name and mapping key (each dynamic output has its own file).
        key_path = context.asset_key.path if context.has_asset_key else context.get_identifier()[1:]
        path = self._path(key_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(obj))
        tmp.replace(path)
        site = runtime.current_site()
        where = {"site": site, "pid": os.getpid(), "run_sites_file": runtime.run_sites_file()}
        (store_dir() / ("__".join(key_path) + ".where.json")).write_text(json.dumps(where))
        declared = (context.definition_metadata or {}).get("test/size_bytes", 10 * MB)
        context.add_output_metadata({SITE: site, SIZE_BYTES: int(declared), "worker_pid": os.getpid()})

    def load_input(self, context: InputContext):
        upstream = context.upstream_output
        if upstream is not None and upstream.has_asset_key:
            key_path = upstream.asset_key.path
        elif context.has_asset_key:
            key_path = context.asset_key.path
        else:
            key_path = upstream.get_identifier()[1:]
        path = self._path(key_path)
        return json.loads(path.read_text()) if path.exists() else None


resources = {"io_manager": SiteRecordingIOManager()}


# -- locality, pins, GPUs --------------------------------------------------------------

@asset(op_tags={"gravity/pin": "beta"})
def made_at_beta():
    return 1


@asset
def follows_beta(made_at_beta):
    return made_at_beta + 1


@asset(op_tags={"gravity/gpu": "1"})
def needs_gpu():
    return "trained"


@asset(op_tags={"gravity/pin": "gamma"})
def pinned_gamma():
    return "g"


@asset(op_tags={"gravity/gpu": "two"})
def bad_gpu_tag():
    return "never"


# Data that exists before any run: the definition says where it is (the fallback).
landed_at_gamma = AssetSpec(
    "landed_at_gamma", metadata={"gravity/site": "gamma", "dagster/size_bytes": 5 * GB}
)
eu_customers = AssetSpec(
    "eu_customers",
    metadata={"gravity/site": "gamma", "gravity/residency": "eu", "dagster/size_bytes": 1 * MB},
)


@asset(deps=[landed_at_gamma])
def reads_landed():
    return "read"


@asset(deps=[eu_customers])
def eu_report():
    return "report"


# An asset with no inputs whose own data may not leave zone eu: it must be written at gamma.
@asset(metadata={"gravity/residency": "eu"})
def eu_only_output():
    return "eu data"


# -- delay scheduling ------------------------------------------------------------------

big_at_alpha = AssetSpec(
    "big_at_alpha", metadata={"gravity/site": "alpha", "dagster/size_bytes": 100 * GB}
)


DELAY_RELEASE = "delay_released"  # written by the step of delay_job that runs away from alpha
DELAY_HOLD = "delay_hold_seconds"  # the longest the step at alpha holds its slot (default 60)


def _hold_alpha_slot(name: str) -> None:
    """delay_job: the step that got alpha's only slot holds it until the other step has
    spilled and started elsewhere (or DELAY_HOLD seconds pass), so a test sees the spill
    however slow the machine is, without guessing how long a step takes."""
    store = store_dir()
    if runtime.current_site() != "alpha":
        (store / DELAY_RELEASE).write_text(name)
        return
    hold_file = store / DELAY_HOLD
    hold = float(hold_file.read_text()) if hold_file.exists() else 60.0
    deadline = time.monotonic() + hold
    while not (store / DELAY_RELEASE).exists() and time.monotonic() < deadline:
        time.sleep(0.05)


@asset(deps=[big_at_alpha])
def slow_left():
    _hold_alpha_slot("slow_left")
    return "left"


@asset(deps=[big_at_alpha])
def slow_right():
    _hold_alpha_slot("slow_right")
    return "right"


# 300 MB at alpha: moving it to beta takes ~2.4 s on the test links, more than an unknown
# step's expected wait (0.5 s) until the step holding alpha's slot has overrun it well.
mid_at_alpha = AssetSpec("mid_at_alpha", metadata={"gravity/site": "alpha", "dagster/size_bytes": 300_000_000})


@asset(deps=[mid_at_alpha])
def mid_left():
    _hold_alpha_slot("mid_left")
    return "left"


@asset(deps=[mid_at_alpha])
def mid_right():
    _hold_alpha_slot("mid_right")
    return "right"


# -- failures --------------------------------------------------------------------------

@asset(retry_policy=RetryPolicy(max_retries=2))
def killed_once(context):
    """SIGKILLs its own worker on the first attempt (a worker dying mid-step)."""
    if context.retry_number == 0:
        os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(30)
    return context.retry_number


@asset(retry_policy=RetryPolicy(max_retries=2), op_tags={"gravity/pool_kind": "cpu"})
def dies_at_alpha(context):
    """Its worker dies whenever it runs at alpha: alpha's pool turns unhealthy, then failover."""
    if runtime.current_site() == "alpha":
        os.kill(os.getpid(), signal.SIGKILL)
    return runtime.current_site()


@asset
def sleeps_long():
    time.sleep(60)
    return "never"


@asset
def ignores_interrupts():
    """A step that swallows the run's interrupt (as a step stuck in C code would not see it)."""
    from dagster._core.errors import DagsterExecutionInterruptedError

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            time.sleep(0.1)
        except (KeyboardInterrupt, DagsterExecutionInterruptedError):
            pass
    return "never"


WARMING_MARKER = "worker_warming"


def slow_startup_check(site: str, pool_id: str) -> None:
    """A worker that takes a while to warm up; it says so in the store first."""
    (store_dir() / WARMING_MARKER).write_text(str(os.getpid()))
    time.sleep(4)


@resource
def broken_resource(_):
    raise RuntimeError("the feature store credentials are missing (test)")


@asset(required_resource_keys={"broken"})
def needs_broken_resource():
    return "never"


def failing_startup_check(site: str, pool_id: str) -> None:
    raise RuntimeError(f"storage mount for {site} is not available (test)")


def ok_startup_check(site: str, pool_id: str) -> None:
    return None


class UnreachableBackend:
    """A compute pool backend whose cluster cannot be reached (a test swaps it in for a factory)."""

    name = "unreachable"
    capabilities = BackendCapabilities(forks_run_process=False)

    def __init__(self, settings, *, worker_max_steps, unhealthy_after):
        self.address = settings.get("scheduler", "tcp://127.0.0.1:9")

    def start(self, run, pools, *, warm_all=False):
        raise ConnectionError(f"cannot reach the cluster at {self.address}")

    def stop(self):
        pass


# -- chains (per-step cost, recycling) -------------------------------------------------

def make_chain(n: int, prefix: str = "chain"):
    assets = []
    previous = None
    for i in range(n):
        name = f"{prefix}_{i}"
        if previous is None:
            @asset(name=name)
            def _first():
                return 0
            assets.append(_first)
        else:
            @asset(name=name, ins={"up": AssetIn(previous)})
            def _next(up):
                return up + 1
            assets.append(_next)
        previous = name
    return assets


chain5 = make_chain(5)


# -- plain ops: dynamic outputs --------------------------------------------------------

@op(out=DynamicOut(int))
def fan_out():
    for i in range(3):
        yield DynamicOutput(i, mapping_key=str(i))


@op
def square(x: int) -> int:
    return x * x


@op
def total(values: list) -> int:
    return sum(values)


@job(executor_def=gravity_executor, resource_defs=resources)
def dynamic_job():
    total(fan_out().map(square).collect())


# -- the definitions -------------------------------------------------------------------

all_assets = [
    made_at_beta, follows_beta, needs_gpu, pinned_gamma, bad_gpu_tag, landed_at_gamma, eu_customers,
    reads_landed, eu_report, eu_only_output, big_at_alpha, slow_left, slow_right,
    mid_at_alpha, mid_left, mid_right, killed_once, dies_at_alpha,
    sleeps_long, ignores_interrupts, needs_broken_resource, *chain5,
]

defs = Definitions(
    assets=all_assets,
    jobs=[
        define_asset_job("locality_job", selection=["made_at_beta", "follows_beta", "reads_landed"]),
        define_asset_job("requirements_job", selection=["needs_gpu", "pinned_gamma"]),
        define_asset_job("bad_tag_job", selection=["bad_gpu_tag", "pinned_gamma"]),
        define_asset_job("residency_job", selection=["eu_report"]),
        define_asset_job("output_residency_job", selection=["eu_only_output"]),
        define_asset_job("delay_job", selection=["slow_left", "slow_right"]),
        define_asset_job("wait_or_move_job", selection=["mid_left", "mid_right"]),
        define_asset_job("killed_job", selection=["killed_once"]),
        define_asset_job("failover_job", selection=["dies_at_alpha"]),
        define_asset_job("sleep_job", selection=["sleeps_long"]),
        define_asset_job("stubborn_job", selection=["ignores_interrupts"]),
        define_asset_job("chain_job", selection=[a.key for a in chain5]),
        define_asset_job("follows_only_job", selection=["follows_beta"]),
        define_asset_job("broken_resource_job", selection=["needs_broken_resource"]),
        dynamic_job,
    ],
    resources={**resources, "broken": broken_resource},
    executor=gravity_executor,
)


def get_job(name: str):
    return defs.resolve_job_def(name)


# Module-scope factories so `reconstructable` can rebuild each job in a worker.
def locality_job():
    return get_job("locality_job")


def requirements_job():
    return get_job("requirements_job")


def bad_tag_job():
    return get_job("bad_tag_job")


def residency_job():
    return get_job("residency_job")


def output_residency_job():
    return get_job("output_residency_job")


def delay_job():
    return get_job("delay_job")


def wait_or_move_job():
    return get_job("wait_or_move_job")


def killed_job():
    return get_job("killed_job")


def failover_job():
    return get_job("failover_job")


def sleep_job():
    return get_job("sleep_job")


def stubborn_job():
    return get_job("stubborn_job")


def chain_job():
    return get_job("chain_job")


def follows_only_job():
    return get_job("follows_only_job")


def broken_resource_job():
    return get_job("broken_resource_job")


def dynamic_job_factory():
    return get_job("dynamic_job")


__all__ = ["defs", "write_test_sites", "ran_at", "STORE_ENV", "AssetKey", "in_process_executor"]
