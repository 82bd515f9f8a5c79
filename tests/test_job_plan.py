"""`gravity plan` logic: the executor's decisions replayed over a job without running it."""

from __future__ import annotations

from dagster import DagsterInstance

from dagster_gravity.job_plan import RUN_TIME, format_plan, load_job, plan_job
from dagster_gravity.topology import Topology
from tests.support import jobs


def _plan(tmp_path, job_name, **kwargs):
    topology = Topology.from_yaml(jobs.write_test_sites(tmp_path))
    with DagsterInstance.ephemeral() as instance:
        return {s.step_key: s for s in plan_job(load_job("tests.support.jobs", job_name), instance, topology, **kwargs)}


def test_plan_follows_data_pins_and_residency(tmp_path):
    steps = _plan(tmp_path, "locality_job")
    assert steps["made_at_beta"].site == "beta"
    assert steps["follows_beta"].site == "beta"  # follows where its upstream would run
    assert steps["reads_landed"].site == "gamma"  # its 5 GB input is at gamma
    assert all(s.bytes_moved == 0 for s in steps.values())
    assert _plan(tmp_path, "requirements_job")["needs_gpu"].pool == "alpha/gpu"


def test_plan_places_a_step_in_its_outputs_residency_zone(tmp_path):
    step = _plan(tmp_path, "output_residency_job")["eu_only_output"]
    assert step.site == "gamma" and step.bytes_moved == 0 and step.moves == ()
    assert "output eu_only_output (residency eu)" in step.reason
    blocked = _plan(tmp_path, "output_residency_job", disabled_pools=["gamma"])["eu_only_output"]
    assert blocked.pool is None and "may not leave zone 'eu'" in blocked.reason


def test_plan_says_what_cannot_run_and_what_would_move(tmp_path):
    blocked = _plan(tmp_path, "residency_job", disabled_pools=["gamma"])["eu_report"]
    assert blocked.pool is None and "may not leave zone 'eu'" in blocked.reason
    # With alpha out of service the 100 GB input at alpha has to move.
    moved = _plan(tmp_path, "delay_job", disabled_pools=["alpha"])["slow_left"]
    assert moved.site == "beta" and moved.bytes_moved == 100 * jobs.GB
    assert moved.moves == ("big_at_alpha (100 GB) from alpha",)
    text = format_plan([moved, blocked])
    assert "CANNOT RUN" in text and "100 GB" in text


def test_plan_reports_bad_tags_and_ignores_unknown_sites(tmp_path):
    from dagster import AssetMaterialization

    steps = _plan(tmp_path, "bad_tag_job")
    assert steps["bad_gpu_tag"].pool is None and "'two'" in steps["bad_gpu_tag"].reason
    assert steps["pinned_gamma"].site == "gamma"

    topology = Topology.from_yaml(jobs.write_test_sites(tmp_path))
    with DagsterInstance.ephemeral() as instance:
        instance.report_runless_asset_event(
            AssetMaterialization("made_at_beta", metadata={"gravity/site": "old-site", "gravity/replicas": ["gamma"]})
        )
        (step,) = plan_job(load_job("tests.support.jobs", "follows_only_job"), instance, topology)
    assert step.site == "gamma" and "site 'old-site' is not in sites.yaml; ignored" in step.reason


def test_plan_leaves_dynamic_steps_to_run_time(tmp_path):
    steps = _plan(tmp_path, "dynamic_job")
    assert steps["fan_out"].site == "alpha"
    assert steps["square[?]"].pool == RUN_TIME


def test_plan_command_prints_the_table(tmp_path, capsys, monkeypatch):
    import argparse

    from dagster_gravity.job_plan import add_plan_command

    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    sites = jobs.write_test_sites(tmp_path)
    parser = argparse.ArgumentParser(prog="gravity")
    add_plan_command(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["plan", "-m", "tests.support.jobs", "-j", "residency_job", "--sites", str(sites), "--disable", "gamma"])
    assert args.func(args) == 1  # a step that cannot run anywhere makes the command fail
    out = capsys.readouterr().out
    assert "eu_report" in out and "CANNOT RUN" in out and "zone 'eu'" in out


def test_plan_command_prints_the_simulated_run_beside_a_location_blind_one(tmp_path, capsys, monkeypatch):
    import argparse

    from dagster_gravity.job_plan import add_plan_command
    from dagster_gravity.step_durations import record_durations

    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    sites = jobs.write_test_sites(tmp_path)
    parser = argparse.ArgumentParser(prog="gravity")
    add_plan_command(parser.add_subparsers(dest="command"))
    # two steps read 300 MB at alpha, whose one slot (its gpu pool disabled) they share
    args = parser.parse_args(["plan", "-m", "tests.support.jobs", "-j", "wait_or_move_job", "--sites", str(sites), "--disable", "alpha/gpu"])

    def plan_output():
        assert args.func(args) == 0
        out = capsys.readouterr().out
        assert "simulated run" in out and "location-blind" in out
        return out

    # unknown durations (0.5 s each): waiting 0.5 s for alpha beats moving 300 MB (2.4 s)
    out = plan_output()
    assert "location-blind / gravity: 2.93x makespan, 300 MB vs nothing moved" in out, out
    assert "2 of 2 steps have no recorded duration: each is expected to take 0.5 s" in out, out
    # once the instance has seen each step take 10 s, moving 300 MB beats waiting 10 s
    with DagsterInstance.get() as instance:
        record_durations(instance, "wait_or_move_job", {"mid_left": 10.0, "mid_right": 10.0})
    out = plan_output()
    assert "gravity moves 300 MB alpha -> beta" in out, out
    assert "no recorded duration" not in out, out


def _cli(capsys, *argv):
    from dagster_gravity.cli import main

    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_plan_command_errors_are_messages_not_tracebacks(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    sites = str(jobs.write_test_sites(tmp_path))
    base = ["plan", "-m", "tests.support.jobs", "-j", "locality_job"]

    code, out, err = _cli(capsys, *base, "--sites", str(tmp_path / "missing.yaml"))
    assert code == 2 and "missing.yaml" in err and "an existing sites file" in err and "Traceback" not in err

    code, out, err = _cli(capsys, "plan", "-m", "tests.support.jobs", "-j", "no_such_job", "--sites", sites)
    assert code == 2 and "no job named 'no_such_job'" in err

    code, out, err = _cli(capsys, "plan", "-m", "no_such_module", "-j", "x", "--sites", sites)
    assert code == 2 and "cannot import module 'no_such_module'" in err

    code, out, err = _cli(capsys, *base, "--sites", sites, "--objective", "bogus")
    assert code == 2 and "objective: got 'bogus'" in err and "'time', 'cost'" in err

    code, out, err = _cli(capsys, *base, "--sites", sites, "--disable", "old-site")
    assert code == 2 and "'old-site' is neither a site nor a pool" in err

    code, out, err = _cli(capsys, *base, "--sites", sites)
    assert code == 0 and "made_at_beta" in out and err == ""
