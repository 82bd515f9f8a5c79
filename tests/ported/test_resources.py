"""Ported from dagster-io/dagster
python_modules/dagster/dagster_tests/core_tests/resource_tests/test_resource_definition.py
(resources with dependencies, generator and context-manager resources, set-up and teardown
order, init failures, teardown failures) and
python_modules/dagster/dagster_tests/core_tests/resource_tests/pythonic_resources/test_lifecycle_methods.py
(ConfigurableResource setup_for_execution / teardown_after_execution / yield_for_execution).

The originals run with `execute_in_process` and append to lists in the test process; here
each job runs under `multiprocess_executor` and `gravity_executor`, its resources and ops
record the same entries through `support.record` (into the run's instance directory), and
the test rebuilds the list and asserts on it as the original did. Where the original used
`pytest.raises` around `execute_in_process()` (raise_on_error), the port runs with
raise_on_error=False and asserts the run failed, and for test_setup_for_execution_with_error
that the error it expected (DagsterResourceFunctionError's "Error executing resource_fn on
ResourceDefinition res") is reported in the run's events: an out-of-process executor reports
a step's error as events, it never re-raises it in the caller.

Left out: definition-time checks that never execute a step (test_resource_decorator_no_context,
test_resource_cyclic_dependencies, test_incorrect_resource_init_error,
test_dagster_type_resource_decorator_config, test_resource_needs_resource,
test_resource_op_subset, the configured/enum config-mapping tests), the build_op_context,
mock and hardcoded resource tests (in-process objects), test_single_step_resource_event_logs
(a callback logger collecting into a list of the test process), the lifecycle "_multi_op"
tests and test_setup_for_execution_with_error_multi_resource (they assert that two ops share
one resource initialisation, which holds only in-process: the multiprocess executor
initialises resources once per step), and, as near-duplicates of cases kept,
test_yield_resource / test_resource_decorator / test_mixed_multiple_resources (as
test_yield_multiple_resources), test_resource_cleanup (as test_stacked_resource_cleanup),
test_resource_init_failure (as test_resource_init_failure_with_teardown),
test_resource_run_info_exists_during_execution and test_basic_yield (as
test_basic_pre_teardown_after_execution and test_multiple_yield_ordering).
"""

import contextlib
import re
from contextlib import contextmanager
from typing import Generator

import pytest
from dagster import (
    ConfigurableResource,
    DagsterEventType,
    GraphDefinition,
    InitResourceContext,
    JobDefinition,
    ResourceDefinition,
    String,
    execute_job,
    fs_io_manager,
    job,
    op,
    resource,
)

from tests.ported.support import executor_def, executors, recon, record, recorded

pytestmark = [pytest.mark.slow, pytest.mark.executor]


def _errors(result):
    """The error infos the run's events carry (step failures, engine errors)."""
    for event in result.all_events:
        error = getattr(event.event_specific_data, "error", None)
        if error is not None:
            yield error


def _called(instance) -> dict:
    """The original's `called` dict: each recorded [key, value] pair, later ones winning."""
    return dict(recorded(instance, "called"))


# -- test_resource_definition.py -------------------------------------------------------


def define_resource_with_dependencies_job(executor: str) -> JobDefinition:
    @resource
    def foo_resource(init_context):
        record(init_context.instance, "called", ["foo_resource", True])
        return "foo"

    @resource(required_resource_keys={"foo_resource"})
    def bar_resource(init_context):
        record(init_context.instance, "called", ["bar_resource", True])
        return init_context.resources.foo_resource + "bar"

    @op(required_resource_keys={"bar_resource"})
    def dep_op(context):
        record(context.instance, "called", ["dep_op", True])
        assert context.resources.bar_resource == "foobar"

    return GraphDefinition(name="with_dep_resource", node_defs=[dep_op]).to_job(
        resource_defs={"foo_resource": foo_resource, "bar_resource": bar_resource},
        executor_def=executor_def(executor),
    )


def define_yield_multiple_resources_job(executor: str) -> JobDefinition:
    @op(required_resource_keys={"string_one", "string_two"})
    def a_op(context):
        record(context.instance, "called", ["yup", True])
        assert context.resources.string_one == "foo"
        assert context.resources.string_two == "bar"

    def _do_resource(init_context):
        record(init_context.instance, "saw", "before yield " + init_context.resource_config)
        yield init_context.resource_config
        record(init_context.instance, "saw", "after yield " + init_context.resource_config)

    yield_string_resource = ResourceDefinition(config_schema=String, resource_fn=_do_resource)

    return GraphDefinition(name="with_yield_resources", node_defs=[a_op]).to_job(
        resource_defs={"string_one": yield_string_resource, "string_two": yield_string_resource},
        executor_def=executor_def(executor),
    )


def define_stacked_resource_cleanup_job(executor: str) -> JobDefinition:
    def _cleanup_resource_fn_1(init_context):
        record(init_context.instance, "called", "creation_1")
        yield True
        record(init_context.instance, "called", "cleanup_1")

    def _cleanup_resource_fn_2(init_context):
        record(init_context.instance, "called", "creation_2")
        yield True
        record(init_context.instance, "called", "cleanup_2")

    @op(required_resource_keys={"resource_with_cleanup_1", "resource_with_cleanup_2"})
    def check_resource_created(context):
        record(context.instance, "called", "solid")
        assert context.resources.resource_with_cleanup_1 is True
        assert context.resources.resource_with_cleanup_2 is True

    return GraphDefinition(name="test_resource_cleanup", node_defs=[check_resource_created]).to_job(
        resource_defs={
            "resource_with_cleanup_1": ResourceDefinition(_cleanup_resource_fn_1),
            "resource_with_cleanup_2": ResourceDefinition(_cleanup_resource_fn_2),
        },
        executor_def=executor_def(executor),
    )


def define_resource_init_failure_with_teardown_job(executor: str) -> JobDefinition:
    @resource
    def resource_a(init_context):
        try:
            record(init_context.instance, "called", "A")
            yield "A"
        finally:
            record(init_context.instance, "cleaned", "A")

    @resource
    def resource_b(init_context):
        try:
            record(init_context.instance, "called", "B")
            raise Exception("uh oh")
            yield "B"
        finally:
            record(init_context.instance, "cleaned", "B")

    @op(required_resource_keys={"a", "b"})
    def resource_op(_):
        pass

    return GraphDefinition(name="test_resource_init_failure_with_cleanup", node_defs=[resource_op]).to_job(
        resource_defs={"a": resource_a, "b": resource_b}, executor_def=executor_def(executor)
    )


def define_op_failure_resource_teardown_job(executor: str) -> JobDefinition:
    @resource
    def resource_a(init_context):
        try:
            record(init_context.instance, "called", "A")
            yield "A"
        finally:
            record(init_context.instance, "cleaned", "A")

    @resource
    def resource_b(init_context):
        try:
            record(init_context.instance, "called", "B")
            yield "B"
        finally:
            record(init_context.instance, "cleaned", "B")

    @op(required_resource_keys={"a", "b"})
    def resource_op(_):
        raise Exception("uh oh")

    return GraphDefinition(name="test_solid_failure_resource_teardown", node_defs=[resource_op]).to_job(
        resource_defs={"a": resource_a, "b": resource_b}, executor_def=executor_def(executor)
    )


def define_resource_teardown_failure_job(executor: str) -> JobDefinition:
    @resource
    def resource_a(init_context):
        try:
            record(init_context.instance, "called", "A")
            yield "A"
        finally:
            record(init_context.instance, "cleaned", "A")

    @resource
    def resource_b(init_context):
        try:
            record(init_context.instance, "called", "B")
            yield "B"
        finally:
            raise Exception("uh oh")
            record(init_context.instance, "cleaned", "B")

    @op(required_resource_keys={"a", "b"})
    def resource_op(_):
        pass

    return GraphDefinition(name="test_resource_teardown_failure", node_defs=[resource_op]).to_job(
        resource_defs={"a": resource_a, "b": resource_b}, executor_def=executor_def(executor)
    )


def define_resource_teardown_failure_pipeline(executor: str) -> JobDefinition:
    @resource
    def resource_a(_):
        try:
            yield "A"
        finally:
            pass

    @resource
    def resource_b(_):
        try:
            yield "B"
        finally:
            raise Exception("uh oh")

    @op(required_resource_keys={"a", "b"})
    def resource_op(_):
        pass

    return GraphDefinition(name="resource_teardown_failure", node_defs=[resource_op]).to_job(
        resource_defs={"a": resource_a, "b": resource_b, "io_manager": fs_io_manager},
        executor_def=executor_def(executor),
    )


@resource
@contextmanager
def cm_resource(init_context):
    try:
        record(init_context.instance, "event_list", "foo")
        yield "foo"
    finally:
        record(init_context.instance, "event_list", "finally")


@op(required_resource_keys={"cm"})
def basic(context):
    record(context.instance, "event_list", "compute")
    assert context.resources.cm == "foo"


def define_context_manager_resource_job(executor: str) -> JobDefinition:
    @job(resource_defs={"cm": cm_resource}, executor_def=executor_def(executor))
    def call_basic():
        basic()

    return call_basic


@executors()
def test_resource_with_dependencies(executor, instance, run_config):
    result = execute_job(recon(define_resource_with_dependencies_job, executor), instance, run_config=run_config(executor))
    called = _called(instance)

    assert result.success
    assert called["foo_resource"]
    assert called["bar_resource"]
    assert called["dep_op"]


@executors()
def test_yield_multiple_resources(executor, instance, run_config):
    result = execute_job(
        recon(define_yield_multiple_resources_job, executor),
        instance,
        run_config=run_config(
            executor, {"resources": {"string_one": {"config": "foo"}, "string_two": {"config": "bar"}}}
        ),
    )
    called = _called(instance)
    saw = recorded(instance, "saw")

    assert result.success
    assert called["yup"]
    assert len(saw) == 4

    assert "before yield" in saw[0]
    assert "before yield" in saw[1]
    assert "after yield" in saw[2]
    assert "after yield" in saw[3]


@executors()
def test_stacked_resource_cleanup(executor, instance, run_config):
    execute_job(recon(define_stacked_resource_cleanup_job, executor), instance, run_config=run_config(executor))
    called = recorded(instance, "called")

    assert called == ["creation_1", "creation_2", "solid", "cleanup_2", "cleanup_1"]


@executors()
def test_resource_init_failure_with_teardown(executor, instance, run_config):
    res = execute_job(
        recon(define_resource_init_failure_with_teardown_job, executor),
        instance,
        run_config=run_config(executor),
        raise_on_error=False,
    )
    event_types = [event.event_type_value for event in res.all_events]
    assert DagsterEventType.PIPELINE_FAILURE.value in event_types

    assert recorded(instance, "called") == ["A", "B"]
    assert recorded(instance, "cleaned") == ["B", "A"]


@executors()
def test_solid_failure_resource_teardown(executor, instance, run_config):
    res = execute_job(
        recon(define_op_failure_resource_teardown_job, executor),
        instance,
        run_config=run_config(executor),
        raise_on_error=False,
    )
    assert res.all_events[-1].event_type_value == "PIPELINE_FAILURE"
    assert recorded(instance, "called") == ["A", "B"]
    assert recorded(instance, "cleaned") == ["B", "A"]


@executors()
def test_resource_teardown_failure(executor, instance, run_config):
    result = execute_job(
        recon(define_resource_teardown_failure_job, executor),
        instance,
        run_config=run_config(executor),
        raise_on_error=False,
    )
    # Document that failure during resource teardown is not considered a run failure.
    assert result.success
    assert len(result.filter_events(lambda evt: evt.is_run_failure)) == 0

    error_events = [
        event
        for event in result.all_events
        if event.event_type == DagsterEventType.ENGINE_EVENT and event.event_specific_data.error
    ]
    assert len(error_events) == 1
    assert recorded(instance, "called") == ["A", "B"]
    assert recorded(instance, "cleaned") == ["A"]


@executors()
def test_multiprocessing_resource_teardown_failure(executor, instance, run_config):
    result = execute_job(
        recon(define_resource_teardown_failure_pipeline, executor),
        instance=instance,
        run_config=run_config(executor),
        raise_on_error=False,
    )
    assert result.success
    error_events = [
        event
        for event in result.all_events
        if event.event_type == DagsterEventType.ENGINE_EVENT and event.event_specific_data.error
    ]
    assert len(error_events) == 1


@executors()
def test_context_manager_resource(executor, instance, run_config):
    assert execute_job(
        recon(define_context_manager_resource_job, executor), instance, run_config=run_config(executor)
    ).success
    assert recorded(instance, "event_list") == ["foo", "compute", "finally"]


# -- pythonic_resources/test_lifecycle_methods.py --------------------------------------


class PreTeardownResource(ConfigurableResource):
    def setup_for_execution(self, context: InitResourceContext) -> None:
        record(context.instance, "log", "setup_for_execution")

    def teardown_after_execution(self, context: InitResourceContext) -> None:
        record(context.instance, "log", "teardown_after_execution")


class SetupErrorResource(ConfigurableResource):
    def setup_for_execution(self, context: InitResourceContext) -> None:
        record(context.instance, "log", "setup_for_execution")
        raise Exception("my setup function errored!")

    def teardown_after_execution(self, context: InitResourceContext) -> None:
        record(context.instance, "log", "teardown_after_execution")


class TeardownErrorResource(ConfigurableResource):
    def setup_for_execution(self, context: InitResourceContext) -> None:
        record(context.instance, "log", "setup_for_execution")

    def teardown_after_execution(self, context: InitResourceContext) -> None:
        record(context.instance, "log", "teardown_after_execution")
        raise Exception("my teardown function errored!")


class YieldErrorAfterYieldResource(ConfigurableResource):
    @contextlib.contextmanager
    def yield_for_execution(
        self, context: InitResourceContext
    ) -> Generator["YieldErrorAfterYieldResource", None, None]:
        record(context.instance, "log", "yield_for_execution_start")
        yield self
        record(context.instance, "log", "yield_for_execution_post_yield")
        raise Exception("my yield function errored!")


class FirstYieldResource(ConfigurableResource):
    @contextlib.contextmanager
    def yield_for_execution(self, context: InitResourceContext) -> Generator["FirstYieldResource", None, None]:
        record(context.instance, "log", "yield_start_my_resource")
        yield self
        record(context.instance, "log", "yield_end_my_resource")


class SecondYieldResource(ConfigurableResource):
    @contextlib.contextmanager
    def yield_for_execution(self, context: InitResourceContext) -> Generator["SecondYieldResource", None, None]:
        record(context.instance, "log", "yield_start_second_resource")
        yield self
        record(context.instance, "log", "yield_end_second_resource")


def define_pre_teardown_job(executor: str) -> JobDefinition:
    @op
    def hello_world_op(context, res: PreTeardownResource):
        record(context.instance, "log", "hello_world_op")

    @job(resource_defs={"res": PreTeardownResource()}, executor_def=executor_def(executor))
    def hello_world_job() -> None:
        hello_world_op()

    return hello_world_job


def define_op_error_job(executor: str) -> JobDefinition:
    @op
    def my_erroring_op(context, res: PreTeardownResource):
        record(context.instance, "log", "my_erroring_op")
        raise Exception("foo")

    @op
    def my_never_run_op(context, res: PreTeardownResource, _):
        record(context.instance, "log", "my_never_run_op")

    @job(resource_defs={"res": PreTeardownResource()}, executor_def=executor_def(executor))
    def erroring_job() -> None:
        my_never_run_op(my_erroring_op())

    return erroring_job


def define_setup_error_job(executor: str) -> JobDefinition:
    @op
    def my_never_run_op(context, res: SetupErrorResource):
        record(context.instance, "log", "my_never_run_op")

    @job(resource_defs={"res": SetupErrorResource()}, executor_def=executor_def(executor))
    def hello_world_job() -> None:
        my_never_run_op()

    return hello_world_job


def define_teardown_error_job(executor: str) -> JobDefinition:
    @op
    def my_hello_world_op(context, res: TeardownErrorResource):
        record(context.instance, "log", "my_hello_world_op")

    @job(resource_defs={"res": TeardownErrorResource()}, executor_def=executor_def(executor))
    def hello_world_job() -> None:
        my_hello_world_op()

    return hello_world_job


def define_yield_error_after_yield_job(executor: str) -> JobDefinition:
    @op
    def my_hello_world_op(context, res: YieldErrorAfterYieldResource):
        record(context.instance, "log", "my_hello_world_op")

    @job(resource_defs={"res": YieldErrorAfterYieldResource()}, executor_def=executor_def(executor))
    def hello_world_job() -> None:
        my_hello_world_op()

    return hello_world_job


def define_multiple_yield_job(executor: str) -> JobDefinition:
    @op
    def my_hello_world_op(context, first: FirstYieldResource, second: SecondYieldResource):
        record(context.instance, "log", "my_hello_world_op")

    @job(
        resource_defs={"first": FirstYieldResource(), "second": SecondYieldResource()},
        executor_def=executor_def(executor),
    )
    def hello_world_job() -> None:
        my_hello_world_op()

    return hello_world_job


@executors()
def test_basic_pre_teardown_after_execution(executor, instance, run_config):
    result = execute_job(recon(define_pre_teardown_job, executor), instance, run_config=run_config(executor))
    assert result.success
    assert recorded(instance, "log") == [
        "setup_for_execution",
        "hello_world_op",
        "teardown_after_execution",
    ]


@executors()
def test_pre_teardown_after_execution_with_op_execution_error(executor, instance, run_config):
    # If an op raises an error, we should still call teardown_after_execution on the resource
    result = execute_job(
        recon(define_op_error_job, executor), instance, run_config=run_config(executor), raise_on_error=False
    )
    assert not result.success  # the original: pytest.raises(Exception, match="foo")

    assert recorded(instance, "log") == [
        "setup_for_execution",
        "my_erroring_op",
        "teardown_after_execution",
    ]


@executors()
def test_setup_for_execution_with_error(executor, instance, run_config):
    # If an error occurs in setup_for_execution, this error will manifest as a
    # DagsterResourceFunctionError. The resource teardown will not be called
    result = execute_job(
        recon(define_setup_error_job, executor),
        instance,
        run_config=run_config(executor),
        raise_on_error=False,
    )
    # the original: pytest.raises(DagsterResourceFunctionError, match=...); out of process,
    # the error is reported in the run's events
    assert not result.success
    assert any(
        "Error executing resource_fn on ResourceDefinition res" in error.to_string() for error in _errors(result)
    )

    # The op should not run and the teardown should not be called
    assert recorded(instance, "log") == [
        "setup_for_execution",
    ]


@executors()
def test_teardown_after_execution_with_error(executor, instance, run_config):
    # If an error occurs in teardown_after_execution, this error will be recorded in the event log
    result = execute_job(
        recon(define_teardown_error_job, executor), instance, run_config=run_config(executor)
    )

    # Ensure we record that the teardown errored in the event log
    # this doesnt cause the run to fail
    assert any(re.search(r"Teardown of resources \[.*\] failed", event.message or "") for event in result.all_events)

    assert recorded(instance, "log") == [
        "setup_for_execution",
        "my_hello_world_op",
        "teardown_after_execution",
    ]


@executors()
def test_yield_for_execution_with_error_after_yield(executor, instance, run_config):
    # If an error occurs after the yield, this will not fail the run but will be recorded in the event log
    result = execute_job(
        recon(define_yield_error_after_yield_job, executor), instance, run_config=run_config(executor)
    )

    # Ensure we record that the teardown errored in the event log
    # this doesnt cause the run to fail
    assert any(re.search(r"Teardown of resources \[.*\] failed", event.message or "") for event in result.all_events)

    assert recorded(instance, "log") == [
        "yield_for_execution_start",
        "my_hello_world_op",
        "yield_for_execution_post_yield",
    ]


@executors()
def test_multiple_yield_ordering(executor, instance, run_config):
    # ensure proper ordering of yield_for_execution
    assert execute_job(
        recon(define_multiple_yield_job, executor), instance, run_config=run_config(executor)
    ).success
    log = recorded(instance, "log")

    # order is not deterministic
    assert log == [
        "yield_start_my_resource",
        "yield_start_second_resource",
        "my_hello_world_op",
        "yield_end_second_resource",
        "yield_end_my_resource",
    ] or log == [
        "yield_start_second_resource",
        "yield_start_my_resource",
        "my_hello_world_op",
        "yield_end_my_resource",
        "yield_end_second_resource",
    ]
