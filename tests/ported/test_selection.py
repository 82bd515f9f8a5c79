"""Ported from dagster-io/dagster
python_modules/dagster/dagster_tests/core_tests/selector_tests/test_execute.py (op selection,
step selection on re-execution, asset selection through a reconstructable subset; the jobs
from test_subset_selector.py in the same folder) and
python_modules/dagster/dagster_tests/asset_defs_tests/test_asset_job.py (asset subsets of an
asset job, a subset of a reconstructable asset job run through execute_run_iterator,
job config and tags kept for an asset subset).

The originals run foo_job and the asset jobs with the in-process executor (or
execute_in_process); here each runs under `multiprocess_executor` and `gravity_executor`
with the same assertions. test_subset_for_execution and test_asset_subset_for_execution
use Dagster 1.13's names for the subset API (`ReconstructableJob.get_subset`, the
`op_selection` / `asset_selection` fields) where the stored original still used
`subset_for_execution` / `solid_selection`.

Left out: test_execute_job_with_solid_selection_single_clause,
test_execute_job_with_solid_selection_multi_clauses,
test_reexecute_job_with_step_selection_single_clause and
test_execute_job_with_solid_selection_invalid (the same selections as the cases kept, or
errors raised before any executor runs), test_connected_subset, test_subset_of_asset_job and
test_subset_of_assets_job (the same kind of asset subset as test_disconnected_subset), the
selector parsing unit tests of test_subset_selector.py, and test_asset_job.py's tests that
only build jobs.
"""

from pathlib import Path

import pytest
from dagster import (
    AssetKey,
    AssetOut,
    AssetsDefinition,
    DagsterEventType,
    Definitions,
    In,
    JobDefinition,
    Nothing,
    Out,
    Output,
    ReexecutionOptions,
    asset,
    define_asset_job,
    execute_job,
    job,
    multi_asset,
    op,
    resource,
    with_resources,
)
from dagster._core.definitions.assets.graph.asset_graph import AssetGraph
from dagster._core.errors import DagsterExecutionStepNotFoundError
from dagster._core.execution.api import execute_run_iterator
from dagster._utils.warnings import disable_dagster_warnings

from tests.ported.support import RunConfigs, executor_def, executors, recon

pytestmark = [pytest.mark.slow, pytest.mark.executor]


# -- test_subset_selector.py's jobs ----------------------------------------------------


@op
def return_one():
    return 1


@op
def return_two():
    return 2


@op(ins={"num1": In(), "num2": In()})
def add_nums(num1, num2):
    return num1 + num2


@op(ins={"num": In()})
def multiply_two(num):
    return num * 2


@op(ins={"num": In()})
def add_one(num):
    return num + 1


def define_foo_job(executor: str) -> JobDefinition:
    @job(executor_def=executor_def(executor))
    def foo_job():
        """return_one ---> add_nums --> multiply_two --> add_one
        return_two --|.
        """
        add_one(multiply_two(add_nums(return_one(), return_two())))

    return foo_job


@asset
def my_asset(context):
    assert context.job_def.asset_selection_data is not None
    return 1


@asset
def asset_2(my_asset):
    return my_asset


def get_asset_selection_job(executor: str) -> JobDefinition:
    defs = Definitions(
        assets=[my_asset, asset_2],
        jobs=[define_asset_job("asset_selection_job", selection="*", executor_def=executor_def(executor))],
    )
    return defs.resolve_job_def("asset_selection_job")


# -- test_execute.py -------------------------------------------------------------------


@executors()
def test_subset_for_execution(executor, instance, run_config):
    recon_job = recon(define_foo_job, executor)
    sub_job = recon_job.get_subset(op_selection=["*add_nums"])

    assert sub_job.op_selection == {"*add_nums"}

    result = execute_job(sub_job, instance, run_config=run_config(executor))
    assert result.success
    assert set([event.step_key for event in result.all_events if event.is_step_event]) == {
        "add_nums",
        "return_one",
        "return_two",
    }


@executors()
def test_asset_subset_for_execution(executor, instance, run_config):
    recon_job = recon(get_asset_selection_job, executor)
    sub_job = recon_job.get_subset(asset_selection={AssetKey("my_asset")})
    assert sub_job.asset_selection == {AssetKey("my_asset")}

    result = execute_job(sub_job, instance, asset_selection=[AssetKey("my_asset")], run_config=run_config(executor))
    assert result.success

    materializations = result.filter_events(lambda evt: evt.is_step_materialization)
    assert len(materializations) == 1
    assert materializations[0].asset_key == AssetKey("my_asset")


@executors()
def test_reexecute_asset_subset(executor, instance, run_config):
    result = execute_job(
        recon(get_asset_selection_job, executor),
        instance,
        asset_selection=[AssetKey("my_asset")],
        run_config=run_config(executor),
    )
    assert result.success
    materializations = [event for event in result.all_events if event.is_step_materialization]
    assert len(materializations) == 1
    assert materializations[0].asset_key == AssetKey("my_asset")

    run = instance.get_run_by_id(result.run_id)
    assert run.asset_selection == {AssetKey("my_asset")}

    reexecution_result = execute_job(
        recon(get_asset_selection_job, executor),
        instance,
        reexecution_options=ReexecutionOptions(parent_run_id=result.run_id),
        run_config=run_config(executor),
    )

    assert reexecution_result.success
    materializations = reexecution_result.filter_events(lambda evt: evt.is_step_materialization)
    assert len(materializations) == 1
    assert materializations[0].asset_key == AssetKey("my_asset")
    run = instance.get_run_by_id(reexecution_result.run_id)
    assert run.asset_selection == {AssetKey("my_asset")}


@executors()
def test_reexecute_job_with_step_selection_multi_clauses(executor, instance, run_config):
    with execute_job(recon(define_foo_job, executor), instance=instance, run_config=run_config(executor)) as pipeline_result_full:
        assert pipeline_result_full.success
        assert pipeline_result_full.output_for_node("add_one") == 7
        assert len(pipeline_result_full.get_step_success_events()) == 5

    with execute_job(
        recon(define_foo_job, executor),
        instance=instance,
        run_config=run_config(executor),
        reexecution_options=ReexecutionOptions(
            parent_run_id=pipeline_result_full.run_id,
            step_selection=["return_one", "return_two", "add_nums+"],
        ),
    ) as result_multi_disjoint:
        assert result_multi_disjoint.success
        assert result_multi_disjoint.output_for_node("multiply_two") == 6

    with execute_job(
        recon(define_foo_job, executor),
        instance=instance,
        run_config=run_config(executor),
        reexecution_options=ReexecutionOptions(
            parent_run_id=pipeline_result_full.run_id,
            step_selection=["return_one++", "return_two", "add_nums+"],
        ),
    ) as result_multi_overlap:
        assert result_multi_overlap.success
        assert result_multi_overlap.output_for_node("multiply_two") == 6

    with pytest.raises(DagsterExecutionStepNotFoundError, match="Step selection refers to unknown step: a"):
        execute_job(
            recon(define_foo_job, executor),
            instance=instance,
            run_config=run_config(executor),
            reexecution_options=ReexecutionOptions(
                parent_run_id=pipeline_result_full.run_id,
                step_selection=["a", "*add_nums"],
            ),
        )

    with pytest.raises(DagsterExecutionStepNotFoundError, match="Step selection refers to unknown steps: a, b"):
        execute_job(
            recon(define_foo_job, executor),
            instance=instance,
            run_config=run_config(executor),
            reexecution_options=ReexecutionOptions(
                parent_run_id=pipeline_result_full.run_id,
                step_selection=["a+", "*b"],
            ),
        )


# -- test_asset_job.py -----------------------------------------------------------------


@multi_asset(outs={"a": AssetOut(is_required=False), "b": AssetOut(is_required=False)}, can_subset=True)
def ab(context, foo):
    assert (context.op_execution_context.selected_output_names != {"a", "b"}) == context.is_subset

    if "a" in context.op_execution_context.selected_output_names:
        yield Output(foo + 1, "a")
    if "b" in context.op_execution_context.selected_output_names:
        yield Output(foo + 2, "b")


@asset
def foo():
    return 5


@asset
def bar():
    return 10


@asset
def foo_bar(foo, bar):
    return foo + bar


@asset
def baz(foo_bar):
    return foo_bar


@asset
def unconnected():
    pass


asset_defs = [foo, ab, bar, foo_bar, baz, unconnected]


def define_foo_asset_job(executor: str, selection: str | None = None) -> JobDefinition:
    defs = Definitions(
        assets=asset_defs,
        jobs=[define_asset_job("foo", selection, executor_def=executor_def(executor))],
    )
    return defs.resolve_job_def("foo")


@executors()
def test_disconnected_subset(executor, instance, run_config):
    # The original ran in-process, one step at a time, and asserts the order of the two
    # independent steps' materializations: max_concurrent=1 keeps that order meaningful
    # (with two at once either may finish first, under either executor).
    result = execute_job(
        recon(define_foo_asset_job, executor),
        instance=instance,
        asset_selection=[AssetKey("unconnected"), AssetKey("bar")],
        run_config=run_config(executor, max_concurrent=1),
    )
    materialization_events = [event for event in result.all_events if event.is_step_materialization]

    assert len(materialization_events) == 2
    assert materialization_events[0].asset_key == AssetKey("bar")
    assert materialization_events[1].asset_key == AssetKey("unconnected")


@resource
def my_resource():
    return 1


@resource
def my_resource_2():
    return 1


@multi_asset(name="fivetran_sync", outs={key: AssetOut(key=AssetKey(key)) for key in ["a", "b", "c"]})
def fivetran_asset():
    return 1, 2, 3


@op(
    name="dbt",
    ins={"a": In(Nothing), "b": In(Nothing), "c": In(Nothing)},
    out={"d": Out(is_required=False), "e": Out(is_required=False), "f": Out(is_required=False)},
    required_resource_keys={"my_resource_2"},
)
def dbt_op():
    yield Output(4, "f")


dbt_asset_def = AssetsDefinition(
    keys_by_output_name={k: AssetKey(k) for k in ["d", "e", "f"]},
    keys_by_input_name={k: AssetKey(k) for k in ["a", "b", "c"]},
    node_def=dbt_op,
    can_subset=True,
    asset_deps={
        AssetKey("d"): {AssetKey("a")},
        AssetKey("e"): {AssetKey("d"), AssetKey("b")},
        AssetKey("f"): {AssetKey("d"), AssetKey("e")},
    },
)


def reconstruct_asset_job(executor: str) -> JobDefinition:
    return define_asset_job(
        "foo", selection=["a", "b", "c", "d", "e", "f"], executor_def=executor_def(executor)
    ).resolve(
        asset_graph=AssetGraph.from_assets(
            with_resources(
                [dbt_asset_def, fivetran_asset],
                resource_defs={"my_resource": my_resource, "my_resource_2": my_resource_2},
            ),
        )
    )


@executors()
def test_asset_selection_reconstructable(executor, instance, run_config):
    with disable_dagster_warnings():
        my_job = reconstruct_asset_job(executor)
        run = instance.create_run_for_job(
            job_def=my_job, asset_selection=frozenset([AssetKey("f")]), run_config=run_config(executor)
        )
        reconstructable_foo_job = recon(reconstruct_asset_job, executor).get_subset(
            asset_selection=frozenset([AssetKey("f")])
        )

        events = list(execute_run_iterator(reconstructable_foo_job, run, instance=instance))
        assert len([event for event in events if event.is_job_success]) == 1

        materialization_planned = list(
            instance.get_records_for_run(
                run_id=run.run_id,
                of_type=DagsterEventType.ASSET_MATERIALIZATION_PLANNED,
            ).records
        )
        assert len(materialization_planned) == 1


def define_preserved_config_job(executor: str, sites_file: str) -> JobDefinition:
    @op(config_schema={"foo": int})
    def one(context):
        assert context.op_execution_context.op_config["foo"] == 1

    asset_one = AssetsDefinition.from_op(one)

    @asset(config_schema={"bar": int})
    def two(context, one):
        assert context.op_execution_context.op_config["bar"] == 2

    @asset(config_schema={"baz": int})
    def three(context, two):
        assert context.op_execution_context.op_config["baz"] == 3

    # The job's config is its whole run config, so it carries the executor's config too.
    execution = RunConfigs(Path(sites_file)).execution(executor)
    return define_asset_job(
        "foo_job",
        config={
            "ops": {
                "one": {"config": {"foo": 1}},
                "two": {"config": {"bar": 2}},
                "three": {"config": {"baz": 3}},
            },
            **execution,
        },
        description="my cool job",
        tags={"yay": 1},
        executor_def=executor_def(executor),
    ).resolve(asset_graph=AssetGraph.from_assets([asset_one, two, three]))


@executors()
def test_job_preserved_with_asset_subset(executor, instance, sites_file):
    # Assert that default config is used for asset subset
    result = execute_job(
        recon(define_preserved_config_job, executor, str(sites_file)), instance, asset_selection=[AssetKey("one")]
    )
    assert result.success
    assert result.dagster_run.tags == {"yay": "1"}
