"""The reference project's configured resources: which topology, which storage per site.

- `SitesResource`: the sites file; gives the topology and each site's landing area.
- `CheckpointsResource`: the model checkpoint store, kept at the site with the GPUs.
- `site_io_manager(...)`: the IO manager that writes each asset where its step runs.
"""

from __future__ import annotations

import os
from typing import Optional

from dagster import ConfigurableResource

from dagster_gravity.checkpoints import CheckpointStore
from dagster_gravity.io_manager import GravityIOManager, load_topology
from dagster_gravity.topology import Topology, default_sites_path
from resources.landing import LandingArea

CHECKPOINT_SITE = "onprem-dc"  # the models train on the on-prem GPUs; keep them there


SITES_ENV = "GRAVITY_SITES"


def resolve_sites_file(configured: str | None = None) -> str:
    """The sites file, absolute: `configured` if given, else $GRAVITY_SITES, else
    ./sites.yaml. Called when a resource is *used* (in the run, on its worker), never at
    import, and never writes the environment: importing the code location leaves
    os.environ as it was, and a run sees the $GRAVITY_SITES of its own process."""
    return os.path.abspath(configured or default_sites_path())


class SitesResource(ConfigurableResource):
    sites_file: Optional[str] = None  # None: resolved when used (see `resolve_sites_file`)

    def topology(self) -> Topology:
        return Topology.from_yaml(resolve_sites_file(self.sites_file))

    def landing(self, site: str) -> LandingArea:
        return LandingArea(self.topology(), site)


class CheckpointsResource(ConfigurableResource):
    sites_file: Optional[str] = None  # None: resolved when used (see `resolve_sites_file`)
    site: str = CHECKPOINT_SITE
    prefix: str = "checkpoints"

    def store(self) -> CheckpointStore:
        return CheckpointStore.for_site(Topology.from_yaml(resolve_sites_file(self.sites_file)), self.site, self.prefix)


class ProjectIOManager(GravityIOManager):
    """GravityIOManager whose sites file, when not configured, is resolved when used."""

    sites_file: Optional[str] = None  # type: ignore[assignment]

    def topology(self) -> Topology:
        return load_topology(resolve_sites_file(self.sites_file))


def site_io_manager(sites_file: str | None = None, default_site: str = CHECKPOINT_SITE) -> GravityIOManager:
    """Each asset is written where its step runs (the gravity executor says where)."""
    return ProjectIOManager(sites_file=sites_file, default_site=default_site)


def project_resources(sites: str | None = None) -> dict:
    """The resources; `sites` None: $GRAVITY_SITES (else ./sites.yaml) when they are used."""
    sites_value = sites or None
    return {
        "io_manager": site_io_manager(sites_value),
        "sites": SitesResource(sites_file=sites_value),
        "checkpoints": CheckpointsResource(sites_file=sites_value),
    }
