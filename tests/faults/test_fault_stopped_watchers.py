"""Scenario 4: watches held by a SIGSTOPped process are reaped by keepalive
within 35 s (their slots in the watcher cap come back)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from typing import Any

import grpc
from conftest import ServerProcess
from helpers import open_watch

from faults.record import record, size
from jobstream.v1 import job_service_pb2, job_service_pb2_grpc

REAP_BOUND_S = 35.0
"""The issue's bound for reaping a vanished watcher."""

WATCHES_PER_CHANNEL = 50
"""Streams per connection in the stopped process."""

HOLDER = textwrap.dedent(
    """
    import sys, time, grpc
    from jobstream.v1 import job_service_pb2, job_service_pb2_grpc
    target, job_id, n, per = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    streams = []
    for i in range(n):
        if i % per == 0:
            stub = job_service_pb2_grpc.JobServiceStub(grpc.insecure_channel(target))
        s = stub.WatchJob(job_service_pb2.WatchJobRequest(job_id=job_id))
        next(s)
        streams.append(s)
    print("ready", flush=True)
    time.sleep(3600)
    """
)


def _open(stub: Any, job_id: str) -> Any:
    return open_watch(stub, job_service_pb2.WatchJobRequest(job_id=job_id))


def test_watches_of_a_stopped_process_are_reaped(
    start_server: Callable[..., ServerProcess],
) -> None:
    n = size(50, 200)
    server = start_server(
        extra_args=("--max-watchers", str(n), "--max-watchers-per-principal", str(n))
    )
    channel = grpc.insecure_channel(server.target)
    stub = job_service_pb2_grpc.JobServiceStub(channel)
    job_id = stub.SubmitJob(job_service_pb2.SubmitJobRequest(kind="faults.idle")).job.id
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, server.target, job_id, str(n), str(WATCHES_PER_CHANNEL)],
        stdout=subprocess.PIPE,
        text=True,
    )
    mine: list[Any] = []
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
        assert _open(stub, job_id) is None, "the cap should be full"
        os.kill(holder.pid, signal.SIGSTOP)
        stopped = time.monotonic()
        while len(mine) < n and time.monotonic() - stopped < REAP_BOUND_S + 30:
            stream = _open(stub, job_id)
            if stream is None:
                time.sleep(0.5)
            else:
                mine.append(stream)
        reaped_after = time.monotonic() - stopped
        passed = len(mine) == n and reaped_after <= REAP_BOUND_S
        record(4, f"{len(mine)}/{n} watches reaped in {reaped_after:.1f} s", passed)
        assert len(mine) == n
        assert reaped_after <= REAP_BOUND_S
    finally:
        for stream in mine:
            stream.cancel()
        holder.kill()
        holder.wait(10)
        if holder.stdout is not None:
            holder.stdout.close()
        channel.close()
