"""A job whose EU-resident output must be stored by the topology it was placed by: the
gravity executor and `GravityIOManager` each find the sites file, and must find the same one."""

from __future__ import annotations

import os

import pandas as pd
from dagster import Definitions, asset, define_asset_job

from dagster_gravity import GravityIOManager, GravityTopology, gravity_executor
from dagster_gravity.metadata import RESIDENCY

EXPLICIT_ENV = "GRAVITY_TEST_IO_SITES_FILE"  # when set, the IO manager's topology names it


@asset(metadata={RESIDENCY: "eu"})
def eu_table() -> pd.DataFrame:
    return pd.DataFrame({"customer": [1, 2, 3]})


def _defs(topology: GravityTopology) -> Definitions:
    return Definitions(
        assets=[eu_table],
        jobs=[define_asset_job("eu_job", selection=[eu_table], executor_def=gravity_executor)],
        resources={"io_manager": GravityIOManager(topology=topology)},
    )


def following_job():
    """The IO manager's topology follows the run (no file of its own)."""
    return _defs(GravityTopology()).resolve_job_def("eu_job")


def explicit_job():
    """The IO manager's topology names a file of its own ($GRAVITY_TEST_IO_SITES_FILE)."""
    return _defs(GravityTopology(sites_file=os.environ[EXPLICIT_ENV])).resolve_job_def("eu_job")
