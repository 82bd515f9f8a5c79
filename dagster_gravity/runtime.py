"""What a running step knows about where it is: one channel, a context variable.

The pool backend that runs a step enters `running_at(site, sites_file)` around it (a worker
process is pinned to one site; a Dask worker may run several steps in threads, hence a
context variable rather than the process environment). It holds, together, the site the
step runs at and the sites file the gravity executor resolved for the run. IO managers ask
`current_site()` where to write and whether an input is local; `GravityTopology` asks
`run_sites_file()` so a step reads the same topology it was placed by.

Outside a gravity worker (in-process `materialize`, a sensor, a test) both are None.
This module has no Dagster import.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
from dataclasses import dataclass
from typing import Iterator

from dagster_gravity.errors import GravityConfigError


@dataclass(frozen=True)
class StepPlace:
    """Where the current step runs, and by which topology it was placed."""

    site: str
    sites_file: str | None = None  # absolute path the executor resolved for the run


_place: contextvars.ContextVar[StepPlace | None] = contextvars.ContextVar("gravity_step_place", default=None)


def current_site() -> str | None:
    """The site the current step runs at, as set by `running_at`; None outside a worker."""
    place = _place.get()
    return place.site if place is not None else None


def run_sites_file() -> str | None:
    """The sites file the gravity executor uses for the current step's run (absolute), or
    None when the step is not run under the gravity executor (or it did not say)."""
    place = _place.get()
    return place.sites_file if place is not None else None


@contextlib.contextmanager
def running_at(site: str, sites_file: str | None = None) -> Iterator[None]:
    """Run the enclosed code as a step at `site`, placed by the topology in `sites_file`
    (the absolute path the executor resolved for the run, or None)."""
    if not isinstance(site, str) or not site:
        raise GravityConfigError(f"running_at: site {site!r}; expected a site name")
    if sites_file is not None:
        sites_file = os.fspath(sites_file)
        if not os.path.isabs(sites_file):
            raise GravityConfigError(
                f"running_at: sites_file {sites_file!r} is relative; expected the absolute path the "
                "executor resolved (a worker's working directory may differ from the executor's)"
            )
    token = _place.set(StepPlace(site, sites_file))
    try:
        yield
    finally:
        _place.reset(token)
