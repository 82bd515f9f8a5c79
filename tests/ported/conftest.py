"""Fixtures of the ported Dagster executor tests: a real Dagster instance on disk per test
(its own DAGSTER_HOME, telemetry off) and a gravity topology of one local site.

Creating an instance's sqlite storages costs about half a second, so each test gets a copy
of one pristine DAGSTER_HOME initialised once per session: a fresh, unused instance on disk
all the same.
"""

import shutil
from pathlib import Path

import pytest
from dagster import DagsterInstance

from tests.ported.support import RunConfigs, write_sites

DAGSTER_YAML = "telemetry:\n  enabled: false\n"


def _write_home(home: Path, extra_yaml: str = "") -> Path:
    home.mkdir(parents=True, exist_ok=True)
    (home / "dagster.yaml").write_text(DAGSTER_YAML + extra_yaml)
    return home


@pytest.fixture(scope="session")
def pristine_dagster_home(tmp_path_factory) -> Path:
    """A DAGSTER_HOME whose storages exist and hold nothing (never used by a test)."""
    home = _write_home(tmp_path_factory.mktemp("pristine") / "dagster_home")
    DagsterInstance.from_config(str(home)).dispose()
    return home


@pytest.fixture
def dagster_home(tmp_path, monkeypatch, pristine_dagster_home) -> Path:
    home = tmp_path / "dagster_home"
    shutil.copytree(pristine_dagster_home, home)
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    return home

# `instance` is the suite's own fixture (tests/support/instance.py): it opens the instance of
# whichever `dagster_home` is in scope, here the copy above.


@pytest.fixture
def sites_file(tmp_path) -> Path:
    """One local site with four slots in one compute pool."""
    return write_sites(tmp_path / "gravity")


@pytest.fixture
def run_config(sites_file) -> RunConfigs:
    """`run_config(executor, base=None, **executor_config)` -> run config for that executor."""
    return RunConfigs(sites_file)


@pytest.fixture
def instance_with_event_log(tmp_path, monkeypatch):
    """`instance_with_event_log(yaml)`: an on-disk instance whose dagster.yaml also holds
    `yaml` (an event_log_storage override, as some originals use; `{base_dir}` in it is a
    folder of this test)."""
    opened = []

    def make(extra_yaml: str):
        home = _write_home(tmp_path / "dagster_home", extra_yaml.replace("{base_dir}", str(tmp_path / "event_log")))
        monkeypatch.setenv("DAGSTER_HOME", str(home))
        inst = DagsterInstance.get()
        opened.append(inst)
        return inst

    yield make
    for inst in opened:
        inst.dispose()
