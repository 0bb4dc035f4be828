"""Server subprocesses: the bare baseline server and real jobstream servers,
each on 127.0.0.1 with a port picked by the OS, restartable on that port."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

START_TIMEOUT_S = 30.0
"""How long a server may take to write its port file; a loaded 2-core box
can take several seconds to import grpc and peewee."""

STOP_TIMEOUT_S = 20.0
"""How long a SIGTERM'd server may take to drain before it is killed."""

POLL_S = 0.005
"""Port-file polling interval; short, because T11 times the start-up."""

REPO_ROOT = Path(__file__).resolve().parent.parent
"""Where ``bench`` is importable from, whatever the caller's working directory."""

JOBSTREAM_ARGS = ("--log-level", "WARNING", "--grace-seconds", "1")
"""Quiet servers that stop quickly between benchmarks."""


class ServerError(RuntimeError):
    """A server subprocess failed to start or died."""


@dataclass
class Proc:
    """A server in a subprocess: ``argv`` plus ``--port``/``--port-file``."""

    name: str
    argv: list[str]
    workdir: Path
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    http: bool = False
    """Also serve the HTTP face (``--http-port``), on the same port after a restart."""
    http_port: int = 0
    log_path: Path = field(init=False)
    port_file: Path = field(init=False)

    def __post_init__(self) -> None:
        self.workdir = self.workdir.resolve()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.workdir / f"{self.name}.log"
        self.port_file = self.workdir / f"{self.name}.port"
        self.http_port_file = self.workdir / f"{self.name}.http-port"

    @property
    def target(self) -> str:
        """``127.0.0.1:PORT`` for channels."""
        return f"127.0.0.1:{self.port}"

    @property
    def http_url(self) -> str:
        """``http://127.0.0.1:HTTP_PORT`` of the HTTP face."""
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def pid(self) -> int:
        """The process id (for py-spy)."""
        if self.proc is None:
            raise ServerError(f"{self.name} is not running")
        return self.proc.pid

    def spawn(self) -> None:
        """Starts the process without waiting for it to serve; the previous
        port is reused, so clients can keep their target across a restart."""
        self.port_file.unlink(missing_ok=True)
        args = [*self.argv, "--port", str(self.port), "--port-file", str(self.port_file)]
        if self.http:
            self.http_port_file.unlink(missing_ok=True)
            args += [
                "--http-port",
                str(self.http_port),
                "--http-port-file",
                str(self.http_port_file),
            ]
        with self.log_path.open("ab") as log:
            self.started_at = time.monotonic()
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT)

    def wait_port(self) -> None:
        """Waits until the server has written its port file."""
        assert self.proc is not None
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if self.port_file.exists():
                text = self.port_file.read_text().strip()
                if text:
                    self.port = int(text)
                    if self.http:  # written before the gRPC port file
                        self.http_port = int(self.http_port_file.read_text())
                    return
            if self.proc.poll() is not None:
                raise ServerError(f"{self.name} exited {self.proc.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                raise ServerError(f"{self.name} did not start in {START_TIMEOUT_S}s:\n{self.log()}")
            time.sleep(POLL_S)

    def start(self) -> Proc:
        """Starts the process and waits until it serves."""
        self.spawn()
        self.wait_port()
        return self

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it does not exit in time."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(STOP_TIMEOUT_S)
        self.proc = None

    def check_alive(self) -> None:
        """Raises if the process died (e.g. crashed under load)."""
        if self.proc is None or self.proc.poll() is not None:
            raise ServerError(f"{self.name} is not running:\n{self.log()}")

    def log(self, tail: int = 4_000) -> str:
        """The end of what the process printed."""
        if not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")[-tail:]


def bare_server(workdir: Path) -> Proc:
    """The bare grpc.aio echo and fan-out server (bench/bare_server.py)."""
    return Proc("bare", [sys.executable, "-m", "bench.bare_server"], workdir)


def jobstream_server(workdir: Path, name: str, *extra: str, http: bool = False) -> Proc:
    """A real ``python -m jobstream.server`` with its own data directory
    ``workdir/name``; ``extra`` are more flags (e.g. ``--synchronous normal``);
    ``http`` serves the HTTP face too."""
    data = workdir.resolve() / name
    data.mkdir(parents=True, exist_ok=True)
    argv = [
        sys.executable,
        "-m",
        "jobstream.server",
        "--data-dir",
        str(data),
        *JOBSTREAM_ARGS,
        *extra,
    ]
    return Proc(name, argv, workdir, http=http)


def db_path(workdir: Path, name: str) -> Path:
    """The SQLite file of the jobstream server ``name``."""
    return workdir / name / "jobstream.db"


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
"""Units of the CPU times in /proc/<pid>/stat."""


def cpu_seconds(pid: int) -> float:
    """CPU time (user and system) a process has used so far, every thread's."""
    # The fields after the command name, which may itself hold spaces.
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime
