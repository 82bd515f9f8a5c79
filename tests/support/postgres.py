"""A real PostgreSQL server for tests: Debian's `postgresql` binaries, started by the test.

`start_postgres()` runs `initdb` and `postgres` from /usr/lib/postgresql/<version>/bin in a
fresh temporary directory (data dir and Unix socket dir both there), listening on a free
port of 127.0.0.1 only, with password authentication over TCP, and creates one database.
`Postgres.stop()` stops the postmaster by its pid: SIGINT (PostgreSQL's "fast" shutdown),
a grace period, then SIGKILL, and removes the directory.

initdb and postgres refuse to run as root, so as root (CI, `make test`) both run as the
package's unprivileged `postgres` system user through `runuser -u postgres --`; as any other
user they run as that user. `make test` installs the package when the binaries are missing
(tests/support/install_postgres.sh).

The pytest fixture `postgres` is module scoped: one server per test module that uses it.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.ports import free_port

BIN_GLOB = "/usr/lib/postgresql/*/bin"
SYSTEM_USER = "postgres"  # the Debian package's unprivileged user
SUPERUSER = "gravity"  # the database superuser initdb creates
PASSWORD = "gravity-test-password"
DATABASE = "gravity_dagster"
PASSWORD_ENV = "DAGSTER_PG_PASSWORD"  # what dagster_yaml() names for the password


def postgres_bin_dir() -> Path:
    """The newest /usr/lib/postgresql/<version>/bin holding initdb and postgres."""
    found = [Path(d) for d in glob.glob(BIN_GLOB) if (Path(d) / "initdb").exists() and (Path(d) / "postgres").exists()]
    if not found:
        raise RuntimeError(
            f"PostgreSQL server binaries not found: expected initdb and postgres under {BIN_GLOB}; "
            "`make test` installs them (tests/support/install_postgres.sh), or run "
            "`apt-get install -y postgresql`"
        )
    return max(found, key=lambda d: int(d.parent.name) if d.parent.name.isdigit() else 0)


@dataclass
class Postgres:
    workdir: Path
    port: int
    process: subprocess.Popen  # `runuser ... postgres` as root, else the postmaster itself
    log_path: Path
    host: str = "127.0.0.1"
    username: str = SUPERUSER
    password: str = PASSWORD
    db_name: str = DATABASE
    stopped_pid: int | None = None  # the postmaster `stop()` signalled

    @property
    def data_dir(self) -> Path:
        return self.workdir / "data"

    def postmaster_pid(self) -> int | None:
        """The first line of the data dir's postmaster.pid (absent once it has stopped)."""
        try:
            return int((self.data_dir / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return None

    def connect(self, db_name: str | None = None, timeout_s: int = 5):
        import psycopg2

        return psycopg2.connect(
            host=self.host, port=self.port, user=self.username, password=self.password,
            dbname=db_name or self.db_name, connect_timeout=timeout_s,
        )

    def dagster_yaml(self, password_env: str = PASSWORD_ENV) -> str:
        """A dagster.yaml whose run, event log and schedule storage are this database
        (dagster-postgres); the password is read from `$password_env` in each process."""
        return (
            "telemetry:\n"
            "  enabled: false\n"
            "storage:\n"
            "  postgres:\n"
            "    postgres_db:\n"
            f"      hostname: {self.host}\n"
            f"      port: {self.port}\n"
            f"      username: {self.username}\n"
            f"      password: {{env: {password_env}}}\n"
            f"      db_name: {self.db_name}\n"
            # SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3, which dagster-postgres
            # does not install (it depends on psycopg2-binary): name the driver it has.
            "      scheme: postgresql+psycopg2\n"
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:] if self.log_path.exists() else "(no log)"

    def stop(self, grace_s: float = 10.0) -> None:
        """SIGINT to the postmaster (fast shutdown: ends sessions, checkpoints, exits), then
        SIGKILL if it is still there after `grace_s`; reaps our child and removes the dir."""
        pid = self.postmaster_pid() or (self.process.pid if self.process.poll() is None else None)
        self.stopped_pid = pid
        if pid is not None:
            _signal(pid, signal.SIGINT)
            if not _wait_gone(pid, grace_s):
                _signal(pid, signal.SIGKILL)
                _wait_gone(pid, 5.0)
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:  # runuser outlived its postmaster: should not happen
            self.process.kill()
            self.process.wait(timeout=5)
        shutil.rmtree(self.workdir, ignore_errors=True)


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _wait_gone(pid: int, timeout_s: float) -> bool:
    """Whether `pid` exited within `timeout_s` (a zombie child of runuser counts as gone)."""
    import psutil

    try:
        psutil.Process(pid).wait(timeout=timeout_s)
        return True
    except psutil.NoSuchProcess:
        return True
    except psutil.TimeoutExpired:
        return False


def _as_server_user(argv: list[str]) -> list[str]:
    return ["runuser", "-u", SYSTEM_USER, "--", *argv] if os.geteuid() == 0 else argv


def start_postgres(timeout_s: float = 30.0, attempts: int = 3) -> Postgres:
    """initdb + postgres in a new temporary directory; waits until the database exists."""
    bin_dir = postgres_bin_dir()
    # Not under pytest's tmp_path: that is private to root (0700), and the server user must
    # reach its data dir.
    workdir = Path(tempfile.mkdtemp(prefix="gravity-postgres-"))
    try:
        if os.geteuid() == 0:
            user = pwd.getpwnam(SYSTEM_USER)
            os.chown(workdir, user.pw_uid, user.pw_gid)
        pwfile = workdir / "pwfile"
        pwfile.write_text(PASSWORD + "\n")
        if os.geteuid() == 0:
            os.chown(pwfile, user.pw_uid, user.pw_gid)
        done = subprocess.run(
            _as_server_user([
                str(bin_dir / "initdb"), "-D", str(workdir / "data"), "-U", SUPERUSER,
                f"--pwfile={pwfile}", "--auth-local=trust", "--auth-host=scram-sha-256",
                "--encoding=UTF8", "--locale=C", "--no-sync", "--no-instructions",
            ]),
            capture_output=True, text=True, timeout=120,
        )
        pwfile.unlink()
        if done.returncode != 0:
            raise RuntimeError(f"initdb exited with {done.returncode}: {(done.stdout + done.stderr)[-3000:]}")
        last_error = ""
        for _ in range(attempts):  # a free port can be taken between choosing and binding it
            server = _start_server(bin_dir, workdir, free_port())
            try:
                _wait_ready(server, timeout_s)
            except _PortTaken as exc:
                last_error = str(exc)
                server.process.wait(timeout=10)
                continue
            except BaseException:
                server.stop()
                raise
            try:
                _create_database(server)
            except BaseException:
                server.stop()
                raise
            return server
        raise RuntimeError(f"postgres could not bind a free port in {attempts} attempts: {last_error}")
    except BaseException:
        shutil.rmtree(workdir, ignore_errors=True)
        raise


class _PortTaken(RuntimeError):
    pass


def _start_server(bin_dir: Path, workdir: Path, port: int) -> Postgres:
    log_path = workdir / f"postgres-{port}.log"
    log = open(log_path, "wb")
    try:
        process = subprocess.Popen(
            _as_server_user([
                str(bin_dir / "postgres"), "-D", str(workdir / "data"), "-p", str(port),
                "-c", "listen_addresses=127.0.0.1",
                "-c", f"unix_socket_directories={workdir}",
                # A throwaway test database: durability buys nothing and costs seconds.
                "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
            ]),
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
    finally:
        log.close()
    return Postgres(workdir=workdir, port=port, process=process, log_path=log_path)


def _wait_ready(server: Postgres, timeout_s: float) -> None:
    import psycopg2

    deadline = time.monotonic() + timeout_s
    while True:
        if server.process.poll() is not None:
            log = server.log()
            if "Address already in use" in log:
                raise _PortTaken(f"port {server.port}: {log[-500:]}")
            raise RuntimeError(f"postgres exited with {server.process.returncode}: {log}")
        try:
            server.connect("postgres", timeout_s=2).close()
            return
        except psycopg2.OperationalError as exc:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"postgres on 127.0.0.1:{server.port} did not accept connections within {timeout_s}s: "
                    f"{exc}\n{server.log()}"
                ) from None
        time.sleep(0.1)


def _create_database(server: Postgres) -> None:
    conn = server.connect("postgres")
    try:
        conn.autocommit = True  # CREATE DATABASE cannot run in a transaction
        with conn.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{server.db_name}"')
    finally:
        conn.close()


@pytest.fixture(scope="module")
def postgres():
    """A running PostgreSQL with an empty database `DATABASE`, for one test module."""
    server = start_postgres()
    try:
        yield server
    finally:
        server.stop()
    import psutil

    assert server.process.poll() is not None, f"postgres (pid {server.process.pid}) still running"
    assert server.stopped_pid is None or not psutil.pid_exists(server.stopped_pid), (
        f"postmaster pid {server.stopped_pid} still running after stop()"
    )
