"""The job tests/test_postgres_instance.py runs on Dask workers against a Postgres instance.

Three assets through the real `GravityIOManager` (local site storage), so what the run leaves
in the instance is what a deployment's run leaves: materializations with their site, a
replication between sites (and the link measurement the worker records), a retried step.

- `raw_at_onprem` is pinned to the onprem site;
- `flaky_features` is not pinned (placement puts it next to its input) and fails its first
  attempt on purpose; its RetryPolicy runs it again;
- `report_at_aws` is pinned to the cloud site, so its input is copied onprem -> aws.
"""


import numpy as np
from dagster import AssetExecutionContext, Definitions, RetryPolicy, asset, define_asset_job

from dagster_gravity import GravityIOManager, gravity_executor
from dagster_gravity.metadata import TAG_PIN
from tests.support.dask_jobs import AWS, ONPREM

N = 150_000  # float64 values: 1.2 MB, just above link_measurements.MIN_BYTES (a measured copy)
FIRST_ATTEMPT_ERROR = "flaky_features fails its first attempt on purpose"


@asset(op_tags={TAG_PIN: ONPREM})
def raw_at_onprem() -> np.ndarray:
    return np.arange(N, dtype=np.float64)


@asset(retry_policy=RetryPolicy(max_retries=1))
def flaky_features(context: AssetExecutionContext, raw_at_onprem: np.ndarray) -> np.ndarray:
    if context.retry_number == 0:
        raise RuntimeError(FIRST_ATTEMPT_ERROR)
    return raw_at_onprem * 2.0


@asset(op_tags={TAG_PIN: AWS})
def report_at_aws(flaky_features: np.ndarray) -> float:
    return float(flaky_features.sum())


defs = Definitions(
    assets=[raw_at_onprem, flaky_features, report_at_aws],
    jobs=[define_asset_job("postgres_job", executor_def=gravity_executor)],
    resources={"io_manager": GravityIOManager()},
)


def postgres_job():
    """The job, rebuilt by name wherever it is reconstructed (the test, each Dask worker)."""
    return defs.resolve_job_def("postgres_job")
