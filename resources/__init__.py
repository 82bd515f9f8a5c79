"""The reference project's configured resources: the library's, plus what is ours.

`project_resources(sites)` binds one `GravityTopology` at top level (`gravity_topology`, for
the raw assets and the landing sensors) and hands the same resource to the IO manager and
to the checkpoint store, so every part of a run uses one topology: with `sites` None, the
gravity executor's sites file in a run, else $GRAVITY_SITES, else ./sites.yaml, resolved
when a resource is used (importing the code location never reads or writes the environment).

Project-specific: where the checkpoints live (`CHECKPOINT_SITE`) and the landing areas.
"""

from __future__ import annotations

from dagster_gravity import GravityCheckpoints, GravityIOManager, GravityTopology
from resources.landing import LandingArea

CHECKPOINT_SITE = "onprem-dc"  # the models train on the on-prem GPUs; keep them there


def landing_area(topology: GravityTopology, site: str) -> LandingArea:
    """The landing area of `site` in the topology the resource resolves now."""
    return LandingArea(topology.load(), site)


def project_resources(sites: str | None = None) -> dict:
    """The resources; `sites` None: the topology follows the executor (else $GRAVITY_SITES,
    else ./sites.yaml) when it is used."""
    topology = GravityTopology(sites_file=sites or None)
    return {
        "gravity_topology": topology,
        "io_manager": GravityIOManager(topology=topology, default_site=CHECKPOINT_SITE),
        "checkpoints": GravityCheckpoints(topology=topology, site=CHECKPOINT_SITE),
    }
