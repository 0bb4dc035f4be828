"""``python -m bench.hops``: where T14's submit -> done time goes.

Runs T14's loop (one no-op job at a time: submit, then ``wait``) against a
jobstream server and a worker process with 2 slots, and splits each job's
trip at the times the job itself records: the SubmitJob call (client
clock), created -> running (the lease's commit), running -> finished (the
worker's attempt and FinishJob's commit), finished -> ``wait`` returns
(the broker, the watch's last message). Prints the median of each hop, the
p50 and p99 of the whole, and the CPU the server and the worker process
used per job.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from bench.harness import percentile
from bench.job_worker import JOBS_QUEUE, NOOP_KIND
from bench.peers import Child
from bench.procs import cpu_seconds, jobstream_server
from jobstream.client import AsyncJobClient

JOBS = 300
"""Jobs timed."""

WARMUP_JOBS = 20
"""Jobs run first, untimed: connections, caches and the worker warm up."""

WAIT_TIMEOUT_S = 30.0
"""Longest a job may take."""

MS = 1_000.0
"""Seconds to milliseconds."""


async def run(workdir: Path, jobs: int) -> None:
    """Times ``jobs`` jobs one at a time and prints the breakdown."""
    server = jobstream_server(workdir, "hops").start()
    worker = Child(
        "hops-worker",
        [sys.executable, "-m", "bench.job_worker", server.target, "2"],
        workdir,
        {"GRPC_VERBOSITY": "ERROR"},
    )
    hops: dict[str, list[float]] = {
        "SubmitJob call": [],
        "created -> running": [],
        "running -> finished": [],
        "finished -> wait returns": [],
    }
    total: list[float] = []
    try:
        async with AsyncJobClient(server.target) as client:
            for i in range(WARMUP_JOBS + jobs):
                if i == WARMUP_JOBS:
                    cpu = cpu_seconds(server.pid), cpu_seconds(worker.proc.pid)
                submitted = time.time()
                job = await client.submit(NOOP_KIND, queue=JOBS_QUEUE)
                answered = time.time()
                done = await client.wait(job.id, timeout=WAIT_TIMEOUT_S)
                returned = time.time()
                if i < WARMUP_JOBS:
                    continue
                times = (done.create_time, done.start_time, done.end_time)
                created, started, ended = (t.timestamp() for t in times if t is not None)
                total.append(returned - submitted)
                for name, seconds in zip(
                    hops,
                    (answered - submitted, started - created, ended - started, returned - ended),
                    strict=True,
                ):
                    hops[name].append(seconds)
        server_cpu = (cpu_seconds(server.pid) - cpu[0]) * MS / jobs
        worker_cpu = (cpu_seconds(worker.proc.pid) - cpu[1]) * MS / jobs
        worker.check_alive()
    finally:
        worker.stop()
        server.stop()
    print(
        f"{jobs} jobs, submit -> done p50 {percentile(total, 50) * MS:.2f} ms, "
        f"p99 {percentile(total, 99) * MS:.2f} ms"
    )
    for name, values in hops.items():
        print(f"  {name:26s} {statistics.median(values) * MS:6.2f} ms (median)")
    print(f"CPU per job: server {server_cpu:.2f} ms, worker {worker_cpu:.2f} ms")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m bench.hops``."""
    parser = argparse.ArgumentParser(prog="python -m bench.hops", description=__doc__)
    parser.add_argument("--jobs", type=int, default=JOBS, help="jobs timed")
    args = parser.parse_args(argv)
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    with tempfile.TemporaryDirectory(prefix="jobstream-hops-") as workdir:
        asyncio.run(run(Path(workdir), max(1, args.jobs)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
