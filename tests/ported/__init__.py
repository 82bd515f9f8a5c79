"""Dagster's own executor tests, ported to run under both `multiprocess_executor` and
`gravity_executor` (see support.py and each module's docstring for its origin)."""
