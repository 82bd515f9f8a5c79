"""The reference project's configured resources: which topology, which storage per site.

- `SitesResource`: the sites file; gives the topology and each site's landing area.
- `CheckpointsResource`: the model checkpoint store, kept at the site with the GPUs.
- `site_io_manager(...)`: the IO manager that writes each asset where its step runs.
"""

from __future__ import annotations

import os

from dagster import ConfigurableResource, EnvVar

from dagster_gravity.checkpoints import CheckpointStore
from dagster_gravity.io_manager import GravityIOManager
from dagster_gravity.topology import Topology, default_sites_path
from resources.landing import LandingArea

CHECKPOINT_SITE = "onprem-dc"  # the models train on the on-prem GPUs; keep them there


SITES_ENV = "GRAVITY_SITES"


def sites_file() -> str:
    """$GRAVITY_SITES or sites.yaml, as an absolute path (worker processes may chdir)."""
    return os.path.abspath(default_sites_path())


def ensure_sites_env() -> str:
    """Export $GRAVITY_SITES (default: ./sites.yaml, absolute) so that resources, sensors
    and the executor all resolve the topology from the environment when they run, not when
    the code location was imported: a test or the demo can point them at another topology."""
    os.environ.setdefault(SITES_ENV, sites_file())
    return os.environ[SITES_ENV]


class SitesResource(ConfigurableResource):
    sites_file: str

    def topology(self) -> Topology:
        return Topology.from_yaml(self.sites_file)

    def landing(self, site: str) -> LandingArea:
        return LandingArea(self.topology(), site)


class CheckpointsResource(ConfigurableResource):
    sites_file: str
    site: str = CHECKPOINT_SITE
    prefix: str = "checkpoints"

    def store(self) -> CheckpointStore:
        return CheckpointStore.for_site(Topology.from_yaml(self.sites_file), self.site, self.prefix)


def site_io_manager(sites_file, default_site: str = CHECKPOINT_SITE) -> GravityIOManager:
    """Each asset is written where its step runs (the gravity executor says where)."""
    return GravityIOManager(sites_file=sites_file, default_site=default_site)


def project_resources(sites: str | None = None) -> dict:
    """The resources, reading the sites file from $GRAVITY_SITES at run time unless given."""
    ensure_sites_env()
    sites_value = sites if sites else EnvVar(SITES_ENV)
    return {
        "io_manager": site_io_manager(sites_value),
        "sites": SitesResource(sites_file=sites_value),
        "checkpoints": CheckpointsResource(sites_file=sites_value),
    }
