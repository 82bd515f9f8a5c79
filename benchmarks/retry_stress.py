"""Retries without a delay, over and over: does any run crash?

    .venv/bin/python benchmarks/retry_stress.py              # 50 runs
    .venv/bin/python benchmarks/retry_stress.py --runs 200

Each run is `flaky_job` of tests/support/retry_jobs.py under the gravity executor: four
assets with `RetryPolicy(max_retries=2)` (no delay) that fail twice each before they
succeed, then one asset downstream of all four, on the three-site test topology. That is
the case in which an attempt's late end used to be credited to its retry
(`DagsterUnknownStepStateError`, "not known to be in flight"). A run counts as good when it
succeeds with exactly two STEP_UP_FOR_RETRY and one STEP_SUCCESS per flaky asset; the
script prints the counts and exits 1 if any run was not good.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50)
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="gravity-retry-stress-"))
    home = work / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    os.environ["DAGSTER_HOME"] = str(home)
    attempts = work / "attempts"
    attempts.mkdir()

    from dagster import DagsterEventType, DagsterInstance, execute_job, reconstructable

    from tests.support import jobs, retry_jobs

    os.environ[retry_jobs.ATTEMPTS_ENV] = str(attempts)
    sites = jobs.write_test_sites(work)
    run_config = {"execution": {"config": {"sites_file": str(sites), "locality_wait": 0.0}}}
    outcomes: Counter[str] = Counter()
    seconds = []
    with DagsterInstance.get() as instance:
        for i in range(args.runs):
            for path in attempts.iterdir():
                path.unlink()
            started = time.monotonic()
            result = execute_job(reconstructable(retry_jobs.flaky), instance=instance, run_config=run_config, raise_on_error=False)
            seconds.append(time.monotonic() - started)
            events = Counter((e.step_key, e.event_type) for e in result.all_events)
            good = result.success and all(
                events[(a.key.to_user_string(), DagsterEventType.STEP_UP_FOR_RETRY)] == retry_jobs.FAILS_BEFORE_SUCCESS
                and events[(a.key.to_user_string(), DagsterEventType.STEP_SUCCESS)] == 1
                for a in retry_jobs.FLAKY
            )
            if good:
                outcomes["good"] += 1
            else:
                failure = next((e.message for e in result.all_events if e.event_type == DagsterEventType.RUN_FAILURE), "")
                outcomes["crashed" if "exception was thrown" in failure else "wrong counts"] += 1
                print(f"run {i}: not good: {failure[:300]}", file=sys.stderr)
    seconds.sort()
    print(f"{args.runs} runs of flaky_job (4 assets x 2 retries without delay): {outcomes['good']} good, "
          f"{outcomes['crashed']} crashed, {outcomes['wrong counts']} with wrong retry counts; "
          f"median {seconds[len(seconds) // 2]:.2f} s per run")
    return 0 if outcomes["good"] == args.runs else 1


if __name__ == "__main__":
    sys.exit(main())
