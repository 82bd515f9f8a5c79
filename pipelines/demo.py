"""`make demo`: the whole pipeline on the embedded default topology, end to end.

1. A fresh Dagster home under .gravity/demo_home (telemetry off) and fresh site storage
   under .gravity/demo_sites (a copy of sites.yaml pointing there).
2. Generate two days of data at the sites; materialize everything with the gravity executor.
3. A third day arrives with drifted behaviour: evaluate each site's landing sensor and
   launch its run requests, then the drift sensor, which requests one retrain.
4. Print where each step ran, bytes moved, the promoted checkpoint, and what a
   location-blind run would have moved.

The home and site storage stay in place afterwards, for `dagster dev` (the last line says
how); the next demo run starts them afresh.

    python -m pipelines.demo [--size 2MB] [--sites sites.yaml]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

import yaml

ROOT = Path.cwd()
# Relative to the project root; `make ui` (pipelines/ui.py) opens this home when it exists.
DEMO_HOME_DIR = Path(".gravity") / "demo_home"
DEMO_SITES_FILE = Path(".gravity") / "demo_sites" / "sites.yaml"
DEMO_HOME = ROOT / DEMO_HOME_DIR
DEMO_SITES_DIR = ROOT / DEMO_SITES_FILE.parent
DAYS = ["2026-01-01", "2026-01-02"]
NEW_DAY = "2026-01-03"
QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


def prepare(sites_src: Path) -> Path:
    for path in (DEMO_HOME, DEMO_SITES_DIR):
        shutil.rmtree(path, ignore_errors=True)
    DEMO_HOME.mkdir(parents=True)
    (DEMO_HOME / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    data = yaml.safe_load(sites_src.read_text())
    data["storage_root"] = str(DEMO_SITES_DIR / "storage")
    DEMO_SITES_DIR.mkdir(parents=True)
    sites = DEMO_SITES_DIR / "sites.yaml"
    sites.write_text(yaml.safe_dump(data, sort_keys=False))
    os.environ["DAGSTER_HOME"] = str(DEMO_HOME)
    os.environ["GRAVITY_SITES"] = str(sites)
    os.environ["DAGSTER_DISABLE_TELEMETRY"] = "1"
    return sites


def say(message: str) -> None:
    print(f"[demo {time.strftime('%H:%M:%S')}] {message}", flush=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Run the dagster-gravity demo")
    parser.add_argument("--size", default="2MB", help="raw events per day (e.g. 200KB, 2MB, 200MB)")
    parser.add_argument("--sites", default="sites.yaml")
    args = parser.parse_args(argv)
    started = time.time()
    sites = prepare(Path(args.sites))

    # Imported after the environment points at the demo topology and home.
    from dagster import DagsterInstance, build_sensor_context, execute_job
    from dagster._core.definitions.reconstruct import ReconstructableRepository

    from dagster_gravity.topology import Topology
    from pipelines import report
    from pipelines.datagen import generate
    from pipelines.definitions import defs
    from pipelines.training import MODEL_NAME

    topology = Topology.from_yaml(sites)
    repo = ReconstructableRepository.for_module("pipelines.definitions", "defs", working_directory=str(ROOT))
    landing_sizes: dict[tuple[str, str], tuple[str, int]] = {}

    def land(date: str, drift: float = 0.0) -> None:
        for f in generate(topology, date, args.size, drift):
            landing_sizes[(f"raw_{f.dataset}", date)] = (f.site, f.size_bytes)
            say(f"  landed {f.dataset:13} {date} at {f.site:14} {f.size_bytes:>11,d} B")

    run_ids: list[str] = []

    def sensor_resources(sensor) -> dict:
        """The top-level resources a sensor takes, as Dagster's code server passes them."""
        return {k: v for k, v in defs.resources.items() if k in sensor.required_resource_keys}

    def launch(job_name: str, partition: str, tags: dict | None = None) -> None:
        t = time.time()
        with execute_job(
            repo.get_reconstructable_job(job_name), instance=instance,
            tags={**(tags or {}), "dagster/partition": partition},
            run_config=QUIET,  # the event log keeps everything; the console only warnings
        ) as result:
            run_ids.append(result.run_id)
            status = "ok" if result.success else "FAILED"
            say(f"  {job_name} [{partition}] {status} in {time.time() - t:.1f}s (run {result.run_id[:8]})")
            if not result.success:
                for event in result.all_events:
                    if event.is_failure:
                        print(event.message, file=sys.stderr)
                raise SystemExit(f"demo run {job_name} [{partition}] failed")

    with DagsterInstance.get() as instance:
        say(f"generating {len(DAYS)} days of data ({args.size} of events per day) at the sites")
        for day in DAYS:
            land(day)
        say("materializing everything with the gravity executor")
        for day in DAYS:
            launch("everything_job", day)

        say(f"new data for {NEW_DAY} arrives (with drifted user behaviour)")
        land(NEW_DAY, drift=1.0)
        sensors = {s.name: s for s in defs.sensors}
        for name in ("landing_aws_us_east_1_sensor", "landing_eu_colo_sensor", "landing_onprem_dc_sensor"):
            sensor = sensors[name]
            with build_sensor_context(instance=instance, definitions=defs, resources=sensor_resources(sensor)) as ctx:
                requests = sensor.evaluate_tick(ctx).run_requests or []
            say(f"sensor {name}: {len(requests)} run request(s) {[r.run_key for r in requests]}")
            for r in requests:
                launch(sensor.job_name, r.partition_key, {**r.tags, "dagster/run_key": r.run_key, "dagster/sensor_name": name})

        drift = sensors["feature_drift_sensor"]
        with build_sensor_context(instance=instance, definitions=defs, resources=sensor_resources(drift)) as ctx:
            result = drift.evaluate_tick(ctx)
        requests = result.run_requests or []
        say(f"drift sensor: {len(requests)} retrain request(s) {[r.tags.get('gravity/drift') for r in requests]}")
        for r in requests:
            launch(drift.job_name, r.partition_key, {**r.tags, "dagster/run_key": r.run_key, "dagster/sensor_name": drift.name})

        store = defs.resources["checkpoints"].store()  # the pipeline's own GravityCheckpoints
        current = store.promoted(MODEL_NAME)
        version = store.manifest(MODEL_NAME, current)
        promoted = {
            "checkpoint": version.label,
            "sha256": version.sha256[:16] + "...",
            "trained on": ", ".join(version.lineage.get("partitions", [])),
            "warm-started from": f"v{version.parent}" if version.parent else "-",
            "versions kept": ", ".join(f"v{v}" for v in store.versions(MODEL_NAME)),
            "promotions": " -> ".join(f"v{e['version']}" for e in store.promotion_history(MODEL_NAME)),
            **{k: f"{v:.4f}" for k, v in sorted(version.metrics.items()) if k.startswith("eval_") and k != "eval_rows"},
        }
        print(report.render(topology, instance, run_ids, defs.resolve_asset_graph(), landing_sizes, promoted))
    say(f"done in {time.time() - started:.0f}s. Browse it with `make ui` (it opens this instance), or:")
    print(f"  DAGSTER_HOME={DEMO_HOME.relative_to(ROOT)} GRAVITY_SITES={sites.relative_to(ROOT)} "
          ".venv/bin/dagster dev -w workspace.yaml")
    return 0


if __name__ == "__main__":
    sys.exit(main())
