"""Free loopback ports for servers the tests start, chosen below the kernel's ephemeral range.

A port picked by binding port 0 comes from the ephemeral range, the same range every
outgoing connection (boto3, Dask comms, psycopg2) draws its local port from. Between picking
such a port and the server binding it, a client socket of this or the parallel test worker
can take it, and the server dies with "address already in use". Ports below that range are
never handed out to clients, so only another server picking the same number could collide;
random choice makes that rare, and servers that can say so retry on it."""

from __future__ import annotations

import random
import socket
from contextlib import ExitStack
from pathlib import Path

# Below the ephemeral range (Linux default 32768-60999) and above the well-known ports.
LOW, FALLBACK_HIGH = 20000, 32767


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return FALLBACK_HIGH + 1


def free_ports(count: int) -> list[int]:
    """`count` distinct loopback ports that are free now (held open together so none repeats)."""
    high = max(LOW + 1000, min(_ephemeral_low() - 1, 65535))
    with ExitStack() as stack:
        ports: list[int] = []
        while len(ports) < count:
            port = random.randint(LOW, high)
            if port in ports:
                continue
            sock = stack.enter_context(socket.socket())
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:  # taken: try another
                continue
            ports.append(port)
    return ports


def free_port() -> int:
    return free_ports(1)[0]
