"""One topology for the whole run: the executor and the IO manager place and store by the
same sites file, or the run fails before any step, naming both files.

The case this guards: `GRAVITY_SITES=prod.yaml` with a stale ./sites.yaml in the working
directory. The IO manager used to default to the literal "sites.yaml" while the executor
honoured $GRAVITY_SITES, so an EU-resident output placed by prod.yaml was stored by the
stale file's storage, at a site outside prod's `eu` zone."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from dagster import AssetKey, DagsterEventType, execute_job, reconstructable

from dagster_gravity.locations import latest_location
from tests.support import topology_jobs

pytestmark = [pytest.mark.slow, pytest.mark.executor]


def _sites(path: Path, eu_site: str, store: Path) -> Path:
    """Two sites, alpha and beta, each with local storage under `store`; zone eu = `eu_site`."""
    path.write_text(
        yaml.safe_dump(
            {
                "sites": [
                    {"name": name, "region": "r", "kind": "onprem", "storage": {"kind": "local", "path": str(store / name)},
                     "pools": [{"name": "cpu", "slots": 1}]}
                    for name in ("alpha", "beta")
                ],
                "residency": {"eu": [eu_site]},
            }
        )
    )
    return path


@pytest.fixture
def two_topologies(tmp_path, monkeypatch):
    """prod.yaml (eu = beta) named by $GRAVITY_SITES, and a stale ./sites.yaml (eu = alpha)."""
    work = tmp_path / "work"
    work.mkdir()
    prod = _sites(tmp_path / "prod.yaml", "beta", tmp_path / "prod-store")
    stale = _sites(work / "sites.yaml", "alpha", tmp_path / "stale-store")
    monkeypatch.chdir(work)
    monkeypatch.setenv("GRAVITY_SITES", str(prod))
    return prod, stale, tmp_path


def _placed_at(result) -> list[str]:
    return [
        e.event_specific_data.metadata["gravity/site"].value
        for e in result.all_events
        if e.event_type == DagsterEventType.ENGINE_EVENT and e.step_key == "eu_table"
        and "gravity/site" in (e.event_specific_data.metadata or {})
    ]


def _stored(root: Path, store: str) -> list[Path]:
    return list((root / store).rglob("*eu_table*")) if (root / store).exists() else []


def test_gravity_sites_and_a_stale_sites_yaml_give_one_topology(instance, two_topologies):
    prod, stale, root = two_topologies
    with execute_job(reconstructable(topology_jobs.following_job), instance=instance) as result:
        assert result.success
        assert _placed_at(result) == ["beta"]  # prod.yaml's eu zone
    where = latest_location(instance, AssetKey("eu_table"))
    assert where.site == "beta" and where.residency == "eu"
    # Stored by prod.yaml's storage for beta; nothing under the stale file's storage.
    assert where.uri.startswith((root / "prod-store" / "beta").as_uri()), where.uri
    assert _stored(root, "stale-store") == []


def test_a_file_named_by_the_io_managers_topology_is_the_runs_topology(instance, two_topologies, monkeypatch):
    """Configured once, on the resource: the executor places by that file too."""
    prod, stale, root = two_topologies
    monkeypatch.setenv(topology_jobs.EXPLICIT_ENV, str(stale))
    with execute_job(reconstructable(topology_jobs.explicit_job), instance=instance) as result:
        assert result.success
        assert _placed_at(result) == ["alpha"]  # the stale file's eu zone, as it is the one named
    assert latest_location(instance, AssetKey("eu_table")).uri.startswith((root / "stale-store" / "alpha").as_uri())
    assert _stored(root, "prod-store") == []


def test_an_io_manager_naming_another_file_fails_the_run_before_any_step(instance, two_topologies, monkeypatch):
    prod, stale, _ = two_topologies
    monkeypatch.setenv(topology_jobs.EXPLICIT_ENV, str(stale))
    run_config = {"execution": {"config": {"sites_file": str(prod)}}}
    result = execute_job(
        reconstructable(topology_jobs.explicit_job), instance=instance, run_config=run_config, raise_on_error=False
    )
    assert not result.success
    assert not [e for e in result.all_events if e.event_type == DagsterEventType.STEP_START]
    failure = next(e for e in result.all_events if e.event_type == DagsterEventType.RUN_FAILURE)
    text = str(failure.event_specific_data.error.message if failure.event_specific_data.error else failure.message)
    errors = [str(e.event_specific_data.error) for e in result.all_events if e.event_type == DagsterEventType.ENGINE_EVENT and getattr(e.event_specific_data, "error", None)]
    combined = text + " ".join(errors)
    assert str(stale) in combined and str(prod) in combined, combined
    assert "more than one topology file" in combined
