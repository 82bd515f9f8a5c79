"""`gravity sites`: the topology printed as tables or JSON, and clear errors."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from dagster_gravity.cli import build_parser, main

REPO = Path(__file__).resolve().parents[1]
SITES = str(REPO / "sites.yaml")  # the shipped topology


def test_sites_prints_sites_pools_zones_and_links(capsys):
    assert main(["sites", "--sites", SITES]) == 0
    out = capsys.readouterr().out
    for text in ("onprem-dc", "aws-us-east-1", "eu-colo", "onprem-dc/gpu (gpu, 1 slot, 2 GPUs)", "eu: eu-colo", "10G 2ms $0", "1G 30ms $0.09"):
        assert text in out, text
    matrix = out.split("links, row = from")[1].splitlines()
    row = next(line for line in matrix if line.startswith("aws-us-east-1"))
    assert row.split()[1:4] == ["10G", "2ms", "$0.02"]  # egress out of the cloud is billed


def test_sites_json(capsys):
    assert main(["sites", "--sites", SITES, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [s["name"] for s in data["sites"]] == ["onprem-dc", "aws-us-east-1", "eu-colo"]
    assert data["zones"]["eu"] == ["eu-colo"]
    link = next(l for l in data["links"] if l["from"] == "onprem-dc" and l["to"] == "aws-us-east-1")
    assert link["bandwidth_gbps"] == 10 and link["usd_per_gb"] == 0.0


def test_sites_missing_file_is_a_clear_error(tmp_path, capsys):
    assert main(["sites", "--sites", str(tmp_path / "none.yaml")]) == 2
    assert "none.yaml" in capsys.readouterr().err


def test_parser_has_sites_and_plan_and_no_command_prints_help(capsys):
    parser = build_parser()
    assert parser.parse_args(["sites"]).command == "sites"
    assert parser.parse_args(["plan", "-m", "tests.support.jobs", "-j", "locality_job"]).command == "plan"
    assert main([]) == 2
    out = capsys.readouterr().out
    assert out.startswith("usage: gravity") and "sites " in out and "plan " in out, out


@pytest.mark.slow
def test_gravity_module_entry_point_runs():
    out = subprocess.run(
        [sys.executable, "-m", "dagster_gravity.cli", "sites", "--sites", SITES], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0 and "residency zones" in out.stdout
