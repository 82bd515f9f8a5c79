"""Suite-wide settings and fixtures.

The fixtures live in tests/support/ and are registered here as plugins, so every test
module sees them by name; test modules import only plain helpers from tests/support/.
"""

import os

from hypothesis import settings

pytest_plugins = [
    "tests.support.instance",  # dagster_home, instance
    "tests.support.s3",  # seaweedfs (session), s3_buckets
    "tests.support.dask_cluster",  # dask_cluster (module)
    "tests.support.pipeline",  # pipeline_sites
    "tests.support.executor_runs",  # gravity
]

# CI runs the property tests derandomized (a failure reproduces from one run to the next)
# and without an example database in the clone.
settings.register_profile("ci", derandomize=True, database=None)
if os.environ.get("CI"):
    settings.load_profile("ci")
