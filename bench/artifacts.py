"""Writer load of artifact uploads: one large upload through UploadArtifact
(each 1 MiB chunk is a writer operation) while submitters keep making small
writes, against the same submitters with nothing else running.

``python -m bench.artifacts [--mib 200] [--submitters 4] [--db URL]``. Not
part of ``make bench``. Prints the upload's MB/s, the submit latency
(p50/p99/max) while it runs and idle, the download's MB/s, how long the
sweep takes to remove the chunks of the artifact once it is replaced, and
how long deleting a job holding such an artifact takes to answer and until
its chunks are gone (the delete leaves them to the sweep, which it wakes),
with the submit latency during each (for the delete: from the call until
the chunks are gone). SQLite in a temporary data directory by default;
``--db postgresql://...`` uses a fresh schema, dropped afterwards.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sqlite3
import statistics
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from pathlib import Path

import grpc
from google.protobuf.duration_pb2 import Duration

from bench.procs import jobstream_server
from jobstream.v1 import (
    job_service_pb2,
    job_service_pb2_grpc,
    worker_service_pb2,
    worker_service_pb2_grpc,
)

MIB = 1024 * 1024
"""Bytes in a MiB."""

PIECE_BYTES = 256 * 1024
"""Bytes per UploadArtifact message, as the client's Worker sends them."""

IDLE_SECONDS = 5.0
"""How long the submitters run alone for the baseline."""

CALL_TIMEOUT_S = 600.0
"""Deadline of the upload, the download and the delete."""

CHUNK_POLL_S = 0.05
"""How often the stored chunk rows are counted while waiting for them to go."""


@contextmanager
def _submitting(target: str, count: int) -> Iterator[list[float]]:
    """``count`` threads each submitting one job at a time while the block
    runs; their latencies (seconds) land in the list it gives."""
    latencies: list[float] = []
    lock = threading.Lock()
    stop = threading.Event()

    def run() -> None:
        with grpc.insecure_channel(target) as channel:
            stub = job_service_pb2_grpc.JobServiceStub(channel)
            request = job_service_pb2.SubmitJobRequest(kind="bench.small")
            while not stop.is_set():
                started = time.perf_counter()
                stub.SubmitJob(request, timeout=60)
                with lock:
                    latencies.append(time.perf_counter() - started)

    threads = [threading.Thread(target=run) for _ in range(count)]
    for thread in threads:
        thread.start()
    try:
        yield latencies
    finally:
        stop.set()
        for thread in threads:
            thread.join()


def _stats(latencies: list[float]) -> str:
    """p50, p99 and max of ``latencies`` in ms, and their count."""
    if len(latencies) < 2:
        return f"{len(latencies)} submits"
    cuts = statistics.quantiles(latencies, n=100)
    return (
        f"p50 {cuts[49] * 1e3:6.1f} ms  p99 {cuts[98] * 1e3:6.1f} ms"
        f"  max {max(latencies) * 1e3:6.1f} ms  ({len(latencies)} submits)"
    )


class _Job:
    """A job leased by the benchmark, uploading artifacts."""

    def __init__(self, channel: grpc.Channel) -> None:
        self.jobs = job_service_pb2_grpc.JobServiceStub(channel)
        self.workers = worker_service_pb2_grpc.WorkerServiceStub(channel)
        self.id = self.jobs.SubmitJob(
            job_service_pb2.SubmitJobRequest(kind="bench.artifact"), timeout=30
        ).job.id
        self.lease_id = self.workers.AcquireJob(
            worker_service_pb2.AcquireJobRequest(
                worker_id="bench",
                kinds=["bench.artifact"],
                lease_duration=Duration(seconds=int(CALL_TIMEOUT_S)),
            ),
            timeout=30,
        ).lease_id

    def upload(self, name: str, block: bytes, times: int) -> float:
        """Uploads ``block`` repeated ``times`` times; returns the seconds taken."""
        digest = hashlib.sha256()
        for _ in range(times):
            digest.update(block)
        pieces = [block[i : i + PIECE_BYTES] for i in range(0, len(block), PIECE_BYTES)]
        header = worker_service_pb2.ArtifactHeader(
            job_id=self.id,
            lease_id=self.lease_id,
            name=name,
            size_bytes=len(block) * times,
            sha256=digest.hexdigest(),
        )

        def messages() -> Iterator[worker_service_pb2.UploadArtifactRequest]:
            yield worker_service_pb2.UploadArtifactRequest(header=header)
            for _ in range(times):
                for piece in pieces:
                    yield worker_service_pb2.UploadArtifactRequest(chunk=piece)

        started = time.perf_counter()
        self.workers.UploadArtifact(messages(), timeout=CALL_TIMEOUT_S)
        return time.perf_counter() - started

    def download(self, name: str) -> tuple[int, float]:
        """Downloads an artifact; returns its bytes and the seconds taken."""
        started = time.perf_counter()
        received = 0
        request = job_service_pb2.DownloadArtifactRequest(job_id=self.id, name=name)
        for message in self.jobs.DownloadArtifact(request, timeout=CALL_TIMEOUT_S):
            received += len(message.chunk)
        return received, time.perf_counter() - started

    def finish(self) -> None:
        """Ends the job (succeeded)."""
        self.workers.FinishJob(
            worker_service_pb2.FinishJobRequest(
                job_id=self.id,
                lease_id=self.lease_id,
                outcome=worker_service_pb2.JOB_OUTCOME_SUCCEEDED,
            ),
            timeout=30,
        )

    def delete(self, chunks: Callable[[], int]) -> tuple[float, float]:
        """Deletes the job; returns the seconds DeleteJob took to answer and
        until ``chunks`` (the stored chunk rows) counts none."""
        started = time.perf_counter()
        self.jobs.DeleteJob(
            job_service_pb2.DeleteJobRequest(job_id=self.id), timeout=CALL_TIMEOUT_S
        )
        answered = time.perf_counter() - started
        while chunks() > 0:
            time.sleep(CHUNK_POLL_S)
        return answered, time.perf_counter() - started


def _measure(target: str, mib: int, submitters: int, chunks: Callable[[], int]) -> None:
    """Runs the phases against the server at ``target`` and prints them;
    ``chunks`` counts the stored chunk rows."""
    size = mib * MIB
    block = os.urandom(MIB)  # sent ``mib`` times: content that does not compress
    with grpc.insecure_channel(target) as channel:
        job = _Job(channel)
        with _submitting(target, submitters) as idle:
            time.sleep(IDLE_SECONDS)
        with _submitting(target, submitters) as uploading:
            upload_s = job.upload("big.bin", block, mib)
        received, download_s = job.download("big.bin")
        if received != size:
            raise RuntimeError(f"downloaded {received} of {size} bytes")
        with _submitting(target, submitters) as replacing:
            started = time.perf_counter()
            job.upload("big.bin", b"small", 1)
            while chunks() > 1:
                time.sleep(CHUNK_POLL_S)
            reclaim_s = time.perf_counter() - started
        job.upload("big.bin", block, mib)
        job.finish()
        with _submitting(target, submitters) as deleting:
            delete_s, gone_s = job.delete(chunks)

    print(f"upload {mib} MiB          : {size / upload_s / 1e6:6.1f} MB/s ({upload_s:.1f} s)")
    print(f"download {mib} MiB        : {size / download_s / 1e6:6.1f} MB/s ({download_s:.1f} s)")
    print(f"replaced, chunks removed in {reclaim_s:.1f} s by the sweep")
    print(f"deleted, answered in {delete_s * 1e3:.0f} ms, chunks gone in {gone_s:.1f} s")
    print(f"submits, idle           : {_stats(idle)}")
    print(f"submits, uploading      : {_stats(uploading)}")
    print(f"submits, sweep removing : {_stats(replacing)}")
    print(f"submits, deleting       : {_stats(deleting)}  (until the chunks are gone)")


def _chunk_counter(data_dir: Path, db_args: tuple[str, ...]) -> Callable[[], int]:
    """Counts the chunk rows of the server's database."""
    query = "SELECT count(*) FROM job_artifact_chunk"
    if not db_args:
        path = data_dir / "jobstream.db"

        def count_sqlite() -> int:
            with closing(sqlite3.connect(path)) as conn:
                return int(conn.execute(query).fetchone()[0])

        return count_sqlite
    import psycopg

    url = db_args[1]

    def count_postgres() -> int:
        with psycopg.connect(url, autocommit=True) as conn:
            row = conn.execute(query).fetchone()
            return int(row[0]) if row else 0

    return count_postgres


@contextmanager
def _schema(url: str | None) -> Iterator[tuple[str, ...]]:
    """Server arguments for the database: SQLite by default, else a fresh
    PostgreSQL schema dropped afterwards."""
    if url is None:
        yield ()
        return
    import psycopg

    schema = "jobstream_artifacts_" + uuid.uuid4().hex[:8]
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    try:
        yield ("--db", f"{url}?options=-csearch_path%3D{schema}")
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


def main() -> None:
    """Runs the measurement once and prints it."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mib", type=int, default=200, help="size of the upload")
    parser.add_argument("--submitters", type=int, default=4, help="concurrent submit loops")
    parser.add_argument("--db", default=None, help="a PostgreSQL URL (default: SQLite)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, _schema(args.db) as db_args:
        server = jobstream_server(Path(tmp), "artifacts", *db_args).start()
        try:
            counter = _chunk_counter(Path(tmp) / "artifacts", db_args)
            _measure(server.target, args.mib, args.submitters, counter)
        finally:
            server.stop()


if __name__ == "__main__":
    main()
