"""T16: how long after a worker writes a log line or a progress update a
watcher in another process sees it, at one update every 10 ms and at full
rate.

The handler (bench/job_worker.py, in the worker process) puts the wall
clock of the moment it wrote each update into the update; the watcher here
reads the clock again when the event arrives. Both clocks are the same
machine's, so the difference is the update's trip: worker buffer, ReportJob,
commit, broker, WatchJob.
"""

from __future__ import annotations

import secrets
import time

import grpc

from bench.env import Env, pair
from bench.harness import Sample, percentile
from bench.job_worker import JOBS_QUEUE, STAMP_KIND
from bench.jobs import MS, SLOTS, jobstream
from bench.service import _echo_latencies
from bench.streams import TERMINAL_STATES
from jobstream.client import AsyncJobClient
from jobstream.v1 import job_service_pb2 as js
from jobstream.v1 import job_service_pb2_grpc

SLOW_INTERVAL_S = 0.01
"""The slow rate: one update every 10 ms."""

START_AFTER_S = 0.3
"""The handler waits this long before its first update: the watch is live by then."""


async def stamped(target: str, what: str, count: int, interval_s: float) -> list[float]:
    """Runs a stamping job and follows it; the latency of every update seen
    (progress updates may be coalesced by the worker: each one seen counts)."""
    job_id = f"bench-t16-{what}-{secrets.token_hex(4)}"
    params = {
        "count": count,
        "interval_s": interval_s,
        "what": what,
        "start_after_s": START_AFTER_S,
    }
    latencies: list[float] = []
    async with grpc.aio.insecure_channel(target) as channel:
        stub = job_service_pb2_grpc.JobServiceStub(channel)
        async with AsyncJobClient(target) as client:
            await client.submit(STAMP_KIND, params, job_id=job_id, queue=JOBS_QUEUE)
        call = stub.WatchJob(js.WatchJobRequest(job_id=job_id))
        try:
            async for response in call:
                if response.WhichOneof("item") != "events":
                    continue
                seen = time.time_ns()
                for event in response.events.events:
                    payload = event.WhichOneof("payload")
                    if payload == "log":
                        latencies.append((seen - int(event.log.text.split()[1])) / 1e9)
                    elif payload == "progress" and event.progress.message:
                        latencies.append((seen - int(event.progress.message)) / 1e9)
                    elif payload == "state_change" and event.state_change.state in TERMINAL_STATES:
                        return latencies
        finally:
            call.cancel()
    return latencies


async def live_latencies(env: Env) -> dict[str, list[float]]:
    """Both kinds at the slow rate, then log lines at full rate."""
    s = env.settings
    async with jobstream(env, slots=SLOTS) as running:
        target = running.server.target
        out = {
            what: await stamped(target, what, s.live_updates, SLOW_INTERVAL_S)
            for what in ("log", "progress")
        }
        out["full"] = await stamped(target, "log", s.full_rate_updates, 0.0)
        running.alive()
    return out


async def t16(env: Env) -> dict[str, Sample]:
    """Written -> seen latencies, p50 and p99, against the bare echo round trip."""
    b, s = await pair(
        env, lambda: _echo_latencies(env, env.settings.live_updates), lambda: live_latencies(env)
    )
    env.check("T16", "every log line seen", len(s["log"]) == env.settings.live_updates)
    env.check("T16", "every full-rate line seen", len(s["full"]) == env.settings.full_rate_updates)
    return {
        f"T16.{what}.p{q}": Sample(
            service=percentile(values, q) * MS,
            baseline=percentile(b, q) * MS,
            extra={"updates": len(values)},
        )
        for what, values in s.items()
        for q in (50, 99)
    }
