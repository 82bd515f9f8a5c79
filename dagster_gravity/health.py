"""Pool and storage health outside a run: what `gravity sites --health` prints.

Compute pools are checked through the executor's own path: `GravityConfig.pool_settings`
picks each pool's backend and settings from the executor config, `pools.create_backends`
groups them into backend instances as a run would, and each backend's `probe` says what it
can tell outside a run:

* dask: the scheduler is contacted (within the timeout) and a pool is healthy only when at
  least one worker declares its site's resource `site-<site>`: a real check;
* local: workers are forked from the run's own process when its steps arrive, so outside a
  run there is nothing to fork; the check is that the settings are valid and
  `startup_check` imports, and the result says so.

Storage: a local directory must be writable (a temporary file is created and removed; a
directory that does not exist yet must have a writable parent); an S3 bucket must answer
HEAD bucket through the same client the IO manager uses, with the site's own credentials
(its profile or environment variables, resolved in this process), one attempt and short
timeouts. A failure says which profile or variables were used, never a secret.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import yaml

from dagster_gravity.errors import GravityConfigError
from dagster_gravity.topology import StorageSpec, Topology

DEFAULT_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class HealthRow:
    name: str  # pool id or site name
    kind: str  # backend name or storage kind
    healthy: bool
    detail: str

    def text(self) -> str:
        return f"{'healthy' if self.healthy else 'unhealthy'}: {self.detail}" if self.detail else (
            "healthy" if self.healthy else "unhealthy"
        )


def executor_config_from_yaml(path: Path) -> dict[str, Any]:
    """The gravity executor config in a run-config file (`execution: config: ...`, or
    `execution: {gravity: {config: ...}}`), or a file holding just the executor config."""
    try:
        doc = yaml.safe_load(Path(path).read_text()) or {}
    except OSError as exc:
        raise GravityConfigError(f"--config {path}: cannot read it: {exc}") from None
    except yaml.YAMLError as exc:
        raise GravityConfigError(f"--config {path}: not valid YAML: {exc}") from None
    if not isinstance(doc, Mapping):
        raise GravityConfigError(f"--config {path}: got a {type(doc).__name__}; expected a mapping (the executor config)")
    if "execution" in doc:
        execution = doc["execution"] or {}
        if not isinstance(execution, Mapping):
            raise GravityConfigError(f"--config {path}: 'execution' is {execution!r}; expected a mapping")
        if "config" in execution:
            doc = execution["config"] or {}
        elif len(execution) == 1:  # execution: {<executor name>: {config: ...}}
            (inner,) = execution.values()
            doc = (inner or {}).get("config") or {} if isinstance(inner, Mapping) else {}
        else:
            doc = {}
    if not isinstance(doc, Mapping):
        raise GravityConfigError(f"--config {path}: the executor config is {doc!r}; expected a mapping")
    return dict(doc)


def resolve_executor_config(executor_config: Mapping[str, Any]) -> dict[str, Any]:
    """Validate against the executor's config schema and fill its defaults, as Dagster does."""
    from dagster_gravity.dagster_internals import process_config
    from dagster_gravity.executor import gravity_executor

    result = process_config(gravity_executor.config_schema.config_type, dict(executor_config))
    if not result.success:
        problems = "; ".join(error.message for error in result.errors or [])
        raise GravityConfigError(f"gravity_executor config: {problems}")
    return dict(result.value or {})


def pool_health(topology: Topology, executor_config: Mapping[str, Any], timeout_s: float = DEFAULT_TIMEOUT_S) -> list[HealthRow]:
    """Each compute pool's health, from its backend's `probe`, backends grouped as in a run."""
    from dagster_gravity.executor_config import GravityConfig
    from dagster_gravity.pools import create_backend, group_pools

    config = GravityConfig.from_executor_config(resolve_executor_config(executor_config))
    rows: dict[str, HealthRow] = {}
    # pool_settings validates per_site / per_pool / disabled names and each pool's settings.
    for name, settings, pools in group_pools(topology, config.pool_settings(topology)):
        try:
            backend = create_backend(
                name, settings, worker_max_steps=config.worker_max_steps, unhealthy_after=config.unhealthy_after
            )
            probed = backend.probe(pools, timeout_s)
        except Exception as exc:  # a backend that cannot be created or probed: its pools are unhealthy
            for pool in pools:
                rows[pool.id] = HealthRow(pool.id, name, False, f"the {name} backend cannot start: {exc}")
            continue
        for pool in pools:
            health = probed[pool.id]
            detail = health.detail if health.healthy else (health.reason or "the backend reports it unhealthy")
            if config.is_disabled(pool.id, pool.site):
                detail += " (disabled in the executor config: a run places nothing there)"
            rows[pool.id] = HealthRow(pool.id, name, health.healthy, detail)
    return [rows[p.id] for p in topology.pools]


def storage_health(topology: Topology, timeout_s: float = DEFAULT_TIMEOUT_S) -> list[HealthRow]:
    return [
        _storage_row(site.name, site.storage, timeout_s, f"sites[{i}].storage", topology.source)
        for i, site in enumerate(topology.sites.values())
    ]


def _storage_row(site: str, spec: StorageSpec, timeout_s: float, settings_at: str, source: str) -> HealthRow:
    if spec.kind == "local":
        ok, detail = _local_writable(Path(spec.path or "."))
    elif spec.kind == "s3":
        ok, detail = _s3_reachable(site, spec, timeout_s, settings_at, source)
    else:
        ok, detail = False, f"unknown storage kind {spec.kind!r}; expected 'local' or 's3'"
    return HealthRow(site, spec.kind, ok, detail)


def _local_writable(path: Path) -> tuple[bool, str]:
    if path.is_dir():
        try:
            fd, probe = tempfile.mkstemp(prefix=".gravity-health-", dir=path)
            os.close(fd)
            os.unlink(probe)
        except OSError as exc:
            return False, f"directory {path} is not writable: {exc}"
        return True, f"directory {path} writable"
    if path.exists():
        return False, f"{path} exists but is not a directory"
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if parent.is_dir() and os.access(parent, os.W_OK | os.X_OK):
        return True, f"directory {path} does not exist yet; {parent} is writable, so it can be created"
    return False, f"directory {path} does not exist and {parent} is not writable"


def _s3_reachable(site: str, spec: StorageSpec, timeout_s: float, settings_at: str, source: str) -> tuple[bool, str]:
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

    from dagster_gravity.storage.credentials import REFUSED_CODES, SiteCredentialsError, describe
    from dagster_gravity.storage.s3 import S3Options, site_client

    endpoint = spec.endpoint_url or f"AWS S3 ({spec.region or 'us-east-1'})"
    where = f"bucket {spec.bucket!r} at {endpoint}"
    used = describe(spec.credentials, settings_at)
    options = S3Options(connect_timeout_s=timeout_s, read_timeout_s=timeout_s, max_attempts=1)
    try:
        site_client(site, spec, options, settings_at, source).head_bucket(Bucket=spec.bucket)
    except SiteCredentialsError as exc:
        return False, f"{where}: no credentials for site {site!r}: {exc.reason}"
    except NoCredentialsError:
        if spec.credentials is None:
            return False, f"{where}: no credentials in the boto3 chain (AWS_ACCESS_KEY_ID, profile, instance role)"
        return False, f"{where}: {used} holds no credentials"
    except ClientError as exc:
        error = exc.response.get("Error", {})
        code = str(error.get("Code", "?"))
        answer = f"{where} answered {code}: {error.get('Message') or 'HEAD bucket refused'}"
        if code in REFUSED_CODES:
            return False, f"{answer}; site {site!r} used {used}: check that they hold this endpoint's keys"
        return False, answer
    except BotoCoreError as exc:
        return False, f"{where} is unreachable: {exc}"
    return True, f"{where} reachable" + (f" with {used}" if spec.credentials else "")
