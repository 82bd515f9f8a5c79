"""Per-site S3 credentials: two real SeaweedFS servers, each accepting only its own key pair.

Site `a` lives on server A, site `b` on server B; each site's sites.yaml storage names the
environment variables that hold its keys. Server A refuses B's keys and B refuses A's (and
both refuse the process-wide dummy keys the rest of the suite uses), so every success below
proves the right pair was used for each request: a copy from a to b read with A's keys and
wrote with B's.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import signal
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
import pytest
import yaml
from botocore.exceptions import ClientError
from dagster import asset, materialize

from dagster_gravity import GravityIOManager, GravityTopology
from dagster_gravity.cli import main
from dagster_gravity.locations import latest_location
from dagster_gravity.runtime import running_at
from dagster_gravity.storage import SiteCredentialsError, StorageError, replicate, storage_for_site
from dagster_gravity.storage.credentials import REFUSED_CODES
from tests.support.s3 import ACCESS_KEY, SECRET_KEY
from dagster_gravity.storage.s3 import SHA_META
from dagster_gravity.topology import Topology
from tests.support.s3 import start_seaweedfs

pytestmark = pytest.mark.slow  # starts SeaweedFS servers; runs Dagster jobs in process

VARS = {
    "a": ("GRAVITY_TEST_A_KEY_ID", "GRAVITY_TEST_A_SECRET"),
    "b": ("GRAVITY_TEST_B_KEY_ID", "GRAVITY_TEST_B_SECRET"),
}
BUCKETS = {"a": "site-a-data", "b": "site-b-data"}


def _keys(site: str) -> tuple[str, str]:
    return f"GRAVITY{site.upper()}{uuid.uuid4().hex[:12].upper()}", uuid.uuid4().hex + uuid.uuid4().hex[:8]


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    """Servers A and B, started side by side, each requiring its own keys; one bucket each."""
    keys = {site: _keys(site) for site in ("a", "b")}
    with ThreadPoolExecutor(2) as pool:
        futures = {
            site: pool.submit(start_seaweedfs, tmp_path_factory.mktemp(f"weed-{site}"), volumes_per_bucket=1, keys=keys[site])
            for site in ("a", "b")
        }
        started = {}
        try:
            for site, future in futures.items():
                started[site] = future.result()
        finally:
            if len(started) < 2:
                for server in started.values():
                    server.stop()
    try:
        for site, server in started.items():
            server.make_bucket(BUCKETS[site])
        yield started
    finally:
        for server in started.values():  # both at once: each takes seconds to stop
            if server.process.poll() is None:
                server.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 3
        for server in started.values():
            server.stop(timeout=max(0.1, deadline - time.monotonic()))


@pytest.fixture
def site_keys(servers, monkeypatch):
    """Each site's key pair in the variables its storage names (as a worker's env would hold)."""
    for site, (id_var, secret_var) in VARS.items():
        monkeypatch.setenv(id_var, servers[site].keys[0])
        monkeypatch.setenv(secret_var, servers[site].keys[1])
    return VARS


def _sites_file(directory: Path, servers, plain: bool = False) -> Path:
    sites = []
    for site, (id_var, secret_var) in VARS.items():
        storage = {
            "kind": "s3", "bucket": BUCKETS[site], "prefix": "gravity", "endpoint_url": servers[site].endpoint_url,
            "access_key_id_env": id_var, "secret_access_key_env": secret_var, "connect_timeout_seconds": 2,
            "read_timeout_seconds": 10, "max_attempts": 1,
        }
        sites.append({"name": site, "region": f"r-{site}", "kind": "onprem", "storage": storage})
    if plain:  # on server A, naming no credentials: the process-wide chain
        sites.append({"name": "plain", "region": "r-a", "kind": "onprem", "storage": {
            "kind": "s3", "bucket": BUCKETS["a"], "prefix": "plain", "endpoint_url": servers["a"].endpoint_url,
            "max_attempts": 1}})
    for site in sites:
        site["pools"] = [{"name": "cpu", "slots": 1}]
    path = directory / "sites.yaml"
    path.write_text(yaml.safe_dump({"sites": sites}))
    return path


def _client_code(call) -> str:
    with pytest.raises(ClientError) as err:
        call()
    return str(err.value.response["Error"]["Code"])


def test_each_server_refuses_the_other_sites_keys(servers, site_keys, tmp_path, monkeypatch):
    a, b = servers["a"], servers["b"]
    assert a.keys != b.keys
    crossed_a, crossed_b = dataclasses.replace(a, keys=b.keys), dataclasses.replace(b, keys=a.keys)
    assert _client_code(lambda: crossed_a.client().head_bucket(Bucket=BUCKETS["a"])) in REFUSED_CODES
    assert _client_code(lambda: crossed_b.client().list_objects_v2(Bucket=BUCKETS["b"])) in REFUSED_CODES
    a.client().head_bucket(Bucket=BUCKETS["a"])
    b.client().head_bucket(Bucket=BUCKETS["b"])

    # a site that names no credentials gets the process-wide chain, which neither server
    # takes; the chain is pinned to the suite's dummy keys, whatever earlier tests left
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    for name in ("AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_DEFAULT_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    topology = Topology.from_yaml(_sites_file(tmp_path, servers, plain=True))
    assert ACCESS_KEY not in (a.keys[0], b.keys[0])
    plain = storage_for_site(topology, "plain")
    with pytest.raises(StorageError) as err:
        info = plain.put_version("probe", b"x")
        pytest.fail(f"{plain} wrote {info} with the process-wide chain's keys; a's server takes only its own")
    assert "process-wide boto3 chain" in str(err.value), err.value


def test_each_site_writes_and_reads_with_its_own_keys(servers, site_keys, tmp_path):
    topology = Topology.from_yaml(_sites_file(tmp_path, servers))
    for site in ("a", "b"):
        store = storage_for_site(topology, site)
        data = f"written at {site}".encode()
        info = store.put_version(f"creds/{site}", data, ".txt")
        assert store.read_bytes(info.key, info.sha256)[0] == data
        # the object is on the site's own server, in its bucket, with its checksum
        head = servers[site].client().head_object(Bucket=BUCKETS[site], Key=f"gravity/{info.key}")
        assert head["Metadata"][SHA_META] == hashlib.sha256(data).hexdigest()


def test_a_boto3_profile_holds_a_sites_keys(servers, tmp_path, monkeypatch):
    profile = f"gravity-site-a-{uuid.uuid4().hex[:8]}"  # sessions are cached per profile name
    credentials = tmp_path / "credentials"
    credentials.write_text(f"[{profile}]\naws_access_key_id = {servers['a'].keys[0]}\n"
                           f"aws_secret_access_key = {servers['a'].keys[1]}\n")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(credentials))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    doc = yaml.safe_load(_sites_file(tmp_path, servers).read_text())
    storage = doc["sites"][0]["storage"]
    del storage["access_key_id_env"], storage["secret_access_key_env"]
    storage["profile"] = profile
    topology = Topology.from_dict(doc, source="sites.yaml")
    store = storage_for_site(topology, "a")
    info = store.put_version("creds/by-profile", b"profile keys", ".txt")
    assert store.read_bytes(info.key, info.sha256)[0] == b"profile keys"

    storage["profile"] = "no-such-profile"
    with pytest.raises(SiteCredentialsError) as err:
        storage_for_site(Topology.from_dict(doc, source="sites.yaml"), "a")
    message = str(err.value)
    assert "sites[0].storage.profile in sites.yaml" in message and "'no-such-profile'" in message, message
    assert "site 'a'" in message, message


def test_replication_reads_with_the_source_keys_and_writes_with_the_destination_keys(servers, site_keys, tmp_path, monkeypatch):
    topology = Topology.from_yaml(_sites_file(tmp_path, servers))
    a, b = storage_for_site(topology, "a"), storage_for_site(topology, "b")
    data = os.urandom(5 * 1024 * 1024 + 1234)  # a part of 5 MiB (the S3 minimum) and the rest: multipart at b
    info = a.put_version("creds/big", data, ".bin")
    copied = replicate(a, b, info.key, info.sha256, part_size=5 * 1024 * 1024)
    assert copied.replica.sha256 == info.sha256 == hashlib.sha256(data).hexdigest()
    assert b.read_bytes(info.key, info.sha256)[0] == data  # verified again on read
    assert servers["b"].client().head_object(Bucket=BUCKETS["b"], Key=f"gravity/{info.key}")["ContentLength"] == len(data)

    # b's variables holding a's keys: the write at b is refused, naming b's variables, and leaves nothing
    monkeypatch.setenv(VARS["b"][0], servers["a"].keys[0])
    monkeypatch.setenv(VARS["b"][1], servers["a"].keys[1])
    wrong_b = storage_for_site(topology, "b")
    small = a.put_version("creds/small", b"small", ".bin")
    with pytest.raises(StorageError) as err:
        replicate(a, wrong_b, small.key, small.sha256)
    message = str(err.value)
    assert "$GRAVITY_TEST_B_KEY_ID" in message and "sites[1].storage" in message, message
    assert servers["a"].keys[1] not in message
    assert b.head(small.key) is None


@asset
def readings() -> pd.DataFrame:
    return pd.DataFrame({"sensor": [1, 2, 3], "value": [0.5, 1.5, 2.5]})


@asset
def summary(readings: pd.DataFrame) -> float:
    return float(readings["value"].sum())


def test_io_manager_stores_at_each_site_and_replicates_between_them(servers, site_keys, tmp_path, instance):
    io = GravityIOManager(topology=GravityTopology(sites_file=str(_sites_file(tmp_path, servers))))
    with running_at("a"):
        materialize([readings], resources={"io_manager": io}, instance=instance)
    with running_at("b"):  # reads readings at a with a's keys, copies it to b with b's
        result = materialize([readings, summary], selection=[summary], resources={"io_manager": io}, instance=instance)
    assert result.output_for_node("summary") == 4.5
    location = latest_location(instance, "readings")
    assert location.site == "a" and location.replicas == ("b",)
    key = location.uri.split(f"s3://{BUCKETS['a']}/gravity/", 1)[1]
    head = servers["b"].client().head_object(Bucket=BUCKETS["b"], Key=f"gravity/{key}")
    assert head["Metadata"][SHA_META] == location.sha256


def _health(capsys, sites: Path) -> tuple[int, str]:
    rc = main(["sites", "--health", "--sites", str(sites), "--timeout", "2"])
    out = capsys.readouterr()
    return rc, out.out + out.err


def _row(text: str, site: str) -> str:
    rows = [line for line in text.splitlines() if line.startswith(site + " ")]
    assert rows, text
    return rows[-1]  # the storage health table comes last


def test_sites_health_checks_each_sites_keys_and_names_the_variable(servers, site_keys, tmp_path, capsys, monkeypatch):
    sites = _sites_file(tmp_path, servers)
    rc, text = _health(capsys, sites)
    assert rc == 0, text
    for site, (id_var, _) in VARS.items():
        assert "healthy: bucket" in _row(text, site) and f"${id_var}" in _row(text, site)

    monkeypatch.setenv(VARS["a"][1], servers["b"].keys[1])  # a's secret variable holds b's secret
    monkeypatch.delenv(VARS["b"][0])  # b's key id variable unset
    rc, text = _health(capsys, sites)
    assert rc == 1, text
    row_a, row_b = _row(text, "a"), _row(text, "b")
    assert "unhealthy" in row_a and "site 'a'" in row_a and f"${VARS['a'][1]}" in row_a, row_a
    assert "unhealthy" in row_b and "site 'b'" in row_b and f"${VARS['b'][0]}" in row_b and "not set" in row_b, row_b
    assert "sites[1].storage.access_key_id_env" in row_b, row_b
    for server in servers.values():
        assert server.keys[1] not in text


def test_an_unset_variable_names_site_field_and_variable(tmp_path, monkeypatch):
    """No server needed: the variable is read before any request."""
    monkeypatch.setenv("GRAVITY_TEST_C_KEY_ID", "some-key-id")
    monkeypatch.setenv("GRAVITY_TEST_C_SECRET", "")
    doc = {"sites": [{"name": "c", "region": "r", "kind": "cloud", "pools": [{"name": "cpu", "slots": 1}], "storage": {
        "kind": "s3", "bucket": "bkt", "endpoint_url": "http://127.0.0.1:9",
        "access_key_id_env": "GRAVITY_TEST_C_KEY_ID", "secret_access_key_env": "GRAVITY_TEST_C_SECRET"}}]}
    topology = Topology.from_dict(doc, source="/srv/sites.yaml")
    with pytest.raises(SiteCredentialsError) as err:
        storage_for_site(topology, "c")
    message = str(err.value)
    assert "sites[0].storage.secret_access_key_env in /srv/sites.yaml" in message, message
    assert "$GRAVITY_TEST_C_SECRET" in message and "empty" in message and "site 'c'" in message, message
    monkeypatch.delenv("GRAVITY_TEST_C_KEY_ID")
    with pytest.raises(SiteCredentialsError, match=r"\$GRAVITY_TEST_C_KEY_ID, which is not set"):
        storage_for_site(topology, "c")
    assert isinstance(err.value, ValueError)  # a configuration error too


def test_a_profile_without_keys_says_which_profile_was_searched(tmp_path, monkeypatch, capsys):
    """No server needed: boto3 finds no keys before it opens a connection."""
    profile = f"gravity-empty-{uuid.uuid4().hex[:8]}"
    (tmp_path / "config").write_text(f"[profile {profile}]\nregion = us-east-1\n")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    doc = {"sites": [{"name": "c", "region": "r", "kind": "cloud", "pools": [{"name": "cpu", "slots": 1}], "storage": {
        "kind": "s3", "bucket": "bkt", "endpoint_url": "http://127.0.0.1:9", "profile": profile, "max_attempts": 1}}]}
    sites = tmp_path / "sites.yaml"
    sites.write_text(yaml.safe_dump(doc))
    # process-wide keys are there, but not used for a site that names a profile
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "process-wide-key-id")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "process-wide-secret")
    with pytest.raises(StorageError, match=rf"no credentials found in boto3 profile '{profile}' \(sites\[0\]\.storage\)"):
        storage_for_site(Topology.from_yaml(sites), "c").head("x")
    rc, text = _health(capsys, sites)
    assert rc == 1 and f"boto3 profile '{profile}' (sites[0].storage) holds no credentials" in _row(text, "c"), text
