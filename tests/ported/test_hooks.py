"""Ported from dagster-io/dagster
python_modules/dagster/dagster_tests/core_tests/hook_tests/test_hook_run.py
(event-list, success and failure hooks on ops, graphs and jobs; what a hook's context sees).

The originals run with `execute_in_process` and collect into a dict of the test process.
Here each job runs under `multiprocess_executor` and `gravity_executor`; hooks run in the
step's process and record the same entries through `support.record`, and the test rebuilds
the dict and asserts on it as the original did. Values that are objects travel faithfully:
exceptions and output values are pickled, metadata values serialized with Dagster's serdes.

Left out: test_hook_resource_mismatch (definition-time errors), test_hook_ops and
test_hook_graph (graph.execute_in_process), test_none_op_exception_access (covered by the
success hooks), and, as near-duplicates of cases kept (the same hook invocation path with
hooks attached differently): test_hook_on_op_instance, test_hook_on_graph_instance,
test_success_hook_on_op_instance_subset, test_failure_hook_on_op_instance,
test_hook_on_job_def, test_hook_on_job_def_with_graphs, test_hook_decorate_job_def,
test_hook_subjob, test_hook_on_job.
"""

import base64
import pickle
from collections import defaultdict

import pytest
from dagster import DynamicOut, DynamicOutput, Failure, Int, JobDefinition, Out, Output, execute_job, graph, job, op, resource
from dagster._core.definitions import failure_hook, success_hook
from dagster._core.definitions.decorators.hook_decorator import event_list_hook
from dagster._core.definitions.events import HookExecutionResult
from dagster._core.definitions.metadata import TextMetadataValue
from dagster._core.execution.context.compute import OpExecutionContext
from dagster._serdes import deserialize_value, serialize_value

from tests.ported.support import executor_def, executors, recon, record, recorded

pytestmark = [pytest.mark.slow, pytest.mark.executor]


class SomeUserException(Exception):
    pass


@resource
def resource_a(_init_context):
    return 1


def _note_op(context):
    record(context.instance, "called_hook_to_ops", [context.hook_def.name, context.op.name])


def _note_step(context):
    record(context.instance, "called_hook_to_ops", [context.hook_def.name, context.step_key])


def _called_hook_to_ops(instance):
    called = defaultdict(set)
    for hook_name, name in recorded(instance, "called_hook_to_ops"):
        called[hook_name].add(name)
    return called


def _pickled(value) -> str:
    return base64.b64encode(pickle.dumps(value)).decode()


def _called(instance) -> dict:
    return {key: pickle.loads(base64.b64decode(value)) for key, value in recorded(instance, "called")}


# -- jobs ------------------------------------------------------------------------------


def define_hook_accumulation_job(executor: str) -> JobDefinition:
    @event_list_hook
    def job_hook(context, _):
        _note_step(context)
        return HookExecutionResult("job_hook")

    @event_list_hook
    def op_1_hook(context, _):
        _note_step(context)
        return HookExecutionResult("op_1_hook")

    @event_list_hook
    def graph_1_hook(context, _):
        _note_step(context)
        return HookExecutionResult("graph_1_hook")

    @op
    def op_1(_):
        return 1

    @op
    def op_2(_, num):
        return num

    @op
    def op_3(_):
        return 1

    @graph
    def graph_1():
        return op_2(op_1.with_hooks({op_1_hook})())

    @graph
    def graph_2():
        op_3()
        return graph_1.with_hooks({graph_1_hook})()

    @job_hook
    @job(executor_def=executor_def(executor))
    def a_job():
        graph_2()

    return a_job


def define_success_hook_job(executor: str) -> JobDefinition:
    @success_hook(required_resource_keys={"resource_a"})
    def a_hook(context):
        _note_op(context)
        assert context.resources.resource_a == 1

    @op
    def a_op(_):
        pass

    @op
    def failed_op(_):
        raise SomeUserException()

    @job(resource_defs={"resource_a": resource_a}, executor_def=executor_def(executor))
    def a_job():
        a_op.with_hooks(hook_defs={a_hook})()
        a_op.alias("op_with_hook").with_hooks(hook_defs={a_hook})()
        a_op.alias("op_without_hook")()
        failed_op.with_hooks(hook_defs={a_hook})()

    return a_job


def define_failure_hook_op_exception_job(executor: str) -> JobDefinition:
    @failure_hook
    def a_hook(context):
        record(context.instance, "called", [context.op.name, _pickled(context.op_exception)])

    @op
    def a_op(_):
        pass

    @op
    def user_code_error_op(_):
        raise SomeUserException()

    @op
    def failure_op(_):
        raise Failure()

    @a_hook
    @job(executor_def=executor_def(executor))
    def a_job():
        a_op()
        user_code_error_op()
        failure_op()

    return a_job


def define_op_outputs_access_job(executor: str) -> JobDefinition:
    @success_hook
    def my_success_hook(context):
        record(context.instance, "called", [context.step_key, _pickled(context.op_output_values)])

    @failure_hook
    def my_failure_hook(context):
        record(context.instance, "called", [context.step_key, _pickled(context.op_output_values)])

    @op(out={"one": Out(), "two": Out(), "three": Out()})
    def a_op(_):
        yield Output(1, "one")
        yield Output(2, "two")
        yield Output(3, "three")

    @op(out={"one": Out(), "two": Out()})
    def failed_op(_):
        yield Output(1, "one")
        raise SomeUserException()
        yield Output(3, "two")

    @op(out=DynamicOut())
    def dynamic_op(_):
        yield DynamicOutput(1, mapping_key="mapping_1")
        yield DynamicOutput(2, mapping_key="mapping_2")

    @op
    def echo(_, x):
        return x

    @my_success_hook
    @my_failure_hook
    @job(executor_def=executor_def(executor))
    def a_job():
        a_op()
        failed_op()
        dynamic_op().map(echo)

    return a_job


def define_op_metadata_job(executor: str) -> JobDefinition:
    @success_hook
    def my_success_hook(context):
        record(context.instance, "metadata", [context.step_key, serialize_value(dict(context.op_output_metadata))])

    @op(out={"one": Out(), "two": Out(), "three": Out()})
    def output_metadata_op(_):
        yield Output(1, "one", metadata={"foo": "bar"})
        yield Output(2, "two", metadata={"baz": "qux"})
        yield Output(3, "three", metadata={"quux": "quuz"})

    @op()
    def context_metadata_op(context: OpExecutionContext):
        context.add_output_metadata(metadata={"foo": "bar"})
        yield Output(value=1)

    @my_success_hook
    @job(executor_def=executor_def(executor))
    def metadata_job():
        output_metadata_op()
        context_metadata_op()

    return metadata_job


def define_hook_on_job_def_and_op_instance_job(executor: str) -> JobDefinition:
    @event_list_hook
    def hook_a_generic(context, _):
        _note_op(context)
        return HookExecutionResult("hook_a_generic")

    @success_hook
    def hook_b_success(context):
        _note_op(context)

    @failure_hook
    def hook_c_failure(context):
        _note_op(context)

    @op
    def op_a(_):
        pass

    @op
    def op_b(_):
        pass

    @op
    def failed_op(_):
        raise SomeUserException()

    @hook_a_generic
    @job(executor_def=executor_def(executor))
    def a_job():
        op_a.with_hooks({hook_b_success})()
        failed_op.with_hooks({hook_c_failure})()
        # "hook_a_generic" should run on "op_b" only once
        op_b.with_hooks({hook_a_generic})()

    return a_job


def define_hook_context_config_schema_job(executor: str) -> JobDefinition:
    @event_list_hook
    def a_hook(context, _):
        _note_op(context)
        assert context.op_config == {"config_1": 1}
        return HookExecutionResult("a_hook")

    @op(config_schema={"config_1": Int})
    def a_op(_):
        pass

    @job(executor_def=executor_def(executor))
    def a_job():
        a_op.with_hooks(hook_defs={a_hook})()

    return a_job


# -- tests -----------------------------------------------------------------------------


@executors()
def test_hook_accumulation(executor, instance, run_config):
    result = execute_job(recon(define_hook_accumulation_job, executor), instance, run_config=run_config(executor))
    assert result.success

    # make sure we gather hooks from all places and invoke them with the right steps
    assert _called_hook_to_ops(instance) == {
        "job_hook": {
            "graph_2.graph_1.op_1",
            "graph_2.graph_1.op_2",
            "graph_2.op_3",
        },
        "op_1_hook": {"graph_2.graph_1.op_1"},
        "graph_1_hook": {
            "graph_2.graph_1.op_1",
            "graph_2.graph_1.op_2",
        },
    }


@executors()
def test_success_hook_on_op_instance(executor, instance, run_config):
    result = execute_job(
        recon(define_success_hook_job, executor), instance, run_config=run_config(executor), raise_on_error=False
    )
    assert not result.success
    assert _called_hook_to_ops(instance)["a_hook"] == {"a_op", "op_with_hook"}


@executors()
def test_failure_hook_op_exception(executor, instance, run_config):
    result = execute_job(
        recon(define_failure_hook_op_exception_job, executor),
        instance,
        run_config=run_config(executor),
        raise_on_error=False,
    )
    called = _called(instance)
    assert not result.success
    assert "a_op" not in called
    assert isinstance(called.get("user_code_error_op"), SomeUserException)
    assert isinstance(called.get("failure_op"), Failure)


@executors()
def test_op_outputs_access(executor, instance, run_config):
    result = execute_job(
        recon(define_op_outputs_access_job, executor), instance, run_config=run_config(executor), raise_on_error=False
    )
    called = _called(instance)
    assert not result.success
    assert called.get("a_op") == {"one": 1, "two": 2, "three": 3}
    assert called.get("failed_op") == {"one": 1}
    assert called.get("dynamic_op") == {"result": {"mapping_1": 1, "mapping_2": 2}}
    assert called.get("echo[mapping_1]") == {"result": 1}
    assert called.get("echo[mapping_2]") == {"result": 2}


@executors()
def test_op_metadata_access(executor, instance, run_config):
    """HookContext op_output_metadata is populated upon both Output(value, metadata) and
    context.add_output_metadata(metadata) calls."""
    result = execute_job(
        recon(define_op_metadata_job, executor), instance, run_config=run_config(executor), raise_on_error=False
    )
    called = {key: deserialize_value(value) for key, value in recorded(instance, "metadata")}

    assert result.success
    assert called.get("context_metadata_op") == {"result": {"foo": TextMetadataValue(text="bar")}}
    assert called.get("output_metadata_op") == {
        "one": {"foo": TextMetadataValue(text="bar")},
        "two": {"baz": TextMetadataValue(text="qux")},
        "three": {"quux": TextMetadataValue(text="quuz")},
    }


@executors()
def test_hook_on_job_def_and_op_instance(executor, instance, run_config):
    result = execute_job(
        recon(define_hook_on_job_def_and_op_instance_job, executor),
        instance,
        run_config=run_config(executor),
        raise_on_error=False,
    )
    called_hook_to_ops = _called_hook_to_ops(instance)
    assert not result.success
    # a generic hook runs on all ops
    assert called_hook_to_ops["hook_a_generic"] == {"op_a", "op_b", "failed_op"}
    # a success hook runs on "op_a"
    assert called_hook_to_ops["hook_b_success"] == {"op_a"}
    # a failure hook runs on "failed_op"
    assert called_hook_to_ops["hook_c_failure"] == {"failed_op"}
    hook_events = result.filter_events(lambda event: event.is_hook_event)
    # same hook will run once on the same op invocation
    assert len(hook_events) == 5


@executors()
def test_hook_context_config_schema(executor, instance, run_config):
    result = execute_job(
        recon(define_hook_context_config_schema_job, executor),
        instance,
        run_config=run_config(executor, {"ops": {"a_op": {"config": {"config_1": 1}}}}),
    )
    assert result.success
    assert _called_hook_to_ops(instance)["a_hook"] == {"a_op"}


