"""The HTTP face against gRPC, in the same run: T17 (JSON ListJobs calls/s
against gRPC ListJobs) and T18 (lines/s delivered to 100 Server-Sent Events
subscribers of one job against 100 gRPC watchers).

The HTTP face runs inside the server process (``--http-port``), as ``make
run`` has it, so each HTTP call is also a gRPC call over loopback plus the
JSON conversion; the floor (0.5) says that costs at most half. Clients read
what a real one must: T17 parses each page's JSON for its next token; T18's
subscribers read every event's id and line number and check them as the
gRPC watchers of T5 do. Both sides of T18 get the server's batched events
(WatchJob's only shape), as the Python client and the gateway do.
"""

from __future__ import annotations

import asyncio
import functools
import secrets
import time
from collections.abc import Callable, Coroutine
from typing import Any
from urllib.parse import quote

import aiohttp
import grpc

from bench.baselines import WARMUP_CALLS, WATCHER_CHANNEL_OPTIONS
from bench.env import Env, pair
from bench.handlers import LINE_NUMBER_DIGITS, LOG_KIND, WORKER_QUEUE
from bench.harness import LIST_PAGE, WATCHERS, Sample, Throughput, drive
from bench.service import ALTERNATIONS, _rate_sample
from bench.streams import WatchTally, check_watchers, watch
from jobstream.client import AsyncJobClient
from jobstream.v1 import job_service_pb2 as js
from jobstream.v1 import job_service_pb2_grpc

TEXT_MARK = b'"text":"'
"""Where a log event's text starts in its JSON: the subscribers read the line
number there instead of parsing every event (100 parsers in this process
would measure the client, not the server)."""


async def t17(env: Env) -> dict[str, Sample]:
    """GET /v1/jobs (pages of 50, walked in turn) vs gRPC ListJobs on the
    same server and the same 10,000 jobs, one call in flight, in
    alternating slices."""
    proc = env.list_empty
    short_pages = 0
    slice_s = env.settings.duration_s / ALTERNATIONS

    async with (
        grpc.aio.insecure_channel(proc.target) as channel,
        aiohttp.ClientSession() as http,
    ):
        stub = job_service_pb2_grpc.JobServiceStub(channel)
        tokens = ["", ""]

        async def grpc_page() -> None:
            nonlocal short_pages
            response = await stub.ListJobs(
                js.ListJobsRequest(page_size=LIST_PAGE, page_token=tokens[0])
            )
            short_pages += len(response.jobs) != LIST_PAGE
            tokens[0] = response.next_page_token

        async def http_page() -> None:
            nonlocal short_pages
            url = f"{proc.http_url}/v1/jobs?pageSize={LIST_PAGE}&pageToken={quote(tokens[1])}"
            async with http.get(url) as response:
                page = await response.json()
            short_pages += len(page["jobs"]) != LIST_PAGE
            tokens[1] = page.get("nextPageToken", "")

        calls = (grpc_page, http_page)
        for call in calls:
            for _ in range(WARMUP_CALLS):
                await call()
        parts: tuple[list[Throughput], list[Throughput]] = ([], [])
        for i in range(ALTERNATIONS):
            for side in (0, 1) if (i + env.round) % 2 == 0 else (1, 0):
                parts[side].append(await drive(calls[side], in_flight=1, duration_s=slice_s))
    proc.check_alive()
    env.check("T17", "full pages", short_pages == 0, f"{short_pages} short pages")
    return {"T17": _rate_sample(Throughput.merged(parts[0]), Throughput.merged(parts[1]))}


async def _subscribe(http: aiohttp.ClientSession, url: str, lines: int, tally: WatchTally) -> None:
    """Follows one event stream to its end, tallying seqs and lines. Reads
    whatever arrived and splits it into events, as EventSource does."""
    async with http.get(url, headers={"Accept": "text/event-stream"}) as response:
        if response.status != 200:
            raise RuntimeError(f"{url}: HTTP {response.status}: {await response.text()}")
        buffer = b""
        async for chunk in response.content.iter_any():
            buffer += chunk
            *blocks, buffer = buffer.split(b"\n\n")
            for block in blocks:
                if block.startswith(b"event: event\nid: "):
                    head, _, data = block.partition(b"\ndata: ")
                    tally.events.see(int(head[17:]))
                    at = data.find(TEXT_MARK)
                    if at >= 0:
                        start = at + len(TEXT_MARK)
                        tally.lines.see(int(data[start : start + LINE_NUMBER_DIGITS]))
                        if tally.lines.expected == lines:
                            tally.last_line_at = time.perf_counter()
                elif block.startswith(b"event: snapshot"):
                    tally.ready.set()
                elif block.startswith(b"event: end"):
                    tally.lines_before_terminal = tally.lines.received
                    return


Follow = Callable[[str, WatchTally], Coroutine[Any, Any, None]]
"""Follows one job to its end as one subscriber, tallying what it got."""


async def followed_job(env: Env, measure: str, follows: list[Follow], lines: int) -> Throughput:
    """A worker logs ``lines`` lines while every ``follows`` entry follows
    the job; times from the handler's first line until every subscriber has
    the last one (as T5 does)."""
    settings = env.settings
    job_id = f"bench-{measure.lower()}-{secrets.token_hex(3)}-{env.round}"
    env.probe.expect(job_id, gated=True)
    tallies = [WatchTally() for _ in follows]
    tasks: list[asyncio.Task[None]] = []
    try:
        async with AsyncJobClient(env.main.target) as client:
            await client.submit(LOG_KIND, {"lines": lines}, job_id=job_id, queue=WORKER_QUEUE)
        tasks = [asyncio.create_task(f(job_id, t)) for f, t in zip(follows, tallies, strict=True)]
        async with asyncio.timeout(settings.sample_timeout_s):
            for tally in tallies:
                await tally.ready.wait()
            await env.probe.wait_started(job_id)
            started = time.perf_counter()
            env.probe.gates[job_id].set()
            await asyncio.gather(*tasks)
        finished = time.perf_counter()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        env.probe.forget(job_id)
    env.main.check_alive()
    check_watchers(env, measure, tallies, lines)
    elapsed = max(t.last_line_at or finished for t in tallies) - started
    return Throughput(count=lines, elapsed_s=elapsed, latencies_s=[])


async def sse_job(env: Env, subscribers: int, lines: int) -> Throughput:
    """``subscribers`` event streams, one connection each (100 browsers)."""
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    timeout = aiohttp.ClientTimeout(total=None, sock_read=env.settings.sample_timeout_s)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:

        def follow(job_id: str, tally: WatchTally) -> Coroutine[Any, Any, None]:
            return _subscribe(http, f"{env.main.http_url}/v1/jobs/{job_id}:watch", lines, tally)

        return await followed_job(env, "T18", [follow] * subscribers, lines)


async def grpc_job(env: Env, watchers: int, lines: int) -> Throughput:
    """``watchers`` gRPC watchers, one connection each."""
    channels = [
        grpc.aio.insecure_channel(env.main.target, options=WATCHER_CHANNEL_OPTIONS)
        for _ in range(watchers)
    ]
    try:
        follows: list[Follow] = [
            functools.partial(_watch_batched_for, channel, lines) for channel in channels
        ]
        return await followed_job(env, "T18-grpc", follows, lines)
    finally:
        await asyncio.gather(*(c.close(None) for c in channels))


def _watch_batched_for(
    channel: grpc.aio.Channel, lines: int, job_id: str, tally: WatchTally
) -> Coroutine[Any, Any, None]:
    """Follows the job over gRPC as the Python client does (WatchJob's
    batches): the fair baseline for a gateway that reads batches upstream."""
    return watch(channel, job_id, lines, tally)


async def t18(env: Env) -> dict[str, Sample]:
    """Lines/s each of 100 SSE subscribers receives vs each of 100 gRPC
    watchers of the same kind of job on the same server."""
    lines = env.settings.fanout_lines
    b, s = await pair(
        env,
        lambda: grpc_job(env, WATCHERS, lines),
        lambda: sse_job(env, WATCHERS, lines),
    )
    return {"T18": Sample(service=s.rate, baseline=b.rate, extra={"lines": lines})}
