"""Where things are: sites, their compute pools and storage, the links between them,
and the residency zones that data may not leave.

`Topology.from_yaml(path)` loads and validates a sites file. Every validation error names
the file, the field (as a path such as ``sites[2].pools[0].slots``), the value found and
what was expected. `resolve_sites_path` is the one rule that says which sites file is meant;
`load_topology` parses a file once per version. This module has no Dagster import.

A site's `storage` is `{kind: local, path: DIR}` (default: `<storage_root>/<site>`) or
`{kind: s3, bucket: B, prefix: P, region: R, endpoint_url: URL}`. An S3 storage may also set
its client's failure times: `connect_timeout_seconds` and `read_timeout_seconds` (numbers
> 0, per attempt) and `max_attempts` (an integer >= 1, per request, the first included).
What a site sets wins; what it leaves out comes from GravityIOManager's `s3_*` fields, whose
defaults (5 s, 10 s, 2) make a hung endpoint fail in about 21 s.

An S3 storage may name where its credentials come from, never the secrets themselves:
`profile: NAME` (a boto3 profile), or `access_key_id_env: VAR` and `secret_access_key_env: VAR`
(and optionally `session_token_env: VAR`), the names of environment variables read by the
process that makes the site's client. Without them, the process-wide boto3 chain is used.
A field that looks like a literal secret (`aws_secret_access_key`, `access_key`, ...) is
refused without echoing its value.
"""

from __future__ import annotations

import math
import os
import re
import threading
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping
from urllib.parse import urlsplit

import yaml

from dagster_gravity import bounded_yaml
from dagster_gravity.errors import GravityConfigError, short_repr

SITE_KINDS = ("cloud", "colo", "onprem")
STORAGE_KINDS = ("local", "s3")
# an S3 site's client settings in sites.yaml -> the StorageSpec field (see storage.s3.S3Options)
S3_SETTINGS = {
    "connect_timeout_seconds": "connect_timeout_s",
    "read_timeout_seconds": "read_timeout_s",
    "max_attempts": "max_attempts",
}
# where an S3 site's credentials come from: a boto3 profile, or environment variable names
CREDENTIAL_FIELDS = ("profile", "access_key_id_env", "secret_access_key_env", "session_token_env")
# words that mark a field as holding a secret itself (aws_secret_access_key, access_key, token, ...)
_SECRET_WORDS = ("secret", "password", "access_key", "token", "credential")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
_AWS_KEY_ID = re.compile(r"(AKIA|ASIA|AROA|AIDA)[A-Z0-9]{12,}")  # what a key id itself looks like

# Default link prices and speeds, from public list prices (AWS, 2024-2026):
# about $0.01/GB each way between availability zones of one region, about $0.02/GB between
# regions, $0.09/GB out to the internet. A link that is not between two sites of the same
# cloud crosses the internet, so it is priced at the internet egress rate.
SAME_REGION = dict(bandwidth_gbps=10.0, latency_ms=1.0, usd_per_gb=0.02)
CROSS_REGION = dict(bandwidth_gbps=2.0, latency_ms=40.0, usd_per_gb=0.02)
INTERNET = dict(bandwidth_gbps=1.0, latency_ms=30.0, usd_per_gb=0.09)

# What a sites file may be (README, "sites.yaml"): beyond these it is refused, not parsed.
# Placement keeps n x n cost matrices, so sites are bounded; a file of MAX_SITES sites is
# about 80 kB, so the file size limit leaves room for comments; a sites file nests about 5
# levels deep; values are counted with YAML aliases expanded (a "billion laughs" document).
MAX_FILE_BYTES = 512 * 1024
MAX_SITES = 1000
MAX_DEPTH = 32
MAX_VALUES = 1_000_000
MAX_SLOTS = 10_000  # per compute pool: the local backend may fork this many workers
MAX_GPUS = 1024  # GPUs one step in a compute pool may use
MAX_NAME_CHARS = 128


class TopologyError(GravityConfigError):
    """A sites file (or dict) that does not describe a valid topology."""

    def __init__(self, source: str, field_path: str, value: Any, expected: str):
        self.source = source
        self.field_path = field_path
        self.value = value
        self.expected = expected
        super().__init__(f"{source}: {field_path}: got {short_repr(value)}; expected {expected}")


@dataclass(frozen=True)
class S3Credentials:
    """Where one S3 site's credentials come from: a boto3 profile, or the names of the
    environment variables that hold its keys (read where the client is made). Never a secret."""

    profile: str | None = None
    access_key_id_env: str | None = None
    secret_access_key_env: str | None = None
    session_token_env: str | None = None

    def describe(self) -> str:
        """The source in words, for messages: names only, never a value."""
        if self.profile is not None:
            return f"boto3 profile {self.profile!r}"
        names = [self.access_key_id_env, self.secret_access_key_env, self.session_token_env]
        return "environment variables " + ", ".join(f"${n}" for n in names if n)


@dataclass(frozen=True)
class StorageSpec:
    """Where a site keeps its data: a local directory, or an S3 bucket and prefix."""

    kind: str  # "local" or "s3"
    path: str | None = None  # local: absolute directory
    bucket: str | None = None  # s3
    prefix: str = ""  # s3: key prefix inside the bucket
    region: str | None = None  # s3
    endpoint_url: str | None = None  # s3-compatible servers (SeaweedFS, MinIO, ...)
    # s3 client settings of this site; None: the IO manager's (else the built-in) default
    connect_timeout_s: float | None = None
    read_timeout_s: float | None = None
    max_attempts: int | None = None
    # s3: where this site's credentials come from; None: the process-wide boto3 chain
    credentials: S3Credentials | None = None


@dataclass(frozen=True)
class Pool:
    """A group of interchangeable execution slots at one site."""

    site: str
    name: str
    slots: int
    gpus: int = 0  # GPUs available to one step in this pool
    kind: str = "cpu"  # free-form compute pool kind matched by the `gravity/pool_kind` op tag

    @property
    def id(self) -> str:
        return f"{self.site}/{self.name}"


@dataclass(frozen=True)
class Site:
    name: str
    region: str
    kind: str  # one of SITE_KINDS
    storage: StorageSpec
    pools: tuple[Pool, ...]


@dataclass(frozen=True)
class Link:
    """The cost of moving bytes from `src` to `dst` (one direction)."""

    src: str
    dst: str
    bandwidth_bytes_per_s: float
    latency_s: float
    usd_per_gb: float

    def seconds(self, nbytes: float) -> float:
        if nbytes <= 0 or self.src == self.dst:
            return 0.0
        return self.latency_s + nbytes / self.bandwidth_bytes_per_s

    def dollars(self, nbytes: float) -> float:
        return 0.0 if nbytes <= 0 else nbytes / 1e9 * self.usd_per_gb


class Links(Mapping):
    """Every ordered pair of sites -> its Link, built on demand: the links the sites file
    (or a measurement) configured, else `default_link`. Holding n sites costs O(n) plus the
    configured links, not n**2 Link objects (iterating still yields every pair)."""

    def __init__(self, sites: Mapping[str, "Site"], configured: Mapping[tuple[str, str], Link]):
        self.sites = sites
        self.configured = dict(configured)

    def __getitem__(self, pair: tuple[str, str]) -> Link:
        link = self.configured.get(pair)
        if link is not None:
            return link
        if pair not in self:
            raise KeyError(pair)
        src, dst = pair
        return default_link(self.sites[src], self.sites[dst])  # KeyError for an unknown site

    def __contains__(self, pair: object) -> bool:
        return isinstance(pair, tuple) and len(pair) == 2 and pair[0] in self.sites and pair[1] in self.sites

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return ((a, b) for a in self.sites for b in self.sites)

    def __len__(self) -> int:
        return len(self.sites) ** 2

    def with_overrides(self, links: Mapping[tuple[str, str], Link]) -> "Links":
        return Links(self.sites, {**self.configured, **links})


def _same_site_link(name: str) -> Link:
    return Link(name, name, math.inf, 0.0, 0.0)


def default_link(src: Site, dst: Site) -> Link:
    """The link between two sites when the sites file does not describe it."""
    if src.name == dst.name:
        return _same_site_link(src.name)
    if src.region == dst.region:
        spec = SAME_REGION
    elif src.kind == "cloud" and dst.kind == "cloud":
        spec = CROSS_REGION
    else:
        spec = INTERNET
    return Link(
        src.name,
        dst.name,
        bandwidth_bytes_per_s=spec["bandwidth_gbps"] * 1e9 / 8,
        latency_s=spec["latency_ms"] / 1000,
        usd_per_gb=spec["usd_per_gb"],
    )


@dataclass(frozen=True)
class Topology:
    sites: Mapping[str, Site]
    links: Mapping[tuple[str, str], Link]  # every ordered pair of sites (`Links`: defaults on demand)
    zones: Mapping[str, frozenset[str]]  # residency zone -> the sites inside it
    source: str = "<dict>"
    _pools: tuple[Pool, ...] = field(default=(), repr=False, compare=False)
    # residency zone -> its own `outage_wait_seconds` (overrides the executor's zone_outage_wait)
    zone_outage_waits: Mapping[str, float] = field(default_factory=dict)

    # -- queries -----------------------------------------------------------------------

    @property
    def site_names(self) -> list[str]:
        return list(self.sites)

    @property
    def pools(self) -> tuple[Pool, ...]:
        return self._pools

    def unknown_site(self, name: str) -> str:
        """The one wording for a site name that is not in this topology."""
        return f"site {short_repr(name)} is not in the topology {self.source}; known sites: {shown_names(self.sites)}"

    def site(self, name: str) -> Site:
        try:
            return self.sites[name]
        except KeyError:
            raise KeyError(self.unknown_site(name)) from None

    def pool(self, pool_id: str) -> Pool:
        for pool in self._pools:
            if pool.id == pool_id:
                return pool
        raise KeyError(f"pool {pool_id!r} is not in the topology {self.source}")

    def link(self, src: str, dst: str) -> Link:
        try:
            return self.links[(src, dst)]
        except KeyError:
            unknown = src if src not in self.sites else dst
            self.site(unknown)  # raises with the list of known sites
            raise

    def zone_sites(self, zone: str) -> frozenset[str]:
        try:
            return self.zones[zone]
        except KeyError:
            raise KeyError(
                f"residency zone {zone!r} is not defined in {self.source}; known zones: "
                f"{', '.join(self.zones) or '(none)'}"
            ) from None

    def allows(self, zone: str | None, site: str) -> bool:
        """May data of residency `zone` be stored and processed at `site`?"""
        return zone is None or site in self.zone_sites(zone)

    # -- loading -----------------------------------------------------------------------

    @classmethod
    def from_yaml(cls, path: str | os.PathLike) -> "Topology":
        path = Path(path)
        try:
            with open(path, "rb") as f:
                raw = f.read(MAX_FILE_BYTES + 1)  # never more than the limit into memory
        except FileNotFoundError:
            raise TopologyError(str(path), "(file)", str(path), "an existing sites file") from None
        except OSError as exc:
            raise TopologyError(str(path), "(file)", str(path), f"a readable UTF-8 sites file ({exc})") from None
        if len(raw) > MAX_FILE_BYTES:
            raise TopologyError(str(path), "(file)", f"more than {MAX_FILE_BYTES:,} bytes",
                                f"a sites file of at most {MAX_FILE_BYTES:,} bytes")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise TopologyError(str(path), "(file)", str(path), f"a readable UTF-8 sites file ({exc})") from None
        return cls.from_text(text, source=str(path), base_dir=path.resolve().parent)

    @classmethod
    def from_text(cls, text: str, source: str = "<text>", base_dir: str | os.PathLike | None = None) -> "Topology":
        """The topology in the YAML `text` (`from_yaml` without the file)."""
        if len(text) > MAX_FILE_BYTES:
            raise TopologyError(source, "(file)", f"{len(text):,} characters", f"at most {MAX_FILE_BYTES:,}")
        try:
            data = bounded_yaml.load(text, max_depth=MAX_DEPTH, max_nodes=MAX_VALUES)
        except bounded_yaml.YamlLimitError as exc:
            raise TopologyError(source, "(file)", str(exc), f"at most {MAX_DEPTH} levels of nesting and "
                                f"{MAX_VALUES:,} values (aliases expanded)") from None
        except yaml.YAMLError as exc:
            raise TopologyError(source, "(file)", str(exc).splitlines()[0], "valid YAML") from None
        except (ValueError, OverflowError) as exc:  # a plain scalar PyYAML cannot build (2020-13-45)
            raise TopologyError(source, "(file)", str(exc), "valid YAML values") from None
        return cls.from_dict(data, source=source, base_dir=base_dir)

    @classmethod
    def from_dict(
        cls, data: Any, source: str = "<dict>", base_dir: str | os.PathLike | None = None
    ) -> "Topology":
        return _Loader(source, Path(base_dir or os.getcwd())).load(data)


SITES_ENV = "GRAVITY_SITES"  # the environment variable naming the sites file
DEFAULT_SITES_FILE = "sites.yaml"


def resolve_sites_path(explicit: str | os.PathLike | None = None) -> Path:
    """The sites file meant, as an absolute path: `explicit` if given, else `$GRAVITY_SITES`,
    else ``sites.yaml``; a relative path is taken against the current working directory.

    This is the one rule: the executor, the resources, the CLI and the sensors all call it
    (an empty string counts as not given). Nothing is read; a missing file is reported by
    whoever loads it (`Topology.from_yaml` names the file)."""
    chosen = os.fspath(explicit) if explicit is not None else ""
    if not chosen:
        chosen = os.environ.get(SITES_ENV) or DEFAULT_SITES_FILE
    return Path(os.path.abspath(chosen))


_topologies: dict[tuple[str, int], Topology] = {}
_topologies_lock = threading.Lock()


def load_topology(path: str | os.PathLike) -> Topology:
    """The topology in `path`, parsed once per file version (resolved path and mtime), so
    the many callers inside one step share one parse and an edited file is read again."""
    resolved = Path(path).resolve()
    try:
        mtime = resolved.stat().st_mtime_ns
    except FileNotFoundError:
        return Topology.from_yaml(resolved)  # raises TopologyError naming the file
    with _topologies_lock:
        topology = _topologies.get((str(resolved), mtime))
        if topology is None:
            topology = _topologies[(str(resolved), mtime)] = Topology.from_yaml(resolved)
    return topology


class _NotShown:
    """Stands in an error for a value that may be a secret (it must not reach a log)."""

    def __repr__(self) -> str:
        return "(a value, not shown: it may be a secret)"


NOT_SHOWN = _NotShown()


class _Loader:
    """Turns the parsed YAML into a Topology, raising TopologyError at the first problem."""

    def __init__(self, source: str, base_dir: Path):
        self.source = source
        self.base_dir = base_dir

    def fail(self, field_path: str, value: Any, expected: str) -> TopologyError:
        return TopologyError(self.source, field_path, value, expected)

    def mapping(self, value: Any, field_path: str, allowed: Iterable[str]) -> dict:
        if not isinstance(value, dict):
            raise self.fail(field_path, value, "a mapping")
        allowed = set(allowed)
        for key in value:
            if key not in allowed:
                shown = key if isinstance(key, str) and len(key) <= 40 and not _has_control(key) else short_repr(key, 40)
                raise self.fail(f"{field_path}.{shown}", value[key], f"one of the fields {sorted(allowed)}")
        return value

    def number(self, value: Any, field_path: str, *, minimum: float, strict: bool = False) -> float:
        """A finite number: an infinite bandwidth, latency or price is a typo, not a link."""
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not ok or not math.isfinite(value) or value < minimum or (strict and value == minimum):
            bound = f"> {minimum}" if strict else f">= {minimum}"
            raise self.fail(field_path, value, f"a number {bound} (finite)")
        return float(value)

    def integer(self, value: Any, field_path: str, *, minimum: int, maximum: int | None = None) -> int:
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum or (maximum is not None and value > maximum):
            raise self.fail(field_path, value, f"an integer >= {minimum}" + (f" and <= {maximum:,}" if maximum is not None else ""))
        return value

    def text(self, value: Any, field_path: str, expected: str) -> str:
        """A non-empty string without control characters (a NUL or newline in a region or
        kind ends up in paths, logs and Dask resource names)."""
        if not isinstance(value, str) or not value or _has_control(value):
            raise self.fail(field_path, value, f"{expected} (a non-empty string without control characters)")
        return value

    def name(self, value: Any, field_path: str) -> str:
        # a site's name is a directory under storage_root: '.' and '..' would be the root or its parent
        if (
            not isinstance(value, str)
            or not value
            or len(value) > MAX_NAME_CHARS
            or value in (".", "..")
            or "/" in value
            or "\\" in value
            or value.strip() != value
            or _has_control(value)
        ):
            raise self.fail(
                field_path, value,
                f"a name of 1 to {MAX_NAME_CHARS} characters, not '.' or '..', without '/', '\\', "
                "control characters (NUL, newline) or surrounding spaces",
            )
        return value

    def site_ref(self, value: Any, field_path: str, sites: Mapping[str, Site]) -> str:
        if not isinstance(value, str) or value not in sites:
            raise self.fail(field_path, value, f"the name of a site defined under 'sites' ({shown_names(sites)})")
        return value

    def load(self, data: Any) -> Topology:
        data = self.mapping(data, "(top level)", ["sites", "links", "residency", "storage_root"])
        storage_root = data.get("storage_root", ".gravity/sites")
        if not isinstance(storage_root, str) or not storage_root:
            raise self.fail("storage_root", storage_root, "a directory path")
        if _has_control(storage_root):
            raise self.fail("storage_root", storage_root, "a directory path without control characters")
        sites_data = data.get("sites")
        if not isinstance(sites_data, list) or not sites_data:
            raise self.fail("sites", sites_data, "a non-empty list of sites")
        if len(sites_data) > MAX_SITES:
            raise self.fail("sites", f"a list of {len(sites_data):,} sites", f"at most {MAX_SITES:,} sites")

        sites: dict[str, Site] = {}
        for i, site_data in enumerate(sites_data):
            site = self.load_site(site_data, f"sites[{i}]", storage_root)
            if site.name in sites:
                raise self.fail(f"sites[{i}].name", site.name, "a site name not used by another site")
            sites[site.name] = site
        self.check_storage_apart(sites)

        links_data = data.get("links") or []
        if not isinstance(links_data, list):
            raise self.fail("links", links_data, "a list of links ({from: SITE, to: SITE, ...})")
        configured: dict[tuple[str, str], Link] = {}
        given_by: dict[tuple[str, str], str] = {}
        for i, link_data in enumerate(links_data):
            for link in self.load_link(link_data, f"links[{i}]", sites):
                pair = (link.src, link.dst)
                # the same link twice is harmless; two different ones would silently keep the last
                if pair in configured and configured[pair] != link:
                    raise self.fail(
                        f"links[{i}]", f"from {link.src} to {link.dst}",
                        f"one link per direction; {given_by[pair]} already sets it differently (both_ways: true sets both)",
                    )
                configured[pair], given_by[pair] = link, f"links[{i}]"
        links = Links(sites, configured)

        zones: dict[str, frozenset[str]] = {}
        outage_waits: dict[str, float] = {}
        residency = data.get("residency") or {}
        if not isinstance(residency, dict):
            raise self.fail("residency", residency, "a mapping of zone name -> list of sites")
        for zone, members in residency.items():
            self.name(zone, f"residency.{short_repr(zone, 40)}")
            where = f"residency.{zone}"
            if isinstance(members, dict):  # {sites: [...], outage_wait_seconds: N}
                spec = self.mapping(members, where, ["sites", "outage_wait_seconds"])
                members, where = spec.get("sites"), f"{where}.sites"
                if "outage_wait_seconds" in spec:
                    outage_waits[zone] = self.number(
                        spec["outage_wait_seconds"], f"residency.{zone}.outage_wait_seconds", minimum=0
                    )
            if not isinstance(members, list) or not members:
                raise self.fail(where, members, "a non-empty list of sites in the zone")
            for j, member in enumerate(members):
                self.site_ref(member, f"{where}[{j}]", sites)
            zones[zone] = frozenset(members)

        pools = tuple(pool for site in sites.values() for pool in site.pools)
        return Topology(
            sites=sites, links=links, zones=zones, source=self.source, _pools=pools, zone_outage_waits=outage_waits
        )

    def load_site(self, data: Any, where: str, storage_root: str) -> Site:
        data = self.mapping(data, where, ["name", "region", "kind", "storage", "pools"])
        name = self.name(data.get("name"), f"{where}.name")
        region = self.text(data.get("region"), f"{where}.region", "a region name such as 'us-east-1'")
        kind = data.get("kind")
        if kind not in SITE_KINDS:
            raise self.fail(f"{where}.kind", kind, f"one of {', '.join(SITE_KINDS)}")
        storage = self.load_storage(data.get("storage"), f"{where}.storage", name, storage_root)

        pools_data = data.get("pools")
        if not isinstance(pools_data, list) or not pools_data:
            raise self.fail(f"{where}.pools", pools_data, "a non-empty list of pools")
        pools: list[Pool] = []
        for j, pool_data in enumerate(pools_data):
            pool = self.load_pool(pool_data, f"{where}.pools[{j}]", name)
            if any(p.name == pool.name for p in pools):
                raise self.fail(f"{where}.pools[{j}].name", pool.name, "a pool name unique within the site")
            pools.append(pool)
        return Site(name=name, region=region, kind=kind, storage=storage, pools=tuple(pools))

    def load_storage(self, data: Any, where: str, site: str, storage_root: str) -> StorageSpec:
        if data is None:
            data = {"kind": "local"}
        self.refuse_literal_secrets(data, where)
        data = self.mapping(
            data, where, ["kind", "path", "bucket", "prefix", "region", "endpoint_url", *S3_SETTINGS, *CREDENTIAL_FIELDS]
        )
        kind = data.get("kind", "local")
        if kind not in STORAGE_KINDS:
            raise self.fail(f"{where}.kind", kind, f"one of {', '.join(STORAGE_KINDS)}")
        if kind == "local":
            for key in (*S3_SETTINGS, *CREDENTIAL_FIELDS):
                if key in data:
                    shown = NOT_SHOWN if key.endswith("_env") else data[key]
                    raise self.fail(f"{where}.{key}", shown, "no S3 client setting or credentials on a local storage (only kind: s3)")
            path = data.get("path", os.path.join(storage_root, site))
            if not isinstance(path, str) or not path or _has_control(path):
                raise self.fail(f"{where}.path", path, "a directory path without control characters")
            return StorageSpec(kind="local", path=str((self.base_dir / path).resolve()))
        bucket = data.get("bucket")
        if not isinstance(bucket, str) or not bucket or _has_control(bucket) or "/" in bucket:
            raise self.fail(f"{where}.bucket", bucket, "an S3 bucket name (no '/' or control characters)")
        for key in ("prefix", "region", "endpoint_url"):
            if key in data and (not isinstance(data[key], str) or _has_control(data[key])):
                raise self.fail(f"{where}.{key}", data[key], "a string without control characters")
        prefix = data.get("prefix", "").strip("/")
        if prefix and any(part in ("", ".", "..") for part in prefix.split("/")):
            # '..' would reach keys outside the site's part of the bucket on servers that normalise keys
            raise self.fail(f"{where}.prefix", data["prefix"], "a key prefix of names separated by '/', none of them '.', '..' or empty")
        endpoint = data.get("endpoint_url")
        if endpoint is not None:
            parts = urlsplit(endpoint)
            if parts.scheme not in ("http", "https") or not parts.netloc or any(c.isspace() for c in endpoint):
                raise self.fail(f"{where}.endpoint_url", endpoint, "an http:// or https:// URL such as http://127.0.0.1:8333")
        settings: dict[str, float | int] = {}
        for key in ("connect_timeout_seconds", "read_timeout_seconds"):
            if key in data:
                value = data[key]
                if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isinf(value):
                    raise self.fail(f"{where}.{key}", value, "a finite number of seconds > 0")
                settings[S3_SETTINGS[key]] = self.number(value, f"{where}.{key}", minimum=0, strict=True)
        if "max_attempts" in data:
            settings["max_attempts"] = self.integer(data["max_attempts"], f"{where}.max_attempts", minimum=1)
        return StorageSpec(
            kind="s3",
            bucket=bucket,
            prefix=prefix,
            region=data.get("region"),
            endpoint_url=endpoint,
            credentials=self.load_credentials(data, where),
            **settings,
        )

    def refuse_literal_secrets(self, data: Any, where: str) -> None:
        """A key or secret written into sites.yaml would be in every copy of the file, in
        version control and in logs: refuse it, without echoing it, before anything else."""
        if not isinstance(data, dict):
            return
        for key in data:
            if isinstance(key, str) and key not in CREDENTIAL_FIELDS and any(w in key.lower() for w in _SECRET_WORDS):
                shown = key if len(key) <= 40 and not _has_control(key) else short_repr(key, 40)
                raise self.fail(
                    f"{where}.{shown}", NOT_SHOWN,
                    "no secret in a sites file: name the environment variables that hold the keys "
                    "(access_key_id_env, secret_access_key_env, session_token_env) or a boto3 profile (profile)",
                )

    def load_credentials(self, data: dict, where: str) -> S3Credentials | None:
        given = {key: data[key] for key in CREDENTIAL_FIELDS if key in data}
        if not given:
            return None
        if "profile" in given:
            if len(given) > 1:
                other = next(k for k in CREDENTIAL_FIELDS if k in given and k != "profile")
                raise self.fail(f"{where}.{other}", NOT_SHOWN,
                                "either a boto3 profile (profile) or environment variable names (*_env), not both")
            profile = given["profile"]
            if not isinstance(profile, str) or not profile or len(profile) > MAX_NAME_CHARS or _has_control(profile) \
                    or profile.strip() != profile:
                raise self.fail(f"{where}.profile", profile,
                                f"a boto3 profile name of 1 to {MAX_NAME_CHARS} characters without control characters "
                                "or surrounding spaces")
            return S3Credentials(profile=profile)
        for key, value in given.items():
            # a variable name is shown; anything else may be a pasted secret, so it is not
            if not isinstance(value, str) or not _ENV_NAME.fullmatch(value):
                raise self.fail(f"{where}.{key}", NOT_SHOWN,
                                "the name of an environment variable (letters, digits and '_', not starting with a "
                                "digit, at most 128 characters), not the secret itself")
            if _AWS_KEY_ID.fullmatch(value):
                raise self.fail(f"{where}.{key}", NOT_SHOWN,
                                "the name of an environment variable; this looks like an access key id itself")
        for key in ("access_key_id_env", "secret_access_key_env"):
            if key not in given:
                raise self.fail(f"{where}.{key}", None,
                                "both access_key_id_env and secret_access_key_env (the names of the variables "
                                "that hold the key pair) when either is given, or a boto3 profile (profile)")
        return S3Credentials(**given)

    def load_pool(self, data: Any, where: str, site: str) -> Pool:
        data = self.mapping(data, where, ["name", "slots", "gpus", "kind"])
        name = self.name(data.get("name"), f"{where}.name")
        slots = self.integer(data.get("slots"), f"{where}.slots", minimum=1, maximum=MAX_SLOTS)
        gpus = self.integer(data.get("gpus", 0), f"{where}.gpus", minimum=0, maximum=MAX_GPUS)
        kind = self.text(data.get("kind", "gpu" if gpus else "cpu"), f"{where}.kind", "a pool kind such as 'cpu' or 'gpu'")
        return Pool(site=site, name=name, slots=slots, gpus=gpus, kind=kind)

    def check_storage_apart(self, sites: Mapping[str, Site]) -> None:
        """No two sites share storage, or keep it inside another's: each site's versions,
        listings and garbage collection would see (and delete) the other's objects."""
        places = []
        for i, site in enumerate(sites.values()):
            spec = site.storage
            if spec.kind == "local":
                place = ("local",) + Path(spec.path or "").parts
            else:
                place = ("s3", spec.endpoint_url or "", spec.bucket or "") + tuple(p for p in spec.prefix.split("/") if p)
            places.append((place, i, site.name))
        places.sort()
        # sorted by path parts, whatever lies inside a place comes right after it
        for (a, _, a_name), (b, j, b_name) in zip(places, places[1:]):
            if b[: len(a)] == a:
                shown = "/".join(b[1:]) if b[0] == "local" else f"s3 {'/'.join(b[1:])}"
                raise self.fail(
                    f"sites[{j}].storage", shown,
                    f"storage of its own; site {a_name!r} stores at {'the same place' if a == b else 'a place containing it'}",
                )

    def load_link(self, data: Any, where: str, sites: Mapping[str, Site]) -> list[Link]:
        data = self.mapping(
            data,
            where,
            ["from", "to", "bandwidth_gbps", "latency_ms", "usd_per_gb", "reverse_usd_per_gb", "both_ways"],
        )
        src = self.site_ref(data.get("from"), f"{where}.from", sites)
        dst = self.site_ref(data.get("to"), f"{where}.to", sites)
        if src == dst:
            raise self.fail(f"{where}.to", dst, "a site other than 'from' (a site's link to itself is free)")
        default = default_link(sites[src], sites[dst])
        gbps = data.get("bandwidth_gbps")
        bandwidth = (
            default.bandwidth_bytes_per_s
            if gbps is None
            else self.number(gbps, f"{where}.bandwidth_gbps", minimum=0, strict=True) * 1e9 / 8
        )
        latency_ms = data.get("latency_ms")
        latency = (
            default.latency_s
            if latency_ms is None
            else self.number(latency_ms, f"{where}.latency_ms", minimum=0) / 1000
        )
        price = data.get("usd_per_gb")
        price = default.usd_per_gb if price is None else self.number(price, f"{where}.usd_per_gb", minimum=0)
        links = [Link(src, dst, bandwidth, latency, price)]
        both_ways = data.get("both_ways", True)
        if not isinstance(both_ways, bool):
            raise self.fail(f"{where}.both_ways", both_ways, "true or false")
        if both_ways:
            reverse = data.get("reverse_usd_per_gb")
            reverse = price if reverse is None else self.number(reverse, f"{where}.reverse_usd_per_gb", minimum=0)
            links.append(Link(dst, src, bandwidth, latency, reverse))
        elif "reverse_usd_per_gb" in data:
            raise self.fail(f"{where}.reverse_usd_per_gb", data["reverse_usd_per_gb"], "no reverse price when both_ways is false")
        return links


def _has_control(text: str) -> bool:
    return any(unicodedata.category(c) in ("Cc", "Cs") for c in text)


def shown_names(names: Iterable[str], limit: int = 10) -> str:
    """At most `limit` names, then how many more (a message about one of 1,000 sites)."""
    names = list(names)
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")
