"""Finding things (T19, T20 and their PostgreSQL twins T19.pg, T20.pg):
filtered listings as a ratio to the same call unfiltered, on a server
seeded with 10^5 jobs, the first 10^4 of them holding 10^6 log lines. The
job filters go through the search indexes (migration 0016); a job's log
lines are read through its primary key range whatever the filter, so a log
search costs what its job holds."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import grpc

from bench.env import Env, search_log_jobs
from bench.harness import LIST_PAGE, Sample
from bench.procs import Proc
from bench.seed import seed_id
from bench.service import Call, _rate_sample, alternating
from jobstream.v1 import job_pb2, job_service_pb2_grpc
from jobstream.v1 import job_service_pb2 as js

LOG_PAGE = 100
"""Log lines per ListJobLogs call in T20 (a seeded job holds 100)."""


def _jobs(filtered: bool, jobs: int) -> Callable[[grpc.aio.Channel], Call]:
    """ListJobs calls: the first page, or a page filtered by a params member
    and a substring of the id (each call a different one of the ``jobs``
    seeded jobs)."""
    numbers = itertools.cycle(range(0, jobs, 97))

    def make(channel: grpc.aio.Channel) -> Call:
        stub = job_service_pb2_grpc.JobServiceStub(channel)

        async def call() -> None:
            flt = job_pb2.JobFilter()
            if filtered:
                i = next(numbers)
                flt = job_pb2.JobFilter(params={"i": str(i)}, text=seed_id(i)[-5:])
            response = await stub.ListJobs(js.ListJobsRequest(filter=flt, page_size=LIST_PAGE))
            if filtered and len(response.jobs) != 1:
                raise RuntimeError(f"the filter found {len(response.jobs)} jobs, not 1")

        return call

    return make


def _logs(filtered: bool, log_jobs: int) -> Callable[[grpc.aio.Channel], Call]:
    """ListJobLogs calls on the first ``log_jobs`` seeded jobs (those with
    lines): a page, or the last lines of a level and holding a substring
    (every seeded line does)."""
    numbers = itertools.cycle(range(0, log_jobs, 89))

    def make(channel: grpc.aio.Channel) -> Call:
        stub = job_service_pb2_grpc.JobServiceStub(channel)

        async def call() -> None:
            request = js.ListJobLogsRequest(job_id=seed_id(next(numbers)), page_size=LOG_PAGE)
            if filtered:
                request.min_level = job_pb2.LOG_LEVEL_INFO
                request.text = "xxxx"
                request.tail = LOG_PAGE
            await stub.ListJobLogs(request)

        return call

    return make


async def _search(env: Env, server: Proc, suffix: str) -> dict[str, Sample]:
    """Filtered ListJobs vs the unfiltered first page, and a filtered log
    read vs a plain page of the same jobs' lines, on ``server``; the rows
    are T19 and T20 with ``suffix``."""
    jobs, log_jobs = env.settings.search_jobs, search_log_jobs(env.settings)
    target = server.target
    jobs_b, jobs_s = await alternating(
        env, (target, _jobs(False, jobs)), (target, _jobs(True, jobs)), in_flight=1
    )
    logs_b, logs_s = await alternating(
        env, (target, _logs(False, log_jobs)), (target, _logs(True, log_jobs)), in_flight=1
    )
    server.check_alive()
    return {
        f"T19{suffix}": _rate_sample(jobs_b, jobs_s),
        f"T20{suffix}": _rate_sample(logs_b, logs_s),
    }


async def t19(env: Env) -> dict[str, Sample]:
    """T19 and T20 on SQLite."""
    return await _search(env, env.search, "")


async def t19_pg(env: Env) -> dict[str, Sample]:
    """T19.pg and T20.pg on PostgreSQL; no rows without a database."""
    if env.search_pg is None:
        return {}
    return await _search(env, env.search_pg, ".pg")
