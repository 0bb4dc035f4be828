"""Scale-out figure: jobs/s completed by 4 worker processes against one
jobstream server vs two servers sharing one PostgreSQL database.

``python -m bench.cluster [--jobs N] [--url postgresql://...]``. Not part of
``make bench`` (it needs PostgreSQL); it prints one line per layout and the
ratio. Each layout gets a fresh schema, dropped afterwards.
"""

from __future__ import annotations

import argparse
import multiprocessing
import tempfile
import time
import uuid
from pathlib import Path

import grpc
from google.protobuf.duration_pb2 import Duration

from bench.pgseed import DEFAULT_URL as PG_URL
from bench.pgseed import fresh_schema
from bench.procs import Proc, jobstream_server
from jobstream.v1 import (
    job_service_pb2,
    job_service_pb2_grpc,
    worker_service_pb2,
    worker_service_pb2_grpc,
)

DEFAULT_URL = PG_URL
"""The PostgreSQL database the servers share."""

WORKERS = 4
"""Worker processes (each one loop of AcquireJob + FinishJob)."""

DEFAULT_JOBS = 2_000
"""Jobs per layout."""

SUBMIT_BATCH = 500
"""Jobs per SubmitJobs call while filling the queue."""

KIND = "cluster.noop"
"""The job kind the workers take."""


def _work(target: str, deadline: float) -> int:
    """One worker process: acquire and finish until the queue is empty."""
    done = 0
    with grpc.insecure_channel(target) as channel:
        stub = worker_service_pb2_grpc.WorkerServiceStub(channel)
        request = worker_service_pb2.AcquireJobRequest(
            worker_id=f"bench-{uuid.uuid4().hex[:6]}", kinds=[KIND], wait=Duration(seconds=1)
        )
        while time.monotonic() < deadline:
            got = stub.AcquireJob(request, timeout=10)
            if not got.job.id:
                return done
            stub.FinishJob(
                worker_service_pb2.FinishJobRequest(
                    job_id=got.job.id,
                    lease_id=got.lease_id,
                    outcome=worker_service_pb2.JOB_OUTCOME_SUCCEEDED,
                ),
                timeout=10,
            )
            done += 1
    return done


def _layout(url: str, servers: int, jobs: int, workdir: Path) -> float:
    """Jobs/s for ``servers`` servers (workers spread evenly over them)."""
    with fresh_schema(url, "jobstream_cluster_") as db:
        procs: list[Proc] = []
        try:
            for n in range(servers):
                procs.append(jobstream_server(workdir, f"s{servers}-{n}", "--db", db).start())
            with grpc.insecure_channel(procs[0].target) as channel:
                stub = job_service_pb2_grpc.JobServiceStub(channel)
                one = job_service_pb2.SubmitJobRequest(kind=KIND)
                for _ in range(0, jobs, SUBMIT_BATCH):
                    stub.SubmitJobs(
                        job_service_pb2.SubmitJobsRequest(requests=[one] * SUBMIT_BATCH),
                        timeout=60,
                    )
            targets = [procs[i % servers].target for i in range(WORKERS)]
            started = time.monotonic()
            with multiprocessing.Pool(WORKERS) as pool:
                counts = pool.starmap(_work, [(t, started + 300) for t in targets])
            elapsed = time.monotonic() - started
            if sum(counts) != jobs:
                raise RuntimeError(f"completed {sum(counts)} of {jobs} jobs")
            return sum(counts) / elapsed
        finally:
            for proc in procs:
                proc.stop()


def main() -> None:
    """Prints jobs/s for one and for two servers, and their ratio."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=DEFAULT_JOBS)
    parser.add_argument("--url", default=DEFAULT_URL)
    args = parser.parse_args()
    jobs = max(SUBMIT_BATCH, args.jobs // SUBMIT_BATCH * SUBMIT_BATCH)
    with tempfile.TemporaryDirectory() as tmp:
        one = _layout(args.url, 1, jobs, Path(tmp))
        two = _layout(args.url, 2, jobs, Path(tmp))
    print(f"1 server : {one:8.0f} jobs/s ({WORKERS} workers, {jobs} jobs)")
    print(f"2 servers: {two:8.0f} jobs/s ({WORKERS} workers, {jobs} jobs)")
    print(f"ratio 2/1: {two / one:.2f}")


if __name__ == "__main__":
    main()
