"""The reference project's configured resources: which topology, which storage per site.

- `SitesResource`: the sites file; gives the topology and each site's landing area.
- `CheckpointsResource`: the model checkpoint store, kept at the site with the GPUs.
- `site_io_manager(...)`: the IO manager that writes each asset where its step runs.
"""

from __future__ import annotations

import os

from dagster import ConfigurableResource

from dagster_gravity.checkpoints import CheckpointStore
from dagster_gravity.topology import Topology, default_sites_path
from resources.landing import LandingArea

CHECKPOINT_SITE = "onprem-dc"  # the models train on the on-prem GPUs; keep them there


def sites_file() -> str:
    """$GRAVITY_SITES or sites.yaml, as an absolute path (worker processes may chdir)."""
    return os.path.abspath(default_sites_path())


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


def site_io_manager(sites_file: str, default_site: str = CHECKPOINT_SITE):
    """The site-aware IO manager (GravityIOManager once it exists, else the interim one)."""
    try:
        from dagster_gravity.io_manager import GravityIOManager
    except ImportError:
        from resources.interim_io import InterimSiteIOManager

        return InterimSiteIOManager(sites_file=sites_file, default_site=default_site)
    return GravityIOManager(sites_file=sites_file, default_site=default_site)


def project_resources(sites: str | None = None) -> dict:
    sites = sites or sites_file()
    return {
        "io_manager": site_io_manager(sites),
        "sites": SitesResource(sites_file=sites),
        "checkpoints": CheckpointsResource(sites_file=sites),
    }
