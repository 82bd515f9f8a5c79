"""Hostile and careless input: every bad sites.yaml, executor config, IO manager setting and
op tag gets a GravityError naming the file or setting, the field, the (shortened) value and
what was expected; nothing raises a raw traceback, grows without bound or hangs."""

import copy
import time
from types import SimpleNamespace

import pytest
import yaml
from dagster import AssetSpec, DagsterInstance, asset, materialize
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dagster_gravity.errors import GravityConfigError, GravityError, short_repr
from dagster_gravity.executor_config import GravityConfig
from dagster_gravity.input_locations import requirements_for
from dagster_gravity.io_manager import GravityIOManager
from dagster_gravity.metadata import DataLocation
from dagster_gravity.placement.model import CostModel
from dagster_gravity.resources import GravityTopology
from dagster_gravity.storage import StorageError
from dagster_gravity.topology import MAX_FILE_BYTES, MAX_SITES, Topology, TopologyError

BASE = {
    "sites": [
        {"name": "a", "region": "r1", "kind": "onprem", "pools": [{"name": "cpu", "slots": 2}]},
        {"name": "b", "region": "r2", "kind": "cloud", "pools": [{"name": "cpu", "slots": 1}]},
        {
            "name": "c",
            "region": "r2",
            "kind": "cloud",
            "storage": {"kind": "s3", "bucket": "bkt", "prefix": "data", "endpoint_url": "http://127.0.0.1:1"},
            "pools": [{"name": "cpu", "slots": 1}],
        },
    ],
    "links": [{"from": "a", "to": "b", "bandwidth_gbps": 10}],
}


S3 = BASE["sites"][2]["storage"]
# AWS's documented example keys: what a pasted key id and secret look like
KEY_ID, SECRET = "AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
ENV_PAIR = {"access_key_id_env": "A_KEY", "secret_access_key_env": "A_SECRET"}


def with_(path: str, value) -> dict:
    """BASE with the value at a dotted path ('sites.0.name') replaced."""
    doc = copy.deepcopy(BASE)
    *parents, last = path.split(".")
    node = doc
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return doc


def load_text(tmp_path, text: str) -> Topology:
    path = tmp_path / "sites.yaml"
    path.write_text(text)
    return Topology.from_yaml(path)


def refused(tmp_path, doc_or_text) -> TopologyError:
    text = doc_or_text if isinstance(doc_or_text, str) else yaml.safe_dump(doc_or_text)
    started = time.monotonic()
    with pytest.raises(TopologyError) as err:
        load_text(tmp_path, text)
    assert time.monotonic() - started < 5, "refusing bad input must be quick"
    message = str(err.value)
    assert str(tmp_path / "sites.yaml") in message  # names the file
    assert len(message) < 600, "no unbounded repr in a message"
    return err.value


def test_short_repr_is_bounded_in_length_and_in_work():
    bomb = ["lol"] * 9
    for _ in range(30):  # 9**30 elements once expanded: walking it would never end
        bomb = [bomb] * 9
    text = short_repr(bomb)
    assert len(text) <= 80 and text.startswith("[[[")
    assert "..." in short_repr("x" * 10_000) and len(short_repr("x" * 10_000)) <= 80
    assert short_repr("mars") == "'mars'"


SITES_CASES = [
    # (id, document, field path in the error, words of the expectation)
    ("site named .", with_("sites.0.name", "."), "sites[0].name", "not '.' or '..'"),
    ("site named ..", with_("sites.0.name", ".."), "sites[0].name", "not '.' or '..'"),
    ("NUL in a name", with_("sites.0.name", "a\0b"), "sites[0].name", "control characters"),
    ("newline in a name", with_("sites.0.name", "a\nb"), "sites[0].name", "control characters"),
    ("newline in a pool name", with_("sites.0.pools.0.name", "cpu\n"), "sites[0].pools[0].name", "control characters"),
    ("NUL in a region", with_("sites.0.region", "r\0"), "sites[0].region", "control characters"),
    ("name too long", with_("sites.0.name", "n" * 500), "sites[0].name", "1 to 128 characters"),
    ("from: [a]", with_("links.0", {"from": ["a"], "to": "b"}), "links[0].from", "the name of a site"),
    ("to: {a: 1}", with_("links.0", {"from": "a", "to": {"a": 1}}), "links[0].to", "the name of a site"),
    ("slots 1e20 (YAML: a string)", with_("sites.0.pools.0.slots", "1e20"), "sites[0].pools[0].slots", "<= 10,000"),
    ("slots 10**20", with_("sites.0.pools.0.slots", 10**20), "sites[0].pools[0].slots", "<= 10,000"),
    ("slots 1.5", with_("sites.0.pools.0.slots", 1.5), "sites[0].pools[0].slots", "an integer >= 1"),
    ("gpus -1", with_("sites.0.pools.0.gpus", -1), "sites[0].pools[0].gpus", "an integer >= 0"),
    ("infinite bandwidth", with_("links.0.bandwidth_gbps", float("inf")), "links[0].bandwidth_gbps", "(finite)"),
    ("NaN bandwidth", with_("links.0.bandwidth_gbps", float("nan")), "links[0].bandwidth_gbps", "(finite)"),
    ("infinite latency", with_("links.0", {"from": "a", "to": "b", "latency_ms": float("inf")}), "links[0].latency_ms", "(finite)"),
    ("infinite price", with_("links.0", {"from": "a", "to": "b", "usd_per_gb": float("inf")}), "links[0].usd_per_gb", "(finite)"),
    (
        "conflicting duplicate link",
        {**BASE, "links": [{"from": "a", "to": "b", "bandwidth_gbps": 10}, {"from": "b", "to": "a", "bandwidth_gbps": 1}]},
        "links[1]",
        "links[0] already sets it differently",
    ),
    ("links not a list", {**BASE, "links": {"from": "a"}}, "links", "a list of links"),
    ("a huge unknown field", {**BASE, "x" * 100_000: 1}, "(top level)." + short_repr("x" * 100_000, 40), "one of the fields"),
    ("a huge value", with_("sites.0.kind", "k" * 400_000), "sites[0].kind", "one of cloud, colo, onprem"),
    ("endpoint_url: not a url", with_("sites.2.storage.endpoint_url", "not a url"), "sites[2].storage.endpoint_url", "http:// or https:// URL"),
    ("endpoint_url ftp", with_("sites.2.storage.endpoint_url", "ftp://x"), "sites[2].storage.endpoint_url", "http:// or https:// URL"),
    ("S3 prefix ../..", with_("sites.2.storage.prefix", "../.."), "sites[2].storage.prefix", "none of them '.', '..' or empty"),
    ("S3 prefix a//b", with_("sites.2.storage.prefix", "a//b"), "sites[2].storage.prefix", "none of them '.', '..' or empty"),
    ("negative S3 timeout", with_("sites.2.storage.connect_timeout_seconds", -1), "sites[2].storage.connect_timeout_seconds", "> 0"),
    ("S3 max_attempts 0", with_("sites.2.storage.max_attempts", 0), "sites[2].storage.max_attempts", "an integer >= 1"),
    # S3 credentials: names of a profile or of environment variables, never the secrets
    ("literal secret_access_key", with_("sites.2.storage.secret_access_key", SECRET), "sites[2].storage.secret_access_key", "no secret in a sites file"),
    ("literal aws_access_key_id", with_("sites.2.storage.aws_access_key_id", KEY_ID), "sites[2].storage.aws_access_key_id", "name the environment variables"),
    ("literal access_key", with_("sites.2.storage.access_key", KEY_ID), "sites[2].storage.access_key", "or a boto3 profile (profile)"),
    ("literal aws_session_token", with_("sites.2.storage.aws_session_token", SECRET), "sites[2].storage.aws_session_token", "no secret in a sites file"),
    ("a secret on a local storage", with_("sites.0.storage", {"kind": "local", "secret_key": SECRET}), "sites[0].storage.secret_key", "no secret in a sites file"),
    ("profile and env names", with_("sites.2.storage", {**S3, "profile": "p", **ENV_PAIR}), "sites[2].storage.access_key_id_env", "not both"),
    ("key id env without secret env", with_("sites.2.storage", {**S3, "access_key_id_env": "A_KEY"}), "sites[2].storage.secret_access_key_env", "both access_key_id_env and secret_access_key_env"),
    ("session token env alone", with_("sites.2.storage", {**S3, "session_token_env": "A_TOKEN"}), "sites[2].storage.access_key_id_env", "when either is given"),
    ("a secret pasted as env name", with_("sites.2.storage", {**S3, **ENV_PAIR, "secret_access_key_env": SECRET}), "sites[2].storage.secret_access_key_env", "not the secret itself"),
    ("an env name of 200 chars", with_("sites.2.storage", {**S3, **ENV_PAIR, "access_key_id_env": "V" * 200}), "sites[2].storage.access_key_id_env", "at most 128 characters"),
    ("env name 5", with_("sites.2.storage", {**S3, **ENV_PAIR, "access_key_id_env": 5}), "sites[2].storage.access_key_id_env", "the name of an environment variable"),
    ("a key id pasted as env name", with_("sites.2.storage", {**S3, **ENV_PAIR, "access_key_id_env": KEY_ID}), "sites[2].storage.access_key_id_env", "looks like an access key id itself"),
    ("profile with a newline", with_("sites.2.storage.profile", "prod\n"), "sites[2].storage.profile", "without control characters"),
    ("profile []", with_("sites.2.storage.profile", []), "sites[2].storage.profile", "a boto3 profile name"),
    ("profile on a local storage", with_("sites.0.storage", {"kind": "local", "profile": "p"}), "sites[0].storage.profile", "only kind: s3"),
    (
        "two sites on one local path",
        {**BASE, "sites": [dict(s, storage={"kind": "local", "path": "shared"}) for s in BASE["sites"][:2]]},
        "sites[1].storage",
        "the same place",
    ),
    (
        "a site's storage inside another's",
        {**BASE, "sites": [dict(BASE["sites"][0], storage={"path": "d"}), dict(BASE["sites"][1], storage={"path": "d/inner"})]},
        "sites[1].storage",
        "a place containing it",
    ),
    (
        "two S3 sites on one bucket and prefix",
        {**BASE, "sites": [*BASE["sites"], dict(BASE["sites"][2], name="d")]},
        "sites[3].storage",
        "the same place",
    ),
    ("unknown residency member", {**BASE, "residency": {"eu": ["mars"]}}, "residency.eu[0]", "the name of a site"),
    ("residency zone named ..", {**BASE, "residency": {"..": ["a"]}}, "residency.'..'", "not '.' or '..'"),
    (
        "zone outage_wait_seconds -1",
        {**BASE, "residency": {"eu": {"sites": ["a"], "outage_wait_seconds": -1}}},
        "residency.eu.outage_wait_seconds",
        "a number >= 0 (finite)",
    ),
    (
        "zone outage_wait_seconds NaN",
        {**BASE, "residency": {"eu": {"sites": ["a"], "outage_wait_seconds": float("nan")}}},
        "residency.eu.outage_wait_seconds",
        "a number >= 0 (finite)",
    ),
    (
        "zone outage_wait_seconds soon",
        {**BASE, "residency": {"eu": {"sites": ["a"], "outage_wait_seconds": "soon"}}},
        "residency.eu.outage_wait_seconds",
        "a number >= 0 (finite)",
    ),
    ("zone mapping without sites", {**BASE, "residency": {"eu": {"outage_wait_seconds": 5}}}, "residency.eu.sites", "a non-empty list"),
    ("zone mapping, unknown site", {**BASE, "residency": {"eu": {"sites": ["mars"]}}}, "residency.eu.sites[0]", "the name of a site"),
    (
        "zone mapping, unknown field",
        {**BASE, "residency": {"eu": {"sites": ["a"], "outage_wait": 5}}},
        "residency.eu.outage_wait",
        "one of the fields",
    ),
]


@pytest.mark.parametrize("doc,field,expected", [c[1:] for c in SITES_CASES], ids=[c[0] for c in SITES_CASES])
def test_bad_sites_file_names_field_and_expectation(tmp_path, doc, field, expected):
    err = refused(tmp_path, doc)
    assert err.field_path == field and expected in err.expected, str(err)
    assert f"{field}: got " in str(err)


@pytest.mark.parametrize(
    "doc", [c[1] for c in SITES_CASES if "sites[0].storage" in c[2] or "sites[2].storage" in c[2]],
    ids=[c[0] for c in SITES_CASES if "sites[0].storage" in c[2] or "sites[2].storage" in c[2]],
)
def test_a_pasted_key_or_secret_is_never_echoed(tmp_path, doc):
    message = str(refused(tmp_path, doc))
    assert SECRET not in message and KEY_ID not in message and "wJalr" not in message, message


def test_credential_names_are_accepted_and_kept(tmp_path):
    by_env = Topology.from_dict(with_("sites.2.storage", {**S3, **ENV_PAIR, "session_token_env": "A_TOKEN"}))
    creds = by_env.site("c").storage.credentials
    assert (creds.access_key_id_env, creds.secret_access_key_env, creds.session_token_env) == ("A_KEY", "A_SECRET", "A_TOKEN")
    assert creds.describe() == "environment variables $A_KEY, $A_SECRET, $A_TOKEN"
    by_profile = Topology.from_dict(with_("sites.2.storage.profile", "onprem-minio"))
    assert by_profile.site("c").storage.credentials.describe() == "boto3 profile 'onprem-minio'"
    assert Topology.from_dict(BASE).site("c").storage.credentials is None  # the process-wide chain, as before


YAML_CASES = [
    ("5,000-deep flow nesting", "sites: " + "[" * 5000 + "]" * 5000, "valid YAML"),
    ("5,000-deep block nesting", "sites:\n" + "- " * 5000 + "x\n", "levels of nesting"),
    ("100-deep indented nesting", "sites:\n" + "".join("  " * i + "- \n" for i in range(1, 100)), "levels of nesting"),
    (
        "billion laughs in sites[0]",
        "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n"
        + "".join(f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]\n" for i in range(8))
        + "sites: [{name: x, region: r, kind: cloud, pools: *i}]\n",
        "aliases expanded",
    ),
    ("recursive alias", "sites: &s [*s]\n", "aliases expanded"),
    ("an impossible date", "sites: [2020-13-45]\n", "valid YAML values"),
    ("a python tag", "sites: !!python/object:os.system [ls]\n", "valid YAML"),
    ("not YAML", "sites: [\n", "valid YAML"),
]


@pytest.mark.parametrize("text,expected", [c[1:] for c in YAML_CASES], ids=[c[0] for c in YAML_CASES])
def test_hostile_yaml_is_refused_quickly(tmp_path, text, expected):
    err = refused(tmp_path, text)
    assert err.field_path == "(file)" and expected in str(err), str(err)


def test_deep_python_data_is_refused_without_recursion():
    deep: list = []
    for _ in range(100_000):
        deep = [deep]
    with pytest.raises(TopologyError, match=r"sites\[0\]: got \[\[\[\["):
        Topology.from_dict({"sites": deep})


def test_a_250000_site_file_is_refused_at_once(tmp_path):
    site = "  - {name: s%d, region: r, kind: cloud, pools: [{name: cpu, slots: 1}]}\n"
    text = "sites:\n" + "".join(site % i for i in range(250_000))
    assert len(text) > 15_000_000
    err = refused(tmp_path, text)
    assert f"at most {MAX_FILE_BYTES:,} bytes" in err.expected
    # the same sites handed over as data: refused by count before any site is read
    started = time.monotonic()
    with pytest.raises(TopologyError, match=f"at most {MAX_SITES:,} sites"):
        Topology.from_dict({"sites": [{"name": f"s{i}"} for i in range(250_000)]})
    assert time.monotonic() - started < 1


def test_the_most_sites_allowed_load_and_price_in_seconds(tmp_path):
    site = "  - {name: s%d, region: r%d, kind: %s, pools: [{name: cpu, slots: 1}]}\n"
    kinds = ("cloud", "colo", "onprem")
    text = "sites:\n" + "".join(site % (i, i % 7, kinds[i % 3]) for i in range(MAX_SITES))
    text += "links:\n  - {from: s1, to: s2, bandwidth_gbps: 40, latency_ms: 0.5}\n"
    started = time.monotonic()
    topology = load_text(tmp_path, text)
    model = CostModel(topology)
    assert time.monotonic() - started < 10
    assert len(topology.sites) == MAX_SITES and len(topology.links.configured) == 2
    # the arrays equal what each Link says, defaults and configured alike
    for src, dst in [("s1", "s2"), ("s2", "s1"), ("s0", "s7"), ("s3", "s10"), ("s5", "s5")]:
        link, a, b = topology.link(src, dst), model.index[src], model.index[dst]
        assert model.latency[a, b] == (link.latency_s if a != b else 0.0)
        assert model.usd_per_byte[a, b] == link.usd_per_gb / 1e9
        assert model.sec_per_byte[a, b] == (1.0 / link.bandwidth_bytes_per_s if a != b else 0.0)


def test_genuinely_fine_inputs_are_accepted(tmp_path):
    # an identical duplicate link (harmless), prestart above the slots (capped), a name with
    # dots, dashes and underscores inside, anchors used as intended
    doc = copy.deepcopy(BASE)
    doc["sites"][0]["name"] = "dc.eu-west_1"
    doc["links"] = [{"from": "dc.eu-west_1", "to": "b", "bandwidth_gbps": 10}] * 2
    topology = Topology.from_dict(doc, base_dir=tmp_path)
    assert topology.link("b", "dc.eu-west_1").bandwidth_bytes_per_s == 10e9 / 8
    topology = load_text(
        tmp_path,
        "sites:\n  - {name: a, region: r, kind: cloud, pools: &p [{name: cpu, slots: 1}]}\n"
        "  - {name: b, region: r, kind: cloud, pools: *p}\n",
    )
    assert [p.id for p in topology.pools] == ["a/cpu", "b/cpu"]
    settings = GravityConfig.from_executor_config({"pools": {"default": {"local": {"prestart": 50}}}}).pool_settings(topology)
    assert settings["a/cpu"] == ("local", {"prestart": 50, "stop_grace_seconds": 10.0, "env": {}, "startup_check": None})


# -- executor and compute pool settings -------------------------------------------------------

SETTINGS_CASES = [
    # (id, executor config, words the message must contain: the setting, then the expectation)
    ("locality_wait NaN", {"locality_wait": float("nan")}, "locality_wait", "a finite number of seconds >= 0"),
    ("locality_wait inf", {"locality_wait": float("inf")}, "locality_wait", "a finite number of seconds >= 0"),
    ("locality_wait x", {"locality_wait": "x"}, "locality_wait", "a number of seconds >= 0"),
    ("zone_outage_wait -1", {"zone_outage_wait": -1}, "zone_outage_wait: got -1", "a finite number of seconds >= 0"),
    ("zone_outage_wait NaN", {"zone_outage_wait": float("nan")}, "zone_outage_wait: got nan", "a finite number of seconds >= 0"),
    ("zone_outage_wait inf", {"zone_outage_wait": float("inf")}, "zone_outage_wait", "a finite number of seconds >= 0"),
    ("zone_outage_wait soon", {"zone_outage_wait": "soon"}, "zone_outage_wait: got 'soon'", "a number of seconds >= 0"),
    ("zone_outage_wait a list", {"zone_outage_wait": [5]}, "zone_outage_wait: got [5]", "a number of seconds >= 0"),
    ("zone_outage_wait True", {"zone_outage_wait": True}, "zone_outage_wait: got True", "a number of seconds >= 0"),
    ("worker_max_steps ten", {"worker_max_steps": "ten"}, "worker_max_steps", "an integer >= 1"),
    ("unhealthy_after 0", {"unhealthy_after": 0}, "unhealthy_after", ">= 1"),
    ("cost_weight NaN", {"objective": "weighted", "cost_weight": float("nan")}, "cost_weight", "a weight in [0, 1]"),
    ("disabled_pools a string", {"disabled_pools": "a/cpu"}, "disabled_pools", "a list of compute pool ids"),
    ("pools.default a list", {"pools": {"default": [1]}}, "pools.default", "one backend and its settings"),
    ("prestart x", {"pools": {"default": {"local": {"prestart": "x"}}}}, "prestart", "Int"),
    ("prestart -2", {"pools": {"default": {"local": {"prestart": -2}}}}, "setting prestart", "an integer >= 0"),
    ("stop_grace_seconds ten", {"pools": {"default": {"local": {"stop_grace_seconds": "ten"}}}}, "stop_grace_seconds", "Float"),
    ("stop_grace_seconds -1", {"pools": {"default": {"local": {"stop_grace_seconds": -1}}}}, "setting stop_grace_seconds", ">= 0"),
    ("env [1, 2]", {"pools": {"default": {"local": {"env": [1, 2]}}}}, "env", "{ [String]: String }"),
    ("env name with =", {"pools": {"default": {"local": {"env": {"A=B": "1"}}}}}, "setting env", "without '='"),
    ("startup_check not module:function", {"pools": {"default": {"local": {"startup_check": "nocolon"}}}}, "startup_check", "'module:function'"),
    (
        "connect_timeout_seconds x",
        {"pools": {"default": {"dask": {"scheduler": "tcp://127.0.0.1:1", "connect_timeout_seconds": "x"}}}},
        "connect_timeout_seconds",
        "Float",
    ),
    (
        "connect_timeout_seconds -1",
        {"pools": {"default": {"dask": {"scheduler": "tcp://127.0.0.1:1", "connect_timeout_seconds": -1}}}},
        "setting connect_timeout_seconds",
        "> 0",
    ),
    ("per_site unknown site", {"pools": {"per_site": {"mars": {"local": {}}}}}, "pools.per_site", "site 'mars' is not in the topology"),
]


@pytest.mark.parametrize("config,setting,expected", [c[1:] for c in SETTINGS_CASES], ids=[c[0] for c in SETTINGS_CASES])
def test_bad_executor_settings_name_the_setting_and_expectation(config, setting, expected):
    topology = Topology.from_dict(BASE)
    with pytest.raises(GravityConfigError) as err:
        GravityConfig.from_executor_config(config).pool_settings(topology)
    message = str(err.value)
    assert setting in message and expected in message, message
    assert message.startswith("gravity_executor")


# -- the IO manager's settings, op tags and location metadata ----------------------------------

IO_CASES = [
    ("s3_max_attempts 0", {"s3_max_attempts": 0}, "GravityIOManager.s3_max_attempts", "an integer from 1 to 100"),
    ("negative connect timeout", {"s3_connect_timeout_s": -1.0}, "GravityIOManager.s3_connect_timeout_s", "seconds > 0"),
    ("NaN read timeout", {"s3_read_timeout_s": float("nan")}, "GravityIOManager.s3_read_timeout_s", "seconds > 0"),
    ("negative gc grace", {"gc_grace_seconds": -5.0}, "GravityIOManager.gc_grace_seconds", "seconds >= 0"),
    ("default_site mars", {"default_site": "mars"}, "GravityIOManager.default_site", "site 'mars' is not in the topology"),
]


@pytest.mark.parametrize("fields,setting,expected", [c[1:] for c in IO_CASES], ids=[c[0] for c in IO_CASES])
def test_bad_io_manager_settings_name_the_setting_and_expectation(tmp_path, fields, setting, expected):
    path = tmp_path / "sites.yaml"
    path.write_text(yaml.safe_dump(BASE))
    io = GravityIOManager(topology=GravityTopology(sites_file=str(path)), **fields)
    with pytest.raises(GravityError) as err:
        io.load_topology()
    assert setting in str(err.value) and expected in str(err.value), str(err.value)


TAG_CASES = [
    ('gravity/gpu "-1"', {"gravity/gpu": "-1"}, "a whole number of GPUs >= 0"),
    ('gravity/gpu "two"', {"gravity/gpu": "two"}, "a whole number of GPUs >= 0"),
    ('gravity/gpu "1.5"', {"gravity/gpu": "1.5"}, "a whole number of GPUs >= 0"),
    ('gravity/gpu superscript two', {"gravity/gpu": "\u00b2"}, "a whole number of GPUs >= 0"),
    ("gravity/gpu huge", {"gravity/gpu": "9" * 10_000}, "a whole number of GPUs >= 0"),
]


@pytest.mark.parametrize("tags,expected", [c[1:] for c in TAG_CASES], ids=[c[0] for c in TAG_CASES])
def test_bad_op_tags_name_the_tag_and_expectation(tags, expected):
    step = SimpleNamespace(key="train", tags=tags)  # what requirements_for reads of a step
    with pytest.raises(GravityConfigError) as err:
        requirements_for(step)
    assert "'gravity/gpu'" in str(err.value) and expected in str(err.value) and len(str(err.value)) < 300


@pytest.mark.parametrize(
    "metadata,key",
    [
        ({"dagster/size_bytes": -5}, "dagster/size_bytes"),
        ({"dagster/size_bytes": float("inf")}, "dagster/size_bytes"),
        ({"dagster/size_bytes": "lots"}, "dagster/size_bytes"),
        ({"gravity/replicas": "b"}, "gravity/replicas"),
        ({"gravity/replicas": {"b": 1}}, "gravity/replicas"),
        ({"gravity/sha256": 5}, "gravity/sha256"),
        ({"dagster/uri": ["s3://b/k"]}, "dagster/uri"),
    ],
)
def test_bad_location_metadata_names_the_key(metadata, key):
    with pytest.raises(GravityConfigError) as err:
        DataLocation.from_metadata(metadata, what="asset 'raw'")
    assert str(err.value).startswith(f"asset 'raw': metadata {key}") and "expected" in str(err.value)


def test_a_definition_naming_an_unknown_site_says_so(tmp_path):
    path = tmp_path / "sites.yaml"
    doc = copy.deepcopy(BASE)
    doc["sites"] = doc["sites"][:2]  # local sites only
    doc["storage_root"] = str(tmp_path / "data")
    path.write_text(yaml.safe_dump(doc))
    raw = AssetSpec("raw", metadata={"gravity/site": "nowhere"})

    @asset
    def down(raw):
        return raw

    io = GravityIOManager(topology=GravityTopology(sites_file=str(path)), default_site="a")
    with DagsterInstance.ephemeral() as instance:
        result = materialize([raw, down], resources={"io_manager": io}, instance=instance, raise_on_error=False)
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    message = failure.step_failure_data.error.message + "".join(
        c.message for c in [failure.step_failure_data.error.cause] if c is not None
    )
    assert "gravity/site names site 'nowhere' is not in the topology" in message, message


# -- random documents --------------------------------------------------------------------------

WORDS = ["sites", "links", "residency", "storage_root", "name", "region", "kind", "pools", "slots", "gpus",
         "storage", "path", "bucket", "prefix", "endpoint_url", "from", "to", "bandwidth_gbps", "latency_ms",
         "usd_per_gb", "both_ways", "cloud", "onprem", "colo", "local", "s3", "a", "b", "..", "", "max_attempts",
         "profile", "access_key_id_env", "secret_access_key_env", "session_token_env", "secret_access_key"]
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(10**30), 10**30), st.floats(allow_nan=True), st.sampled_from(WORDS),
    st.text(max_size=8),
)
documents = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.sampled_from(WORDS), inner, max_size=5)),
    max_leaves=40,
)
site = st.fixed_dictionaries(
    {"name": st.sampled_from(["a", "b", "c", ".", "a\nb"]), "region": st.sampled_from(["r1", "r2", ""]),
     "kind": st.sampled_from(["cloud", "onprem", "x"]),
     "pools": st.lists(st.fixed_dictionaries({"name": st.sampled_from(["cpu", "gpu"]), "slots": st.integers(-1, 20_000)}), max_size=2)},
    optional={"storage": documents},
)
near_valid = st.fixed_dictionaries({"sites": st.lists(site, min_size=1, max_size=3)}, optional={"links": documents, "residency": documents})


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(doc=st.one_of(documents, near_valid), raw=st.text(max_size=60))
def test_random_yaml_is_a_topology_or_a_topology_error(tmp_path, doc, raw):
    for text in (yaml.safe_dump(doc), raw, yaml.safe_dump(doc) + raw):
        try:
            topology = Topology.from_text(text, base_dir=tmp_path)
        except TopologyError as err:
            assert len(str(err)) < 1000
            continue
        assert topology.sites and all(p.site in topology.sites for p in topology.pools)
        CostModel(topology)  # placement can price whatever loads


def test_links_on_demand_price_exactly_as_every_pair_built_eagerly():
    import dataclasses
    import random

    import numpy as np

    from tests.support.placement import ml_topology, random_topology

    for seed in range(20):
        rng = random.Random(seed)
        lazy = random_topology(rng, rng.randint(1, 9)) if seed % 2 else ml_topology(rng, rng.randint(2, 9))
        eager = dataclasses.replace(lazy, links={pair: lazy.links[pair] for pair in lazy.links})
        a, b = CostModel(lazy), CostModel(eager)
        for matrix in ("sec_per_byte", "latency", "usd_per_byte"):
            assert np.array_equal(getattr(a, matrix), getattr(b, matrix)), (seed, matrix)
