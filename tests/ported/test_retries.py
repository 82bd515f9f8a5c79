"""Ported from dagster-io/dagster
python_modules/dagster/dagster_tests/execution_tests/misc_execution_tests/test_retries.py
(RetryRequested with and without a wait, RetryPolicy with backoff, Failure(allow_retries=False),
retries with a failure hook, after a crash and after a resource fails to initialise).

The original runs most cases with `execute_in_process`; here each runs under
`multiprocess_executor` and `gravity_executor` with the same assertions. Where the original
appends to a list in the test process (the backoff test's attempt times, the failure hook's
calls), the op or hook records the same values through `support.record` and the test rebuilds
the list; the failure hook records `repr(context.op_exception)`, compared with the repr of
the exception the op raised (the original compares the object itself, which cannot cross a
process boundary).

Left out: test_retry_deferral (execute_plan in-process with RetryMode.DEFERRED),
test_policy_delay_calc (pure RetryPolicy arithmetic), test_resource_retries_in_process
(documents the in-process executor's lack of resource retries), test_basic_op_retry_policy /
test_retry_policy_rules_job / test_retry_policy_rules_on_graph_to_job /
test_retry_policy_rules_on_pending_node_invocation_to_job (the same runs as
test_basic_retry_policy and test_retry_policy_rules, declared differently), and, for time,
test_retries (re-execution of a failed run, covered by
test_engine_multiprocessing.test_dynamic_failure_retry), test_retry_policy_rules (six ops,
fifteen attempts; policy precedence is resolved before any executor sees the plan),
test_delay and test_expo_backoff (the delays are covered by test_linear_backoff and
test_step_retry_fixed_wait) and test_basic_op_retry_policy_subset.
"""

import os
import time
from collections import defaultdict

import pytest
from dagster import (
    Backoff,
    ConfigurableResource,
    DagsterEventType,
    Failure,
    InitResourceContext,
    JobDefinition,
    RetryPolicy,
    RetryRequested,
    execute_job,
    failure_hook,
    job,
    op,
)
from dagster._core.execution.api import execute_run_iterator
from dagster._utils import segfault

from tests.ported.support import executor_def, executors, recon, record, recorded

pytestmark = [pytest.mark.slow, pytest.mark.executor]


def _get_retry_events(events):
    return list(filter(lambda evt: evt.event_type == DagsterEventType.STEP_UP_FOR_RETRY, events))


# -- jobs ------------------------------------------------------------------------------


def define_step_retry_job(executor: str) -> JobDefinition:
    @op(config_schema=str)
    def fail_first_time(context):
        file = os.path.join(context.op_config, "i_threw_up")
        if os.path.exists(file):
            return "okay perfect"
        else:
            open(file, "a", encoding="utf8").close()
            raise RetryRequested()

    @job(executor_def=executor_def(executor))
    def step_retry():
        fail_first_time()

    return step_retry


def define_retry_limit_job(executor: str) -> JobDefinition:
    @op
    def default_max():
        raise RetryRequested()

    @op
    def three_max():
        raise RetryRequested(max_retries=3)

    @job(executor_def=executor_def(executor))
    def retry_limits():
        default_max()
        three_max()

    return retry_limits


DELAY = 2


def define_retry_wait_fixed_job(executor: str) -> JobDefinition:
    @op(config_schema=str)
    def fail_first_and_wait(context):
        file = os.path.join(context.op_config, "i_threw_up")
        if os.path.exists(file):
            return "okay perfect"
        else:
            open(file, "a", encoding="utf8").close()
            raise RetryRequested(seconds_to_wait=DELAY)

    @job(executor_def=executor_def(executor))
    def step_retry():
        fail_first_and_wait()

    return step_retry


def define_basic_retry_policy_job(executor: str) -> JobDefinition:
    @op(retry_policy=RetryPolicy())
    def throws(_):
        raise Exception("I fail")

    @job(executor_def=executor_def(executor))
    def policy_test():
        throws()

    return policy_test


RETRY_DELAY = 0.3


BACKOFF_DELAY = 0.1


def define_backoff_job(executor: str, backoff: str) -> JobDefinition:
    @op
    def throws(context):
        record(context.instance, "logged_times", time.time())
        raise Exception("I fail")

    @job(name=f"{backoff.lower()}_backoff", executor_def=executor_def(executor))
    def backoff_job():
        throws.with_retry_policy(RetryPolicy(max_retries=3, delay=BACKOFF_DELAY, backoff=Backoff[backoff]))()

    return backoff_job


def define_hard_fail_job(executor: str) -> JobDefinition:
    @op
    def fail_allow():
        raise Failure("I fail")

    @op
    def fail_disallow():
        raise Failure("I fail harder", allow_retries=False)

    @job(op_retry_policy=RetryPolicy(max_retries=1), executor_def=executor_def(executor))
    def hard_fail_job():
        fail_allow()
        fail_disallow()

    return hard_fail_job


EXCEPTION = Exception("something wrong happened")


def define_failure_hook_job(executor: str) -> JobDefinition:
    @failure_hook
    def something_on_failure(context):
        record(context.instance, "hook_calls", {"op_exception": repr(context.op_exception)})

    @op(retry_policy=RetryPolicy(max_retries=2))
    def op1():
        raise EXCEPTION

    @job(hooks={something_on_failure}, executor_def=executor_def(executor))
    def job1():
        op1()

    return job1


def define_failure_metadata_job(executor: str) -> JobDefinition:
    @op(retry_policy=RetryPolicy(max_retries=1))
    def fails():
        raise Failure("FAILURE", metadata={"meta": "data"})

    @job(executor_def=executor_def(executor))
    def exceeds():
        fails()

    return exceeds


def define_crash_once_job(executor: str) -> JobDefinition:
    @op(config_schema=str, retry_policy=RetryPolicy(max_retries=1))
    def crash_once(context):
        file = os.path.join(context.op_config, "i_threw_up")
        if not os.path.exists(file):
            open(file, "a", encoding="utf8").close()
            segfault()
        return "okay perfect"

    @job(executor_def=executor_def(executor))
    def crash_retry():
        crash_once()

    return crash_retry


def define_crash_always_job(executor: str) -> JobDefinition:
    @op(config_schema=str, retry_policy=RetryPolicy(max_retries=1))
    def crash_always(context):
        segfault()

    @job(executor_def=executor_def(executor))
    def crash_always_job():
        crash_always()

    return crash_always_job


class FailOnceResource(ConfigurableResource):
    parent_dir: str

    def create_resource(self, context: InitResourceContext) -> None:
        filepath = os.path.join(self.parent_dir, f"{context.run_id}_resource.txt")
        if not os.path.exists(filepath):
            open(filepath, "a", encoding="utf8").close()
            raise ValueError("Resource error")


@op(retry_policy=RetryPolicy(max_retries=3))
def do_something(my_resource: FailOnceResource):
    pass


def define_resource_fail_once_job(executor: str) -> JobDefinition:
    @job(resource_defs={"my_resource": FailOnceResource(parent_dir="")}, executor_def=executor_def(executor))
    def resource_fail_once_job():
        do_something()

    return resource_fail_once_job


# -- tests -----------------------------------------------------------------------------


@executors()
def test_step_retry(executor, instance, run_config, tmp_path):
    env = run_config(executor, {"ops": {"fail_first_time": {"config": str(tmp_path)}}})
    with execute_job(recon(define_step_retry_job, executor), run_config=env, instance=instance) as result:
        assert result.success
        events = defaultdict(list)
        for ev in result.all_events:
            events[ev.event_type].append(ev)

    assert len(events[DagsterEventType.STEP_START]) == 1
    assert len(events[DagsterEventType.STEP_UP_FOR_RETRY]) == 1
    assert len(events[DagsterEventType.STEP_RESTARTED]) == 1
    assert len(events[DagsterEventType.STEP_SUCCESS]) == 1


@executors()
def test_step_retry_limit(executor, instance, run_config):
    with execute_job(
        recon(define_retry_limit_job, executor), run_config=run_config(executor), raise_on_error=False, instance=instance
    ) as result:
        assert not result.success

        events = defaultdict(list)
        for ev in result.events_for_node("default_max"):
            events[ev.event_type].append(ev)

        assert len(events[DagsterEventType.STEP_START]) == 1
        assert len(events[DagsterEventType.STEP_UP_FOR_RETRY]) == 1
        assert len(events[DagsterEventType.STEP_RESTARTED]) == 1
        assert len(events[DagsterEventType.STEP_FAILURE]) == 1

        events = defaultdict(list)
        for ev in result.events_for_node("three_max"):
            events[ev.event_type].append(ev)

        assert len(events[DagsterEventType.STEP_START]) == 1
        assert len(events[DagsterEventType.STEP_UP_FOR_RETRY]) == 3
        assert len(events[DagsterEventType.STEP_RESTARTED]) == 3
        assert len(events[DagsterEventType.STEP_FAILURE]) == 1


@executors()
def test_step_retry_fixed_wait(executor, instance, run_config, tmp_path):
    env = run_config(executor, {"ops": {"fail_first_and_wait": {"config": str(tmp_path)}}})

    dagster_run = instance.create_run_for_job(define_retry_wait_fixed_job(executor), run_config=env)

    event_iter = execute_run_iterator(recon(define_retry_wait_fixed_job, executor), dagster_run, instance=instance)
    start_wait = None
    end_wait = None
    success = None
    for event in event_iter:
        if event.is_step_up_for_retry:
            start_wait = time.time()
        if event.is_step_restarted:
            end_wait = time.time()
        if event.is_job_success:
            success = True

    assert success
    assert start_wait is not None
    assert end_wait is not None
    delay = end_wait - start_wait
    assert delay > DELAY


@executors()
def test_basic_retry_policy(executor, instance, run_config):
    result = execute_job(
        recon(define_basic_retry_policy_job, executor), instance, run_config=run_config(executor), raise_on_error=False
    )
    assert not result.success
    assert result.retry_attempts_for_node("throws") == 1


@executors()
def test_linear_backoff(executor, instance, run_config):
    delay = BACKOFF_DELAY
    result = execute_job(
        recon(define_backoff_job, executor, "LINEAR"), instance, run_config=run_config(executor), raise_on_error=False
    )
    logged_times = recorded(instance, "logged_times")
    assert not result.success
    assert len(logged_times) == 4
    assert (logged_times[1] - logged_times[0]) > delay
    assert (logged_times[2] - logged_times[1]) > (delay * 2)
    assert (logged_times[3] - logged_times[2]) > (delay * 3)


@executors()
def test_failure_allow_retries(executor, instance, run_config):
    result = execute_job(
        recon(define_hard_fail_job, executor), instance, run_config=run_config(executor), raise_on_error=False
    )
    assert not result.success
    assert len(_get_retry_events(result.events_for_node("fail_allow"))) == 1
    assert len(_get_retry_events(result.events_for_node("fail_dissalow"))) == 0


@executors()
def test_retry_policy_with_failure_hook(executor, instance, run_config):
    exception = EXCEPTION
    execute_job(recon(define_failure_hook_job, executor), instance, run_config=run_config(executor), raise_on_error=False)
    hook_calls = recorded(instance, "hook_calls")

    assert len(hook_calls) == 1
    assert hook_calls[0]["op_exception"] == repr(exception)


@executors()
def test_failure_metadata(executor, instance, run_config):
    result = execute_job(
        recon(define_failure_metadata_job, executor), instance, run_config=run_config(executor), raise_on_error=False
    )
    assert not result.success
    step_failure_data = result.failure_data_for_node("fails")
    assert step_failure_data
    assert step_failure_data.user_failure_data
    assert step_failure_data.user_failure_data.metadata["meta"].value == "data"


@executors()
def test_multiprocess_crash_retry(executor, instance, run_config, tmp_path):
    once = tmp_path / "once"
    once.mkdir()
    with execute_job(
        recon(define_crash_once_job, executor),
        run_config=run_config(executor, {"ops": {"crash_once": {"config": str(once)}}}),
        instance=instance,
    ) as result:
        assert result.success
        events = defaultdict(list)
        for ev in result.all_events:
            events[ev.event_type].append(ev)

        # we won't get start events because those are emitted from the crashed child process
        assert len(events[DagsterEventType.STEP_UP_FOR_RETRY]) == 1
        assert len(events[DagsterEventType.STEP_RESTARTED]) == 1
        assert len(events[DagsterEventType.STEP_SUCCESS]) == 1

    always = tmp_path / "always"
    always.mkdir()
    with execute_job(
        recon(define_crash_always_job, executor),
        run_config=run_config(executor, {"ops": {"crash_always": {"config": str(always)}}}),
        instance=instance,
    ) as result:
        assert not result.success
        events = defaultdict(list)
        for ev in result.all_events:
            events[ev.event_type].append(ev)

        # we won't get start events or restarted events, because those are emitted from the child process
        assert len(events[DagsterEventType.STEP_UP_FOR_RETRY]) == 1
        assert len(events[DagsterEventType.STEP_FAILURE]) == 1


@executors()
def test_resource_retries_multiprocess(executor, instance, run_config, tmp_path):
    with execute_job(
        recon(define_resource_fail_once_job, executor),
        instance=instance,
        raise_on_error=False,
        run_config=run_config(executor, {"resources": {"my_resource": {"config": {"parent_dir": str(tmp_path)}}}}),
    ) as result:
        assert result.success
        assert len(_get_retry_events(result.events_for_node("do_something"))) == 1
