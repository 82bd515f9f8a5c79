"""dagster-gravity: data-local ML pipelines for Dagster.

`Topology` and the placement engine import without Dagster; `gravity_executor`, the IO
manager and the resources (`GravityTopology`, `GravityCheckpoints`) are loaded on first use
so `dagster_gravity.placement` stays cheap to import.
"""

from dagster_gravity.errors import GravityConfigError, GravityError
from dagster_gravity.topology import Topology, TopologyError

__all__ = [
    "GravityError",
    "GravityConfigError",
    "Topology",
    "TopologyError",
    "gravity_executor",
    "GravityIOManager",
    "GravityTopology",
    "GravityCheckpoints",
]


def __getattr__(name):
    if name == "gravity_executor":
        from dagster_gravity.executor import gravity_executor

        return gravity_executor
    if name == "GravityIOManager":
        from dagster_gravity.io_manager import GravityIOManager

        return GravityIOManager
    if name == "GravityTopology":
        from dagster_gravity.resources import GravityTopology

        return GravityTopology
    if name == "GravityCheckpoints":
        from dagster_gravity.resources import GravityCheckpoints

        return GravityCheckpoints
    raise AttributeError(f"module 'dagster_gravity' has no attribute {name!r}")
