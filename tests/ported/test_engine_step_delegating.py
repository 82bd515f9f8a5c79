"""Ported from dagster-io/dagster
python_modules/dagster/dagster_tests/execution_tests/engine_tests/test_step_delegating_executor.py
and the jobs it runs, python_modules/dagster/dagster_tests/execution_tests/engine_tests/test_jobs.py.

There the jobs run under a test StepDelegatingExecutor; here each runs under
`multiprocess_executor` and `gravity_executor`, with the original assertions about the run.
slow_op sleeps 0.5 s instead of 2 s so the module stays fast (the assertions check that no
two steps overlap, which does not depend on how long each lasts).

Left out: test_execute / test_execute_with_tailer_offset / test_execute_intervals /
test_execute_verify_step (they assert on the test step handler's own messages and
counters), test_execute_using_repository_data (counts how often the step handler's
processes load cacheable assets), test_dynamic_failure_retry (ported in
test_engine_multiprocessing.py), test_blocked_concurrency_limits (asserts on the
step-delegating loop's polling rate; the blocked message is ported from
test_op_concurrency.py), and, for time, test_dynamic_execute (a ten-way fan-out; fan-out is
covered by test_dynamic.py) and test_skipping (its sleep_op sleeps 15 s; skipping is covered
by test_skip_execute).
"""

import time

import pytest
from dagster import DynamicOut, DynamicOutput, JobDefinition, Out, Output, execute_job, job, op
from dagster._core.events import DagsterEventType

from tests.ported.support import executor_def, executors, recon

pytestmark = [pytest.mark.slow, pytest.mark.executor]


# -- test_jobs.py ----------------------------------------------------------------------


@op(out=DynamicOut(str))
def dynamic():
    for x in ["a", "b"]:
        yield DynamicOutput(x, x)


@op(out=Out(is_required=False))
def optional(x):
    if x == "a":
        yield Output(x)


@op
def final(context, xs):
    context.log.info(xs)


def define_dynamic_skipping_job(executor: str) -> JobDefinition:
    @job(executor_def=executor_def(executor))
    def dynamic_skipping_job():
        xs = dynamic().map(optional)
        xs.map(final)

    return dynamic_skipping_job


# -- test_step_delegating_executor.py --------------------------------------------------


@op(tags={"database": "tiny"})
def slow_op(_):
    time.sleep(0.5)  # 2 s in the original


def define_three_op_job(executor: str) -> JobDefinition:
    @job(executor_def=executor_def(executor))
    def three_op_job():
        for i in range(3):
            slow_op.alias(f"slow_op_{i}")()

    return three_op_job


@executors()
def test_skip_execute(executor, instance, run_config):
    result = execute_job(recon(define_dynamic_skipping_job, executor), instance=instance, run_config=run_config(executor))
    assert result.success


@executors()
def test_max_concurrent(executor, instance, run_config):
    result = execute_job(
        recon(define_three_op_job, executor), instance=instance, run_config=run_config(executor, max_concurrent=1)
    )
    assert result.success

    # test that all the steps run serially, since max_concurrent is 1
    active_step = None
    for event in result.all_events:
        if event.event_type_value == DagsterEventType.STEP_START.value:
            assert active_step is None, "A second step started before the first finished!"
            active_step = event.step_key
        elif event.event_type_value == DagsterEventType.STEP_SUCCESS.value:
            assert active_step == event.step_key, "A step finished that wasn't supposed to be active!"
            active_step = None


@executors()
def test_tag_concurrency_limits(executor, instance, run_config):
    with execute_job(
        recon(define_three_op_job, executor),
        instance=instance,
        run_config=run_config(
            executor,
            max_concurrent=6001,
            tag_concurrency_limits=[{"key": "database", "value": "tiny", "limit": 1}],
        ),
    ) as result:
        assert result.success

        # test that all the steps run serially, since database=tiny can only run one at a time
        active_step = None
        for event in result.all_events:
            if event.event_type_value == DagsterEventType.STEP_START.value:
                assert active_step is None, "A second step started before the first finished!"
                active_step = event.step_key
            elif event.event_type_value == DagsterEventType.STEP_SUCCESS.value:
                assert active_step == event.step_key, "A step finished that wasn't supposed to be active!"
                active_step = None
