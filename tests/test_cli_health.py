"""`gravity sites --health`: pools started through the executor's config path, site storage checked.

Real components: the local backend, a real `dask scheduler` and `dask worker` on loopback, and
closed loopback ports standing in for an S3 endpoint and a Dask scheduler that are down.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from dagster_gravity.cli import main
from tests.support.dask_cluster import DaskCluster
from tests.support.ports import free_ports


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _local_sites(tmp_path: Path) -> Path:
    return _write(
        tmp_path / "sites.yaml",
        f"""
sites:
  - name: here
    region: local
    kind: onprem
    storage: {{kind: local, path: {tmp_path / "here"}}}
    pools: [{{name: cpu, slots: 2}}]
  - name: there
    region: local
    kind: cloud
    storage: {{kind: local, path: {tmp_path / "there"}}}
    pools: [{{name: cpu, slots: 1}}]
""",
    )


def _health(capsys, *argv: str) -> tuple[int, str]:
    rc = main(["sites", "--health", *argv])
    out = capsys.readouterr()
    return rc, out.out + out.err


def _row(text: str, first_cell: str) -> str:
    rows = [line for line in text.splitlines() if line.startswith(first_cell + " ")]
    assert rows, f"no row for {first_cell!r} in:\n{text}"
    return rows[-1]  # the health tables come after the topology table


def test_local_topology_is_healthy(tmp_path, capsys):
    (tmp_path / "here").mkdir()
    rc, text = _health(capsys, "--sites", str(_local_sites(tmp_path)))
    assert rc == 0, text
    for pool in ("here/cpu", "there/cpu"):
        assert "healthy: local workers are forked per run" in _row(text, pool)
    assert "healthy: directory" in _row(text, "here") and "writable" in _row(text, "here")
    assert "can be created" in _row(text, "there")  # not made yet, parent writable
    assert not list((tmp_path / "here").iterdir()), "the write probe must be removed"


def test_bad_startup_check_is_unhealthy_and_an_unknown_setting_is_a_config_error(tmp_path, capsys):
    config = _write(
        tmp_path / "run.yaml",
        """
execution:
  config:
    pools:
      per_site:
        here: {local: {startup_check: "no_such_module_xyz:check"}}
""",
    )
    rc, text = _health(capsys, "--sites", str(_local_sites(tmp_path)), "--config", str(config))
    assert rc == 1, text
    assert "unhealthy" in _row(text, "here/cpu") and "no_such_module_xyz:check" in _row(text, "here/cpu")
    assert _row(text, "there/cpu").split()[2] == "healthy:"

    bad = _write(tmp_path / "bad.yaml", "pools: {per_site: {there: {local: {nonsense: 1}}}}\n")
    rc = main(["sites", "--health", "--sites", str(_local_sites(tmp_path)), "--config", str(bad)])
    err = capsys.readouterr().err
    assert rc == 2 and 'unexpected config entry "nonsense"' in err and "pools:per_site:'there'" in err, err


def test_s3_site_on_a_closed_port_is_unreachable(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "gravity-test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "gravity-test-secret")
    (port,) = free_ports(1)  # nothing listens there any more
    endpoint = f"http://127.0.0.1:{port}"
    sites = _write(
        tmp_path / "sites.yaml",
        f"""
sites:
  - name: cloud
    region: us-east-1
    kind: cloud
    storage: {{kind: s3, bucket: gravity-health, endpoint_url: "{endpoint}"}}
    pools: [{{name: cpu, slots: 1}}]
""",
    )
    started = time.monotonic()
    rc, text = _health(capsys, "--sites", str(sites), "--timeout", "2")
    assert time.monotonic() - started < 15
    assert rc == 1, text
    row = _row(text, "cloud")
    assert "unhealthy" in row and "unreachable" in row and endpoint in row, row
    assert "gravity-health" in row


def test_dask_pool_on_a_closed_port_is_unhealthy(tmp_path, capsys):
    (port,) = free_ports(1)
    address = f"tcp://127.0.0.1:{port}"
    (tmp_path / "here").mkdir()
    config = _write(tmp_path / "executor.yaml", f"pools: {{per_site: {{here: {{dask: {{scheduler: '{address}'}}}}}}}}\n")
    rc, text = _health(capsys, "--sites", str(_local_sites(tmp_path)), "--config", str(config), "--timeout", "2")
    assert rc == 1, text
    row = _row(text, "here/cpu")
    assert "dask" in row and "unhealthy" in row and address in row and "unreachable" in row, row
    assert _row(text, "there/cpu").split()[2] == "healthy:"  # the local pool is unaffected


@pytest.mark.slow
@pytest.mark.dask
def test_dask_pool_health_follows_the_workers_that_declare_the_site(tmp_path, capsys):
    cluster = DaskCluster(workdir=tmp_path)
    try:
        cluster.start_scheduler()
        cluster.start_worker("here-1", "here")
        (tmp_path / "here").mkdir()
        config = _write(
            tmp_path / "run.yaml",
            f"execution: {{config: {{pools: {{default: {{dask: {{scheduler: '{cluster.address}'}}}}}}}}}}\n",
        )
        rc = main(["sites", "--health", "--json", "--sites", str(_local_sites(tmp_path)), "--config", str(config)])
        view = json.loads(capsys.readouterr().out)
    finally:
        cluster.stop()
    assert not cluster.leftover_processes()
    health = {row["pool"]: row for row in view["pool_health"]}
    assert health["here/cpu"]["healthy"] and "1 Dask worker" in health["here/cpu"]["detail"]
    assert not health["there/cpu"]["healthy"]
    assert "site-there" in health["there/cpu"]["detail"]
    assert rc == 1


def test_run_config_shape_is_accepted_and_a_bad_file_is_named(tmp_path, capsys):
    sites = str(_local_sites(tmp_path))
    run_config = _write(tmp_path / "run.yaml", "execution:\n  gravity:\n    config:\n      locality_wait: 1\n")
    rc, out = _health(capsys, "--sites", sites, "--config", str(run_config))
    assert rc == 0, out
    bad = _write(tmp_path / "bad.yaml", "[1, 2]\n")
    rc, out = _health(capsys, "--sites", sites, "--config", str(bad))
    assert rc == 2 and str(bad) in out and "expected a mapping" in out, out


def test_executor_config_is_checked_against_the_executor_schema(tmp_path, capsys):
    config = _write(tmp_path / "run.yaml", "execution: {config: {locality_wait: soon}}\n")
    rc, out = _health(capsys, "--sites", str(_local_sites(tmp_path)), "--config", str(config))
    assert rc == 2 and "locality_wait" in out and "soon" in out, out
