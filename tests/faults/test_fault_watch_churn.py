"""Scenario 5: many watch open/cancel cycles. The server's memory stays
bounded and its open file descriptors come back to where they started:
a cancelled watch leaves nothing behind."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import Any

import grpc
from conftest import ServerProcess
from helpers import rss_bytes

from faults.record import record, size
from jobstream.v1 import job_service_pb2, job_service_pb2_grpc

RSS_GROWTH_LIMIT = 50 * 1024 * 1024
"""The issue's bound on the server's memory growth (strictly below)."""

CHANNELS = 4
"""Concurrent connections opening and cancelling watches."""

WARMUP_CYCLES = 200
"""Cycles per connection before the baseline is taken (caches, arenas)."""

CYCLE_TIMEOUT_S = 10.0
"""Deadline of each watch call."""

SETTLE_S = 15.0
"""How long the descriptor count may take to come back after the cycles."""


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _cycles(
    stub: job_service_pb2_grpc.JobServiceStub, job_id: str, n: int, failures: list[str]
) -> None:
    """Opens a watch, reads its snapshot, cancels it; ``n`` times."""
    request = job_service_pb2.WatchJobRequest(job_id=job_id)
    for _ in range(n):
        stream: Any = stub.WatchJob(request, timeout=CYCLE_TIMEOUT_S)
        try:
            if not next(stream).HasField("snapshot"):
                failures.append("first message was not the snapshot")
        except grpc.RpcError as exc:
            failures.append(f"{exc.code().name}: {exc.details()}")
        finally:
            stream.cancel()


def _run(
    stubs: list[job_service_pb2_grpc.JobServiceStub], job_id: str, per_channel: int
) -> list[str]:
    failures: list[str] = []
    threads = [
        threading.Thread(target=_cycles, args=(stub, job_id, per_channel, failures))
        for stub in stubs
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(per_channel * CYCLE_TIMEOUT_S)
    return failures


def test_watch_open_cancel_cycles(start_server: Callable[..., ServerProcess]) -> None:
    total = size(3_000, 100_000)
    per_channel = total // CHANNELS
    server = start_server()
    assert server.proc is not None
    pid = server.proc.pid
    channels = [grpc.insecure_channel(server.target) for _ in range(CHANNELS)]
    try:
        stubs = [job_service_pb2_grpc.JobServiceStub(c) for c in channels]
        job_id = stubs[0].SubmitJob(job_service_pb2.SubmitJobRequest(kind="faults.idle")).job.id
        _run(stubs, job_id, WARMUP_CYCLES)
        time.sleep(0.5)
        base_rss, base_fds = rss_bytes(pid), _fds(pid)
        started = time.monotonic()
        failures = _run(stubs, job_id, per_channel)
        took = time.monotonic() - started
        growth = rss_bytes(pid) - base_rss
        settle_until = time.monotonic() + SETTLE_S
        while (fds := _fds(pid)) != base_fds and time.monotonic() < settle_until:
            time.sleep(0.1)
    finally:
        for channel in channels:
            channel.close()
    done = per_channel * CHANNELS
    passed = growth < RSS_GROWTH_LIMIT and fds == base_fds and not failures
    record(
        5,
        f"{done:,} cycles in {took:.0f} s: RSS +{growth / 2**20:.1f} MiB (bound < 50), "
        f"fds {base_fds} -> {fds}, {len(failures)} failed",
        passed,
    )
    assert not failures, failures[:5]
    assert growth < RSS_GROWTH_LIMIT, f"server grew {growth >> 20} MiB"
    assert fds == base_fds
