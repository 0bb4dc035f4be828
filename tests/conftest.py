"""Shared fixtures: real jobstream servers on 127.0.0.1, in this process or
in subprocesses.

A server in this process (``serve()`` on an event loop of its own, in a
thread) starts in a fraction of a second and is what most tests use: the
client under test still talks to it over gRPC on a real port. Several may
run at once, each with its own database and settings. A server in a
subprocess is for tests that kill it (SIGKILL, SIGTERM, SIGSTOP), restart
it, read its log or measure its memory.

Nothing of the developer's shell reaches a test: every ``JOBSTREAM_*``
variable is removed for the session, and subprocess servers get an explicit
environment without them.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

# Servers run in this process while tests fork it (pexpect's terminals):
# gRPC's fork handlers, on by default, then crash the child now and then
# (SIGSEGV before it runs anything). Nothing here uses gRPC in a forked child
# without exec, so they are turned off, before gRPC is first imported.
os.environ["GRPC_ENABLE_FORK_SUPPORT"] = "false"

if TYPE_CHECKING:
    from jobstream.server.config import ServerConfig

SERVER_THREAD_PREFIX = "jobstream-server:"
"""Names of the threads that run servers in this process."""

START_TIMEOUT_S = 20.0
"""How long a server may take to start serving."""

STOP_TIMEOUT_S = 30.0
"""How long a server in this process may take to stop."""

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

ENV_PREFIX = "JOBSTREAM_"
"""Variables with this prefix configure the server and the CLI."""

POSTGRES_URL = os.environ.get(
    "JOBSTREAM_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test"
)
"""The PostgreSQL server the PostgreSQL half of the suite runs against (read
before the session removes every ``JOBSTREAM_*`` variable)."""

BOTH_BACKENDS_MARK = "both_backends"
"""Marks a test of storage behaviour: it runs on SQLite and on PostgreSQL.
Other tests that use the ``db_backend`` fixture run on SQLite only."""


def clean_environ(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment without any ``JOBSTREAM_*`` variable, plus
    ``extra``: what servers and commands started by the tests get."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
    env.update(extra or {})
    return env


@pytest.fixture(scope="session", autouse=True)
def _no_jobstream_environment() -> Iterator[None]:
    """Removes every ``JOBSTREAM_*`` variable of the developer's shell for the
    session (servers started in this process read their fallbacks from
    ``os.environ``); puts them back afterwards."""
    saved = {k: v for k, v in os.environ.items() if k.startswith(ENV_PREFIX)}
    for key in saved:
        del os.environ[key]
    yield
    os.environ.update(saved)


@dataclass
class Server:
    """What tests need of a jobstream server, wherever it runs: its address,
    its data directory and a way to read its database."""

    data_dir: Path
    handlers: tuple[str, ...] = ()
    extra_args: tuple[str, ...] = ()
    port: int = 0

    @property
    def target(self) -> str:
        """``127.0.0.1:PORT`` for clients."""
        return f"127.0.0.1:{self.port}"

    @property
    def db_path(self) -> Path:
        """The SQLite file."""
        return self.data_dir / "jobstream.db"

    @property
    def db_url(self) -> str | None:
        """The PostgreSQL URL given with ``--db``; None for the SQLite file."""
        args = list(self.extra_args)
        return args[args.index("--db") + 1] if "--db" in args else None

    @property
    def port_file(self) -> Path:
        """Where the server writes the port it listens on."""
        return self.data_dir.parent / f"{self.data_dir.name}.port"

    def server_args(self) -> list[str]:
        """The ``jobstream serve`` arguments of this server."""
        args = [
            "--port",
            str(self.port),
            "--port-file",
            str(self.port_file),
            "--data-dir",
            str(self.data_dir),
            *TEST_SERVER_ARGS,
            *self.extra_args,
        ]
        for module in self.handlers:
            args += ["--handlers", module]
        return args

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


@dataclass
class ServerProcess(Server):
    """A jobstream server in a subprocess, restartable on the same port."""

    proc: subprocess.Popen[bytes] | None = None
    http: bool = False
    """Also serve the HTTP face (``--http-port``), on the same port after a restart."""
    http_port: int = 0
    log_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log_path = self.data_dir.parent / f"{self.data_dir.name}-server.log"

    @property
    def http_url(self) -> str:
        """``http://127.0.0.1:HTTP_PORT`` of the HTTP face."""
        return f"http://127.0.0.1:{self.http_port}"

    def start(self) -> ServerProcess:
        """Starts the server (on its previous port after a restart) and waits
        until it serves."""
        self.port_file.unlink(missing_ok=True)
        args = [sys.executable, "-m", "jobstream.server", *self.server_args()]
        http_file = self.data_dir.parent / f"{self.data_dir.name}.http-port"
        if self.http:
            http_file.unlink(missing_ok=True)
            args += ["--http-port", str(self.http_port), "--http-port-file", str(http_file)]
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                args, stdout=log, stderr=subprocess.STDOUT, env=clean_environ()
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self.port_file.exists() or not self.port_file.read_text():
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited {self.proc.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"server did not start:\n{self.log()}")
            time.sleep(0.02)
        self.port = int(self.port_file.read_text())
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


@dataclass
class InProcessServer(Server):
    """A jobstream server in this process: ``serve()`` on an event loop of
    its own, in a thread; stopped as a signal would stop it (gracefully).
    Each binds its own threads to its own database, so several run at once.
    """

    _thread: threading.Thread | None = field(default=None, init=False)
    _loop: asyncio.AbstractEventLoop | None = field(default=None, init=False)
    _stop: asyncio.Event | None = field(default=None, init=False)
    _failure: list[BaseException] = field(default_factory=list, init=False)

    def start(self) -> InProcessServer:
        """Starts serving and waits until the server serves."""
        from jobstream.server.config import from_args

        self.port_file.unlink(missing_ok=True)
        config = from_args(self.server_args())
        started = threading.Event()
        self._failure.clear()

        def run() -> None:
            try:
                asyncio.run(self._serve(config, started))
            except BaseException as exc:  # reported by start() or stop()
                self._failure.append(exc)
            finally:
                started.set()

        self._thread = threading.Thread(
            target=run, name=f"{SERVER_THREAD_PREFIX}{self.data_dir}", daemon=True
        )
        self._thread.start()
        if not started.wait(START_TIMEOUT_S):
            raise RuntimeError("server did not start")
        if self._failure:
            cause = self._failure.pop()
            self._thread = None
            raise RuntimeError(f"server did not start: {type(cause).__name__}: {cause}") from cause
        self.port = int(self.port_file.read_text())
        return self

    async def _serve(self, config: ServerConfig, started: threading.Event) -> None:
        from jobstream.server.app import serve

        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        ready = asyncio.Event()
        serving = asyncio.create_task(serve(config, ready, self._stop))
        waiting = asyncio.create_task(ready.wait())
        await asyncio.wait({serving, waiting}, return_when=asyncio.FIRST_COMPLETED)
        waiting.cancel()
        if ready.is_set():
            started.set()
        # A failure to start is raised here, before run() reports it.
        await serving

    def restart(self) -> InProcessServer:
        """Starts again (after ``stop``) on the same port and data."""
        return self.start()

    def stop(self) -> int:
        """Stops the server gracefully; returns 0 (as a process exiting
        cleanly would) or raises what the server raised."""
        thread, loop, stop = self._thread, self._loop, self._stop
        if thread is None or loop is None or stop is None:
            return 0
        if thread.is_alive():
            loop.call_soon_threadsafe(stop.set)
            thread.join(STOP_TIMEOUT_S)
            if thread.is_alive():
                raise RuntimeError(f"server did not stop within {STOP_TIMEOUT_S}s")
        self._thread = None
        if self._failure:
            raise RuntimeError("server failed") from self._failure[0]
        return 0


def _data_dir(base: Path) -> Path:
    data = base / "data"
    data.mkdir(parents=True, exist_ok=True)
    return data


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """A factory: ``start_server(handlers=(...), extra_args=(...))`` starts a
    server in a subprocess with its own data directory, for tests that kill,
    stop, restart or measure it; all are killed after the test."""
    started: list[ServerProcess] = []

    def start(
        *,
        handlers: tuple[str, ...] = (),
        extra_args: tuple[str, ...] = (),
        name: str = "",
        http: bool = False,
    ) -> ServerProcess:
        server = ServerProcess(
            _data_dir(tmp_path / (name or f"server{len(started)}")),
            handlers,
            extra_args,
            http=http,
        )
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.kill()


@pytest.fixture
def start_inprocess_server(tmp_path: Path) -> Iterator[Callable[..., InProcessServer]]:
    """A factory like ``start_server`` for servers in this process; all are
    stopped after the test."""
    started: list[InProcessServer] = []

    def start(
        *, handlers: tuple[str, ...] = (), extra_args: tuple[str, ...] = (), name: str = ""
    ) -> InProcessServer:
        server = InProcessServer(
            _data_dir(tmp_path / (name or f"local{len(started)}")), handlers, extra_args
        )
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="module")
def db_backend() -> str:
    """The backend the module's shared servers run on; the
    ``both_backends`` mark makes a test run once on each (see
    ``pytest_generate_tests``)."""
    return "sqlite"


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Tests of storage behaviour (marked ``both_backends``) run on SQLite
    and on PostgreSQL; other tests with shared servers run on SQLite. Every
    such test gets the parameter, so module-scoped servers are shared per
    backend and never across."""
    if "db_backend" not in metafunc.fixturenames:
        return
    both = metafunc.definition.get_closest_marker(BOTH_BACKENDS_MARK) is not None
    metafunc.parametrize(
        "db_backend", ["sqlite", "postgres"] if both else ["sqlite"], scope="module"
    )


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
) -> Iterator[InProcessServer]:
    """A server in this process with the demo handlers running in it, shared
    by a test module (tests keep apart by labels or ids)."""
    local = InProcessServer(
        _data_dir(tmp_path_factory.mktemp("server")),
        handlers=("jobstream.client.demo",),
        extra_args=module_db_args,
    )
    yield local.start()
    local.stop()


@pytest.fixture(scope="module")
def bare_server(
    tmp_path_factory: pytest.TempPathFactory, module_db_args: tuple[str, ...]
) -> Iterator[InProcessServer]:
    """A server in this process with no handlers: tests act as the worker."""
    local = InProcessServer(_data_dir(tmp_path_factory.mktemp("bare")), extra_args=module_db_args)
    yield local.start()
    local.stop()


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


def schema_of(url: str) -> str:
    """The schema a URL made by ``_fresh_schema`` puts first on the search path."""
    return url.rsplit("search_path%3D", 1)[1]


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
    """Each backend in turn: a fresh SQLite file, then a fresh PostgreSQL
    schema (for tests of migrations; others take ``migrated_url``)."""
    if request.param == "sqlite":
        return str(tmp_path / "jobs.db")
    return str(request.getfixturevalue("postgres_url"))


EMPTY_LOCK_TIMEOUT = "10s"
"""How long emptying the shared PostgreSQL schema may wait for a lock that
an earlier test's connection still holds, before it fails instead."""


@pytest.fixture(scope="session")
def _migrated_sqlite_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite file with every migration applied, closed (no WAL left)."""
    from jobstream.server.db import open_database

    path = tmp_path_factory.mktemp("migrated") / "jobs.db"
    open_database(str(path)).close()
    return path


@pytest.fixture(scope="session")
def _migrated_postgres_schema() -> Iterator[str]:
    """A PostgreSQL schema with every migration applied, for the session."""
    from jobstream.server.db import open_database

    with _fresh_schema() as url:
        open_database(url).close()
        yield url


@pytest.fixture
def migrated_postgres_url(_migrated_postgres_schema: str) -> str:
    """A URL of a PostgreSQL schema with every migration applied and nothing
    stored: the session's schema, emptied (tables and their sequences) before
    the test, as a fresh one would be, without migrating per test."""
    url = _migrated_postgres_schema
    schema = schema_of(url)
    with _admin_connect() as conn:
        tables = [
            row[0]
            for row in conn.execute(
                "SELECT table_name FROM information_schema.tables"
                " WHERE table_schema = %s AND table_name <> 'schema_migration'",
                (schema,),
            ).fetchall()
        ]
        conn.execute(f"SET lock_timeout = '{EMPTY_LOCK_TIMEOUT}'")
        names = ", ".join(f'"{schema}"."{table}"' for table in tables)
        conn.execute(f"TRUNCATE {names} RESTART IDENTITY CASCADE")
    return url


@pytest.fixture(params=["sqlite", "postgres"])
def migrated_url(
    request: pytest.FixtureRequest, tmp_path: Path, _migrated_sqlite_file: Path
) -> str:
    """Each backend in turn, with every migration applied and nothing stored:
    a copy of a migrated SQLite file, then an emptied PostgreSQL schema."""
    if request.param == "sqlite":
        path = tmp_path / "jobs.db"
        shutil.copyfile(_migrated_sqlite_file, path)
        return str(path)
    return str(request.getfixturevalue("migrated_postgres_url"))


def pytest_configure(config: pytest.Config) -> None:
    """Registers the suite's own mark; the process that runs the session (not
    a worker process of a parallel run) makes the directory the fault
    scenarios leave their figures in, which the workers inherit."""
    from faults.record import FIGURES_DIR

    config.addinivalue_line(
        "markers",
        f"{BOTH_BACKENDS_MARK}: storage behaviour under test: run on SQLite and on PostgreSQL",
    )
    if not hasattr(config, "workerinput"):
        folder = tempfile.mkdtemp(prefix="jobstream-figures-")
        os.environ[FIGURES_DIR] = folder
        config.add_cleanup(lambda: shutil.rmtree(folder, ignore_errors=True))


FIGURE = "figure"
"""The name under which a test reports a measurement it does not assert on
(``record_property(FIGURE, text)``): timings that depend on the machine's
load are shown, not turned into failures."""


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """The figures tests reported, and the fault suite's table (scenario,
    figure, pass/fail) when any of its scenarios ran."""
    from faults.record import print_table

    figures = [
        (report.nodeid, value)
        for reports in terminalreporter.stats.values()
        for report in reports
        if getattr(report, "when", None) == "call"
        for name, value in getattr(report, "user_properties", ())
        if name == FIGURE
    ]
    if figures:
        terminalreporter.section("figures")
        for nodeid, value in figures:
            terminalreporter.write_line(f"{nodeid}: {value}")
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
