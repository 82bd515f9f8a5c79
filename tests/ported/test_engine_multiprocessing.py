"""Ported from dagster-io/dagster
python_modules/dagster/dagster_tests/execution_tests/engine_tests/test_multiprocessing.py
(with the jobs of retry_jobs.py from the same folder).

Each case runs under `multiprocess_executor` and `gravity_executor`; the assertions are
Dagster's. test_dynamic_failure_retry runs its resource-initialisation variant (each mapped
step initialises the resource again, so only one of three passes); the retry_jobs.py helpers
take this test's on-disk instance and executor config instead of making their own.

Left out: test_diamond_simple_execution and test_error_job (in-process only),
test_explicit_spawn / test_forkserver_execution / test_forkserver_preload (the multiprocess
executor's own start_method config), test_no_handle (a CheckError raised by execute_job
before any executor is involved), and, to keep the module fast, test_optional_outputs
(skipped steps are covered by test_engine_step_delegating.test_skip_execute) and the
op-failure variant of test_dynamic_failure_retry (the same re-execution path).
"""

import os
import pickle
import re
import sys
import time

import pytest
from dagster import (
    DagsterInstance,
    DynamicOut,
    DynamicOutput,
    Failure,
    Field,
    In,
    JobDefinition,
    Nothing,
    Out,
    ReexecutionOptions,
    String,
    execute_job,
    job,
    op,
    resource,
)
from dagster._core.definitions.metadata import MetadataValue
from dagster._core.errors import DagsterUnmetExecutorRequirementsError
from dagster._core.events import DagsterEventType
from dagster._core.storage.compute_log_manager import ComputeLogManager
from dagster._core.storage.mem_io_manager import mem_io_manager
from dagster._utils import segfault

from tests.ported.support import executor_def, executors, recon

pytestmark = [pytest.mark.slow, pytest.mark.executor]

# -- jobs (module level, one per executor) ---------------------------------------------

JUST_ADDER_CONFIG = {
    "ops": {"adder": {"inputs": {"left": {"value": 1}, "right": {"value": 1}}}},
}


def define_diamond_job(executor: str) -> JobDefinition:
    @op
    def return_two():
        return 2

    @op(ins={"num": In()})
    def add_three(num):
        return num + 3

    @op(ins={"num": In()})
    def mult_three(num):
        return num * 3

    @op(ins={"left": In(), "right": In()})
    def adder(left, right):
        return left + right

    @job(executor_def=executor_def(executor))
    def diamond_job():
        two = return_two()
        adder(left=add_three(two), right=mult_three(two))

    return diamond_job


def define_in_mem_job(executor: str) -> JobDefinition:
    @op
    def return_two():
        return 2

    @op(ins={"num": In()})
    def add_three(num):
        return num + 3

    @job(resource_defs={"io_manager": mem_io_manager}, executor_def=executor_def(executor))
    def in_mem_job():
        add_three(return_two())

    return in_mem_job


def define_error_job(executor: str) -> JobDefinition:
    @op
    def should_never_execute(_x):
        assert False  # this should never execute

    @op
    def throw_error():
        raise Exception("bad programmer")

    @job(executor_def=executor_def(executor))
    def error_job():
        should_never_execute(throw_error())

    return error_job


def define_subdag_job(executor: str) -> JobDefinition:
    @op(config_schema=Field(String))
    def waiter(context):
        done = False
        while not done:
            time.sleep(0.15)
            if os.path.isfile(context.op_config):
                return

    @op(ins={"after": In(Nothing)}, config_schema=Field(String))
    def writer(context):
        with open(context.op_config, "w", encoding="utf8") as fd:
            fd.write("1")
        return

    @op(ins={"after": In(Nothing)}, out=Out(Nothing))
    def noop():
        pass

    @job(executor_def=executor_def(executor))
    def separate():
        waiter()
        a = noop.alias("noop_1")()
        b = noop.alias("noop_2")(a)
        c = noop.alias("noop_3")(b)
        writer(c)

    return separate


@op
def throw():
    raise Failure(description="it Failure", metadata={"label": "text"})


def define_failure_job(executor: str) -> JobDefinition:
    @job(executor_def=executor_def(executor))
    def failure():
        throw()

    return failure


@op
def sys_exit(context):
    context.log.info("Informational message")
    print("Crashy output to stdout")  # noqa: T201
    sys.stdout.flush()
    os._exit(1)


def define_sys_exit_job(executor: str) -> JobDefinition:
    @job(executor_def=executor_def(executor))
    def sys_exit_job():
        sys_exit()

    return sys_exit_job


@op
def segfault_op(context):
    context.log.info("Informational message")
    print("Crashy output to stdout")  # noqa: T201
    segfault()


def define_segfault_job(executor: str) -> JobDefinition:
    @job(executor_def=executor_def(executor))
    def segfault_job():
        segfault_op()

    return segfault_job


# -- retry_jobs.py ---------------------------------------------------------------------


def get_dynamic_job_resource_init_failure(executor: str) -> JobDefinition:
    # Induces failure state where among a series of dynamic steps induced from upstream
    # dynamic outputs, some of those steps fail during resource initialization time. Since
    # resource initialization is happening across multiple processes, it is necessary to
    # track the total number of initializations that have already occurred within an
    # external file (count.pkl) so that state can be shared. In multiprocessing case, race
    # conditions are avoided by setting max concurrency to 1.
    @op(out=DynamicOut(), config_schema={"num_dynamic_steps": int})
    def source(context):
        for i in range(context.op_config["num_dynamic_steps"]):
            yield DynamicOutput(i, mapping_key=str(i))

    @resource(config_schema={"path": str, "allowed_initializations": int})
    def resource_for_dynamic_step(init_context):
        # Get the count of successful initializations. If it is already at the allowed
        # initialization number, fail.
        with open(os.path.join(init_context.resource_config["path"], "count.pkl"), "rb") as f:
            init_count = pickle.load(f)
            if init_count == init_context.resource_config["allowed_initializations"]:
                raise Exception("too many initializations.")

        # We have not yet reached the allowed initializaton number, allow initialization
        # to complete and add to total init number.
        with open(os.path.join(init_context.resource_config["path"], "count.pkl"), "wb") as f:
            init_count += 1
            pickle.dump(init_count, f)
        return None

    @op(required_resource_keys={"foo"})
    def mapped_op(x):
        pass

    @op
    def consumer(x):
        pass

    @job(resource_defs={"foo": resource_for_dynamic_step}, executor_def=executor_def(executor))
    def the_job():
        consumer(source().map(mapped_op).collect())

    return the_job


def resource_init_failure_config(temp_dir, init_count, dynamic_steps):
    return {
        "resources": {"foo": {"config": {"path": temp_dir, "allowed_initializations": init_count}}},
        "ops": {"source": {"config": {"num_dynamic_steps": dynamic_steps}}},
    }


def _regexes_match(regexes, the_list):
    return all([re.match(regex, item) for regex, item in zip(regexes, the_list)])


def _write_blank_count(path):
    with open(os.path.join(path, "count.pkl"), "wb") as f:
        pickle.dump(0, f)


def assert_expected_failure_behavior(recon_job, config_fn, instance, temp_dir, execution_config):
    num_dynamic_steps = 3
    _write_blank_count(temp_dir)
    result = execute_job(
        recon_job,
        instance,
        # Only allow one dynamic step to pass
        run_config={**config_fn(temp_dir, 1, num_dynamic_steps), **execution_config},
    )
    assert not result.success
    assert len(result.get_step_success_events()) == 2
    assert _regexes_match(
        [r"source", r"mapped_op\[\d\]"],
        [event.step_key for event in result.get_step_success_events()],
    )
    assert len(result.get_failed_step_keys()) == 2
    assert _regexes_match(
        [r"mapped_op\[\d\]", r"mapped_op\[\d\]"],
        list(result.get_failed_step_keys()),
    )
    _write_blank_count(temp_dir)
    retry_result = execute_job(
        recon_job,
        instance,
        # Allows all dynamic steps to pass
        run_config={**config_fn(temp_dir, num_dynamic_steps, num_dynamic_steps), **execution_config},
        reexecution_options=ReexecutionOptions.from_failure(run_id=result.run_id, instance=instance),
    )
    assert retry_result.success
    assert len(retry_result.get_step_success_events()) == 3
    assert _regexes_match(
        [r"mapped_op\[\d\]", r"mapped_op\[\d\]", "consumer"],
        [event.step_key for event in retry_result.get_step_success_events()],
    )


# -- tests -----------------------------------------------------------------------------


@executors()
def test_diamond_multi_execution(executor, instance, run_config):
    with execute_job(recon(define_diamond_job, executor), instance=instance, run_config=run_config(executor)) as result:
        assert result.success
        assert result.output_for_node("adder") == 11


@executors()
def test_error_job_multiprocess(executor, instance, run_config):
    with execute_job(recon(define_error_job, executor), instance=instance, run_config=run_config(executor)) as result:
        assert not result.success


@executors()
def test_mem_storage_error_job_multiprocess(executor, instance, run_config):
    with pytest.raises(
        DagsterUnmetExecutorRequirementsError,
        match=(
            "your job includes op outputs that will not be stored somewhere where other"
            " processes can retrieve them."
        ),
    ):
        execute_job(
            recon(define_in_mem_job, executor),
            instance=instance,
            run_config=run_config(executor),
            raise_on_error=False,
        )


@executors()
def test_invalid_instance(executor, run_config):
    with execute_job(
        recon(define_diamond_job, executor),
        instance=DagsterInstance.ephemeral(),
        run_config=run_config(executor),
        raise_on_error=False,
    ) as result:
        assert not result.success
        assert len(result.all_events) == 1
        assert result.all_events[0].is_failure
        assert result.all_events[0].job_failure_data.error.cls_name == "DagsterUnmetExecutorRequirementsError"
        assert "non-ephemeral instance" in result.all_events[0].job_failure_data.error.message


@executors()
def test_op_selection(executor, instance, run_config):
    with execute_job(
        recon(define_diamond_job, executor),
        instance=instance,
        run_config=run_config(executor, JUST_ADDER_CONFIG),
        op_selection=["adder"],
    ) as result:
        assert result.success
        assert result.output_for_node("adder") == 2


@executors()
def test_separate_sub_dags(executor, instance, run_config, tmp_path):
    filename = str(tmp_path / "written")
    with execute_job(
        recon(define_subdag_job, executor),
        run_config=run_config(
            executor,
            {"ops": {"waiter": {"config": filename}, "writer": {"config": filename}}},
            max_concurrent=2,
        ),
        instance=instance,
    ) as result:
        assert result.success

        # this test is to ensure that the chain of noop -> noop -> noop -> writer is not blocked by waiter
        order = [str(event.node_handle) for event in result.all_events if event.is_step_success]

        # the writer and waiter my finish in different orders so just ensure the proceeding chain
        assert order[0:3] == ["noop_1", "noop_2", "noop_3"]


IN_MEMORY_EVENT_LOG = """
event_log_storage:
  module: dagster._core.storage.event_log
  class: InMemoryEventLogStorage
"""


@executors()
def test_ephemeral_event_log(executor, instance_with_event_log, run_config):
    # override event log to in memory
    instance = instance_with_event_log(IN_MEMORY_EVENT_LOG)
    with execute_job(recon(define_diamond_job, executor), instance=instance, run_config=run_config(executor)) as result:
        assert result.success
        assert result.output_for_node("adder") == 11


@executors()
def test_failure_multiprocessing(executor, instance, run_config):
    with execute_job(
        recon(define_failure_job, executor), instance=instance, run_config=run_config(executor), raise_on_error=False
    ) as result:
        assert not result.success
        failure_data = result.failure_data_for_node("throw")
        assert failure_data
        assert failure_data.error.cls_name == "Failure"

        # hard coded
        assert failure_data.user_failure_data.label == "intentional-failure"
        # from Failure
        assert failure_data.user_failure_data.description == "it Failure"
        assert failure_data.user_failure_data.metadata["label"] == MetadataValue.text("text")


@executors()
def test_crash_multiprocessing(executor, instance, run_config):
    with execute_job(
        recon(define_sys_exit_job, executor), instance=instance, run_config=run_config(executor), raise_on_error=False
    ) as result:
        assert not result.success
        failure_data = result.failure_data_for_node("sys_exit")
        assert failure_data
        assert failure_data.error.cls_name == "ChildProcessCrashException"

        assert failure_data.user_failure_data is None

        capture_events = [event for event in result.all_events if event.event_type == DagsterEventType.LOGS_CAPTURED]
        event = capture_events[0]
        assert isinstance(instance.compute_log_manager, ComputeLogManager)
        log_key = instance.compute_log_manager.build_log_key_for_run(result.run_id, event.logs_captured_data.file_key)
        log_data = instance.compute_log_manager.get_log_data(log_key)

        assert "Crashy output to stdout" in log_data.stdout.decode("utf-8")


@executors()
def test_crash_hard_multiprocessing(executor, instance, run_config):
    with execute_job(
        recon(define_segfault_job, executor), instance=instance, run_config=run_config(executor), raise_on_error=False
    ) as result:
        assert not result.success
        failure_data = result.failure_data_for_node("segfault_op")
        assert failure_data
        assert failure_data.error.cls_name == "ChildProcessCrashException"

        assert failure_data.user_failure_data is None


# Tests retry behavior when a job fails because of resource initialization of a dynamic
# step (the original parametrizes this with an op-failure variant too). The steps share a
# counter file; as retry_jobs.py says, races on it are avoided with max_concurrent 1.
@executors()
def test_dynamic_failure_retry(executor, instance, run_config, tmp_path):
    assert_expected_failure_behavior(
        recon(get_dynamic_job_resource_init_failure, executor),
        resource_init_failure_config,
        instance,
        str(tmp_path),
        run_config(executor, max_concurrent=1),
    )


