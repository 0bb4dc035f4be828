"""The job queues T12-T14 compare with, set up as their documentation
recommends, each with its consumer in a process of its own:

- huey's ``SqliteHuey`` with ``fsync=True`` (SQLite WAL, synchronous=FULL,
  like jobstream's default), consumed by ``huey_consumer -w SLOTS -k
  thread``; its idle polling is capped at 0.1 s (``-m 0.1``) so an idle
  consumer never sleeps through the start of a run;
- Procrastinate on the local PostgreSQL (default durability), consumed by
  ``procrastinate worker --concurrency SLOTS`` (LISTEN/NOTIFY on).

The apps are built from environment variables so that the consumer
processes (which import them by dotted path) and this process build the
same one: ``BENCH_HUEY_DB`` and ``BENCH_PG_DSN``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench.procs import REPO_ROOT, STOP_TIMEOUT_S

HUEY_DB_ENV = "BENCH_HUEY_DB"
"""The SQLite file of the huey app."""

PG_DSN_ENV = "BENCH_PG_DSN"
"""The PostgreSQL connection string of the Procrastinate app."""

PEER_QUEUE = "bench"
"""The queue the peers' no-op tasks go to."""

IMPORTABLE = {"PYTHONPATH": str(REPO_ROOT)}
"""Console scripts do not put the working directory on sys.path: this
makes ``bench`` importable in the consumer processes."""

HUEY_MAX_DELAY_S = "0.1"
"""huey_consumer's longest idle poll interval (its default is 10 s)."""


def huey_app() -> tuple[Any, Any]:
    """The huey instance over ``$BENCH_HUEY_DB`` and its no-op task (calling
    the task enqueues it); one per process."""
    from huey import SqliteHuey

    huey = SqliteHuey(name=PEER_QUEUE, filename=os.environ[HUEY_DB_ENV], fsync=True)

    @huey.task(name="noop")  # type: ignore[untyped-decorator]  # huey ships no types
    def noop() -> bool:
        # A stored result is how the benchmark counts a task as done.
        return True

    return huey, noop


def procrastinate_app() -> Any:
    """The Procrastinate app over ``$BENCH_PG_DSN`` with its no-op task."""
    import procrastinate

    app = procrastinate.App(
        connector=procrastinate.PsycopgConnector(conninfo=os.environ[PG_DSN_ENV])
    )

    @app.task(name="noop", queue=PEER_QUEUE)
    async def noop() -> None:
        return None

    return app


class Child:
    """A consumer process; its output goes to ``workdir/name.log``."""

    def __init__(self, name: str, argv: list[str], workdir: Path, env: dict[str, str]) -> None:
        self.log_path = workdir / f"{name}.log"
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=REPO_ROOT,
                env={**os.environ, **IMPORTABLE, **env},
            )

    def check_alive(self) -> None:
        """Raises when the process died."""
        if self.proc.poll() is not None:
            tail = self.log_path.read_text(errors="replace")[-3_000:]
            raise RuntimeError(f"{self.log_path.stem} exited {self.proc.returncode}:\n{tail}")

    def stop(self) -> None:
        """SIGTERM (each consumer's graceful stop), then SIGKILL."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def bin_path(name: str) -> str:
    """A console script of this environment."""
    return str(Path(sys.executable).parent / name)


def huey_consumer(workdir: Path, db: Path, slots: int) -> Child:
    """``huey_consumer bench.huey_main.huey -w SLOTS -k thread``."""
    return Child(
        "huey-consumer",
        [
            bin_path("huey_consumer"),
            "bench.huey_main.huey",
            "-w",
            str(slots),
            "-k",
            "thread",
            "-m",
            HUEY_MAX_DELAY_S,
            "-C",
        ],
        workdir,
        {HUEY_DB_ENV: str(db)},
    )


def procrastinate_worker(workdir: Path, dsn: str, slots: int) -> Child:
    """``procrastinate --app bench.procrastinate_main.app worker -c SLOTS``."""
    return Child(
        "procrastinate-worker",
        [
            bin_path("procrastinate"),
            "--app",
            "bench.procrastinate_main.app",
            "worker",
            "--queues",
            PEER_QUEUE,
            "--concurrency",
            str(slots),
        ],
        workdir,
        {PG_DSN_ENV: dsn},
    )


def apply_procrastinate_schema(dsn: str) -> None:
    """``procrastinate schema --apply`` on a fresh database."""
    subprocess.run(
        [bin_path("procrastinate"), "--app", "bench.procrastinate_main.app", "schema", "--apply"],
        cwd=REPO_ROOT,
        env={**os.environ, **IMPORTABLE, PG_DSN_ENV: dsn},
        check=True,
        capture_output=True,
    )
