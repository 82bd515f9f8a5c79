"""Every Dagster internal (`dagster._...`) the plugin uses, imported in this one module.

An executor has to work with Dagster's execution machinery (`ActiveExecution`, execution
plans, step events, the per-step execution path its multiprocess children use), which
Dagster does not export publicly. Importing it only here gives a Dagster upgrade one place
to look; the rest of the library imports these names from this module. Checked against
dagster==1.13.27 (pinned in pyproject.toml).
"""

from __future__ import annotations

from dagster._config import process_config
from dagster._config.pythonic_config.resource import (
    NestedResourcesResourceDefinition,
    coerce_to_resource,
    is_coercible_to_resource,
)
from dagster._core.definitions.definition_config_schema import ConfiguredDefinitionConfigSchema
from dagster._core.definitions.executor_definition import multiple_process_executor_requirements
from dagster._core.definitions.metadata import normalize_metadata
from dagster._core.definitions.reconstruct import ReconstructableJob
from dagster._core.errors import DagsterExecutionInterruptedError, DagsterSubprocessError
from dagster._core.events import DagsterEvent, DagsterEventType, EngineEventData, StepFailureData
from dagster._core.execution.api import (
    ExecuteRunWithPlanIterable,
    create_execution_plan,
    execute_plan_iterator,
)
from dagster._core.execution.compute_logs import create_compute_log_file_key
from dagster._core.execution.context.system import PlanOrchestrationContext
from dagster._core.execution.context_creation_job import (
    PlanExecutionContextManager,
    create_context_free_log_manager,
)
from dagster._core.execution.plan.active import ActiveExecution
from dagster._core.execution.plan.execute_plan import _trigger_hook as trigger_hook
from dagster._core.execution.plan.execute_plan import dagster_event_sequence_for_step
from dagster._core.execution.plan.instance_concurrency_context import InstanceConcurrencyContext
from dagster._core.execution.plan.plan import ExecutionPlan
from dagster._core.execution.plan.state import KnownExecutionState
from dagster._core.execution.plan.step import ExecutionStep
from dagster._core.execution.resources_init import get_required_resource_keys_to_init
from dagster._core.execution.retries import RetryMode, get_retries_config
from dagster._core.execution.step_dependency_config import StepDependencyConfig
from dagster._core.execution.tags import get_tag_concurrency_limits_config
from dagster._core.executor.base import Executor
from dagster._core.executor.child_process_executor import ChildProcessCrashException
from dagster._core.instance.ref import InstanceRef
from dagster._core.log_manager import LOG_RECORD_EVENT_ATTR
from dagster._core.storage.dagster_run import DagsterRun
from dagster._core.system_config.objects import ResolvedRunConfig
from dagster._serdes import deserialize_value, serialize_value
from dagster._utils import get_run_crash_explanation, interrupts
from dagster._utils.error import SerializableErrorInfo, serializable_error_info_from_exc_info
from dagster._utils.tags import VALID_STRICT_TAG_VALUE_REGEX, is_valid_strict_tag_value

__all__ = [
    "VALID_STRICT_TAG_VALUE_REGEX",
    "is_valid_strict_tag_value",
    "ActiveExecution",
    "ChildProcessCrashException",
    "ConfiguredDefinitionConfigSchema",
    "DagsterEvent",
    "DagsterEventType",
    "DagsterExecutionInterruptedError",
    "DagsterRun",
    "DagsterSubprocessError",
    "EngineEventData",
    "ExecuteRunWithPlanIterable",
    "ExecutionPlan",
    "ExecutionStep",
    "Executor",
    "InstanceConcurrencyContext",
    "InstanceRef",
    "KnownExecutionState",
    "LOG_RECORD_EVENT_ATTR",
    "NestedResourcesResourceDefinition",
    "PlanExecutionContextManager",
    "PlanOrchestrationContext",
    "ReconstructableJob",
    "ResolvedRunConfig",
    "RetryMode",
    "SerializableErrorInfo",
    "StepDependencyConfig",
    "StepFailureData",
    "coerce_to_resource",
    "create_compute_log_file_key",
    "create_context_free_log_manager",
    "create_execution_plan",
    "dagster_event_sequence_for_step",
    "deserialize_value",
    "execute_plan_iterator",
    "get_required_resource_keys_to_init",
    "get_run_crash_explanation",
    "get_retries_config",
    "get_tag_concurrency_limits_config",
    "interrupts",
    "is_coercible_to_resource",
    "multiple_process_executor_requirements",
    "process_config",
    "serializable_error_info_from_exc_info",
    "serialize_value",
    "add_loaded_input_metadata",
    "trigger_hook",
]


def add_loaded_input_metadata(context, metadata) -> None:
    """Metadata on an input's LOADED_INPUT event only. `InputContext.add_input_metadata`
    also makes an observation of an asset input, which needs a single partition key (it
    raises for an input spanning partitions) and would record an observation with nothing
    to say about the asset; the LOADED_INPUT event takes what `_user_generated_metadata`
    holds (dagster/_core/execution/plan/inputs.py)."""
    context._user_generated_metadata = {**context._user_generated_metadata, **normalize_metadata(metadata)}
