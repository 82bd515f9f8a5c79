"""Sites as Linux network namespaces joined through the root namespace (needs root).

Site i gets namespace `ms-<name>` and a veth pair: `msr<i>` in the root namespace
(10.77.<i>.1/24) and `mss<i>` inside the site (10.77.<i>.2/24, default route via .1). Traffic
between two sites is forwarded by the root namespace, so it leaves one site through its veth
and enters the other through its veth: shaping both ends of every veth with `tbf` shapes every
direction of every site's link (this kernel has no netem; tbf works).

Forwarding is enabled only on the interfaces made here (per-interface
`net/ipv4/conf/<if>/forwarding`), so the host's own forwarding setting is untouched. Deleting a
namespace deletes its veth pair and their qdiscs; `Network.teardown()` does that for every
namespace it made and is safe to call twice.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from pathlib import Path

SUBNET = "10.77"


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(args, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise RuntimeError(f"`{' '.join(args)}` failed ({result.returncode}): {result.stderr.strip()}")
    return result


@dataclass
class SiteNet:
    name: str
    index: int

    @property
    def netns(self) -> str:
        return f"ms-{self.name}"

    @property
    def root_if(self) -> str:
        return f"msr{self.index}"

    @property
    def site_if(self) -> str:
        return f"mss{self.index}"

    @property
    def gateway(self) -> str:
        return f"{SUBNET}.{self.index}.1"

    @property
    def address(self) -> str:
        return f"{SUBNET}.{self.index}.2"

    def exec_prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.netns]

    def counters(self) -> dict[str, int]:
        """Bytes through this site's link so far: `up` left the site, `down` entered it."""
        stats = Path(f"/sys/class/net/{self.root_if}/statistics")
        return {"up": int((stats / "rx_bytes").read_text()), "down": int((stats / "tx_bytes").read_text())}


@dataclass
class Network:
    sites: list[SiteNet]
    rate: str = "100mbit"
    _made: list[str] = field(default_factory=list)
    shaped: bool = False

    @classmethod
    def create(cls, names: list[str], rate: str = "100mbit") -> "Network":
        net = cls([SiteNet(name, i + 1) for i, name in enumerate(names)], rate)
        try:
            for site in net.sites:
                net._create_site(site)
        except BaseException:
            net.teardown()
            raise
        return net

    def _create_site(self, site: SiteNet) -> None:
        existing = sh("ip", "netns", "list").stdout.split()
        if site.netns in existing:
            raise RuntimeError(
                f"network namespace {site.netns} already exists (a previous benchmark left it?); "
                f"remove it with `ip netns del {site.netns}` and run again"
            )
        sh("ip", "netns", "add", site.netns)
        self._made.append(site.netns)
        sh("ip", "link", "add", site.root_if, "type", "veth", "peer", "name", site.site_if, "netns", site.netns)
        sh("ip", "addr", "add", f"{site.gateway}/24", "dev", site.root_if)
        sh("ip", "link", "set", site.root_if, "up")
        # Forward between our veths only; reverse-path filtering off on them (asymmetric is fine).
        Path(f"/proc/sys/net/ipv4/conf/{site.root_if}/forwarding").write_text("1")
        Path(f"/proc/sys/net/ipv4/conf/{site.root_if}/rp_filter").write_text("0")
        inside = site.exec_prefix()
        sh(*inside, "ip", "link", "set", "lo", "up")
        sh(*inside, "ip", "addr", "add", f"{site.address}/24", "dev", site.site_if)
        sh(*inside, "ip", "link", "set", site.site_if, "up")
        sh(*inside, "ip", "route", "add", "default", "via", site.gateway)

    def shape(self) -> None:
        """tbf at `rate` on both ends of every site's veth (both directions of each link)."""
        for site in self.sites:
            for prefix, dev in (([], site.root_if), (site.exec_prefix(), site.site_if)):
                sh(*prefix, "tc", "qdisc", "replace", "dev", dev, "root", "tbf",
                   "rate", self.rate, "burst", "64kb", "latency", "100ms")
        self.shaped = True

    def unshape(self) -> None:
        for site in self.sites:
            for prefix, dev in (([], site.root_if), (site.exec_prefix(), site.site_if)):
                sh(*prefix, "tc", "qdisc", "del", "dev", dev, "root", check=False)
        self.shaped = False

    def counters(self) -> dict[str, dict[str, int]]:
        return {site.name: site.counters() for site in self.sites}

    def teardown(self) -> None:
        """Delete every namespace made here (its veth pair and qdiscs go with it)."""
        while self._made:
            netns = self._made.pop()
            sh("ip", "netns", "del", netns, check=False)
