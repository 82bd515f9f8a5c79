"""Runs that write one asset and stop in the window between the storage commit and Dagster's
record of the materialization (issue 11's overwrite windows), for tests/test_recorded_versions.py.

`WindowIOManager` is GravityIOManager with hooks a test uses to hit that window exactly: an
optional file barrier before the write (so two concurrent runs write together), and after
`super().handle_output` returns (the bytes are committed, Dagster has recorded nothing yet) a
marker file and a sleep, during which the test kills the run or locks the instance database.

Command line (the test starts these as real processes; DAGSTER_HOME comes from the environment):

    python -m tests.support.recorded_writer run --sites S --tag T [--marker M --hold S]
        [--busy-timeout S]
        one run materializing `payload` with `payload_value(T)`; prints a JSON summary line.
    python -m tests.support.recorded_writer race --sites S --rounds N --barrier-dir D
        N rounds of two concurrent runs (forked from this process, so dagster is imported
        once), tags r<i>-a and r<i>-b; after each round prints a JSON line and waits for a
        line on stdin before the next (the test checks the instance in between).
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Optional

from dagster import Config, DagsterInstance, Definitions, OutputContext, asset, materialize

from dagster_gravity import GravityIOManager, GravityTopology

ASSET = "payload"
SITE = "local"
BARRIER_TIMEOUT_S = 60.0


def payload_value(tag: str) -> dict:
    """The JSON value a run tagged `tag` writes (distinct per tag, a few KB)."""
    return {"tag": tag, "data": [f"{tag}:{i}" for i in range(200)]}


class PayloadConfig(Config):
    tag: str


@asset(name=ASSET)
def payload(config: PayloadConfig) -> dict:
    return payload_value(config.tag)


def write_local_sites(directory: Path) -> Path:
    """A sites file with one local site, `local`, storing under <directory>/store."""
    path = Path(directory) / "sites.yaml"
    path.write_text(
        f"sites:\n  - name: {SITE}\n    region: here\n    kind: onprem\n"
        f"    storage: {{kind: local, path: {Path(directory, 'store').resolve()}}}\n"
        "    pools:\n      - {name: cpu, slots: 1}\n"
    )
    return path


def write_instance_yaml(home: Path) -> None:
    """dagster.yaml for these runs: telemetry off, and no compute-log capture (it starts
    `tail` and a Python watcher per step, which a SIGKILLed run would leave behind)."""
    home.mkdir(parents=True, exist_ok=True)
    (home / "dagster.yaml").write_text(
        "telemetry:\n  enabled: false\n"
        "compute_logs:\n  module: dagster._core.storage.noop_compute_log_manager\n"
        "  class: NoOpComputeLogManager\n"
    )


def user_io_manager(sites: Path) -> GravityIOManager:
    """The plain IO manager a user would configure for these runs and reads."""
    return GravityIOManager(topology=GravityTopology(sites_file=str(sites)), default_site=SITE)


def user_definitions(sites: Path) -> Definitions:
    return Definitions(assets=[payload], resources={"io_manager": user_io_manager(sites)})


def wait_at_barrier(directory: str, parties: int, name: str) -> None:
    """Arrive (create <directory>/<name>) and wait until `parties` have arrived."""
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).touch()
    deadline = time.monotonic() + BARRIER_TIMEOUT_S
    while len(list(folder.iterdir())) < parties:
        if time.monotonic() > deadline:
            raise TimeoutError(f"barrier {directory}: {len(list(folder.iterdir()))} of {parties} arrived")
        time.sleep(0.001)


class WindowIOManager(GravityIOManager):
    """GravityIOManager that can wait for its peers before writing, and that announces the
    moment its write is committed but not yet recorded (and then sleeps there)."""

    barrier_dir: Optional[str] = None
    barrier_parties: int = 2
    marker: Optional[str] = None
    hold_s: float = 0.0

    def handle_output(self, context: OutputContext, obj: Any) -> None:
        if self.barrier_dir:
            wait_at_barrier(self.barrier_dir, self.barrier_parties, f"{os.getpid()}")
        super().handle_output(context, obj)
        if self.marker:  # committed in storage; Dagster records it only after we return
            tmp = Path(self.marker + ".tmp")
            tmp.write_text(json.dumps({"run_id": context.run_id, "pid": os.getpid()}))
            tmp.replace(self.marker)
            time.sleep(self.hold_s)


def run_once(sites: Path, tag: str, **window) -> dict:
    """Materialize `payload` with tag `tag` on the instance at $DAGSTER_HOME; a summary."""
    io = WindowIOManager(topology=GravityTopology(sites_file=str(sites)), default_site=SITE, **window)
    with DagsterInstance.get() as instance:
        result = materialize(
            [payload],
            instance=instance,
            resources={"io_manager": io},
            run_config={"ops": {ASSET: {"config": {"tag": tag}}}},
            raise_on_error=False,
        )
        errors = [
            e.event_specific_data.error.to_string()
            for e in result.all_events
            if e.is_step_failure and e.event_specific_data and e.event_specific_data.error
        ]
    return {"tag": tag, "run_id": result.run_id, "success": result.success, "errors": errors}


def _race_round(sites: Path, barrier_root: Path, number: int) -> dict:
    barrier = barrier_root / f"round-{number}"
    children = {}
    for writer in ("a", "b"):
        tag = f"r{number}-{writer}"
        pid = os.fork()
        if pid == 0:  # the child: one whole Dagster run, then exit without the parent's cleanup
            code = 1
            try:
                summary = run_once(sites, tag, barrier_dir=str(barrier))
                Path(barrier_root, f"{tag}.json").write_text(json.dumps(summary))
                code = 0
            except BaseException as exc:  # noqa: BLE001 - reported to the parent through the exit code
                Path(barrier_root, f"{tag}.json").write_text(json.dumps({"tag": tag, "crash": repr(exc)}))
            finally:
                os._exit(code)
        children[tag] = pid
    for pid in children.values():
        os.waitpid(pid, 0)
    return {tag: json.loads(Path(barrier_root, f"{tag}.json").read_text()) for tag in children}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="recorded_writer")
    parser.add_argument("mode", choices=["run", "race"])
    parser.add_argument("--sites", type=Path, required=True)
    parser.add_argument("--tag", default="t")
    parser.add_argument("--marker")
    parser.add_argument("--hold", type=float, default=0.0)
    parser.add_argument("--busy-timeout", type=float)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--barrier-dir", type=Path)
    args = parser.parse_args(argv)
    if args.busy_timeout is not None:
        # SQLite's busy timeout for the event log (Dagster's is 30 s): what a locked
        # database does is the same, the test just need not wait that long for it.
        from dagster._core.storage.event_log.sqlite import sqlite_event_log

        sqlite_event_log.SQLITE_BUSY_TIMEOUT_SECONDS = args.busy_timeout
    if args.mode == "run":
        print(json.dumps(run_once(args.sites, args.tag, marker=args.marker, hold_s=args.hold)), flush=True)
        return 0
    # Warm the imports Dagster makes lazily on a first run (~0.5 s) once, in memory, so each
    # forked run does not pay for them: a round then takes about as long as one run.
    materialize([payload], run_config={"ops": {ASSET: {"config": {"tag": "warm-up"}}}})
    for number in range(args.rounds):
        print(json.dumps(_race_round(args.sites, args.barrier_dir, number)), flush=True)
        if not sys.stdin.readline():
            return 0  # the test has stopped listening
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
