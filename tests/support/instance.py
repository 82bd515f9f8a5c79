"""A real Dagster instance on disk for tests (telemetry off)."""

from __future__ import annotations

from pathlib import Path

import pytest
from dagster import DagsterInstance


def write_dagster_yaml(home: Path) -> None:
    home.mkdir(parents=True, exist_ok=True)
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")


@pytest.fixture
def dagster_home(tmp_path, monkeypatch) -> Path:
    home = tmp_path / "dagster_home"
    write_dagster_yaml(home)
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    return home


@pytest.fixture
def instance(dagster_home):
    with DagsterInstance.get() as inst:
        yield inst
