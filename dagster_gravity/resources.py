"""The Dagster resources of dagster-gravity: which topology a run uses, and where its model
checkpoints are kept.

`GravityTopology` is the one resource that resolves the sites file; the IO manager, the
checkpoint store, assets and sensors take it (or a resource depending on it) instead of
reading a file themselves, so everything a step does uses the topology it was placed by.
`job_topology_files` lists every `GravityTopology` a job's resources use, for the executor
to check before any step runs that they all name its own sites file.
"""

# No `from __future__ import annotations` here: Dagster reads the resource fields'
# annotations when the class is created, and a string `ResourceDependency[...]` is not
# recognised as a dependency (pydantic then rejects the resource passed in).
import os
from pathlib import Path
from typing import Any, Mapping, Optional

from dagster import ConfigurableResource, ResourceDependency
from pydantic import Field

from dagster_gravity import runtime
from dagster_gravity.checkpoints import CheckpointStore
from dagster_gravity.dagster_internals import (
    ConfiguredDefinitionConfigSchema,
    NestedResourcesResourceDefinition,
    ResolvedRunConfig,
    coerce_to_resource,
    is_coercible_to_resource,
    process_config,
)
from dagster_gravity.errors import GravityConfigError
from dagster_gravity.topology import Topology, load_topology, resolve_sites_path


def _same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    return os.path.realpath(a) == os.path.realpath(b)


class GravityTopology(ConfigurableResource):
    """The topology (sites file) of a run, resolved by one rule when it is used.

    - `sites_file` set: that file (relative to the working directory). Under the gravity
      executor it must be the file the executor places the run by, else `path()` raises
      `GravityConfigError` naming both: a step's data would otherwise be stored by one
      topology after being placed by another.
    - `sites_file` unset: under the gravity executor, the file it resolved for the run
      (`dagster_gravity.runtime.run_sites_file()`); elsewhere (in-process runs, sensors)
      `$GRAVITY_SITES`, else ``./sites.yaml`` (`topology.resolve_sites_path`).

    Nothing is read at definition time, so importing a code location never fixes the file.
    """

    sites_file: Optional[str] = Field(
        default=None,
        description=(
            "The sites file (topology). Default: the file the gravity executor uses for the run; "
            "outside it, $GRAVITY_SITES, else sites.yaml in the working directory. When set under "
            "the gravity executor, it must be the executor's file."
        ),
    )

    def path(self) -> Path:
        """The sites file this resource means now (absolute); see the class docstring."""
        run_file = runtime.run_sites_file()
        if self.sites_file:
            mine = resolve_sites_path(self.sites_file)
            if run_file is not None and not _same_file(mine, run_file):
                raise GravityConfigError(
                    f"GravityTopology.sites_file is {mine}, but the gravity executor places this run's "
                    f"steps by {run_file}: the executor uses {run_file}. Configure the same file for both, "
                    "or leave GravityTopology.sites_file unset to follow the executor."
                )
            return mine
        if run_file is not None:
            return Path(run_file)
        return resolve_sites_path(None)

    def load(self) -> Topology:
        """The topology in `path()`, parsed once per file version."""
        return load_topology(self.path())


class GravityCheckpoints(ConfigurableResource):
    """Versioned model checkpoints (`dagster_gravity.checkpoints.CheckpointStore`) in the
    storage of one site of the topology."""

    topology: ResourceDependency[GravityTopology] = Field(
        default_factory=GravityTopology,
        description="The topology whose site storage holds the checkpoints (default: GravityTopology()).",
    )
    site: str = Field(description="The site whose storage keeps the checkpoints (e.g. where the models train).")
    prefix: str = Field(default="checkpoints", description="Key prefix of the checkpoints inside the site's storage.")

    def store(self) -> CheckpointStore:
        return CheckpointStore.for_site(self.topology.load(), self.site, self.prefix)


# -- what a job's resources say -------------------------------------------------------------


def resolve_run_sites_file(executor_sites_file: str | None, job_def, run_config) -> Path:
    """The one topology file of a run, resolved in the run process: the executor's
    `sites_file`, else the one the job's GravityTopology resources name, else
    $GRAVITY_SITES, else ./sites.yaml. Raises GravityConfigError naming every file when
    the executor and the resources (or two resources) name different ones."""
    resources = job_topology_files(job_def, ResolvedRunConfig.build(job_def, run_config))
    named = {label: resolve_sites_path(path) for label, path in resources.items() if path}
    if executor_sites_file:
        named = {"the gravity executor's sites_file": resolve_sites_path(executor_sites_file), **named}
    if len({path.resolve() for path in named.values()}) > 1:
        listed = "; ".join(f"{label}: {path}" for label, path in named.items())
        raise GravityConfigError(
            f"this run names more than one topology file ({listed}); the executor and the IO "
            "manager must place and store by the same one: configure it once, on the "
            "GravityTopology resource or the executor's sites_file"
        )
    return next(iter(named.values())) if named else resolve_sites_path(None)


def job_topology_files(job_def, resolved_run_config) -> dict[str, str | None]:
    """Every `GravityTopology` the resources of `job_def` use, mapped from a readable label
    (``"resource 'gravity_topology'"``, ``"resource 'io_manager'.topology"``) to its explicit
    `sites_file`, or None where it follows the executor.

    Top-level resources are configured by the run (`resolved_run_config.resources[key]`);
    a resource nested in another Pythonic resource keeps the config it was built with, even
    when the same object is also bound at top level (Dagster does not apply the top-level run
    config to nested copies), so both are listed. Nested resources are found through each
    resource definition's `nested_resources`, recursively, plus dependency fields left at
    their default (Dagster initialises those too). A nested resource configured at launch
    (`configure_at_launch()`) is the top-level resource it is bound to, and gets its value.
    """
    resource_defs: Mapping[str, Any] = job_def.resource_defs
    top_level: dict[str, str | None] = {}
    found: dict[str, str | None] = {}
    for key, resource_def in resource_defs.items():
        if _is_topology(_resource_class(resource_def)):
            config = resolved_run_config.resources.get(key)
            values = config.config if config is not None and config.config is not None else _default_config(
                resource_def, f"resource {key!r}"
            )
            top_level[key] = found[f"resource {key!r}"] = _explicit(values)
    for key, resource_def in resource_defs.items():
        _find_nested(resource_def, f"resource {key!r}", resource_defs, top_level, found)
    return found


def _resource_class(resource_def: Any) -> type | None:
    if isinstance(resource_def, NestedResourcesResourceDefinition):
        return resource_def.configurable_resource_cls
    return None


def _is_topology(cls: type | None) -> bool:
    return isinstance(cls, type) and issubclass(cls, GravityTopology)


def _explicit(config: Mapping[str, Any] | None) -> str | None:
    return (config or {}).get("sites_file") or None


def _default_config(resource_def: Any, label: str) -> dict[str, Any]:
    """The config a resource runs with when no run config addresses it: what Dagster gives
    a nested resource (its values as built, environment variables resolved)."""
    schema = resource_def.config_schema
    if isinstance(schema, ConfiguredDefinitionConfigSchema):
        return dict(schema.resolve_config({}).value["config"] or {})
    if not schema.default_provided:
        return {}
    result = process_config({"config": schema.config_type}, {"config": schema.default_value})
    if not result.success:
        problems = "; ".join(error.message for error in result.errors or [])
        raise GravityConfigError(f"{label}: its config cannot be resolved: {problems}")
    return dict((result.value or {}).get("config") or {})


def _dependency_fields(cls: type) -> dict[str, Any]:
    """Resource-dependency fields of a Pythonic resource class -> pydantic FieldInfo."""
    return {
        field.alias or name: field
        for name, field in getattr(cls, "model_fields", {}).items()
        if "resource_dependency" in (field.metadata or ())
    }


def _find_nested(
    resource_def: Any,
    label: str,
    resource_defs: Mapping[str, Any],
    top_level: Mapping[str, str | None],
    found: dict[str, str | None],
) -> None:
    if not isinstance(resource_def, NestedResourcesResourceDefinition):
        return
    nested = dict(resource_def.nested_resources)
    partial = resource_def.nested_partial_resources
    # Dependency fields not passed when the resource was built hold their default value,
    # which Dagster initialises as a nested resource too.
    for name, field in _dependency_fields(resource_def.configurable_resource_cls).items():
        if name not in nested and not field.is_required():
            nested[name] = field.get_default(call_default_factory=True)
    for attr, value in nested.items():
        if not is_coercible_to_resource(value):
            continue
        inner_label = f"{label}.{attr}"
        inner_def = coerce_to_resource(value)
        if attr in partial:
            # Configured at launch: Dagster binds it to the top-level resource of the same object.
            keys = [key for key, candidate in resource_defs.items() if candidate is inner_def]
            if len(keys) == 1 and keys[0] in top_level:
                found[inner_label] = top_level[keys[0]]
            continue
        if _is_topology(_resource_class(inner_def)):
            found[inner_label] = _explicit(_default_config(inner_def, inner_label))
        _find_nested(inner_def, inner_label, resource_defs, top_level, found)
