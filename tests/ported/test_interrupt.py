"""Ported from dagster-io/dagster
python_modules/dagster/dagster_tests/execution_tests/misc_execution_tests/test_interrupt.py
(a SIGINT to the run process while steps run; resource teardown on interrupt; an interrupted
step retried by its RetryPolicy).

test_interrupt_multiproc runs as in the original, once per executor (max_concurrent 4 for
both). test_interrupt_resource_teardown and test_retry_policy ran in-process there; here
they run under `multiprocess_executor` and `gravity_executor`, the resource records its
set-up and clean-up through `support.record`, and for test_retry_policy the signal goes to
the process that runs the step (the op writes its pid, as in the original).

Left out: test_single_proc_interrupt (in-process only) and the capture_interrupts /
raise_execution_interrupts unit tests (they test Dagster's signal helpers, not an executor).
"""

import os
import signal
import time
from threading import Thread

import pytest
from dagster import DagsterEventType, Failure, Field, JobDefinition, RetryPolicy, String, execute_job, job, op, resource
from dagster._core.execution.api import execute_run_iterator
from dagster._utils import send_interrupt

from tests.ported.support import executor_def, executors, recon, record, recorded

pytestmark = [pytest.mark.slow, pytest.mark.executor]


def _send_kbd_int(temp_files):
    while not all([os.path.exists(temp_file) for temp_file in temp_files]):
        time.sleep(0.1)
    send_interrupt()


@op(config_schema={"tempfile": Field(String)})
def write_a_file(context):
    with open(context.op_config["tempfile"], "w", encoding="utf8") as ff:
        ff.write("yup")

    start_time = time.time()

    while (time.time() - start_time) < 30:
        time.sleep(0.1)
    raise Exception("Timed out")


@op
def should_not_start(_context):
    assert False


def define_write_files_job(executor: str) -> JobDefinition:
    @job(executor_def=executor_def(executor))
    def write_files_job():
        write_a_file.alias("write_1")()
        write_a_file.alias("write_2")()
        write_a_file.alias("write_3")()
        write_a_file.alias("write_4")()
        should_not_start.alias("x_should_not_start")()
        should_not_start.alias("y_should_not_start")()
        should_not_start.alias("z_should_not_start")()

    return write_files_job


@executors()
def test_interrupt_multiproc(executor, instance, run_config, tmp_path):
    tempdir = str(tmp_path)
    file_1 = os.path.join(tempdir, "file_1")
    file_2 = os.path.join(tempdir, "file_2")
    file_3 = os.path.join(tempdir, "file_3")
    file_4 = os.path.join(tempdir, "file_4")

    # launch a thread that waits until the file is written to launch an interrupt
    Thread(target=_send_kbd_int, args=([file_1, file_2, file_3, file_4],)).start()

    # launch a job that writes a file and loops infinitely
    # next time the launched thread wakes up it will send a keyboard
    # interrupt
    with execute_job(
        recon(define_write_files_job, executor),
        run_config=run_config(
            executor,
            {
                "ops": {
                    "write_1": {"config": {"tempfile": file_1}},
                    "write_2": {"config": {"tempfile": file_2}},
                    "write_3": {"config": {"tempfile": file_3}},
                    "write_4": {"config": {"tempfile": file_4}},
                }
            },
            max_concurrent=4,
        ),
        instance=instance,
    ) as result:
        assert [event.event_type for event in result.all_events].count(DagsterEventType.STEP_FAILURE) == 4
        assert DagsterEventType.PIPELINE_FAILURE in [event.event_type for event in result.all_events]


@resource
def resource_a(init_context):
    try:
        record(init_context.instance, "called", "A")
        yield "A"
    finally:
        record(init_context.instance, "cleaned", "A")


@op(config_schema={"tempfile": Field(String)}, required_resource_keys={"a"})
def write_a_file_resource_op(context):
    with open(context.op_config["tempfile"], "w", encoding="utf8") as ff:
        ff.write("yup")

    while True:
        time.sleep(0.1)


def define_write_a_file_resource_job(executor: str) -> JobDefinition:
    @job(resource_defs={"a": resource_a}, executor_def=executor_def(executor))
    def write_a_file_job():
        write_a_file_resource_op()

    return write_a_file_job


@executors()
def test_interrupt_resource_teardown(executor, instance, run_config, tmp_path):
    success_tempfile = str(tmp_path / "success")
    # launch a thread the waits until the file is written to launch an interrupt
    Thread(target=_send_kbd_int, args=([success_tempfile],)).start()

    dagster_run = instance.create_run_for_job(
        define_write_a_file_resource_job(executor),
        run_config=run_config(
            executor, {"ops": {"write_a_file_resource_op": {"config": {"tempfile": success_tempfile}}}}
        ),
    )

    results = []
    # launch a pipeline that writes a file and loops infinitely
    # next time the launched thread wakes up it will send an interrupt
    for event in execute_run_iterator(recon(define_write_a_file_resource_job, executor), dagster_run, instance=instance):
        results.append(event.event_type)

    assert DagsterEventType.STEP_FAILURE in results
    assert DagsterEventType.PIPELINE_FAILURE in results
    assert "A" in recorded(instance, "cleaned")


@op(config_schema={"path": str})
def write_and_spin_if_missing(context):
    target = context.op_config["path"]
    if os.path.exists(target):
        return

    with open(target, "w", encoding="utf8") as ff:
        ff.write(str(os.getpid()))

    start_time = time.time()

    while (time.time() - start_time) < 3:
        time.sleep(0.1)

    os.remove(target)
    raise Failure("Timed out, file removed")


def define_policy_job(executor: str) -> JobDefinition:
    @job(op_retry_policy=RetryPolicy(max_retries=1), executor_def=executor_def(executor))
    def policy_job():
        write_and_spin_if_missing()

    return policy_job


@executors()
def test_retry_policy(executor, instance, run_config, tmp_path):
    """Start a thread which will interrupt the subprocess after it writes the file.
    On the retry the run will succeed since the op returns if the file already exists.
    """

    def _send_int(path):
        pid = None
        while True:
            if os.path.exists(path):
                with open(path, encoding="utf8") as f:
                    pid_str = f.read()
                    if pid_str:
                        pid = int(pid_str)
                        break

            time.sleep(0.05)

        os.kill(pid, signal.SIGINT)

    path = os.path.join(str(tmp_path), "target.tmp")
    Thread(target=_send_int, args=(path,)).start()
    result = execute_job(
        recon(define_policy_job, executor),
        instance,
        run_config=run_config(executor, {"ops": {"write_and_spin_if_missing": {"config": {"path": path}}}}),
    )
    assert result.success
