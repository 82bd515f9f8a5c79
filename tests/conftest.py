"""Suite-wide settings, fixtures and markers.

The fixtures live in tests/support/ and are registered here as plugins, so every test
module sees them by name; test modules import only plain helpers from tests/support/.

Markers (registered in pyproject.toml): a test that uses one of the FIXTURE_MARKS fixtures,
directly or through another fixture, gets its marks here; other tests that start processes
or run Dagster jobs are marked in their modules. A test that starts a process without the
`slow` mark fails, so `pytest -m "not slow"` stays a quick run of in-process tests.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from hypothesis import settings

pytest_plugins = [
    "tests.support.instance",  # dagster_home, instance
    "tests.support.s3",  # seaweedfs (session), s3_buckets
    "tests.support.dask_cluster",  # dask_cluster (module)
    "tests.support.postgres",  # postgres (module)
    "tests.support.pipeline",  # pipeline_sites
    "tests.support.executor_runs",  # gravity
    "tests.support.browser",  # chromium (module)
]

# CI runs the property tests derandomized (a failure reproduces from one run to the next)
# and without an example database in the clone.
settings.register_profile("ci", derandomize=True, database=None)
if os.environ.get("CI"):
    settings.load_profile("ci")


FIXTURE_MARKS = {
    "seaweedfs": ("slow", "s3"),
    "dask_cluster": ("slow", "dask"),
    "postgres": ("slow", "postgres"),
    "gravity": ("slow", "executor"),
    "chromium": ("slow", "browser"),
}


def pytest_collection_modifyitems(items):
    for item in items:
        used = set(getattr(item, "fixturenames", ()))
        for fixture, marks in FIXTURE_MARKS.items():
            if fixture in used:
                for mark in marks:
                    item.add_marker(mark)


# -- a test that starts a process must be marked slow ------------------------------------
# Audit events (PEP 578) that Python raises when it starts a process: subprocess, fork
# (multiprocessing's fork context, the executor's local workers), os.system/exec/spawn.

PROCESS_EVENTS = frozenset(
    {"subprocess.Popen", "os.fork", "os.forkpty", "os.posix_spawn", "os.spawn", "os.system", "os.exec"}
)
_started: list[str] | None = None  # process starts seen while a test not marked slow runs


def _audit(event: str, args: tuple) -> None:
    if _started is not None and event in PROCESS_EVENTS:
        _started.append(f"{event} {args[:2]!r}"[:200])


sys.addaudithook(_audit)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item):
    global _started
    _started = None if item.get_closest_marker("slow") else []
    return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    global _started
    try:
        result = yield
    finally:
        started, _started = _started, None
    if started:
        pytest.fail(
            f"{item.nodeid} starts processes but is not marked slow: mark it @pytest.mark.slow "
            f"(or use a fixture of FIXTURE_MARKS in tests/conftest.py). Started: {started[:3]}",
            pytrace=False,
        )
    return result


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item, nextitem):
    global _started
    _started = None  # setup failed (no call phase), or teardown: not recorded
    return (yield)


# -- the code under test is this checkout's --------------------------------------------
# An editable install of another checkout in the same venv serves any module this checkout
# lacks (its finder comes after sys.path), so a test could pass on someone else's code.

REPO = Path(__file__).resolve().parents[1]
PROJECT_PACKAGES = ("dagster_gravity", "pipelines", "resources", "sensors", "tests")


def pytest_sessionfinish(session, exitstatus):
    elsewhere = sorted(
        f"{name} ({module.__file__})"
        for name, module in list(sys.modules.items())
        if name.split(".")[0] in PROJECT_PACKAGES
        and getattr(module, "__file__", None)
        and not Path(module.__file__).resolve().is_relative_to(REPO)
    )
    if elsewhere:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        message = f"project modules imported from outside {REPO}: " + ", ".join(elsewhere)
        if reporter is not None:
            reporter.write_line("")  # after the progress line
            reporter.write_line(message, red=True)
        else:
            print(message, file=sys.stderr)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
