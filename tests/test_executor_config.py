"""The gravity executor's configuration (dagster_gravity/executor_config.py): Dagster's
check of the run config, the pool settings it resolves to, and the backends they create,
all without running a job."""

from __future__ import annotations

import pytest
from dagster import DagsterInvalidConfigError, validate_run_config

from dagster_gravity.errors import GravityConfigError
from dagster_gravity.executor_config import GravityConfig
from dagster_gravity.pools import create_backends
from dagster_gravity.topology import Topology
from tests.support import jobs


def test_pool_settings_merge_default_per_site_per_pool(tmp_path):
    topology = Topology.from_yaml(jobs.write_test_sites(tmp_path))
    config = GravityConfig.from_executor_config(
        {
            "pools": {
                "default": {"local": {"prestart": 1}},
                "per_site": {"alpha": {"local": {"stop_grace_seconds": 2.0}}, "beta": {"dask": {"scheduler": "tcp://x:1"}}},
                "per_pool": {"alpha/gpu": {"local": {"prestart": 0}}},
            }
        }
    )
    settings = config.pool_settings(topology)
    # The same backend's settings merge, the narrower section winning; defaults fill the rest.
    assert settings["alpha/cpu"] == ("local", {"prestart": 1, "stop_grace_seconds": 2.0, "env": {}, "startup_check": None})
    assert settings["alpha/gpu"][1]["prestart"] == 0 and settings["alpha/gpu"][1]["stop_grace_seconds"] == 2.0
    # Another backend replaces them.
    assert settings["beta/cpu"] == (
        "dask", {"scheduler": "tcp://x:1", "resources": {}, "connect_timeout_seconds": 10.0, "worker_refresh_seconds": 1.0}
    )
    assert settings["gamma/cpu"][1]["prestart"] == 1


@pytest.mark.parametrize(
    "executor_config, expected",
    [
        ({"objective": "fastest"}, 'root:execution:config:objective not in enum type GravityObjective got fastest'),
        ({"pools": {"per_site": {"beta": {"backend": "dask"}}}}, 'unexpected config entry "backend"'),
        ({"pools": {"per_site": {"beta": "dask"}}}, "pools:per_site:'beta'"),
        ({"pools": {"default": {"local": {"prestrat": 1}}}}, 'unexpected config entry "prestrat"'),
        ({"pools": {"default": {"dask": {}}}}, 'Missing required config entry "scheduler"'),
        ({"locality_wait": "soon"}, "locality_wait"),
        ({"zone_outage_wait": "soon"}, "zone_outage_wait"),
    ],
)
def test_bad_executor_config_is_refused_by_dagster_before_the_run(executor_config, expected):
    """What the launchpad validates: Dagster's config check, with no run launched."""
    with pytest.raises(DagsterInvalidConfigError) as err:
        validate_run_config(jobs.defs.resolve_job_def("locality_job"), {"execution": {"config": executor_config}})
    assert expected in str(err.value)


def test_objective_and_cost_weight(tmp_path):
    assert GravityConfig.from_executor_config({}).objective.describe() == "time"
    assert GravityConfig.from_executor_config({"objective": "cost"}).objective.weight == 1.0
    assert GravityConfig.from_executor_config({"objective": "weighted", "cost_weight": 0.3}).objective.weight == 0.3
    with pytest.raises(GravityConfigError, match=r"cost_weight: got 1.5; expected a weight in \[0, 1\]"):
        GravityConfig.from_executor_config({"objective": "weighted", "cost_weight": 1.5})


def test_zone_outage_wait_default_and_override():
    assert GravityConfig.from_executor_config({}).zone_outage_wait == 120.0
    assert GravityConfig.from_executor_config({"zone_outage_wait": 0}).zone_outage_wait == 0.0
    assert GravityConfig.from_executor_config({"zone_outage_wait": "2.5"}).zone_outage_wait == 2.5


def test_forking_backends_start_first_in_runs_mixed_with_other_backends(tmp_path):
    topology = Topology.from_yaml(jobs.write_test_sites(tmp_path))

    def groups(pools):
        config = GravityConfig.from_executor_config({"pools": pools})
        _, ordered = create_backends(topology, config.pool_settings(topology), worker_max_steps=100, unhealthy_after=3)
        return [(backend.name, backend.capabilities.forks_run_process, sorted(p.id for p in group)) for backend, group in ordered]

    # alpha (first in the topology) on Dask: the local backend, which forks the run process,
    # still starts first (its workers fork before the Dask client's threads exist).
    mixed = groups({"per_site": {"alpha": {"dask": {"scheduler": "tcp://127.0.0.1:9"}}}})
    assert mixed == [("local", True, ["beta/cpu", "gamma/cpu"]), ("dask", False, ["alpha/cpu", "alpha/gpu"])]
    assert groups({}) == [("local", True, ["alpha/cpu", "alpha/gpu", "beta/cpu", "gamma/cpu"])]


def test_a_zones_own_outage_wait_overrides_the_executors_and_the_shortest_of_several_wins(tmp_path):
    from dagster_gravity.zone_outage import wait_limit

    doc = {
        "sites": [
            {"name": "a", "region": "r1", "kind": "cloud", "pools": [{"name": "cpu", "slots": 1}]},
            {"name": "b", "region": "r2", "kind": "cloud", "pools": [{"name": "cpu", "slots": 1}]},
        ],
        "residency": {"eu": {"sites": ["a"], "outage_wait_seconds": 30}, "eea": ["a", "b"], "strict": {"sites": ["a"]}},
    }
    topology = Topology.from_dict(doc)
    assert topology.zones["eu"] == frozenset({"a"}) and topology.zones["strict"] == frozenset({"a"})
    assert topology.zone_outage_waits == {"eu": 30.0}
    per_zone, source = topology.zone_outage_waits, topology.source
    assert wait_limit(["eea"], per_zone, 120.0, source) == (120.0, "zone_outage_wait")
    assert wait_limit(["eu"], per_zone, 120.0, source) == (30.0, f"residency.eu.outage_wait_seconds in {source}")
    assert wait_limit(["eea", "eu"], per_zone, 10.0, source) == (10.0, "zone_outage_wait")


def test_zone_outage_messages_name_the_zone_the_pools_down_and_the_setting():
    from dagster_gravity.zone_outage import ZoneOutage, back_note, gave_up_note

    outage = ZoneOutage(["eu"], {"eu-west/cpu": "no Dask worker declares 'site-eu-west'"}, 3.0, "zone_outage_wait", since=100.0)
    assert gave_up_note(outage, now=103.25) == (
        "gave up after 3.2 s (zone_outage_wait is 3 s): residency zone 'eu' still has no healthy compute pool "
        "(eu-west/cpu: no Dask worker declares 'site-eu-west')"
    )
    assert back_note(outage, "eu-west/cpu", now=107.0) == (
        "waited 7.0 s (zone_outage_wait) for residency zone 'eu', which came back: runs on eu-west/cpu"
    )
    # the wait ended early because nothing down can come back: not "gave up" at the limit
    assert gave_up_note(outage, now=101.0, limit_reached=False) == (
        "stopped waiting after 1.0 s (of 3 s, zone_outage_wait): no compute pool of residency zone 'eu' that is "
        "down can come back now (it was: eu-west/cpu: no Dask worker declares 'site-eu-west')"
    )
    assert ZoneOutage(["eea", "eu"], {}, 1.0, "zone_outage_wait").zone_words() == "residency zones 'eea', 'eu'"
