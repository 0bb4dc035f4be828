"""Catch-up figure: events/s that watchers in processes of their own read
from a job's stored history (WatchJob sends events in batches, its only
shape).

``python -m bench.catchup [--lines N] [--watchers N]``. Not part of ``make
bench`` (whose T5-T7 follow a live job); it prints the events/s and the
server's CPU time per event.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import tempfile
import time
from pathlib import Path

import grpc
from google.protobuf.duration_pb2 import Duration

from bench.procs import jobstream_server
from jobstream.v1 import (
    job_pb2,
    job_service_pb2,
    job_service_pb2_grpc,
    worker_service_pb2,
    worker_service_pb2_grpc,
)

KIND = "catchup.log"
"""The job kind that holds the history."""

REPORT_LINES = 1_000
"""Log lines per ReportJob while writing the history."""


def _read(target: str, job_id: str) -> int:
    """One watcher process: reads the whole job, returns the events it got
    (checked to run 1, 2, 3 … without a gap or a repeat)."""
    expected = 1
    with grpc.insecure_channel(target) as channel:
        stub = job_service_pb2_grpc.JobServiceStub(channel)
        request = job_service_pb2.WatchJobRequest(job_id=job_id)
        for response in stub.WatchJob(request, timeout=600):
            for event in response.events.events:
                if event.seq != expected:
                    raise RuntimeError(f"watcher got seq {event.seq}, expected {expected}")
                expected += 1
    return expected - 1


def _history(target: str, lines: int) -> str:
    """A finished job with ``lines`` log lines; returns its id."""
    with grpc.insecure_channel(target) as channel:
        jobs = job_service_pb2_grpc.JobServiceStub(channel)
        job = jobs.SubmitJob(job_service_pb2.SubmitJobRequest(kind=KIND), timeout=30).job
        workers = worker_service_pb2_grpc.WorkerServiceStub(channel)
        lease = workers.AcquireJob(
            worker_service_pb2.AcquireJobRequest(
                worker_id="catchup", kinds=[KIND], wait=Duration(seconds=5)
            ),
            timeout=30,
        )
        for start in range(0, lines, REPORT_LINES):
            logs = [
                job_pb2.LogLine(text=f"line {start + i:07d} " + "x" * 80)
                for i in range(min(REPORT_LINES, lines - start))
            ]
            workers.ReportJob(
                worker_service_pb2.ReportJobRequest(
                    job_id=job.id, lease_id=lease.lease_id, logs=logs
                ),
                timeout=60,
            )
        workers.FinishJob(
            worker_service_pb2.FinishJobRequest(
                job_id=job.id,
                lease_id=lease.lease_id,
                outcome=worker_service_pb2.JOB_OUTCOME_SUCCEEDED,
            ),
            timeout=30,
        )
    return str(job.id)


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    """Prints events/s and server CPU per event."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--lines", type=int, default=50_000)
    parser.add_argument("--watchers", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        server = jobstream_server(Path(tmp), "catchup").start()
        try:
            job_id = _history(server.target, args.lines)
            cpu = _cpu_s(server.pid)
            started = time.monotonic()
            with multiprocessing.Pool(args.watchers) as pool:
                counts = pool.starmap(_read, [(server.target, job_id)] * args.watchers)
            elapsed = time.monotonic() - started
            events = sum(counts)
            per_event_us = (_cpu_s(server.pid) - cpu) / events * 1e6
            print(
                f"{events / elapsed:8.0f} events/s, server CPU {per_event_us:5.1f} µs/event "
                f"({args.watchers} watchers x {counts[0]:,} events)"
            )
        finally:
            server.stop()


if __name__ == "__main__":
    main()
