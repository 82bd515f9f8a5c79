"""Ported from dagster-io/dagster
python_modules/dagster/dagster_tests/definitions_tests/decorators_tests/test_asset_check_decorator.py
(executing assets with their checks: evaluations and their planned events, checks in their
own step, a check on an asset materialized by an earlier run, blocking checks that skip
downstream assets).

The original's `execute_assets_and_checks` builds Definitions with one asset job and runs it
with `execute_in_process`; here the same job is built by a module-level factory for
`multiprocess_executor` and for `gravity_executor` and run with `execute_job` on the on-disk
instance (the original's DagsterInstance.ephemeral() cannot serve an out-of-process
executor). test_check_doesnt_execute_if_asset_fails records whether the check ran through
`support.record`.

Left out: the definition-only tests (specs, names, descriptions, prefixes, additional_ins
validation, decorator errors), test_check_decorator_unexpected_asset_key (raise_on_error=True
re-raises the user error only in-process), test_asset_check_input and
test_asset_check_additional_ins (input loading, as in test_execute_asset_and_check's check),
test_execute_check_and_unrelated_asset (as test_execute_check_without_asset),
and the further blocking / multi-check / partition variants (the same executor path as the
ones here).
"""

import pytest
from dagster import (
    AssetCheckExecutionContext,
    AssetCheckKey,
    AssetCheckResult,
    AssetKey,
    AssetSelection,
    DagsterEventType,
    Definitions,
    JobDefinition,
    MetadataValue,
    asset,
    asset_check,
    define_asset_job,
    execute_job,
)

from tests.ported.support import executor_def, executors, recon, record, recorded

pytestmark = [pytest.mark.slow, pytest.mark.executor]


def _job(executor: str, assets=None, asset_checks=None) -> JobDefinition:
    """The original's execute_assets_and_checks, minus the execution."""
    defs = Definitions(
        assets=assets,
        asset_checks=asset_checks,
        jobs=[
            define_asset_job(
                "job1",
                selection=AssetSelection.all() | AssetSelection.all_asset_checks(),
                executor_def=executor_def(executor),
            )
        ],
    )
    return defs.resolve_job_def("job1")


def define_asset_and_check_job(executor: str, which: str = "both") -> JobDefinition:
    @asset(name="asset1")
    def asset1() -> None: ...

    @asset_check(asset=asset1, description="desc")
    def check1(context: AssetCheckExecutionContext):
        assert context.op_execution_context.asset_key_for_input("asset1") == asset1.key
        return AssetCheckResult(
            asset_key=asset1.key,
            check_name="check1",
            passed=True,
            metadata={"foo": "bar"},
        )

    if which == "asset":
        return _job(executor, assets=[asset1])
    if which == "check":
        return _job(executor, asset_checks=[check1])
    return _job(executor, assets=[asset1], asset_checks=[check1])


def define_check_without_asset_job(executor: str) -> JobDefinition:
    @asset_check(asset="asset1", description="desc")
    def check1() -> AssetCheckResult:
        return AssetCheckResult(passed=True, metadata={"foo": "bar"})

    return _job(executor, asset_checks=[check1])


def define_check_after_failed_asset_job(executor: str) -> JobDefinition:
    @asset
    def asset1() -> None:
        raise ValueError()

    @asset_check(asset=asset1)
    def asset1_check(context: AssetCheckExecutionContext) -> AssetCheckResult:
        record(context.instance, "check_executed", True)
        raise Exception("Should not execute")

    return _job(executor, assets=[asset1], asset_checks=[asset1_check])


def define_separate_op_downstream_job(executor: str, blocking: bool = False) -> JobDefinition:
    @asset
    def asset1() -> None: ...

    if blocking:

        @asset_check(asset=asset1, blocking=True)
        def check1(context) -> AssetCheckResult:
            return AssetCheckResult(passed=False)

        checks = [check1]
    else:

        @asset_check(asset=asset1)
        def asset1_check(context) -> AssetCheckResult:
            return AssetCheckResult(passed=False)

        checks = [asset1_check]

    @asset(deps=[asset1])
    def asset2() -> None: ...

    return _job(executor, assets=[asset1, asset2], asset_checks=checks)


def error_for_node(result, node_name: str):
    failure_data = result.failure_data_for_node(node_name)
    assert failure_data
    assert failure_data.error
    return failure_data.error


@executors()
def test_execute_asset_and_check(executor, instance, run_config):
    asset1_key = AssetKey("asset1")
    result = execute_job(recon(define_asset_and_check_job, executor), instance, run_config=run_config(executor))
    assert result.success

    check_evals = result.get_asset_check_evaluations()
    assert len(check_evals) == 1
    check_eval = check_evals[0]
    assert check_eval.asset_key == asset1_key
    assert check_eval.check_name == "check1"
    assert check_eval.metadata == {"foo": MetadataValue.text("bar")}

    assert check_eval.target_materialization_data is not None
    assert check_eval.target_materialization_data.run_id == result.run_id
    materialization_record = instance.fetch_materializations(asset1_key, limit=1).records[0]
    assert check_eval.target_materialization_data.storage_id == materialization_record.storage_id
    assert check_eval.target_materialization_data.timestamp == materialization_record.timestamp

    assert (
        len(instance.get_records_for_run(result.run_id, of_type=DagsterEventType.ASSET_CHECK_EVALUATION_PLANNED).records)
        == 1
    )
    assert len(instance.get_records_for_run(result.run_id, of_type=DagsterEventType.ASSET_CHECK_EVALUATION).records) == 1
    assert (
        len(
            instance.event_log_storage.get_asset_check_execution_history(
                AssetCheckKey(asset_key=AssetKey("asset1"), name="check1"), limit=10
            )
        )
        == 1
    )


@executors()
def test_execute_check_without_asset(executor, instance, run_config):
    result = execute_job(recon(define_check_without_asset_job, executor), instance, run_config=run_config(executor))
    assert result.success

    check_evals = result.get_asset_check_evaluations()
    assert len(check_evals) == 1
    check_eval = check_evals[0]
    assert check_eval.asset_key == AssetKey("asset1")
    assert check_eval.check_name == "check1"
    assert check_eval.metadata == {"foo": MetadataValue.text("bar")}

    assert check_eval.target_materialization_data is None


@executors()
def test_execute_check_and_asset_in_separate_run(executor, instance, run_config):
    materialize_result = execute_job(
        recon(define_asset_and_check_job, executor, "asset"), instance, run_config=run_config(executor)
    )

    result = execute_job(recon(define_asset_and_check_job, executor, "check"), instance, run_config=run_config(executor))
    assert result.success

    check_evals = result.get_asset_check_evaluations()
    assert len(check_evals) == 1
    check_eval = check_evals[0]

    assert check_eval.target_materialization_data is not None
    assert check_eval.target_materialization_data.run_id == materialize_result.run_id
    materialization_record = instance.fetch_materializations(AssetKey("asset1"), limit=1).records[0]
    assert check_eval.target_materialization_data.storage_id == materialization_record.storage_id
    assert check_eval.target_materialization_data.timestamp == materialization_record.timestamp


@executors()
def test_check_doesnt_execute_if_asset_fails(executor, instance, run_config):
    result = execute_job(
        recon(define_check_after_failed_asset_job, executor), instance, run_config=run_config(executor), raise_on_error=False
    )
    assert not result.success

    assert not recorded(instance, "check_executed")


@executors()
def test_asset_check_separate_op_downstream_still_executes(executor, instance, run_config):
    result = execute_job(recon(define_separate_op_downstream_job, executor), instance, run_config=run_config(executor))
    assert result.success

    materialization_events = result.get_asset_materialization_events()
    assert len(materialization_events) == 2

    check_evals = result.get_asset_check_evaluations()
    assert len(check_evals) == 1
    check_eval = check_evals[0]
    assert check_eval.asset_key == AssetKey("asset1")
    assert check_eval.check_name == "asset1_check"
    assert not check_eval.passed


@executors()
def test_blocking_check_skip_downstream(executor, instance, run_config):
    result = execute_job(
        recon(define_separate_op_downstream_job, executor, True),
        instance,
        run_config=run_config(executor),
        raise_on_error=False,
    )
    assert not result.success

    materialization_events = result.get_asset_materialization_events()
    assert len(materialization_events) == 1

    check_evals = result.get_asset_check_evaluations()
    assert len(check_evals) == 1
    check_eval = check_evals[0]
    assert check_eval.asset_key == AssetKey("asset1")
    assert check_eval.check_name == "check1"
    assert not check_eval.passed

    error = error_for_node(result, "asset1_check1")
    assert error.message.startswith(
        "dagster._core.errors.DagsterAssetCheckFailedError: 1 blocking asset check failed with ERROR severity:\nasset1: check1"
    )
