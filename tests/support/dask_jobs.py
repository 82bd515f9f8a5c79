"""Jobs the Dask backend tests run with the gravity executor.

They live in an importable module because Dask workers rebuild them from a
`ReconstructableJob` (module + name), exactly as in a real deployment.
"""


import json
import os
import time
from pathlib import Path

from dagster import (
    Config, Definitions, DynamicOut, DynamicOutput, OpExecutionContext, RetryPolicy, asset, define_asset_job, job, op,
    resource,
)

from dagster_gravity import gravity_executor
from dagster_gravity.metadata import RESIDENCY, TAG_PIN
from dagster_gravity.runtime import current_site

# A test writes a sites file with these two sites, in this order (see tests/test_dask_backend.py).
ONPREM = "onprem-dc"
AWS = "aws-us-east-1"
# The one site of residency zone EU_ZONE (tests/test_zone_outage.py).
EU = "eu-west"
EU_ZONE = "eu"


def _worker_name() -> str:
    from distributed import get_worker

    return str(get_worker().name)


@op(tags={TAG_PIN: ONPREM})
def at_onprem() -> dict:
    return {"site": current_site(), "worker": _worker_name()}


@op(tags={TAG_PIN: AWS})
def at_aws(upstream: dict) -> dict:
    return {"site": current_site(), "worker": _worker_name(), "upstream": upstream}


@op
def anywhere(upstream: dict) -> dict:
    return {"site": current_site(), "worker": _worker_name(), "upstream": upstream}


@job(executor_def=gravity_executor)
def two_sites_job():
    anywhere(at_aws(at_onprem()))


class SlowConfig(Config):
    marker_dir: str  # the test watches this directory to know the step is running
    sleep_seconds: float = 60.0


def _announce_then_sleep_once(context, config: SlowConfig) -> dict:
    """Each execution writes run-<n>.json (where it runs, Dagster's retry number); only the
    first one sleeps (the test kills its worker meanwhile), later ones return at once."""
    marker_dir = Path(config.marker_dir)
    n = len(list(marker_dir.glob("run-*.json")))
    info = {
        "worker": _worker_name(), "pid": os.getpid(), "attempt": context.retry_number, "site": current_site(), "run": n,
    }
    (marker_dir / f"run-{n}.json").write_text(json.dumps(info))
    if n == 0:
        time.sleep(config.sleep_seconds)
    return info


@op(tags={TAG_PIN: ONPREM}, retry_policy=RetryPolicy(max_retries=2))
def slow_first_attempt(context: OpExecutionContext, config: SlowConfig) -> dict:
    return _announce_then_sleep_once(context, config)


@asset(metadata={RESIDENCY: EU_ZONE}, retry_policy=RetryPolicy(max_retries=2))
def eu_scores(context, config: SlowConfig) -> dict:
    """Its data may not leave zone eu, whose one site is EU: it runs there or nowhere."""
    return _announce_then_sleep_once(context, config)


_zone_defs = Definitions(
    assets=[eu_scores], jobs=[define_asset_job("eu_scores_job", selection=[eu_scores], executor_def=gravity_executor)]
)


def eu_scores_job():
    return _zone_defs.resolve_job_def("eu_scores_job")


@job(executor_def=gravity_executor)
def killed_worker_job():
    slow_first_attempt()


@op
def first_choice() -> dict:
    """No inputs and no pin: placement picks the first pool of the topology."""
    return {"site": current_site(), "worker": _worker_name()}


@job(executor_def=gravity_executor)
def failover_job():
    first_choice()


@op(tags={TAG_PIN: ONPREM})
def logs_then_sleeps(context: OpExecutionContext) -> int:
    context.log.info("started; now sleeping")
    time.sleep(3)
    return 1


@job(executor_def=gravity_executor)
def streaming_job():
    logs_then_sleeps()


@op(tags={TAG_PIN: ONPREM})
def sleeper_a() -> int:
    time.sleep(60)
    return 1


@op(tags={TAG_PIN: ONPREM})
def sleeper_b() -> int:
    time.sleep(60)
    return 2


@job(executor_def=gravity_executor)
def two_sleepers_job():
    sleeper_a()
    sleeper_b()


@op(tags={TAG_PIN: AWS}, out=DynamicOut(int))
def fan_out():
    for i in range(3):
        yield DynamicOutput(i, mapping_key=f"part{i}")


@op
def square(x: int) -> dict:
    return {"value": x * x, "site": current_site(), "worker": _worker_name()}


@op
def total(parts: list) -> int:
    return sum(p["value"] for p in parts)


@job(executor_def=gravity_executor)
def dynamic_job():
    total(fan_out().map(square).collect())


@op(tags={TAG_PIN: ONPREM}, out=DynamicOut(int), retry_policy=RetryPolicy(max_retries=2))
def fans_out_then_sleeps(context: OpExecutionContext, config: SlowConfig):
    """Yields part0, writes fan-<n>.json, sleeps on its first execution (the test kills its
    worker: part0 was already reported), then yields part1."""
    marker_dir = Path(config.marker_dir)
    n = len(list(marker_dir.glob("fan-*.json")))
    yield DynamicOutput(1, mapping_key="part0")
    info = {"worker": _worker_name(), "attempt": context.retry_number, "run": n}
    (marker_dir / f"fan-{n}.json").write_text(json.dumps(info))
    if n == 0:
        time.sleep(config.sleep_seconds)
    yield DynamicOutput(2, mapping_key="part1")


@job(executor_def=gravity_executor)
def lost_fan_out_job():
    total(fans_out_then_sleeps().map(square).collect())


@resource
def broken_resource(_):
    raise RuntimeError("broken_resource cannot initialise (on purpose)")


@op(tags={TAG_PIN: ONPREM})
def needs_no_resource() -> dict:
    return {"site": current_site(), "worker": _worker_name()}


@op(tags={TAG_PIN: ONPREM}, required_resource_keys={"broken"})
def needs_broken(upstream: dict) -> dict:
    return upstream


@job(executor_def=gravity_executor, resource_defs={"broken": broken_resource})
def broken_resource_job():
    needs_broken(needs_no_resource())


class HangConfig(Config):
    marker_dir: str  # the step writes hang.json there (its worker and pid) when it starts
    sleep_seconds: float = 120.0


@op(tags={TAG_PIN: ONPREM})
def hangs(config: HangConfig) -> dict:
    """Announces where it runs, then sleeps long: the test interrupts its run meanwhile."""
    info = {"worker": _worker_name(), "pid": os.getpid(), "site": current_site()}
    (Path(config.marker_dir) / "hang.json").write_text(json.dumps(info))
    time.sleep(config.sleep_seconds)
    return info


@job(executor_def=gravity_executor)
def hang_job():
    hangs()


@op(tags={TAG_PIN: ONPREM})
def where_it_ran() -> dict:
    return {"site": current_site(), "worker": _worker_name()}


@job(executor_def=gravity_executor)
def where_job():
    where_it_ran()


@op(tags={TAG_PIN: ONPREM}, retry_policy=RetryPolicy(max_retries=1))
def hangs_then_retries(context: OpExecutionContext, config: HangConfig) -> dict:
    """`hangs` with a retry policy: the first attempt hangs, a retry returns at once."""
    info = {"worker": _worker_name(), "pid": os.getpid(), "site": current_site(), "attempt": context.retry_number}
    (Path(config.marker_dir) / f"hang-{context.retry_number}.json").write_text(json.dumps(info))
    if context.retry_number == 0:
        (Path(config.marker_dir) / "hang.json").write_text(json.dumps(info))
        time.sleep(config.sleep_seconds)
    return info


@job(executor_def=gravity_executor)
def hang_retry_job():
    hangs_then_retries()


class ChildrenConfig(Config):
    marker_dir: str  # the step writes children.json there: the pids it started


def _start_children(marker_dir: str) -> dict:
    """A child (`sleep 600`) and a grandchild (a shell's background `sleep 600`)."""
    import subprocess

    marker = Path(marker_dir)
    child = subprocess.Popen(["sleep", "600"])
    shell = subprocess.Popen(["sh", "-c", f"sleep 600 & echo $! > {marker / 'grandchild.pid'}; wait"])
    deadline = time.monotonic() + 10
    while not (marker / "grandchild.pid").exists() or not (marker / "grandchild.pid").read_text().strip():
        assert time.monotonic() < deadline, "the shell did not start its background sleep"
        time.sleep(0.02)
    pids = {"child": child.pid, "shell": shell.pid, "grandchild": int((marker / "grandchild.pid").read_text())}
    (marker / "children.json").write_text(json.dumps(pids))
    return pids


@op(tags={TAG_PIN: ONPREM})
def spawns_then_fails(config: ChildrenConfig) -> None:
    _start_children(config.marker_dir)
    raise RuntimeError("fails on purpose, leaving its processes behind")


@job(executor_def=gravity_executor)
def leaves_children_job():
    spawns_then_fails()


@op(tags={TAG_PIN: ONPREM})
def spawns_then_succeeds(config: ChildrenConfig) -> dict:
    return _start_children(config.marker_dir)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@op(tags={TAG_PIN: ONPREM})
def looks_around(upstream: dict) -> dict:
    """On the same worker, right after `spawns_then_succeeds`: which of its processes still
    run, and the worker's compute-log capture processes (`tail`), which must survive it."""
    me = os.getpid()
    tails = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == me and cmdline[0] == b"tail":
            tails.append(int(entry.name))
    return {
        "worker": _worker_name(),
        "still_running": {name: pid for name, pid in upstream.items() if _alive(pid)},
        "tails": tails,
    }


@job(executor_def=gravity_executor)
def children_then_next_step_job():
    looks_around(spawns_then_succeeds())
