"""dagster-gravity: data-local ML pipelines for Dagster.

`Topology` and the placement engine import without Dagster; `gravity_executor` and the
IO manager are loaded on first use so `dagster_gravity.placement` stays cheap to import.
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
]


def __getattr__(name):
    if name == "gravity_executor":
        from dagster_gravity.executor import gravity_executor

        return gravity_executor
    if name == "GravityIOManager":
        from dagster_gravity.io_manager import GravityIOManager

        return GravityIOManager
    raise AttributeError(f"module 'dagster_gravity' has no attribute {name!r}")
