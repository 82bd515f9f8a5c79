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


class CheckpointError(GravityError):
    """A checkpoint operation that cannot be done as asked (`dagster_gravity.checkpoints`)."""


def short_repr(value: object, limit: int = 80) -> str:
    """`repr(value)` cut to about `limit` characters, for error messages.

    Bounded in time as well as length: `reprlib` stops at a few items and levels, so a
    huge or alias-expanded value (a YAML bomb is a small graph of shared lists) is never
    walked in full before being cut."""
    import reprlib

    shortener = reprlib.Repr()
    shortener.maxlevel, shortener.maxlist, shortener.maxtuple = 3, 6, 6
    shortener.maxdict, shortener.maxset, shortener.maxfrozenset = 6, 6, 6
    shortener.maxstring = shortener.maxother = shortener.maxlong = limit
    try:
        text = shortener.repr(value)
    except Exception:  # noqa: BLE001 - a broken __repr__ must not hide the real error
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."
