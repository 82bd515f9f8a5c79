"""The `gravity` command line.

    gravity sites [--sites sites.yaml] [--json]   the topology: sites, pools, zones, links
    gravity sites --health [--config run.yaml]    ... and each pool's and site storage's health
    gravity plan -m MODULE -j JOB [...]           where each step would run (job_plan.py)
    gravity gc [--dry-run] [--grace-seconds N]    remove superseded versions and crash debris

Subcommands register themselves on the argparse subparsers (`add_*_command`) and set
``func``; `main` dispatches to it and returns its exit status.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

from dagster_gravity.errors import GravityConfigError
from dagster_gravity.topology import Topology, TopologyError, resolve_sites_path


def _storage_text(storage) -> str:
    if storage.kind == "local":
        return f"local {storage.path}"
    where = f"s3://{storage.bucket}/{storage.prefix}".rstrip("/")
    if storage.endpoint_url:
        where += f" @ {storage.endpoint_url}"
    if storage.credentials is not None:  # names only: a profile or variables, never a secret
        where += f" ({storage.credentials.describe()})"
    return where


def _link_cell(link) -> str:
    if link.src == link.dst:
        return "-"
    gbps = link.bandwidth_bytes_per_s * 8 / 1e9
    return f"{gbps:g}G {link.latency_s * 1000:g}ms ${link.usd_per_gb:g}"


def topology_as_dict(topology: Topology) -> dict:
    """A JSON-able view of the topology (what `gravity sites --json` prints)."""
    return {
        "source": topology.source,
        "sites": [
            {
                "name": site.name,
                "kind": site.kind,
                "region": site.region,
                "storage": _storage_text(site.storage),
                "pools": [{"id": p.id, "kind": p.kind, "slots": p.slots, "gpus": p.gpus} for p in site.pools],
                "zones": sorted(z for z, members in topology.zones.items() if site.name in members),
            }
            for site in topology.sites.values()
        ],
        "zones": {zone: sorted(members) for zone, members in topology.zones.items()},
        "zone_outage_waits": dict(topology.zone_outage_waits),
        "links": [
            {
                "from": src,
                "to": dst,
                "bandwidth_gbps": link.bandwidth_bytes_per_s * 8 / 1e9,
                "latency_ms": link.latency_s * 1000,
                "usd_per_gb": link.usd_per_gb,
            }
            for (src, dst), link in topology.links.items()
            if src != dst
        ],
    }


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    lines = [fmt.format(*header), fmt.format(*("-" * w for w in widths))]
    lines += [fmt.format(*row) for row in rows]
    return "\n".join(line.rstrip() for line in lines)


def format_topology(topology: Topology) -> str:
    names = list(topology.sites)
    site_rows = []
    for site in topology.sites.values():
        zones = ",".join(sorted(z for z, m in topology.zones.items() if site.name in m)) or "-"
        pools = ", ".join(f"{p.id} ({p.kind}, {p.slots} slot{'s' if p.slots != 1 else ''}, {p.gpus} GPU{'s' if p.gpus != 1 else ''})" for p in site.pools)
        site_rows.append([site.name, site.kind, site.region, zones, _storage_text(site.storage), pools])
    parts = [
        f"topology {topology.source}: {len(names)} sites, {len(topology.pools)} pools",
        "",
        _table(["site", "kind", "region", "zones", "storage", "pools"], site_rows),
        "",
        "residency zones (data of a zone may not leave its sites):",
    ]
    if topology.zones:
        waits = topology.zone_outage_waits
        parts += [
            f"  {zone}: {', '.join(sorted(members))}" + (f" (outage wait {waits[zone]:g} s)" if zone in waits else "")
            for zone, members in topology.zones.items()
        ]
    else:
        parts.append("  (none)")
    parts += ["", "links, row = from, column = to (bandwidth, latency, $/GB):"]
    parts.append(_table(["from \\ to", *names], [[src, *(_link_cell(topology.link(src, dst)) for dst in names)] for src in names]))
    return "\n".join(parts)


def _measured_links(topology: Topology) -> list:
    """The links measured by earlier replications, from the instance of $DAGSTER_HOME (none
    without one)."""
    import os

    if not os.environ.get("DAGSTER_HOME"):
        return []
    from dagster import DagsterInstance

    from dagster_gravity.link_measurements import measured_links

    try:
        with DagsterInstance.get() as instance:
            found = measured_links(instance, topology.sites)
    except Exception as exc:  # noqa: BLE001 - the topology is worth printing without them
        print(f"gravity sites: measured links not shown: cannot open the Dagster instance ($DAGSTER_HOME): {exc}",
              file=sys.stderr)
        return []
    return [found[pair] for pair in sorted(found) if pair in topology.links]


def format_measured_links(topology: Topology, measured: Sequence) -> str:
    from dagster_gravity.link_measurements import MIN_SAMPLES

    if not measured:
        return "links as measured by replications: none yet (placement uses the configured bandwidths)"
    rows = [
        [m.src, m.dst, f"{topology.link(m.src, m.dst).bandwidth_bytes_per_s * 8 / 1e9:g}G",
         f"{m.bandwidth_bytes_per_s * 8 / 1e9:.3g}G", str(m.samples), "measured" if m.trusted else "configured"]
        for m in measured
    ]
    return (
        f"links as measured by replications (placement uses a measurement after {MIN_SAMPLES} copies of 1 MB or more):\n"
        + _table(["from", "to", "configured", "measured", "copies", "placement uses"], rows)
    )


def add_sites_command(subparsers) -> None:
    parser = subparsers.add_parser("sites", help="print the topology: sites, pools, residency zones and links")
    parser.add_argument("--sites", default=None, help="sites file (default: $GRAVITY_SITES, else sites.yaml)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    parser.add_argument(
        "--health",
        action="store_true",
        help="also start each pool's backend as the executor would, report its health and stop it, "
        "and check each site's storage (exit status 1 when anything is unhealthy)",
    )
    parser.add_argument(
        "--config",
        default=None,
        help="with --health: run config (execution: config: ...) or the gravity executor config alone, "
        "for the pool backends; its sites_file is used unless --sites is given",
    )
    parser.add_argument(
        "--timeout", type=float, default=None,
        help="with --health: seconds each check may wait (Dask scheduler, S3 endpoint; default 5)",
    )
    parser.set_defaults(func=run_sites_command)


def run_sites_command(args) -> int:
    from dagster_gravity import health

    executor_config: dict = {}
    if args.config:
        if not args.health:
            print("gravity sites: --config is only used with --health", file=sys.stderr)
            return 2
        try:
            executor_config = health.executor_config_from_yaml(Path(args.config))
        except GravityConfigError as exc:
            print(f"gravity sites: {exc}", file=sys.stderr)
            return 2
    path = resolve_sites_path(args.sites or executor_config.get("sites_file"))
    try:
        topology = Topology.from_yaml(path)
    except TopologyError as exc:
        print(f"gravity sites: {exc}", file=sys.stderr)
        return 2
    if not args.health:
        measured = _measured_links(topology)
        if args.json:
            view = topology_as_dict(topology)
            view["measured_links"] = [
                {"from": m.src, "to": m.dst, "samples": m.samples, "bandwidth_gbps": m.bandwidth_bytes_per_s * 8 / 1e9,
                 "used": m.trusted}
                for m in measured
            ]
            print(json.dumps(view, indent=2))
        else:
            print(format_topology(topology))
            print()
            print(format_measured_links(topology, measured))
        return 0

    timeout = args.timeout if args.timeout is not None else health.DEFAULT_TIMEOUT_S
    try:
        pools = health.pool_health(topology, executor_config, timeout_s=timeout)
    except GravityConfigError as exc:  # a bad executor config
        print(f"gravity sites: {exc}", file=sys.stderr)
        return 2
    storage = health.storage_health(topology, timeout_s=timeout)
    if args.json:
        view = topology_as_dict(topology)
        view["pool_health"] = [{"pool": r.name, "backend": r.kind, "healthy": r.healthy, "detail": r.detail} for r in pools]
        view["storage_health"] = [{"site": r.name, "storage": r.kind, "healthy": r.healthy, "detail": r.detail} for r in storage]
        print(json.dumps(view, indent=2))
    else:
        print(format_topology(topology))
        print()
        print("pool health (each backend started as the executor would, then stopped):")
        print(_table(["pool", "backend", "health"], [[r.name, r.kind, r.text()] for r in pools]))
        print()
        print("storage health:")
        print(_table(["site", "storage", "health"], [[r.name, r.kind, r.text()] for r in storage]))
    return 0 if all(r.healthy for r in [*pools, *storage]) else 1


def add_gc_command(subparsers) -> None:
    parser = subparsers.add_parser(
        "gc",
        help="remove superseded asset versions, temporary files of killed writers and incomplete S3 uploads "
        "at every site (the Dagster instance of $DAGSTER_HOME says which versions are recorded)",
    )
    parser.add_argument("--sites", default=None, help="sites file (default: $GRAVITY_SITES, else sites.yaml)")
    parser.add_argument("--dry-run", action="store_true", help="list what would be removed; remove nothing")
    parser.add_argument(
        "--grace-seconds", type=float, default=None,
        help="only remove what has been superseded or abandoned for this long (default 3600)",
    )
    parser.set_defaults(func=run_gc_command)


def run_gc_command(args) -> int:
    from dagster import DagsterInstance

    from dagster_gravity.recorded_versions import collect
    from dagster_gravity.storage import gc

    grace = gc.DEFAULT_GRACE_S if args.grace_seconds is None else args.grace_seconds
    if not grace >= 0:  # also refuses NaN
        print(f"gravity gc: --grace-seconds {args.grace_seconds!r}: expected a number of seconds >= 0", file=sys.stderr)
        return 2
    try:
        topology = Topology.from_yaml(resolve_sites_path(args.sites))
    except TopologyError as exc:
        print(f"gravity gc: {exc}", file=sys.stderr)
        return 2
    try:
        instance = DagsterInstance.get()
    except Exception as exc:  # noqa: BLE001 - Dagster raises several kinds; the message says which
        print(f"gravity gc: cannot open the Dagster instance ($DAGSTER_HOME): {exc}", file=sys.stderr)
        return 2
    with instance:
        reports = collect(instance, topology, grace_s=grace, dry_run=args.dry_run)
    failed = False
    for site, report in reports.items():
        print(f"site {site}: {report.summary()}")
        for item in report.removed:
            print(f"  {'would remove' if args.dry_run else 'removed'} {item.text()}")
        for error in report.errors:
            print(f"  error: {error}")
            failed = True
    return 1 if failed else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gravity", description="dagster-gravity: compute goes to the data")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    add_sites_command(subparsers)
    add_gc_command(subparsers)
    try:
        from dagster_gravity.job_plan import add_plan_command
    except ImportError:  # pragma: no cover - job_plan is part of the package
        pass
    else:
        add_plan_command(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
