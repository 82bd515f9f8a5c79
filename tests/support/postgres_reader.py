"""Read one run back from the Dagster instance of $DAGSTER_HOME, in a process of its own.

`python -m tests.support.postgres_reader RUN_ID [--asset NAME]... [--kv KEY]...` opens a fresh `DagsterInstance.get()`
and prints, as one JSON object: the instance's storage classes, the run's status, every
Dagster event of the run (type, step, message, metadata as plain values), the latest
materialization's metadata of each asset, and the key-value store's entries asked for. The test of a
Postgres instance runs it with a DAGSTER_HOME of its own, so everything it prints came from
the database and nothing from files the run's processes wrote.
"""

from __future__ import annotations

import json
import sys


def _plain(metadata) -> dict:
    return {key: getattr(value, "value", value) for key, value in (metadata or {}).items()}


def read_run(instance, run_id: str, assets: list[str], kv_keys: list[str]) -> dict:
    from dagster import AssetKey

    run = instance.get_run_by_id(run_id)
    events = []
    for entry in instance.all_logs(run_id):
        event = entry.dagster_event
        if event is None:
            continue
        data = event.event_specific_data
        error = getattr(data, "error", None)
        events.append({
            "type": event.event_type_value,
            "step_key": event.step_key,
            "message": event.message,
            "metadata": _plain(getattr(data, "metadata", None)),
            "error": error.to_string() if error is not None else None,
        })
    materializations = {}
    for name in assets:
        record = instance.get_latest_materialization_event(AssetKey(name))
        materializations[name] = None if record is None else {
            "run_id": record.run_id,
            "metadata": _plain(record.asset_materialization.metadata),
        }
    return {
        "storage": {
            "run": type(instance.run_storage).__name__,
            "event_log": type(instance.event_log_storage).__name__,
            "schedule": type(instance.schedule_storage).__name__,
        },
        "run_status": None if run is None else run.status.value,
        "events": events,
        "materializations": materializations,
        "kv": instance.daemon_cursor_storage.get_cursor_values(set(kv_keys)),
    }


def main(argv: list[str]) -> int:
    import argparse

    from dagster import DagsterInstance

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_id")
    parser.add_argument("--asset", action="append", default=[], help="an asset whose latest materialization to read")
    parser.add_argument("--kv", action="append", default=[], help="a key of the instance's key-value store")
    args = parser.parse_args(argv)
    with DagsterInstance.get() as instance:
        print(json.dumps(read_run(instance, args.run_id, args.asset, args.kv), default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
