"""Ported from dagster-io/dagster
python_modules/dagster/dagster_tests/execution_tests/dynamic_tests/test_dynamic_execution.py
(DynamicOut map / collect, failures in the fan-out).

The original parametrizes over the in-process and the multiprocess (forkserver) executors;
here over `multiprocess_executor` (forkserver) and `gravity_executor`, with the same
assertions. test_multi_collect ran with execute_in_process only; it runs under both
executors too.

Left out: test_tags (execution-plan construction, no executor); test_full_reexecute,
test_select_dynamic_step_and_downstream and test_bad_step_selection (in-process only);
test_fan_in_skips (its `skip_total` output exists only in-process: under the multiprocess
executor the step is skipped, so the original fails there too); and, because this module's
twelve-step job is the costliest in the suite, test_map_empty, test_map_selection,
test_partial_reexecute, test_fan_out_in_out_in, test_map_reexecute_after_fail,
test_select_dynamic_step_with_non_static_mapping and test_composite_wrapping (fan-out is
covered by test_map, re-execution with a step selection by
test_selection.test_reexecute_job_with_step_selection_multi_clauses).
"""

import pytest
from dagster import DynamicOut, DynamicOutput, Field, JobDefinition, execute_job, job, op

from tests.ported.support import executor_def, executors, merge, recon

pytestmark = [pytest.mark.slow, pytest.mark.executor]


@op(tags={"third": "3"})
def multiply_by_two(context, y):
    context.log.info("multiply_by_two is returning " + str(y * 2))
    return y * 2


@op(tags={"second": "2"})
def multiply_inputs(context, y, ten):
    context.log.info("multiply_inputs is returning " + str(y * ten))
    return y * ten


@op
def emit_ten(_):
    return 10


@op
def echo(_, x: int) -> int:
    return x


@op(config_schema={"range": Field(int, is_required=False, default_value=3)})
def num_range(context) -> int:
    return context.op_config["range"]


@op(
    out=DynamicOut(),
    config_schema={"fail": Field(bool, is_required=False, default_value=False)},
    tags={"first": "1"},
)
def emit(context, num: int = 3):
    if context.op_config["fail"]:
        raise Exception("FAILURE")

    for i in range(num):
        yield DynamicOutput(value=i, mapping_key=str(i))


@op
def sum_numbers(_, nums):
    return sum(nums)


def define_dynamic_pipeline(executor: str) -> JobDefinition:
    @job(executor_def=executor_def(executor))
    def dynamic_pipeline():
        numbers = emit(num_range())
        dynamic = numbers.map(lambda num: multiply_by_two(multiply_inputs(num, emit_ten())))
        n = multiply_by_two.alias("double_total")(sum_numbers(dynamic.collect()))
        echo(n)  # test transitive downstream of collect

    return dynamic_pipeline


def _step_keys_from_result(result):
    return set([event.step_key for event in result.all_events if event.step_key is not None])


@executors()
def test_map(executor, instance, run_config):
    with execute_job(recon(define_dynamic_pipeline, executor), instance=instance, run_config=run_config(executor)) as result:
        assert result.success
        keys = _step_keys_from_result(result)
        assert "multiply_inputs[0]" in keys
        assert "multiply_inputs[1]" in keys
        assert "multiply_inputs[2]" in keys
        assert result.output_for_node("multiply_inputs") == {"0": 0, "1": 10, "2": 20}
        assert result.output_for_node("multiply_by_two") == {"0": 0, "1": 20, "2": 40}
        assert result.output_for_node("sum_numbers") == 60
        assert result.output_for_node("double_total") == 120
        assert result.output_for_node("echo") == 120


@executors()
def test_map_fail(executor, instance, run_config):
    result = execute_job(
        recon(define_dynamic_pipeline, executor),
        instance=instance,
        run_config=merge({"ops": {"emit": {"config": {"fail": True}}}}, run_config(executor)),
        raise_on_error=False,
    )
    assert not result.success


def define_double_job(executor: str) -> JobDefinition:
    @op
    def fan_in(_, x, y):
        return x + y

    @job(executor_def=executor_def(executor))
    def double():
        nums_1 = emit()
        nums_2 = emit()
        fan_in(nums_1.collect(), nums_2.collect())

    return double


@executors()
def test_multi_collect(executor, instance, run_config):
    with execute_job(recon(define_double_job, executor), instance=instance, run_config=run_config(executor)) as result:
        assert result.success
        assert result.output_for_node("fan_in") == [0, 1, 2, 0, 1, 2]


