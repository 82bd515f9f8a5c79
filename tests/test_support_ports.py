"""The test servers' ports: chosen outside the range client sockets take, and a SeaweedFS
start that loses a port to someone else starts again on other ports."""

import socket
from pathlib import Path

import pytest

from tests.support import s3
from tests.support.ports import free_ports


def test_free_ports_are_distinct_bindable_and_below_the_ephemeral_range():
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    ports = free_ports(50)
    assert len(set(ports)) == 50
    assert all(port < low for port in ports)
    for port in ports[:5]:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))


@pytest.mark.slow
def test_seaweedfs_starts_again_when_a_port_is_taken_before_it_binds(tmp_path, monkeypatch):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    picks = []

    def first_pick_collides(count):
        ports = free_ports(count)
        if not picks:
            ports[-1] = taken.getsockname()[1]  # the S3 gRPC port, as in the CI failure
        picks.append(ports)
        return ports

    monkeypatch.setattr(s3, "free_ports", first_pick_collides)
    try:
        server = s3.start_seaweedfs(tmp_path / "weed", volumes_per_bucket=1)
        try:
            assert len(picks) == 2
            server.client().list_buckets()
        finally:
            server.stop()
    finally:
        taken.close()
