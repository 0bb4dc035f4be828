"""Shared fixtures: real jobstream servers in subprocesses on 127.0.0.1.

Servers run as separate processes so tests can SIGKILL and restart them, and
so the client under test talks to them exactly as a user's would.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

START_TIMEOUT_S = 20.0
"""How long a server may take to start serving."""

TEST_SERVER_ARGS = (
    "--lease-seconds",
    "2",
    "--sweep-seconds",
    "0.2",
    "--backoff-seconds",
    "0.1",
    "--grace-seconds",
    "2",
    "--log-level",
    "WARNING",
)
"""Short leases and sweeps so expiry and retry happen within a test."""


@dataclass
class ServerProcess:
    """A jobstream server in a subprocess, restartable on the same port."""

    data_dir: Path
    handlers: tuple[str, ...] = ()
    extra_args: tuple[str, ...] = ()
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    http: bool = False
    """Also serve the HTTP face (``--http-port``), on the same port after a restart."""
    http_port: int = 0
    log_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log_path = self.data_dir.parent / f"{self.data_dir.name}-server.log"

    @property
    def target(self) -> str:
        """``127.0.0.1:PORT`` for clients."""
        return f"127.0.0.1:{self.port}"

    @property
    def http_url(self) -> str:
        """``http://127.0.0.1:HTTP_PORT`` of the HTTP face."""
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def db_path(self) -> Path:
        """The SQLite file."""
        return self.data_dir / "jobstream.db"

    @property
    def db_url(self) -> str | None:
        """The PostgreSQL URL given with ``--db``; None for the SQLite file."""
        args = list(self.extra_args)
        return args[args.index("--db") + 1] if "--db" in args else None

    def sql(self, query: str, *params: Any) -> list[tuple[Any, ...]]:
        """Rows of a read-only query on the server's database (its SQLite
        file, or the PostgreSQL schema of ``--db``); ``?`` marks parameters
        on both."""
        url = self.db_url
        if url is None:
            with closing(sqlite3.connect(self.db_path)) as conn:
                return list(conn.execute(query, params).fetchall())
        import psycopg

        with psycopg.connect(url, autocommit=True) as pg:
            return list(pg.execute(query.replace("?", "%s"), params).fetchall())

    def start(self) -> ServerProcess:
        """Starts the server (on its previous port after a restart) and waits
        until it serves."""
        port_file = self.data_dir.parent / f"{self.data_dir.name}.port"
        port_file.unlink(missing_ok=True)
        args = [
            sys.executable,
            "-m",
            "jobstream.server",
            "--port",
            str(self.port),
            "--port-file",
            str(port_file),
            "--data-dir",
            str(self.data_dir),
            *TEST_SERVER_ARGS,
            *self.extra_args,
        ]
        for module in self.handlers:
            args += ["--handlers", module]
        http_file = self.data_dir.parent / f"{self.data_dir.name}.http-port"
        if self.http:
            http_file.unlink(missing_ok=True)
            args += ["--http-port", str(self.http_port), "--http-port-file", str(http_file)]
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_TIMEOUT_S
        while not port_file.exists() or not port_file.read_text():
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited {self.proc.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"server did not start:\n{self.log()}")
            time.sleep(0.02)
        self.port = int(port_file.read_text())
        if self.http:
            # Written before the gRPC port file: the HTTP face starts first.
            self.http_port = int(http_file.read_text())
        return self

    def log(self) -> str:
        """What the server printed."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> int:
        """SIGTERM and wait for a graceful exit; returns the exit code."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode

    def restart(self) -> ServerProcess:
        """Starts again on the same port and data."""
        return self.start()


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """A factory: ``start_server(handlers=(...), extra_args=(...))`` starts a
    server with its own data directory; all are stopped after the test."""
    started: list[ServerProcess] = []

    def start(
        *,
        handlers: tuple[str, ...] = (),
        extra_args: tuple[str, ...] = (),
        name: str = "",
        http: bool = False,
    ) -> ServerProcess:
        data = tmp_path / (name or f"server{len(started)}") / "data"
        data.mkdir(parents=True)
        server = ServerProcess(data, handlers, extra_args, http=http)
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.kill()


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def db_backend(request: pytest.FixtureRequest) -> str:
    """The backend the module's shared servers run on: every end-to-end
    module runs once on SQLite and once on PostgreSQL (a module may override
    this fixture to pin one)."""
    return str(request.param)


@pytest.fixture(scope="module")
def module_db_args(db_backend: str) -> Iterator[tuple[str, ...]]:
    """Server arguments selecting the module's database: the default SQLite
    file, or a fresh PostgreSQL schema dropped after the module."""
    if db_backend == "sqlite":
        yield ()
        return
    with _fresh_schema() as url:
        yield ("--db", url)


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, module_db_args: tuple[str, ...]
) -> Iterator[ServerProcess]:
    """A server with the demo handlers running in-process, shared by a test
    module (tests keep apart by labels or ids)."""
    data = tmp_path_factory.mktemp("server") / "data"
    data.mkdir()
    proc = ServerProcess(data, handlers=("jobstream.client.demo",), extra_args=module_db_args)
    yield proc.start()
    proc.kill()


@pytest.fixture(scope="module")
def bare_server(
    tmp_path_factory: pytest.TempPathFactory, module_db_args: tuple[str, ...]
) -> Iterator[ServerProcess]:
    """A server with no in-process handlers: tests act as the worker."""
    data = tmp_path_factory.mktemp("bare") / "data"
    data.mkdir()
    proc = ServerProcess(data, extra_args=module_db_args)
    yield proc.start()
    proc.kill()


POSTGRES_URL = os.environ.get(
    "JOBSTREAM_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test"
)
"""The PostgreSQL server the PostgreSQL half of the suite runs against."""


def _admin_connect() -> Any:
    """An autocommit connection to the test database; in CI an unreachable
    database fails the test instead of skipping it."""
    import psycopg

    try:
        return psycopg.connect(POSTGRES_URL, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL at {POSTGRES_URL} is unreachable in CI: {exc}")
        pytest.skip(f"PostgreSQL at {POSTGRES_URL} is unreachable: {exc}")


@contextmanager
def _fresh_schema() -> Iterator[str]:
    """A database URL whose search_path is a new schema, dropped on exit."""
    schema = "jobstream_test_" + uuid.uuid4().hex[:12]
    with _admin_connect() as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    try:
        yield f"{POSTGRES_URL}?options=-csearch_path%3D{schema}"
    finally:
        with _admin_connect() as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A database URL whose search_path is a fresh schema, dropped afterwards,
    so runs never see each other's data."""
    with _fresh_schema() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each backend in turn: a fresh SQLite file, then a fresh PostgreSQL schema."""
    if request.param == "sqlite":
        return str(tmp_path / "jobs.db")
    return str(request.getfixturevalue("postgres_url"))


def pytest_configure(config: pytest.Config) -> None:
    """Tests spawn servers with this interpreter; keep them quiet and local."""
    os.environ.setdefault("JOBSTREAM_LOG_LEVEL", "WARNING")


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """The fault suite's table (scenario, figure, pass/fail), when any of its
    scenarios ran."""
    from faults.record import print_table

    print_table(terminalreporter)


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA, a server certificate for 127.0.0.1/localhost and a client
    certificate, all signed by the CA."""
    d = tmp_path_factory.mktemp("pki")
    _openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        "-keyout", str(d / "ca.key"), "-out", str(d / "ca.pem"), "-subj", "/CN=jobstream test CA",
    )  # fmt: skip
    for name, ext in (
        ("server", "subjectAltName=IP:127.0.0.1,DNS:localhost"),
        ("client", "extendedKeyUsage=clientAuth"),
    ):
        _openssl(
            "req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(d / f"{name}.key"),
            "-out", str(d / f"{name}.csr"), "-subj", f"/CN={name}",
        )  # fmt: skip
        (d / f"{name}.ext").write_text(ext + "\n")
        _openssl(
            "x509", "-req", "-in", str(d / f"{name}.csr"), "-CA", str(d / "ca.pem"),
            "-CAkey", str(d / "ca.key"), "-CAcreateserial", "-days", "2",
            "-out", str(d / f"{name}.pem"), "-extfile", str(d / f"{name}.ext"),
        )  # fmt: skip
    return d
