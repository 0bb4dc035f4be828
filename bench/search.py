"""Finding things (T19, T20): filtered listings as a ratio to the same
call unfiltered, on the server seeded with 10^4 jobs and 10^6 log lines
(T8's). The filters that have no index (a substring, a params member) read
every job row; a job's log lines are read through its primary key range
whatever the filter, so a log search costs what its job holds."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import grpc

from bench.env import Env
from bench.harness import LIST_JOBS, LIST_PAGE, Sample
from bench.seed import seed_id
from bench.service import Call, _rate_sample, alternating
from jobstream.v1 import job_pb2, job_service_pb2_grpc
from jobstream.v1 import job_service_pb2 as js

LOG_PAGE = 100
"""Log lines per ListJobLogs call in T20 (a seeded job holds 100)."""


def _jobs(filtered: bool) -> Callable[[grpc.aio.Channel], Call]:
    """ListJobs calls: the first page, or a page filtered by a params member
    and a substring of the id (each call a different seeded job)."""
    numbers = itertools.cycle(range(0, LIST_JOBS, 97))

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


def _logs(filtered: bool) -> Callable[[grpc.aio.Channel], Call]:
    """ListJobLogs calls on seeded jobs: a page, or the last lines of a
    level and holding a substring (every seeded line does)."""
    numbers = itertools.cycle(range(0, LIST_JOBS, 89))

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


async def t19(env: Env) -> dict[str, Sample]:
    """Filtered ListJobs vs the unfiltered first page, and a filtered log
    read vs a plain page of the same jobs' lines."""
    target = env.list_logs.target
    jobs_b, jobs_s = await alternating(
        env, (target, _jobs(False)), (target, _jobs(True)), in_flight=1
    )
    logs_b, logs_s = await alternating(
        env, (target, _logs(False)), (target, _logs(True)), in_flight=1
    )
    env.list_logs.check_alive()
    return {"T19": _rate_sample(jobs_b, jobs_s), "T20": _rate_sample(logs_b, logs_s)}
