import textwrap
from pathlib import Path

import pytest

from dagster_gravity.topology import Topology, TopologyError

REPO = Path(__file__).resolve().parents[1]

BASE = """
sites:
  - name: a
    region: r1
    kind: onprem
    pools: [{name: cpu, slots: 2}, {name: gpu, slots: 1, gpus: 4}]
  - name: b
    region: r1
    kind: cloud
    pools: [{name: cpu, slots: 1}]
  - name: c
    region: r2
    kind: cloud
    storage: {kind: s3, bucket: bkt, prefix: /data/, endpoint_url: "http://127.0.0.1:1"}
    pools: [{name: cpu, slots: 1}]
residency:
  eu: [c]
"""


def load(tmp_path, text):
    path = tmp_path / "sites.yaml"
    path.write_text(textwrap.dedent(text))
    return Topology.from_yaml(path), path


def test_shipped_sites_yaml_loads():
    topo = Topology.from_yaml(REPO / "sites.yaml")
    kinds = {s.kind for s in topo.sites.values()}
    assert len(topo.sites) >= 3 and kinds == {"onprem", "cloud", "colo"}
    assert any(p.gpus > 0 for p in topo.pools)
    assert topo.zone_sites("eu") == {"eu-colo"}


def test_defaults_and_queries(tmp_path):
    topo, _ = load(tmp_path, BASE)
    assert [p.id for p in topo.pools] == ["a/cpu", "a/gpu", "b/cpu", "c/cpu"]
    assert topo.pool("a/gpu").kind == "gpu"
    same = topo.link("a", "a")
    assert same.seconds(10**9) == 0 and same.dollars(10**9) == 0
    # same region: cheap and fast; cloud-to-cloud across regions: $0.02/GB; internet: $0.09/GB
    assert topo.link("a", "b").usd_per_gb == pytest.approx(0.02)
    assert topo.link("b", "c").usd_per_gb == pytest.approx(0.02)
    assert topo.link("a", "c").usd_per_gb == pytest.approx(0.09)
    assert topo.link("a", "b").seconds(10**9) < topo.link("a", "c").seconds(10**9)
    assert topo.link("a", "c").dollars(2 * 10**9) == pytest.approx(0.18)
    assert topo.site("c").storage.prefix == "data"
    assert topo.site("a").storage.kind == "local"
    assert topo.site("a").storage.path.endswith("/.gravity/sites/a")
    assert topo.allows("eu", "c") and not topo.allows("eu", "a") and topo.allows(None, "a")


def test_explicit_link_overrides_both_ways(tmp_path):
    topo, _ = load(
        tmp_path,
        BASE + "links:\n  - {from: a, to: c, bandwidth_gbps: 80, latency_ms: 0, usd_per_gb: 0, reverse_usd_per_gb: 0.05}\n",
    )
    assert topo.link("a", "c").usd_per_gb == 0
    assert topo.link("c", "a").usd_per_gb == 0.05
    assert topo.link("a", "c").bandwidth_bytes_per_s == 10e9


@pytest.mark.parametrize(
    "old,new,field,value",
    [
        ("kind: onprem", "kind: mainframe", "sites[0].kind", "mainframe"),
        ("name: b\n", "name: a\n", "sites[1].name", "a"),
        ("{name: cpu, slots: 2}", "{name: cpu, slots: 0}", "sites[0].pools[0].slots", 0),
        ("{name: cpu, slots: 2}", "{name: gpu, slots: 2}", "sites[0].pools[1].name", "gpu"),
        ("eu: [c]", "eu: [c, nowhere]", "residency.eu[1]", "nowhere"),
        ("eu: [c]", "eu: []", "residency.eu", []),
        ("bucket: bkt, ", "", "sites[2].storage.bucket", None),
        ("region: r2", "region: r2\n    zone: x", "sites[2].zone", "x"),
    ],
)
def test_validation_names_file_field_and_value(tmp_path, old, new, field, value):
    assert old in BASE
    with pytest.raises(TopologyError) as err:
        load(tmp_path, BASE.replace(old, new, 1))
    assert err.value.field_path == field
    assert err.value.value == value
    assert str(tmp_path / "sites.yaml") in str(err.value) and field in str(err.value)


@pytest.mark.parametrize(
    "link,field,value",
    [
        ("{from: a, to: zz}", "links[0].to", "zz"),
        ("{from: a, to: b, bandwidth_gbps: -1}", "links[0].bandwidth_gbps", -1),
        ("{from: a, to: b, bandwidth_gbps: 0}", "links[0].bandwidth_gbps", 0),
        ("{from: a, to: b, usd_per_gb: -0.1}", "links[0].usd_per_gb", -0.1),
        ("{from: a, to: a}", "links[0].to", "a"),
    ],
)
def test_link_validation(tmp_path, link, field, value):
    with pytest.raises(TopologyError) as err:
        load(tmp_path, BASE + f"links:\n  - {link}\n")
    assert (err.value.field_path, err.value.value) == (field, value)


S3_STORAGE = '{kind: s3, bucket: bkt, prefix: /data/, endpoint_url: "http://127.0.0.1:1"}'


def with_storage_settings(settings: str, storage: str = S3_STORAGE) -> str:
    return BASE.replace(S3_STORAGE, storage[:-1] + ", " + settings + "}", 1)


def test_s3_site_sets_its_own_failure_times_and_the_site_wins(tmp_path):
    from dagster_gravity.storage import S3Options, storage_for_site

    topo, path = load(tmp_path, with_storage_settings("connect_timeout_seconds: 2, read_timeout_seconds: 2.5, max_attempts: 4"))
    spec = topo.site("c").storage
    assert (spec.connect_timeout_s, spec.read_timeout_s, spec.max_attempts) == (2.0, 2.5, 4)
    # the IO manager's values are defaults: what the site sets wins, the rest comes from them
    store = storage_for_site(topo, "c", S3Options(connect_timeout_s=9, read_timeout_s=9, max_attempts=1, max_concurrency=3))
    assert store.options == S3Options(connect_timeout_s=2, read_timeout_s=2.5, max_attempts=4, max_concurrency=3)
    config = store.client.meta.config
    assert (config.connect_timeout, config.read_timeout) == (2, 2.5)
    assert config.retries == {"mode": "standard", "total_max_attempts": 4}  # the first attempt included
    assert (store.settings_at, store.settings_file) == ("sites[2].storage", str(path))

    partial, _ = load(tmp_path, with_storage_settings("read_timeout_seconds: 3"))
    store = storage_for_site(partial, "c", S3Options(connect_timeout_s=7, max_attempts=1))
    assert store.options == S3Options(connect_timeout_s=7, read_timeout_s=3, max_attempts=1)
    unset, _ = load(tmp_path, BASE)
    assert storage_for_site(unset, "c").options == S3Options()


@pytest.mark.parametrize(
    "settings,field,value,expected",
    [
        ("read_timeout_seconds: 0", "read_timeout_seconds", 0, "a number > 0"),
        ("read_timeout_seconds: -1", "read_timeout_seconds", -1, "a number > 0"),
        ("connect_timeout_seconds: soon", "connect_timeout_seconds", "soon", "a number > 0"),
        ("connect_timeout_seconds: .inf", "connect_timeout_seconds", float("inf"), "a finite number"),
        ("read_timeout_seconds: true", "read_timeout_seconds", True, "a number > 0"),
        ("max_attempts: 0", "max_attempts", 0, "an integer >= 1"),
        ("max_attempts: 1.5", "max_attempts", 1.5, "an integer >= 1"),
        ("read_timeout: 5", "read_timeout", 5, "one of the fields"),
    ],
)
def test_s3_failure_time_validation_names_file_field_value_and_expectation(tmp_path, settings, field, value, expected):
    with pytest.raises(TopologyError) as err:
        load(tmp_path, with_storage_settings(settings))
    assert (err.value.field_path, err.value.value) == (f"sites[2].storage.{field}", value)
    assert expected in err.value.expected and str(tmp_path / "sites.yaml") in str(err.value)


def test_s3_failure_times_are_refused_on_a_local_storage(tmp_path):
    text = BASE.replace("    kind: onprem\n", "    kind: onprem\n    storage: {kind: local, read_timeout_seconds: 5}\n", 1)
    with pytest.raises(TopologyError) as err:
        load(tmp_path, text)
    assert err.value.field_path == "sites[0].storage.read_timeout_seconds"
    assert "only kind: s3" in str(err.value)


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(TopologyError, match="an existing sites file"):
        Topology.from_yaml(tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("sites: [\n")
    with pytest.raises(TopologyError, match="valid YAML"):
        Topology.from_yaml(tmp_path / "bad.yaml")
    with pytest.raises(TopologyError, match="a readable UTF-8 sites file"):
        Topology.from_yaml(tmp_path)  # a directory
    (tmp_path / "latin1.yaml").write_bytes(b"sites: [\xff]\n")
    with pytest.raises(TopologyError, match="a readable UTF-8 sites file"):
        Topology.from_yaml(tmp_path / "latin1.yaml")


def test_unknown_site_lookup_lists_known_sites(tmp_path):
    topo, _ = load(tmp_path, BASE)
    with pytest.raises(KeyError, match="known sites: a, b, c"):
        topo.site("z")
    with pytest.raises(KeyError, match="known zones: eu"):
        topo.zone_sites("us")


@pytest.mark.slow
def test_load_topology_parses_each_file_version_once(tmp_path):
    import os
    import subprocess
    import sys

    from dagster_gravity.topology import load_topology

    _, path = load(tmp_path, BASE)
    first = load_topology(path)
    assert load_topology(path) is first
    assert load_topology(str(tmp_path / "." / "sites.yaml")) is first  # keyed by the resolved path
    path.write_text(textwrap.dedent(BASE).replace("name: b\n", "name: b2\n"))
    later = path.stat().st_mtime_ns + 1_000_000  # a new version even on a coarse clock
    os.utime(path, ns=(later, later))
    edited = load_topology(path)
    assert edited is not first and "b2" in edited.sites
    with pytest.raises(TopologyError, match="missing.yaml"):
        load_topology(tmp_path / "missing.yaml")
    # importable, with the resolution rule, without Dagster
    code = "import sys, dagster_gravity.topology, dagster_gravity.runtime; assert 'dagster' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, timeout=60)
