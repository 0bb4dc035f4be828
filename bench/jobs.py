"""The job-running measures: T12 and T13 (no-op jobs/s end to end against
huey and Procrastinate), T14 (submit -> done latency against Procrastinate)
and T15 (T12 as worker slots and the backlog grow).

Every system gets a fresh store per sample and its consumer in a process
of its own (jobstream: bench/job_worker.py; the peers: bench/peers.py);
this process submits and watches. A job counts as done when the system's
store says it succeeded: every system is polled the same way (a count
query every POLL_S), from the first submit to the last job done.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import sqlite3
import sys
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import psycopg

from bench import peers
from bench.env import Env, pair
from bench.harness import Sample, percentile
from bench.job_worker import JOBS_QUEUE, NOOP_KIND
from bench.peers import Child
from bench.pgseed import DEFAULT_URL
from bench.procs import Proc, db_path, jobstream_server
from bench.seed import seed_queued
from jobstream.client import AsyncJobClient
from jobstream.v1 import job_service_pb2 as js
from jobstream.v1 import job_service_pb2_grpc

POLL_S = 0.005
"""How often the done count is read while jobs run."""

SUBMIT_BATCH = 500
"""Jobs per SubmitJobs call (Procrastinate: per batch_defer_async)."""

SLOTS = 2
"""Worker slots of T12-T14."""

SCALE_SLOTS = (1, 2, 8, 32)
"""Worker slots T15 compares, each against the one before."""

POSTGRES_ADMIN_URL = os.environ.get("JOBSTREAM_BENCH_POSTGRES", DEFAULT_URL)
"""A database on the local PostgreSQL to create the benchmark's own from."""

MS = 1_000.0
"""Seconds to milliseconds."""

_serial = itertools.count()


def _name(env: Env, what: str) -> str:
    """A store or process name unique in this run."""
    return f"{what}-r{env.round}-{next(_serial)}"


# ------------------------------------------------------------------ stores


@contextlib.contextmanager
def postgres_database(env: Env, what: str) -> Iterator[str]:
    """A fresh database on the local PostgreSQL, dropped afterwards; yields its URL."""
    name = f"jsbench_{os.getpid()}_{_name(env, what).replace('-', '_')}"
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    base = POSTGRES_ADMIN_URL.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


SUCCEEDED_SQL = "SELECT count(*) FROM job WHERE state = 'succeeded'"
"""Jobs done, in jobstream's store."""


def sqlite_counter(path: Path, sql: str) -> Callable[[], int]:
    """Reads a count from a SQLite file another process writes."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)

    def count() -> int:
        return int(conn.execute(sql).fetchone()[0])

    return count


def postgres_counter(url: str, sql: str) -> Callable[[], int]:
    """Reads a count from a PostgreSQL database another process writes."""
    conn = psycopg.connect(url, autocommit=True)

    def count() -> int:
        row = conn.execute(sql).fetchone()
        return int(row[0]) if row else 0

    return count


# ------------------------------------------------------------------ timing


async def until_done(
    done: Callable[[], int], target: int, timeout_s: float, alive: Callable[[], None]
) -> None:
    """Polls ``done`` until it reaches ``target``."""
    async with asyncio.timeout(timeout_s):
        while done() < target:
            alive()
            await asyncio.sleep(POLL_S)


async def timed_run(
    submit: Callable[[int], Coroutine[Any, Any, None]],
    done: Callable[[], int],
    jobs: int,
    timeout_s: float,
    alive: Callable[[], None],
) -> float:
    """One warm-up job, then ``jobs`` jobs submitted while they run; jobs/s
    from the first submit to the last job done."""
    await submit(1)
    await until_done(done, 1, timeout_s, alive)
    base = done()
    started = time.perf_counter()
    submitter = asyncio.create_task(submit(jobs))
    try:
        await until_done(done, base + jobs, timeout_s, alive)
        await submitter
    finally:
        submitter.cancel()
    return jobs / (time.perf_counter() - started)


# ------------------------------------------------------------------ jobstream


@dataclass
class Jobstream:
    """A jobstream server and a worker process on a fresh store."""

    server: Proc
    worker: Child | None = None

    def alive(self) -> None:
        self.server.check_alive()
        if self.worker is not None:
            self.worker.check_alive()


def start_worker(env: Env, proc: Proc, slots: int) -> Child:
    """``python -m bench.job_worker`` against ``proc``."""
    return Child(
        _name(env, "jobstream-worker"),
        [sys.executable, "-m", "bench.job_worker", proc.target, str(slots)],
        env.workdir,
        {"GRPC_VERBOSITY": "ERROR"},
    )


@contextlib.asynccontextmanager
async def jobstream(
    env: Env, *, slots: int, db: str = "", backlog: int = 0
) -> AsyncIterator[Jobstream]:
    """A server on a fresh store (``db``: a PostgreSQL URL; else SQLite,
    synchronous=FULL, with ``backlog`` no-op jobs queued first) and a
    worker process with ``slots`` slots."""
    name = _name(env, "jobs")
    proc = jobstream_server(env.workdir, name, *(("--db", db) if db else ()))
    running = Jobstream(server=proc)
    try:
        if backlog:
            await asyncio.to_thread(proc.start)
            await asyncio.to_thread(proc.stop)
            await asyncio.to_thread(
                seed_queued,
                db_path(env.workdir, name),
                jobs=backlog,
                kind=NOOP_KIND,
                queue=JOBS_QUEUE,
            )
        await asyncio.to_thread(proc.start)
        running.worker = start_worker(env, proc, slots)
        yield running
    finally:
        if running.worker is not None:
            await asyncio.to_thread(running.worker.stop)
        await asyncio.to_thread(proc.stop)


def noop_request() -> js.SubmitJobRequest:
    """A no-op job in the benchmark worker's queue."""
    return js.SubmitJobRequest(kind=NOOP_KIND, queue=JOBS_QUEUE)


async def jobstream_rate(
    env: Env, *, slots: int = SLOTS, postgres: bool = False, backlog: int = 0
) -> float:
    """No-op jobs/s through a jobstream server and a worker process."""
    settings = env.settings
    with contextlib.ExitStack() as stack:
        url = stack.enter_context(postgres_database(env, "js")) if postgres else ""
        async with jobstream(env, slots=slots, db=url, backlog=backlog) as running:
            proc = running.server
            done = (
                postgres_counter(url, SUCCEEDED_SQL)
                if postgres
                else sqlite_counter(db_path(env.workdir, proc.name), SUCCEEDED_SQL)
            )
            async with grpc.aio.insecure_channel(proc.target) as channel:
                stub = job_service_pb2_grpc.JobServiceStub(channel)

                async def submit(n: int) -> None:
                    for start in range(0, n, SUBMIT_BATCH):
                        count = min(SUBMIT_BATCH, n - start)
                        await stub.SubmitJobs(
                            js.SubmitJobsRequest(requests=[noop_request()] * count)
                        )

                return await timed_run(
                    submit, done, settings.run_jobs, settings.sample_timeout_s, running.alive
                )
    raise AssertionError("unreachable")


# ------------------------------------------------------------------ peers


async def huey_rate(env: Env, *, slots: int = SLOTS) -> float:
    """No-op tasks/s through SqliteHuey (fsync=True) and a consumer process."""
    db = env.workdir / f"{_name(env, 'huey')}.db"
    os.environ[peers.HUEY_DB_ENV] = str(db)
    huey, noop = peers.huey_app()
    consumer = peers.huey_consumer(env.workdir, db, slots)
    try:

        async def submit(n: int) -> None:
            def enqueue() -> None:
                for _ in range(n):
                    noop()

            await asyncio.to_thread(enqueue)

        return await timed_run(
            submit,
            lambda: int(huey.result_count()),
            env.settings.run_jobs,
            env.settings.sample_timeout_s,
            consumer.check_alive,
        )
    finally:
        await asyncio.to_thread(consumer.stop)


PROCRASTINATE_SUCCEEDED_SQL = "SELECT count(*) FROM procrastinate_jobs WHERE status = 'succeeded'"
"""Tasks done, in Procrastinate's store."""


@contextlib.asynccontextmanager
async def procrastinate(env: Env, *, slots: int = SLOTS) -> AsyncIterator[tuple[Any, str, Child]]:
    """Procrastinate on a fresh database with a worker process; yields the
    opened app, the database URL and the worker."""
    with postgres_database(env, "pc") as url:
        await asyncio.to_thread(peers.apply_procrastinate_schema, url)
        os.environ[peers.PG_DSN_ENV] = url
        app = peers.procrastinate_app()
        worker = peers.procrastinate_worker(env.workdir, url, slots)
        try:
            async with app.open_async():
                yield app, url, worker
        finally:
            await asyncio.to_thread(worker.stop)


async def procrastinate_rate(env: Env, *, slots: int = SLOTS) -> float:
    """No-op tasks/s through Procrastinate and a worker process."""
    async with procrastinate(env, slots=slots) as (app, url, worker):
        noop = app.tasks["noop"]
        done = postgres_counter(url, PROCRASTINATE_SUCCEEDED_SQL)

        async def submit(n: int) -> None:
            for start in range(0, n, SUBMIT_BATCH):
                count = min(SUBMIT_BATCH, n - start)
                await noop.batch_defer_async(*([{}] * count))

        return await timed_run(
            submit, done, env.settings.run_jobs, env.settings.sample_timeout_s, worker.check_alive
        )


# ------------------------------------------------------------------ measures


async def t12(env: Env) -> dict[str, Sample]:
    """No-op jobs/s, 2 slots, SQLite synchronous=FULL, vs huey."""
    b, s = await pair(env, lambda: huey_rate(env), lambda: jobstream_rate(env))
    return {"T12": Sample(service=s, baseline=b)}


async def t13(env: Env) -> dict[str, Sample]:
    """No-op jobs/s, 2 slots, PostgreSQL, vs Procrastinate."""
    b, s = await pair(
        env, lambda: procrastinate_rate(env), lambda: jobstream_rate(env, postgres=True)
    )
    return {"T13": Sample(service=s, baseline=b)}


async def t15(env: Env) -> dict[str, Sample]:
    """T12 at 1, 2, 8 and 32 slots, each against the one before, and with a
    backlog against without."""
    order = SCALE_SLOTS if not env.service_first else tuple(reversed(SCALE_SLOTS))
    rates = {slots: await jobstream_rate(env, slots=slots) for slots in order}
    empty = rates[SLOTS]
    deep = await jobstream_rate(env, backlog=env.settings.backlog_jobs)
    out = {
        f"T15.{slots}": Sample(service=rates[slots], baseline=rates[fewer])
        for fewer, slots in itertools.pairwise(SCALE_SLOTS)
    }
    out["T15.backlog"] = Sample(
        service=deep, baseline=empty, extra={"backlog": env.settings.backlog_jobs}
    )
    return out


async def jobstream_done_latencies(env: Env) -> list[float]:
    """Submit one job, wait until it is done (the client's wait), repeat."""
    latencies: list[float] = []
    async with jobstream(env, slots=SLOTS) as running:
        async with AsyncJobClient(running.server.target) as client:
            for i in range(env.settings.done_latency_samples + 1):
                started = time.perf_counter()
                job = await client.submit(NOOP_KIND, queue=JOBS_QUEUE)
                await client.wait(job.id, timeout=env.settings.sample_timeout_s)
                if i:  # the first warms up the connection and the worker
                    latencies.append(time.perf_counter() - started)
        running.alive()
    return latencies


PROCRASTINATE_STATUS_SQL = "SELECT status FROM procrastinate_jobs WHERE id = %s"
"""One task's status: Procrastinate has no wait, so its store is polled."""

STATUS_POLL_S = 0.0005
"""How often T14 polls Procrastinate for the task's status."""


async def procrastinate_done_latencies(env: Env) -> list[float]:
    """Defer one task, poll its status until succeeded, repeat."""
    latencies: list[float] = []
    async with procrastinate(env) as (app, url, worker):
        noop = app.tasks["noop"]
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            for i in range(env.settings.done_latency_samples + 1):
                started = time.perf_counter()
                job_id = await noop.defer_async()
                async with asyncio.timeout(env.settings.sample_timeout_s):
                    while True:
                        row = await (
                            await conn.execute(PROCRASTINATE_STATUS_SQL, (job_id,))
                        ).fetchone()
                        if row is not None and row[0] == "succeeded":
                            break
                        await asyncio.sleep(STATUS_POLL_S)
                if i:
                    latencies.append(time.perf_counter() - started)
        worker.check_alive()
    return latencies


async def t14(env: Env) -> dict[str, Sample]:
    """Submit -> done latency, one job at a time, p50 and p99, vs Procrastinate."""
    b, s = await pair(
        env, lambda: procrastinate_done_latencies(env), lambda: jobstream_done_latencies(env)
    )
    extra = {"samples": len(s)}
    return {
        f"T14.p{q}": Sample(
            service=percentile(s, q) * MS, baseline=percentile(b, q) * MS, extra=extra
        )
        for q in (50, 99)
    }
