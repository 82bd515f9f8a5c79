"""The library's resources: which sites file a run uses (one rule, one resource), the check
that an explicit file agrees with the executor's, `job_topology_files`, and the IO manager
and checkpoints storing under the topology of their `GravityTopology`.

Real objects throughout: sites files on disk, a real Dagster instance, `materialize`, the
context variable a gravity worker sets (`runtime.running_at`)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from dagster import AssetKey, Definitions, EnvVar, asset, materialize
from dagster._core.system_config.objects import ResolvedRunConfig

from dagster_gravity import GravityCheckpoints, GravityConfigError, GravityIOManager, GravityTopology
from dagster_gravity.checkpoints import CheckpointStore
from dagster_gravity.locations import latest_location
from dagster_gravity.resources import job_topology_files
from dagster_gravity.runtime import current_site, run_sites_file, running_at
from dagster_gravity.storage.base import parse_version_key
from dagster_gravity.topology import resolve_sites_path
from tests.support.s3 import write_sites_yaml


@pytest.fixture
def prod(tmp_path) -> Path:
    """The topology the run is meant to use (its storage under prod/store)."""
    (tmp_path / "prod").mkdir()
    return write_sites_yaml(tmp_path / "prod")


@pytest.fixture
def stale_cwd(tmp_path, monkeypatch) -> Path:
    """A working directory holding a stale ./sites.yaml with the same site names."""
    work = tmp_path / "work"
    work.mkdir()
    write_sites_yaml(work)
    monkeypatch.chdir(work)
    monkeypatch.delenv("GRAVITY_SITES", raising=False)
    return work


@asset
def table() -> pd.DataFrame:
    return pd.DataFrame({"a": [1, 2, 3]})


def stored(topology_dir: Path, site_dir: str = "us") -> list[str]:
    """The assets stored at a site, as `<name><ext>` (each version is `<name>@<sha256><ext>`)."""
    root = topology_dir / "store" / site_dir
    names = sorted(p.name for p in root.iterdir() if not p.name.startswith(".")) if root.exists() else []
    return [f"{base}{suffix}" for base, _sha, suffix in map(parse_version_key, names)]


# -- the rule --------------------------------------------------------------------------------


def test_resolve_sites_path_explicit_then_env_then_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("GRAVITY_SITES", raising=False)
    assert resolve_sites_path() == tmp_path / "sites.yaml"
    assert resolve_sites_path("") == tmp_path / "sites.yaml"  # empty counts as not given

    monkeypatch.setenv("GRAVITY_SITES", "/etc/gravity/prod.yaml")
    assert resolve_sites_path() == Path("/etc/gravity/prod.yaml")
    assert resolve_sites_path(None) == Path("/etc/gravity/prod.yaml")
    monkeypatch.setenv("GRAVITY_SITES", "conf/prod.yaml")  # relative: against the working directory
    assert resolve_sites_path() == tmp_path / "conf" / "prod.yaml"

    # explicit wins over the environment; relative explicit paths against the working directory
    assert resolve_sites_path("other.yaml") == tmp_path / "other.yaml"
    assert resolve_sites_path(tmp_path / "x" / "y.yaml") == tmp_path / "x" / "y.yaml"
    assert resolve_sites_path(Path("rel/z.yaml")).is_absolute()
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path / "sub")
    assert resolve_sites_path("other.yaml") == tmp_path / "sub" / "other.yaml"
    assert resolve_sites_path() == tmp_path / "sub" / "conf" / "prod.yaml"


def test_running_at_sets_site_and_run_sites_file_together_and_restores_them(tmp_path):
    assert current_site() is None and run_sites_file() is None
    with running_at("alpha", str(tmp_path / "a.yaml")):
        assert (current_site(), run_sites_file()) == ("alpha", str(tmp_path / "a.yaml"))
        with running_at("beta"):
            assert (current_site(), run_sites_file()) == ("beta", None)
        assert (current_site(), run_sites_file()) == ("alpha", str(tmp_path / "a.yaml"))
    assert current_site() is None and run_sites_file() is None
    with pytest.raises(GravityConfigError, match="relative"):
        with running_at("alpha", "sites.yaml"):
            pass


def test_gravity_site_in_the_environment_is_not_a_site(monkeypatch):
    monkeypatch.setenv("GRAVITY_SITE", "alpha")
    assert current_site() is None


# -- GravityTopology ----------------------------------------------------------------------------


def test_topology_without_sites_file_follows_the_executor_then_env_then_cwd(prod, stale_cwd, monkeypatch):
    topology = GravityTopology()
    assert topology.path() == stale_cwd / "sites.yaml"  # nothing else says: ./sites.yaml
    monkeypatch.setenv("GRAVITY_SITES", str(prod))
    assert topology.path() == prod
    assert topology.load().site("us-local").storage.path == str(prod.parent / "store" / "us")

    (stale_cwd / "other").mkdir()
    other = write_sites_yaml(stale_cwd / "other")
    with running_at("us-local", str(other)):  # under the executor: its file, whatever the env says
        assert topology.path() == other
        assert topology.load().source == str(other)


def test_explicit_sites_file_must_be_the_executors(prod, stale_cwd, monkeypatch):
    explicit = GravityTopology(sites_file=str(prod))
    assert explicit.path() == prod  # no executor: the explicit file
    with running_at("us-local", str(prod)):
        assert explicit.path() == prod
    # the same file by another name (relative, through a symlink) agrees
    os.symlink(prod, stale_cwd / "link.yaml")
    with running_at("us-local", str(prod)):
        assert GravityTopology(sites_file="link.yaml").path() == stale_cwd / "link.yaml"

    stale = GravityTopology(sites_file="sites.yaml")
    with running_at("us-local", str(prod)):
        with pytest.raises(GravityConfigError) as err:
            stale.path()
    message = str(err.value)
    assert str(stale_cwd / "sites.yaml") in message and str(prod) in message
    assert f"the executor uses {prod}" in message


@pytest.mark.slow
def test_io_manager_with_default_topology_stores_by_gravity_sites_not_a_stale_cwd_file(
    prod, stale_cwd, monkeypatch, instance
):
    """The bug this resource fixes: GRAVITY_SITES=prod.yaml and a stale ./sites.yaml."""
    monkeypatch.setenv("GRAVITY_SITES", str(prod))
    io = GravityIOManager(default_site="us-local")  # default topology: GravityTopology()
    assert isinstance(io.topology, GravityTopology) and io.topology.sites_file is None
    result = materialize([table], resources={"io_manager": io}, instance=instance)
    assert result.success
    assert stored(prod.parent) == ["table.parquet"] and stored(stale_cwd) == []
    uri = result.asset_materializations_for_node("table")[0].metadata["dagster/uri"].value
    sha = result.asset_materializations_for_node("table")[0].metadata["gravity/sha256"].value
    assert uri == (prod.parent / "store" / "us" / f"table@{sha}.parquet").as_uri()
    assert latest_location(instance, "table").site == "us-local"


@pytest.mark.slow
def test_io_manager_under_the_executor_stores_by_the_executors_file(prod, stale_cwd, instance):
    io = GravityIOManager()
    with running_at("eu-local", str(prod)):
        assert materialize([table], resources={"io_manager": io}, instance=instance).success
    assert stored(prod.parent, "eu") == ["table.parquet"] and stored(stale_cwd, "eu") == []


@pytest.mark.slow
def test_io_manager_stores_under_the_topology_of_its_resource(tmp_path, stale_cwd, instance):
    (tmp_path / "mine").mkdir()
    mine = write_sites_yaml(tmp_path / "mine")
    io = GravityIOManager(topology=GravityTopology(sites_file=str(mine)), default_site="eu-local")
    assert materialize([table], resources={"io_manager": io}, instance=instance).success
    assert stored(mine.parent, "eu") == ["table.parquet"] and stored(stale_cwd, "eu") == []
    # ...and the resource bound at top level and in the IO manager is one object
    topology = GravityTopology(sites_file=str(mine))
    defs = Definitions(
        assets=[table], resources={"gravity_topology": topology, "io_manager": GravityIOManager(topology=topology)}
    )
    with running_at("us-local", str(mine)):
        assert defs.resolve_implicit_global_asset_job_def().execute_in_process(instance=instance).success
    assert stored(mine.parent, "us") == ["table.parquet"]


@pytest.mark.slow
def test_io_manager_with_another_file_than_the_executor_fails_the_step_naming_both(prod, stale_cwd, instance):
    io = GravityIOManager(topology=GravityTopology(sites_file="sites.yaml"))  # the stale one
    with running_at("us-local", str(prod)):
        with pytest.raises(Exception) as err:
            materialize([table], resources={"io_manager": io}, instance=instance)
    cause = err.value
    while cause is not None and not isinstance(cause, GravityConfigError):
        cause = cause.__cause__
    assert cause is not None, repr(err.value)
    assert str(stale_cwd / "sites.yaml") in str(cause) and f"the executor uses {prod}" in str(cause)
    assert stored(prod.parent) == [] and stored(stale_cwd) == []  # nothing written anywhere


def test_every_resource_field_is_described():
    for cls in (GravityIOManager, GravityTopology, GravityCheckpoints):
        undescribed = [name for name, field in cls.model_fields.items() if not field.description]
        assert undescribed == [], (cls.__name__, undescribed)
    fields = GravityIOManager.to_config_schema().as_field().config_type.fields
    assert "topology" not in fields  # a resource dependency, not config
    assert all(field.description for field in fields.values())


# -- GravityCheckpoints -------------------------------------------------------------------------


def arrays(seed: int) -> dict[str, np.ndarray]:
    return {"coef": np.full(3, float(seed))}


@pytest.mark.slow
def test_checkpoints_resource_keeps_versions_at_its_site_of_its_topology(prod, stale_cwd, monkeypatch, instance):
    monkeypatch.setenv("GRAVITY_SITES", str(prod))
    checkpoints = GravityCheckpoints(site="eu-local", prefix="models")
    assert checkpoints.topology.sites_file is None  # default topology, resolved when used

    @asset
    def trained(checkpoints: GravityCheckpoints) -> dict:
        version = checkpoints.store().save("m", arrays(1), lineage={"run": "test"})
        return {"version": version.version}

    result = materialize(
        [trained], resources={"checkpoints": checkpoints, "io_manager": GravityIOManager(default_site="eu-local")},
        instance=instance,
    )
    assert result.success and result.output_for_node("trained") == {"version": 1}
    direct = CheckpointStore.for_site(GravityTopology(sites_file=str(prod)).load(), "eu-local", "models")
    assert direct.versions("m") == [1]
    np.testing.assert_array_equal(direct.load("m", 1).arrays["coef"], arrays(1)["coef"])
    assert (prod.parent / "store" / "eu" / "models" / "m" / "v1" / "manifest.json").exists()
    assert not (stale_cwd / "store").exists()

    # bound to an explicit topology resource, under the executor using that same file
    bound = GravityCheckpoints(topology=GravityTopology(sites_file=str(prod)), site="us-local")
    with running_at("us-local", str(prod)):
        assert bound.store().save("m", arrays(2), lineage={}).version == 1
    assert (prod.parent / "store" / "us" / "checkpoints" / "m" / "v1" / "weights.safetensors").exists()
    with running_at("us-local", str(stale_cwd / "sites.yaml")):
        with pytest.raises(GravityConfigError, match="the executor uses"):
            bound.store()


def test_checkpoints_at_a_site_not_in_the_topology_say_so(prod):
    from dagster_gravity.storage import UnknownSite

    with pytest.raises(UnknownSite, match="'mars'"):
        GravityCheckpoints(topology=GravityTopology(sites_file=str(prod)), site="mars").store()


# -- job_topology_files -------------------------------------------------------------------------


@asset
def reads_topology(gravity_topology: GravityTopology) -> int:
    return len(gravity_topology.load().sites)


def topology_files(resources: dict, run_config: dict | None = None, assets=(reads_topology,)) -> dict:
    job = Definitions(assets=list(assets), resources=resources).resolve_implicit_global_asset_job_def()
    return job_topology_files(job, ResolvedRunConfig.build(job, run_config or {}))


def test_job_topology_files_top_level_resource_configured_by_the_run_config():
    files = topology_files(
        {"gravity_topology": GravityTopology()},
        {"resources": {"gravity_topology": {"config": {"sites_file": "run.yaml"}}}},
    )
    assert files == {"resource 'gravity_topology'": "run.yaml"}  # Dagster's default io_manager has none
    assert topology_files({"gravity_topology": GravityTopology()}) == {"resource 'gravity_topology'": None}
    launch = topology_files(
        {"gravity_topology": GravityTopology.configure_at_launch()},
        {"resources": {"gravity_topology": {"config": {"sites_file": "launch.yaml"}}}},
    )
    assert launch == {"resource 'gravity_topology'": "launch.yaml"}


def test_job_topology_files_nested_resource_with_an_explicit_file_or_none():
    files = topology_files(
        {
            "gravity_topology": GravityTopology(),
            "io_manager": GravityIOManager(topology=GravityTopology(sites_file="x.yaml"), default_site="s"),
            "checkpoints": GravityCheckpoints(topology=GravityTopology(), site="s"),
        }
    )
    assert files == {
        "resource 'gravity_topology'": None,
        "resource 'io_manager'.topology": "x.yaml",
        "resource 'checkpoints'.topology": None,
    }
    # a dependency left at its default is used too (and follows the executor)
    assert topology_files({"gravity_topology": GravityTopology(), "io_manager": GravityIOManager()})[
        "resource 'io_manager'.topology"
    ] is None


def test_job_topology_files_resource_bound_at_top_level_and_referenced_by_the_io_manager(monkeypatch):
    topology = GravityTopology(sites_file="shared.yaml")
    resources = {
        "gravity_topology": topology,
        "io_manager": GravityIOManager(topology=topology, default_site="s"),
        "checkpoints": GravityCheckpoints(topology=topology, site="s"),
    }
    assert topology_files(resources) == {
        "resource 'gravity_topology'": "shared.yaml",
        "resource 'io_manager'.topology": "shared.yaml",
        "resource 'checkpoints'.topology": "shared.yaml",
    }
    # Run config reaches only the top-level binding: Dagster builds nested copies from
    # their own values, so the disagreement is visible here for the executor to refuse.
    overridden = topology_files(resources, {"resources": {"gravity_topology": {"config": {"sites_file": "run.yaml"}}}})
    assert overridden == {
        "resource 'gravity_topology'": "run.yaml",
        "resource 'io_manager'.topology": "shared.yaml",
        "resource 'checkpoints'.topology": "shared.yaml",
    }
    # configured at launch and bound at top level: the nested use is that one resource
    partial = GravityTopology.configure_at_launch()
    launched = topology_files(
        {"gravity_topology": partial, "io_manager": GravityIOManager(topology=partial, default_site="s")},
        {"resources": {"gravity_topology": {"config": {"sites_file": "launch.yaml"}}}},
    )
    assert launched == {"resource 'gravity_topology'": "launch.yaml", "resource 'io_manager'.topology": "launch.yaml"}
    # environment variables are resolved as Dagster resolves them for the run
    monkeypatch.setenv("TEST_GRAVITY_SITES_FILE", "from-env.yaml")
    env_bound = GravityTopology(sites_file=EnvVar("TEST_GRAVITY_SITES_FILE"))
    assert topology_files({"gravity_topology": env_bound, "io_manager": GravityIOManager(topology=env_bound)}) == {
        "resource 'gravity_topology'": "from-env.yaml",
        "resource 'io_manager'.topology": "from-env.yaml",
    }


@pytest.mark.slow
def test_job_topology_files_agree_with_what_the_steps_actually_use(tmp_path, instance):
    """What job_topology_files reports for the nested copy is the file the step reads."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a, b = write_sites_yaml(tmp_path / "a"), write_sites_yaml(tmp_path / "b")
    topology = GravityTopology(sites_file=str(a))
    resources = {"gravity_topology": topology, "io_manager": GravityIOManager(topology=topology, default_site="us-local")}
    run_config = {"resources": {"gravity_topology": {"config": {"sites_file": str(b)}}}}
    files = topology_files(resources, run_config)
    assert files == {"resource 'gravity_topology'": str(b), "resource 'io_manager'.topology": str(a)}

    @asset
    def where(gravity_topology: GravityTopology) -> str:
        return str(gravity_topology.path())

    job = Definitions(assets=[where], resources=resources).resolve_implicit_global_asset_job_def()
    result = job.execute_in_process(run_config=run_config, instance=instance)
    assert result.output_for_node("where") == str(b)  # the top-level binding: the run config
    assert stored(a.parent) == ["where.json"] and stored(b.parent) == []  # the nested copy: its own file
    assert latest_location(instance, AssetKey("where")).site == "us-local"
