"""Ported from dagster-io/dagster
python_modules/dagster/dagster_tests/execution_tests/engine_tests/test_op_concurrency.py
(op-level concurrency pools: steps tagged with a concurrency key, slots in the instance).

The instance is the one that module's conftest.py builds: the concurrency-enabled sqlite
event log storage of dagster._utils.test with a 0.01 s claim sleep interval (here on disk,
through dagster.yaml). The blocked-step message is matched in Dagster 1.13's words ("blocked
by limit for pool foo", as the 1.13 test_step_delegating_executor.py matches it); the stored
original still had the older "blocked by concurrency limit for key foo".

Each case runs under `multiprocess_executor` and `gravity_executor` instead of the
original in-process / multiprocess / test step-delegating executors (the retry job ran
in-process there).

Left out: test_multi_run_concurrency (launches two runs through a workspace and the run
launcher: it exercises the run launcher and cross-run slot accounting, not the executor,
and costs two launched runs per executor), test_concurrency_blocked_events (the same
run as test_parallel_concurrency; the blocked message is asserted by
test_multiprocess_simple_job_has_blocked_message) and, for time, test_multi_slot_concurrency
(the same five-step job with three slots).
"""

import threading
import time

import pytest
from dagster import Failure, JobDefinition, RetryPolicy, execute_job, graph, job, op
from dagster._core.events import DagsterEventType
from dagster._core.execution.api import execute_run_iterator
from dagster._core.storage.tags import GLOBAL_CONCURRENCY_TAG

from tests.ported.support import executor_def, executors, recon

pytestmark = [pytest.mark.slow, pytest.mark.executor]

CONCURRENCY_EVENT_LOG = """
event_log_storage:
  module: dagster._utils.test
  class: ConcurrencyEnabledSqliteTestEventLogStorage
  config:
    base_dir: {base_dir}
    sleep_interval: 0.01
"""


@pytest.fixture
def instance(instance_with_event_log):
    return instance_with_event_log(CONCURRENCY_EVENT_LOG)


@op(tags={GLOBAL_CONCURRENCY_TAG: "foo"})
def should_never_execute(_x):
    assert False  # this should never execute


@op(tags={GLOBAL_CONCURRENCY_TAG: "foo"})
def throw_error():
    raise Exception("bad programmer")


@graph
def error_graph():
    should_never_execute(throw_error())


@op(tags={GLOBAL_CONCURRENCY_TAG: "foo"})
def simple_op(context):
    time.sleep(0.1)
    foo_info = context.instance.event_log_storage.get_concurrency_info("foo")
    return {"active": foo_info.active_slot_count, "pending": foo_info.pending_step_count}


@graph
def parallel_graph():
    simple_op()
    simple_op()
    simple_op()
    simple_op()
    simple_op()


@op(tags={GLOBAL_CONCURRENCY_TAG: "foo"}, retry_policy=RetryPolicy(max_retries=1))
def retry_op():
    raise Failure("I fail")


def define_error_job(executor: str) -> JobDefinition:
    return error_graph.to_job(name="error_job", executor_def=executor_def(executor))


def define_parallel_job(executor: str) -> JobDefinition:
    return parallel_graph.to_job(name="parallel_job", executor_def=executor_def(executor))


def define_retry_job(executor: str) -> JobDefinition:
    @job(executor_def=executor_def(executor))
    def retry_job():
        retry_op()
        simple_op()

    return retry_job


def define_simple_job(executor: str) -> JobDefinition:
    @job(executor_def=executor_def(executor))
    def simple_job():
        simple_op()

    return simple_job


@executors()
def test_parallel_concurrency(executor, instance, run_config):
    instance.event_log_storage.set_concurrency_slots("foo", 1)
    foo_info = instance.event_log_storage.get_concurrency_info("foo")
    assert foo_info.slot_count == 1
    assert foo_info.active_slot_count == 0
    assert foo_info.pending_step_count == 0
    assert foo_info.assigned_step_count == 0

    with execute_job(recon(define_parallel_job, executor), instance=instance, run_config=run_config(executor)) as result:
        assert result.success
        ordered_node_names = [event.node_name for event in result.all_events if event.is_successful_output]
        outputs = [result.output_for_node(name) for name in ordered_node_names]
        # should be 5 steps, each one executing at a time
        for output in outputs:
            assert output["active"] == 1

    # job successes release any claimed slots
    assert foo_info.slot_count == 1
    assert foo_info.active_slot_count == 0
    assert foo_info.pending_step_count == 0
    assert foo_info.assigned_step_count == 0


def _has_concurrency_blocked_event(events, concurrency_key):
    # Dagster 1.13 words it "Step blocked by limit for pool <key>" (the stored original,
    # older, matched "blocked by concurrency limit for key <key>").
    message_str = f"blocked by limit for pool {concurrency_key}"
    for event in events:
        if message_str in event.message:
            return True
    return False


@executors()
def test_error_concurrency(executor, instance, run_config):
    instance.event_log_storage.set_concurrency_slots("foo", 1)
    foo_info = instance.event_log_storage.get_concurrency_info("foo")
    assert foo_info.slot_count == 1
    assert foo_info.active_slot_count == 0
    assert foo_info.pending_step_count == 0
    assert foo_info.assigned_step_count == 0

    with execute_job(recon(define_error_job, executor), instance=instance, run_config=run_config(executor)) as result:
        assert not result.success

    # job failures release any claimed slots
    assert foo_info.slot_count == 1
    assert foo_info.active_slot_count == 0
    assert foo_info.pending_step_count == 0
    assert foo_info.assigned_step_count == 0


@executors()
def test_retry_concurrency_release(executor, instance, run_config):
    instance.event_log_storage.set_concurrency_slots("foo", 1)
    foo_info = instance.event_log_storage.get_concurrency_info("foo")
    assert foo_info.slot_count == 1
    assert foo_info.active_slot_count == 0
    assert foo_info.pending_step_count == 0
    assert foo_info.assigned_step_count == 0

    events = []
    with execute_job(recon(define_retry_job, executor), instance=instance, run_config=run_config(executor)) as result:
        for event in result.all_events:
            if event.step_key and event.event_type_value in (
                DagsterEventType.STEP_START.value,
                DagsterEventType.STEP_SUCCESS.value,
                DagsterEventType.STEP_FAILURE.value,
                DagsterEventType.STEP_RESTARTED.value,
                DagsterEventType.STEP_UP_FOR_RETRY.value,
            ):
                events.append((event.step_key, event.event_type_value))

    # job has released any claimed slots
    assert foo_info.slot_count == 1
    assert foo_info.active_slot_count == 0
    assert foo_info.pending_step_count == 0
    assert foo_info.assigned_step_count == 0

    # retry_op starts before simple_op starts
    # simple_op succeeds before second execution of retry_op fails
    assert events == [
        ("retry_op", "STEP_START"),
        ("retry_op", "STEP_UP_FOR_RETRY"),
        ("simple_op", "STEP_START"),
        ("simple_op", "STEP_SUCCESS"),
        ("retry_op", "STEP_RESTARTED"),
        ("retry_op", "STEP_FAILURE"),
    ]


@executors()
def test_multiprocess_simple_job_has_blocked_message(executor, instance, run_config):
    instance.event_log_storage.set_concurrency_slots("foo", 0)
    foo_info = instance.event_log_storage.get_concurrency_info("foo")
    assert foo_info.slot_count == 0
    run = instance.create_run_for_job(define_simple_job(executor), run_config=run_config(executor))

    def _unblock_concurrency_key(instance, timeout):
        time.sleep(timeout)
        instance.event_log_storage.set_concurrency_slots("foo", 1)

    start = time.time()
    has_blocked_message = False
    timed_out = False

    TIMEOUT = 5
    threading.Thread(target=_unblock_concurrency_key, args=(instance, TIMEOUT), daemon=True).start()

    for event in execute_run_iterator(recon(define_simple_job, executor), run, instance=instance):
        if "blocked by limit for pool foo" in event.message:  # Dagster 1.13's wording
            has_blocked_message = True
            break
        if time.time() - start > TIMEOUT:
            timed_out = True
            break

    assert not timed_out
    assert has_blocked_message
