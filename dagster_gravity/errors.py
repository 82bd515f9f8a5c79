"""The errors dagster-gravity raises on purpose. Pure Python: no Dagster import.

Everything the plugin raises deliberately derives from `GravityError`, so callers (the
executor above all) can tell "this input or situation is refused, and the message says
why" from a bug: the executor reports a `GravityError` as "cannot place step", and lets
anything else surface as the unexpected error it is.

`GravityConfigError` is also a `ValueError`, the usual Python type for bad input.
"""

from __future__ import annotations


class GravityError(Exception):
    """Base of every error dagster-gravity raises on purpose."""


class GravityConfigError(GravityError, ValueError):
    """Bad configuration or input: a sites file, executor or resource config, an op tag,
    location metadata. The message names the thing, the value and what was expected."""
