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
