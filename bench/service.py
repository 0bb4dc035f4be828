"""The request/response measures: T1-T3 and T9 (submit throughput), T8
(listing beside a big log table), T10 (submit -> handler start latency) and
T11 (start-up with 10^6 jobs stored).

Throughput measures (T1-T3, T8, T9) call the generated grpc.aio stubs
directly, so the client library's conversion to dataclasses does not
compete with the server for the machine's two cores; T10 and T11 go through
AsyncJobClient and the Worker, as a user's code would.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Awaitable, Callable

import grpc

from bench.baselines import WARMUP_CALLS, echo, sqlite_batched
from bench.env import Env, pair, sandwich
from bench.handlers import LATENCY_KIND, WORKER_QUEUE
from bench.harness import (
    BATCH_IN_FLIGHT,
    BATCH_SUBMIT,
    LIST_PAGE,
    MANY_IN_FLIGHT,
    PAYLOAD_BYTES,
    Sample,
    Throughput,
    drive,
    percentile,
)
from bench.procs import Proc
from bench.seed import seed_id
from jobstream.client import AsyncJobClient, DeadlineExceededError, UnavailableError
from jobstream.v1 import job_service_pb2 as js
from jobstream.v1 import job_service_pb2_grpc

SUBMIT_KIND = "bench.submit"
"""Kind of the jobs T1-T3 and T9 submit; nobody runs them."""

SUBMIT_QUEUE = "bench-submit"
"""Their queue: kept apart from the worker's, so a growing backlog of
queued jobs never sits in front of the jobs the worker acquires."""

RESTART_POLL_S = 0.005
"""How often T11 retries GetJob while the server comes up."""

RESTART_CALL_TIMEOUT_S = 2.0
"""Deadline of each GetJob attempt in T11."""

ALTERNATIONS = 4
"""Slices per side per round of the request/response throughput measures
(T1-T3, T8); even, so each side goes first equally often."""

MS = 1_000.0
"""Seconds to milliseconds."""


def submit_request() -> js.SubmitJobRequest:
    """A SubmitJob request of about PAYLOAD_BYTES, like the bare echo's
    payload (the server makes the id)."""
    request = js.SubmitJobRequest(kind=SUBMIT_KIND, queue=SUBMIT_QUEUE)
    request.params.update({"note": ""})
    pad = PAYLOAD_BYTES - request.ByteSize()
    request.params.update({"note": "x" * max(0, pad)})
    return request


def _rate_sample(baseline: Throughput, service: Throughput) -> Sample:
    return Sample(
        service=service.rate,
        baseline=baseline.rate,
        extra={
            "service_p50_ms": percentile(service.latencies_s, 50) * MS,
            "baseline_p50_ms": percentile(baseline.latencies_s, 50) * MS,
        },
    )


Call = Callable[[], Awaitable[object]]
"""One RPC, ready to be made again and again by :func:`drive`."""


async def alternating(
    env: Env,
    baseline: tuple[str, Callable[[grpc.aio.Channel], Call]],
    service: tuple[str, Callable[[grpc.aio.Channel], Call]],
    *,
    in_flight: int,
) -> tuple[Throughput, Throughput]:
    """Drives a baseline's calls and the service's at their targets in
    alternating slices, so that drift on a shared machine within one round
    hits both sides alike. Each side is (target, call made on a channel).
    Returns (baseline, service)."""
    slice_s = env.settings.duration_s / ALTERNATIONS
    async with (
        grpc.aio.insecure_channel(baseline[0]) as baseline_channel,
        grpc.aio.insecure_channel(service[0]) as service_channel,
    ):
        calls = [baseline[1](baseline_channel), service[1](service_channel)]
        for call in calls:
            for _ in range(WARMUP_CALLS):
                await call()
        parts: tuple[list[Throughput], list[Throughput]] = ([], [])
        for i in range(ALTERNATIONS):
            for side in (0, 1) if (i + env.round) % 2 == 0 else (1, 0):
                parts[side].append(
                    await drive(calls[side], in_flight=in_flight, duration_s=slice_s)
                )
    return Throughput.merged(parts[0]), Throughput.merged(parts[1])


def submitter(channel: grpc.aio.Channel) -> Call:
    """SubmitJob with the same ~100-byte request every time."""
    stub = job_service_pb2_grpc.JobServiceStub(channel)
    request = submit_request()
    return lambda: stub.SubmitJob(request)


async def t1(env: Env) -> dict[str, Sample]:
    """SubmitJob/s at 32 in flight vs the bare echo at 32."""
    b, s = await alternating(
        env, (env.bare.target, echo), (env.main.target, submitter), in_flight=MANY_IN_FLIGHT
    )
    env.main.check_alive()
    return {"T1": _rate_sample(b, s)}


async def t2(env: Env) -> dict[str, Sample]:
    """SubmitJob/s at 1 in flight vs the bare echo at 1."""
    b, s = await alternating(
        env, (env.bare.target, echo), (env.main.target, submitter), in_flight=1
    )
    env.main.check_alive()
    return {"T2": _rate_sample(b, s)}


async def t3(env: Env) -> dict[str, Sample]:
    """T1 on a synchronous=FULL server vs a synchronous=NORMAL one."""
    b, s = await alternating(
        env, (env.normal.target, submitter), (env.main.target, submitter), in_flight=MANY_IN_FLIGHT
    )
    env.normal.check_alive()
    env.main.check_alive()
    return {"T3": _rate_sample(b, s)}


async def t8(env: Env) -> dict[str, Sample]:
    """ListJobs/s with 10^6 stored log lines vs the same jobs without.

    Each side walks the pages of 50 one after another (wrapping at the end),
    so successive calls read different rows."""
    short_pages = 0

    def pager(channel: grpc.aio.Channel) -> Call:
        stub = job_service_pb2_grpc.JobServiceStub(channel)
        token = ""

        async def page() -> None:
            nonlocal token, short_pages
            response = await stub.ListJobs(
                js.ListJobsRequest(page_size=LIST_PAGE, page_token=token)
            )
            if len(response.jobs) != LIST_PAGE:
                short_pages += 1
            token = response.next_page_token

        return page

    b, s = await alternating(
        env, (env.list_empty.target, pager), (env.list_logs.target, pager), in_flight=1
    )
    env.list_empty.check_alive()
    env.list_logs.check_alive()
    env.check("T8", "full pages", short_pages == 0, f"{short_pages} short pages")
    return {"T8": _rate_sample(b, s)}


async def batch_submit_rate(proc: Proc, *, duration_s: float) -> Throughput:
    """Jobs per second stored through SubmitJobs, BATCH_SUBMIT per call."""
    async with grpc.aio.insecure_channel(proc.target) as channel:
        stub = job_service_pb2_grpc.JobServiceStub(channel)
        request = js.SubmitJobsRequest(requests=[submit_request()] * BATCH_SUBMIT)
        await stub.SubmitJobs(request)
        result = await drive(
            lambda: stub.SubmitJobs(request),
            in_flight=BATCH_IN_FLIGHT,
            duration_s=duration_s,
            weight=BATCH_SUBMIT,
        )
    proc.check_alive()
    return result


async def t9(env: Env) -> dict[str, Sample]:
    """Batch submit jobs/s vs raw sqlite3 rows/s, 100 per commit."""
    half = env.settings.duration_s / 2
    halves, s = await sandwich(
        lambda: asyncio.to_thread(sqlite_batched, env.workdir / "t9-raw.db", duration_s=half),
        lambda: batch_submit_rate(env.main, duration_s=env.settings.duration_s),
    )
    b = Throughput.merged(halves)
    return {"T9": Sample(service=s.rate, baseline=b.rate)}


async def handler_latencies(env: Env) -> list[float]:
    """Submits jobs one at a time and times each until its handler starts.

    The next job is submitted only after the worker has finished the
    previous one, so every sample starts from an idle worker waiting in
    AcquireJob, as a job submitted to a quiet service would.
    """
    settings = env.settings
    run = secrets.token_hex(3)
    latencies: list[float] = []
    async with AsyncJobClient(env.main.target) as client:
        for i in range(settings.latency_samples):
            job_id = f"bench-lat-{run}-{env.round}-{i}"
            env.probe.expect(job_id, gated=False)
            async with asyncio.timeout(settings.sample_timeout_s):
                submitted = time.perf_counter()
                await client.submit(LATENCY_KIND, {"i": i}, job_id=job_id, queue=WORKER_QUEUE)
                started = await env.probe.wait_started(job_id)
                latencies.append(started - submitted)
                await client.wait(job_id, timeout=settings.sample_timeout_s)
            env.probe.forget(job_id)
    env.main.check_alive()
    return latencies


async def t10(env: Env) -> dict[str, Sample]:
    """Submit -> handler start latency, p50 and p99, in milliseconds."""
    samples = env.settings.latency_samples
    b, s = await pair(
        env,
        lambda: _echo_latencies(env, samples),
        lambda: handler_latencies(env),
    )
    extra = {"samples": len(s)}
    return {
        "T10.p50": Sample(
            service=percentile(s, 50) * MS, baseline=percentile(b, 50) * MS, extra=extra
        ),
        "T10.p99": Sample(
            service=percentile(s, 99) * MS, baseline=percentile(b, 99) * MS, extra=extra
        ),
    }


async def _echo_latencies(env: Env, calls: int) -> list[float]:
    """``calls`` bare echo round trips, one at a time."""
    async with grpc.aio.insecure_channel(env.bare.target) as channel:
        call = echo(channel)
        for _ in range(WARMUP_CALLS):
            await call()
        result = await drive(
            call, in_flight=1, duration_s=env.settings.sample_timeout_s, max_calls=calls
        )
    return result.latencies_s


async def first_answer(env: Env, proc: Proc, job_id: str) -> float:
    """Starts ``proc`` and returns the seconds from spawning it until a
    GetJob is answered; the server is stopped again afterwards."""
    try:
        proc.spawn()
        async with asyncio.timeout(env.settings.sample_timeout_s):
            await asyncio.to_thread(proc.wait_port)
            while True:
                try:
                    async with AsyncJobClient(
                        proc.target, timeout=RESTART_CALL_TIMEOUT_S
                    ) as client:
                        job = await client.get(job_id)
                    break
                except (UnavailableError, DeadlineExceededError):
                    await asyncio.sleep(RESTART_POLL_S)
        elapsed = time.monotonic() - proc.started_at
        env.check("T11", f"{proc.name}: GetJob answers", job.id == job_id, job.id)
        return elapsed
    finally:
        await asyncio.to_thread(proc.stop)


async def t11(env: Env) -> dict[str, Sample]:
    """Start-up time until the first GetJob answer: 10^6 jobs vs empty."""
    b, s = await pair(
        env,
        lambda: first_answer(env, env.restart_empty, seed_id(0)),
        lambda: first_answer(env, env.restart_big, seed_id(0)),
    )
    return {"T11": Sample(service=s, baseline=b)}
