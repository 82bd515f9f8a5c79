"""What a running step knows about where it is.

The pool backend that runs a step sets its site here (a worker process is pinned to one
site; a Dask worker may run several steps in threads, hence a context variable). IO
managers ask `current_site()` to know where to write and whether an input is local.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
from typing import Iterator

from dagster_gravity.metadata import ENV_SITE

_site: contextvars.ContextVar[str | None] = contextvars.ContextVar("gravity_site", default=None)


def current_site() -> str | None:
    """The site the current step runs at: set by the pool backend, else $GRAVITY_SITE."""
    return _site.get() or os.environ.get(ENV_SITE) or None


@contextlib.contextmanager
def running_at(site: str) -> Iterator[None]:
    token = _site.set(site)
    try:
        yield
    finally:
        _site.reset(token)
