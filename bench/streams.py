"""The log and watch measures: T4 (persisted log lines/s through the Worker
API), T5 (100 watchers of one job), T6 (one watcher's tail rate) and T7
(T5 with one watcher stalled).

Jobs log through the real Worker (bench/handlers.py). Watchers call the
generated WatchJob stub directly, each on its own connection: 100 watchers
parsing every event into the client library's dataclasses would make this
process, not the server, the bottleneck on a 2-core machine. Every watcher
checks what it got: each line exactly once, in order, all of them before
the terminal event. WatchJob sends events in batches (its only shape) while
the bare fan-out sends one message per line, so the bare side does more
per-message work than jobstream here.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

import grpc

from bench.baselines import (
    WATCHER_CHANNEL_OPTIONS,
    FanoutResult,
    SeqTally,
    bare_fanout,
    sqlite_batched,
)
from bench.env import Env, sandwich
from bench.handlers import LOG_KIND, WORKER_QUEUE, line_number
from bench.harness import LOG_JOBS, WATCHERS, Sample, Throughput
from jobstream.client import AsyncJobClient, JobSpec
from jobstream.v1 import job_pb2, job_service_pb2_grpc
from jobstream.v1 import job_service_pb2 as js

TERMINAL_STATES = frozenset(
    {
        job_pb2.JOB_STATE_SUCCEEDED,
        job_pb2.JOB_STATE_FAILED,
        job_pb2.JOB_STATE_CANCELLED,
        job_pb2.JOB_STATE_INTERRUPTED,
    }
)
"""States after which a watch ends."""

STALLED_CHANNEL_OPTIONS: tuple[tuple[str, Any], ...] = (
    *WATCHER_CHANNEL_OPTIONS,
    # A small, fixed flow-control window: the stalled watcher's connection
    # fills after a few dozen events and the server has to hold (or drop)
    # the rest, instead of the client library buffering them all for it.
    ("grpc.http2.bdp_probe", 0),
    ("grpc.http2.lookahead_bytes", 8 * 1024),
)
"""Options of the stalled watcher's channel in T7."""

LOG_PAGE = 5_000
"""ListJobLogs page size used to verify what T4 stored (the server's maximum)."""

STALL_DRAIN_TIMEOUT_S = 60.0
"""How long the stalled watcher may take to catch up once it reads again."""


@dataclass(slots=True)
class WatchTally:
    """What one watcher received."""

    lines: SeqTally = field(default_factory=lambda: SeqTally(expected=0))
    events: SeqTally = field(default_factory=lambda: SeqTally(expected=1))
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    last_line_at: float = 0.0
    lines_before_terminal: int = -1


async def watch(
    channel: grpc.aio.Channel,
    job_id: str,
    lines: int,
    tally: WatchTally,
    stall: asyncio.Event | None = None,
) -> None:
    """Follows ``job_id`` to its terminal event, tallying lines and events.
    With ``stall``, stops reading after the snapshot until it is set."""
    stub = job_service_pb2_grpc.JobServiceStub(channel)
    call = stub.WatchJob(js.WatchJobRequest(job_id=job_id))
    try:
        stream = call.__aiter__()
        first = await stream.__anext__()
        if first.WhichOneof("item") != "snapshot":
            raise RuntimeError(f"watch of {job_id} did not start with a snapshot")
        tally.ready.set()
        if stall is not None:
            await stall.wait()
        async for response in stream:
            for event in response.events.events:
                tally.events.see(event.seq)
                payload = event.WhichOneof("payload")
                if payload == "log":
                    tally.lines.see(line_number(event.log.text))
                    if tally.lines.expected == lines:
                        tally.last_line_at = time.perf_counter()
                elif payload == "state_change" and event.state_change.state in TERMINAL_STATES:
                    tally.lines_before_terminal = tally.lines.received
                    return
    finally:
        call.cancel()


def check_watchers(env: Env, measure: str, tallies: list[WatchTally], lines: int) -> None:
    """Records the correctness checks of T5-T7."""
    lost = sum(t.lines.lost + max(0, lines - t.lines.expected) for t in tallies)
    duplicated = sum(t.lines.duplicated for t in tallies)
    gaps = sum(t.events.lost + t.events.duplicated for t in tallies)
    late = sum(1 for t in tallies if t.lines_before_terminal != lines)
    env.check(measure, "no line lost", lost == 0, f"{lost} lines lost")
    env.check(measure, "no line duplicated", duplicated == 0, f"{duplicated} lines repeated")
    env.check(measure, "event seqs gap-free", gaps == 0, f"{gaps} seq gaps or repeats")
    env.check(
        measure,
        "last line before terminal event",
        late == 0,
        f"{late} watchers ended without every line first",
    )


async def watched_job(
    env: Env, measure: str, *, watchers: int, lines: int, stalled: int = 0
) -> Throughput:
    """A worker logs ``lines`` lines while ``watchers`` follow the job (the
    first ``stalled`` of them not reading); times from the handler's first
    line until every reading watcher has the last one."""
    settings = env.settings
    job_id = f"bench-{measure.lower()}-{secrets.token_hex(3)}-{env.round}"
    env.probe.expect(job_id, gated=True)
    stall = asyncio.Event()
    channels = [
        grpc.aio.insecure_channel(
            env.main.target,
            options=STALLED_CHANNEL_OPTIONS if i < stalled else WATCHER_CHANNEL_OPTIONS,
        )
        for i in range(watchers)
    ]
    tallies = [WatchTally() for _ in range(watchers)]
    tasks: list[asyncio.Task[None]] = []
    try:
        async with AsyncJobClient(env.main.target) as client:
            await client.submit(LOG_KIND, {"lines": lines}, job_id=job_id, queue=WORKER_QUEUE)
        tasks = [
            asyncio.create_task(
                watch(channels[i], job_id, lines, tallies[i], stall if i < stalled else None)
            )
            for i in range(watchers)
        ]
        async with asyncio.timeout(settings.sample_timeout_s):
            for tally in tallies:
                await tally.ready.wait()
            await env.probe.wait_started(job_id)
            started = time.perf_counter()
            env.probe.gates[job_id].set()
            await asyncio.gather(*tasks[stalled:])
        finished = time.perf_counter()
        # A watcher that missed lines has no last-line time; the checks
        # below fail the run for it, the rate just must not go negative.
        elapsed = max(t.last_line_at or finished for t in tallies[stalled:]) - started
        stall.set()
        async with asyncio.timeout(STALL_DRAIN_TIMEOUT_S):
            await asyncio.gather(*tasks[:stalled])
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(*(c.close(None) for c in channels))
        env.probe.forget(job_id)
    env.main.check_alive()
    check_watchers(env, measure, tallies, lines)
    # count/elapsed is the rate at which each watcher received the lines.
    return Throughput(count=lines, elapsed_s=elapsed, latencies_s=[])


def check_bare(env: Env, measure: str, result: FanoutResult) -> None:
    """The bare fan-out must be exact too, or its rate means nothing."""
    bad = result.lost + result.duplicated + result.incomplete
    env.check(measure, "bare fan-out exact", bad == 0, f"{result}")


async def t5(env: Env) -> dict[str, Sample]:
    """Lines/s each of 100 watchers receives vs the bare fan-out to 100;
    also runs T7 (one watcher stalled) in the same round, against T5."""
    s = env.settings

    async def stalled_run() -> Throughput:
        return await watched_job(env, "T7", watchers=WATCHERS, lines=s.fanout_lines, stalled=1)

    # T7 compares with T5, so it runs next to it, on the side away from
    # T5's bare baseline: before T5 in rounds that run the service first.
    stalled = await stalled_run() if env.service_first else None
    halves, svc = await sandwich(
        lambda: bare_fanout(
            env.bare.target,
            subscribers=WATCHERS,
            messages=s.fanout_lines // 2,
            timeout_s=s.sample_timeout_s,
        ),
        lambda: watched_job(env, "T5", watchers=WATCHERS, lines=s.fanout_lines),
    )
    b = FanoutResult.merged(halves)
    check_bare(env, "T5", b)
    if stalled is None:
        stalled = await stalled_run()
    return {
        "T5": Sample(service=svc.rate, baseline=b.rate, extra={"lines": s.fanout_lines}),
        "T7": Sample(service=stalled.rate, baseline=svc.rate, extra={"lines": s.fanout_lines}),
    }


async def t6(env: Env) -> dict[str, Sample]:
    """One watcher's lines/s vs the bare 1-subscriber stream."""
    s = env.settings
    halves, svc = await sandwich(
        lambda: bare_fanout(
            env.bare.target,
            subscribers=1,
            messages=s.tail_lines // 2,
            timeout_s=s.sample_timeout_s,
        ),
        lambda: watched_job(env, "T6", watchers=1, lines=s.tail_lines),
    )
    b = FanoutResult.merged(halves)
    check_bare(env, "T6", b)
    return {"T6": Sample(service=svc.rate, baseline=b.rate, extra={"lines": s.tail_lines})}


async def logged_lines(env: Env) -> Throughput:
    """LOG_JOBS jobs log at once through the Worker API; lines per second
    from releasing them until the server acknowledged (stored) every line.
    What was stored is read back with ListJobLogs and checked."""
    settings = env.settings
    lines = settings.log_lines_per_job
    run = secrets.token_hex(3)
    ids = [f"bench-t4-{run}-{env.round}-{k}" for k in range(LOG_JOBS)]
    for job_id in ids:
        env.probe.expect(job_id, gated=True)
    try:
        async with AsyncJobClient(env.main.target) as client:
            await client.submit_many(
                [
                    JobSpec(kind=LOG_KIND, params={"lines": lines}, job_id=j, queue=WORKER_QUEUE)
                    for j in ids
                ]
            )
            async with asyncio.timeout(settings.sample_timeout_s):
                for job_id in ids:
                    await env.probe.wait_started(job_id)
                started = time.perf_counter()
                for job_id in ids:
                    env.probe.gates[job_id].set()
                done = [await env.probe.wait_acknowledged(j) for j in ids]
            elapsed = max(done) - started
            for job_id in ids:
                await client.wait(job_id, timeout=settings.sample_timeout_s)
        await verify_logs(env, ids, lines)
    finally:
        for job_id in ids:
            env.probe.forget(job_id)
    env.main.check_alive()
    return Throughput(count=lines * LOG_JOBS, elapsed_s=elapsed, latencies_s=[])


async def verify_logs(env: Env, ids: list[str], lines: int) -> None:
    """Reads every stored line back (ListJobLogs) and checks count and order,
    and that last_seq counts them (queued, running, the lines, succeeded)."""
    async with grpc.aio.insecure_channel(env.main.target) as channel:
        stub = job_service_pb2_grpc.JobServiceStub(channel)
        for job_id in ids:
            tally = SeqTally(expected=0)
            token = ""
            while True:
                page = await stub.ListJobLogs(
                    js.ListJobLogsRequest(job_id=job_id, page_size=LOG_PAGE, page_token=token)
                )
                for event in page.events:
                    tally.see(line_number(event.log.text))
                token = page.next_page_token
                if not token:
                    break
            job = (await stub.GetJob(js.GetJobRequest(job_id=job_id))).job
            ok = tally.received == lines and tally.lost == 0 and tally.duplicated == 0
            env.check("T4", "every line stored once, in order", ok, f"{job_id}: {tally}")
            env.check(
                "T4",
                "last_seq counts the lines",
                job.last_seq == lines + 3,
                f"{job_id}: last_seq {job.last_seq}, {lines} lines",
            )


async def t4(env: Env) -> dict[str, Sample]:
    """Persisted log lines/s from 8 jobs vs raw sqlite3 rows/s."""
    half = env.settings.duration_s / 2
    halves, s = await sandwich(
        lambda: asyncio.to_thread(sqlite_batched, env.workdir / "t4-raw.db", duration_s=half),
        lambda: logged_lines(env),
    )
    b = Throughput.merged(halves)
    return {"T4": Sample(service=s.rate, baseline=b.rate, extra={"service_s": s.elapsed_s})}
