"""The benchmark environment: every server process, the seeded databases,
the benchmark worker, and the correctness checks collected on the way."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import psycopg

from bench.handlers import WORKER_QUEUE, Probe
from bench.harness import LIST_JOBS, LOG_JOBS, Check, Settings
from bench.pgseed import fresh_schema, seed_postgres
from bench.procs import Proc, bare_server, db_path, jobstream_server
from bench.seed import seed
from jobstream.client import Worker
from jobstream.server.db import open_database

log = logging.getLogger(__name__)

WORKER_CONCURRENCY = 16
"""Jobs the benchmark worker runs at once: T4's 8 plus room for the rest."""

WORKER_POLL_WAIT_S = 5.0
"""The worker's AcquireJob long-poll; short so it stops promptly at the end."""

WORKER_STOP_GRACE_S = 10.0
"""How long the worker may take to finish its jobs when the run ends."""

RESTART_PROBE_JOBS = 1
"""Jobs in the empty-database server of T11: just the one GetJob asks for."""


@dataclass
class Env:
    """What the measures run against. ``round`` is the current round; odd
    rounds run the service before its baseline, so slow drift of a noisy
    machine does not always favour the same side."""

    settings: Settings
    workdir: Path
    bare: Proc
    main: Proc
    normal: Proc
    list_logs: Proc
    list_empty: Proc
    restart_big: Proc
    restart_empty: Proc
    search: Proc
    search_pg: Proc | None
    """The PostgreSQL twin of ``search`` (None: no database given or reachable)."""
    probe: Probe
    worker: Worker
    checks: list[Check] = field(default_factory=list)
    setup: dict[str, float] = field(default_factory=dict)
    round: int = 0

    @property
    def service_first(self) -> bool:
        """Whether this round runs the service side first."""
        return self.round % 2 == 1

    def check(self, measure: str, name: str, ok: bool, detail: str = "") -> None:
        """Records a correctness check (a failed one fails the run)."""
        self.checks.append(Check(measure=measure, name=name, ok=ok, detail=detail))
        if not ok:
            log.error("%s: check %s failed: %s", measure, name, detail)


A = TypeVar("A")
B = TypeVar("B")


async def pair(
    env: Env, baseline: Callable[[], Awaitable[A]], service: Callable[[], Awaitable[B]]
) -> tuple[A, B]:
    """Runs a baseline and its service measure back to back, in the
    round's order; returns (baseline, service)."""
    if env.service_first:
        s = await service()
        b = await baseline()
    else:
        b = await baseline()
        s = await service()
    return b, s


async def sandwich(
    baseline_half: Callable[[], Awaitable[A]], service: Callable[[], Awaitable[B]]
) -> tuple[list[A], B]:
    """Runs half a baseline, the service measure, then the other half: for
    service measures that cannot be sliced (a job logs its lines once), so
    drift during the service run weighs on both sides alike. Returns
    (both baseline halves, service)."""
    first = await baseline_half()
    s = await service()
    second = await baseline_half()
    return [first, second], s


def search_log_jobs(settings: Settings) -> int:
    """The seeded jobs of T19/T20 that hold the log lines (T8's number)."""
    return min(LIST_JOBS, settings.search_jobs)


def _seeded_postgres(
    settings: Settings, workdir: Path, schemas: contextlib.ExitStack, setup: dict[str, float]
) -> Proc | None:
    """The server of the PostgreSQL rows, on a fresh schema of
    ``settings.postgres_url`` (dropped when ``schemas`` closes) seeded as
    the SQLite ``search`` server is; None, and a warning, when no database
    is given or it cannot be reached."""
    if not settings.postgres_url:
        return None
    try:
        url = schemas.enter_context(fresh_schema(settings.postgres_url, "jobstream_bench_"))
    except psycopg.OperationalError as exc:
        log.warning("T19.pg/T20.pg left out: %s is unreachable: %s", settings.postgres_url, exc)
        return None
    # The schema is made by the server's own migrations, as a start would.
    open_database(url).close()
    setup["seed_search_pg_s"] = seed_postgres(
        url,
        jobs=settings.search_jobs,
        log_lines=settings.list_log_lines,
        log_jobs=search_log_jobs(settings),
    )
    return jobstream_server(workdir, "search-pg", "--db", url)


def _start_all(procs: list[Proc]) -> None:
    """Starts servers side by side (each start is mostly imports)."""
    for proc in procs:
        proc.spawn()
    for proc in procs:
        proc.wait_port()


@contextlib.asynccontextmanager
async def open_env(settings: Settings, workdir: Path) -> AsyncIterator[Env]:
    """Starts and seeds everything; stops everything on the way out."""
    bare = bare_server(workdir)
    main = jobstream_server(workdir, "main", http=True)
    normal = jobstream_server(workdir, "normal", "--synchronous", "normal")
    list_logs = jobstream_server(workdir, "list-logs")
    list_empty = jobstream_server(workdir, "list-empty", http=True)
    restart_big = jobstream_server(workdir, "restart-big")
    restart_empty = jobstream_server(workdir, "restart-empty")
    search = jobstream_server(workdir, "search")
    seeded = (list_logs, list_empty, restart_big, restart_empty, search)
    everything = [bare, main, normal, *seeded]
    probe = Probe()
    setup: dict[str, float] = {}
    worker: Worker | None = None
    worker_task: asyncio.Task[None] | None = None
    schemas = contextlib.ExitStack()
    try:
        t0 = time.perf_counter()
        # The seeded servers run once to create their schema, then stop so
        # their files can be filled directly.
        await asyncio.to_thread(_start_all, list(seeded))
        for proc in seeded:
            proc.stop()
        setup["schema_s"] = time.perf_counter() - t0
        setup["seed_list_logs_s"] = await asyncio.to_thread(
            seed, db_path(workdir, "list-logs"), jobs=LIST_JOBS, log_lines=settings.list_log_lines
        )
        setup["seed_list_empty_s"] = await asyncio.to_thread(
            seed, db_path(workdir, "list-empty"), jobs=LIST_JOBS
        )
        setup["seed_restart_big_s"] = await asyncio.to_thread(
            seed, db_path(workdir, "restart-big"), jobs=settings.restart_jobs
        )
        setup["seed_restart_empty_s"] = await asyncio.to_thread(
            seed, db_path(workdir, "restart-empty"), jobs=RESTART_PROBE_JOBS
        )
        setup["seed_search_s"] = await asyncio.to_thread(
            seed,
            db_path(workdir, "search"),
            jobs=settings.search_jobs,
            log_lines=settings.list_log_lines,
            log_jobs=search_log_jobs(settings),
        )
        search_pg = await asyncio.to_thread(_seeded_postgres, settings, workdir, schemas, setup)
        serving = [bare, main, normal, list_logs, list_empty, search]
        if search_pg is not None:
            everything.append(search_pg)
            serving.append(search_pg)
        # T11 starts its servers itself, each round.
        await asyncio.to_thread(_start_all, serving)
        worker = Worker(
            main.target,
            probe.handlers(),
            worker_id="bench-worker",
            queues=(WORKER_QUEUE,),
            concurrency=max(WORKER_CONCURRENCY, LOG_JOBS),
            poll_wait=WORKER_POLL_WAIT_S,
        )
        worker_task = asyncio.create_task(worker.run_async(), name="bench-worker")
        setup["total_s"] = time.perf_counter() - t0
        yield Env(
            settings=settings,
            workdir=workdir,
            bare=bare,
            main=main,
            normal=normal,
            list_logs=list_logs,
            list_empty=list_empty,
            restart_big=restart_big,
            restart_empty=restart_empty,
            search=search,
            search_pg=search_pg,
            probe=probe,
            worker=worker,
            setup=setup,
        )
    finally:
        if worker is not None and worker_task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(worker.stop(grace=WORKER_STOP_GRACE_S), 30)
            worker_task.cancel()
            await asyncio.gather(worker_task, return_exceptions=True)
        for proc in everything:
            proc.stop()
        schemas.close()
