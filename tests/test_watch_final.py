"""WatchJob's skip_history and final_snapshot, and ``wait`` built on them:
one WatchJob per wait and no GetJob, against a real server, with a worker
holding its lease by hand (RawWorker) so each event comes when the test
says, and a metered server counting the calls ``wait`` makes."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
from conftest import InProcessServer, ServerProcess
from google.protobuf import struct_pb2
from helpers import RawWorker
from test_metrics import free_port, rpc, scrape, value

from jobstream.client import AsyncJobClient, Job, JobClient, JobState
from jobstream.v1 import job_pb2, job_service_pb2, job_service_pb2_grpc, worker_service_pb2

STREAM_TIMEOUT_S = 30.0
"""Deadline of every watch read here."""


@pytest.fixture
def plain(
    start_server: Callable[..., ServerProcess],
) -> Iterator[tuple[ServerProcess, job_service_pb2_grpc.JobServiceStub]]:
    """A server and a JobService stub on it."""
    server = start_server()
    with grpc.insecure_channel(server.target) as channel:
        yield server, job_service_pb2_grpc.JobServiceStub(channel)


def running(server: ServerProcess, lines: int) -> tuple[RawWorker, str, str]:
    """A job of a kind of its own, leased by a raw worker that logged
    ``lines`` lines: (worker, job id, lease id)."""
    kind = f"final.{uuid.uuid4().hex[:8]}"
    with JobClient(server.target) as client:
        client.submit(kind)
    worker = RawWorker(server.target)
    lease = worker.acquire(kind)
    worker.log(lease.job.id, lease.lease_id, [f"line {i}" for i in range(lines)])
    return worker, lease.job.id, lease.lease_id


def watch_running(
    plain: tuple[ServerProcess, job_service_pb2_grpc.JobServiceStub], lines: int, **flags: bool
) -> tuple[Any, RawWorker, str, str]:
    """A WatchJob with ``flags`` of a job :func:`running` made: (stream,
    worker, job id, lease id)."""
    server, stub = plain
    worker, job_id, lease_id = running(server, lines)
    request = job_service_pb2.WatchJobRequest(job_id=job_id, **flags)
    return stub.WatchJob(request, timeout=STREAM_TIMEOUT_S), worker, job_id, lease_id


def finish(worker: RawWorker, job_id: str, lease_id: str) -> None:
    """Ends the job SUCCEEDED with the result {"answer": 42}."""
    result = struct_pb2.Struct()
    result.update({"answer": 42})
    worker.stub.FinishJob(
        worker_service_pb2.FinishJobRequest(
            job_id=job_id,
            lease_id=lease_id,
            outcome=worker_service_pb2.JOB_OUTCOME_SUCCEEDED,
            result=result,
        ),
        timeout=STREAM_TIMEOUT_S,
    )


def test_skip_history_and_final_snapshot(
    plain: tuple[ServerProcess, job_service_pb2_grpc.JobServiceStub],
) -> None:
    stream, worker, job_id, lease_id = watch_running(
        plain, 3, skip_history=True, final_snapshot=True
    )
    first = next(stream)
    snapshot = first.snapshot
    assert first.WhichOneof("item") == "snapshot" and snapshot.state == job_pb2.JOB_STATE_RUNNING
    assert not first.HasField("final_snapshot")
    # Queued, running and three log lines are history the snapshot holds.
    assert snapshot.last_seq == 5
    worker.log(job_id, lease_id, ["after the snapshot"])
    finish(worker, job_id, lease_id)
    rest = list(stream)
    seqs = [e.seq for m in rest for e in m.events.events]
    assert seqs == list(range(snapshot.last_seq + 1, seqs[-1] + 1)) and len(seqs) >= 2
    assert [m.HasField("final_snapshot") for m in rest] == [False] * (len(rest) - 1) + [True]
    final = rest[-1].final_snapshot
    assert final.state == job_pb2.JOB_STATE_SUCCEEDED
    assert dict(final.result) == {"answer": 42}
    assert final.last_seq == seqs[-1]
    assert final == plain[1].GetJob(job_service_pb2.GetJobRequest(job_id=job_id)).job
    worker.close()


def test_without_the_flags_history_comes_and_no_final_job(
    plain: tuple[ServerProcess, job_service_pb2_grpc.JobServiceStub],
) -> None:
    stream, worker, job_id, lease_id = watch_running(plain, 2)
    assert next(stream).snapshot.last_seq == 4
    finish(worker, job_id, lease_id)
    rest = list(stream)
    seqs = [e.seq for m in rest for e in m.events.events]
    assert seqs == list(range(1, len(seqs) + 1)) and len(seqs) == 5
    assert not any(m.HasField("final_snapshot") for m in rest)
    worker.close()


def test_an_ended_job_is_its_snapshot_alone(
    plain: tuple[ServerProcess, job_service_pb2_grpc.JobServiceStub],
) -> None:
    server, stub = plain
    worker, job_id, lease_id = running(server, lines=1)
    finish(worker, job_id, lease_id)
    messages = list(
        stub.WatchJob(
            job_service_pb2.WatchJobRequest(job_id=job_id, skip_history=True, final_snapshot=True),
            timeout=STREAM_TIMEOUT_S,
        )
    )
    assert [m.WhichOneof("item") for m in messages] == ["snapshot"]
    assert messages[0].snapshot.state == job_pb2.JOB_STATE_SUCCEEDED
    worker.close()


def test_a_missing_job_is_not_found(
    plain: tuple[ServerProcess, job_service_pb2_grpc.JobServiceStub],
) -> None:
    _, stub = plain
    with pytest.raises(grpc.RpcError) as caught:
        list(
            stub.WatchJob(
                job_service_pb2.WatchJobRequest(
                    job_id="no-such-job", skip_history=True, final_snapshot=True
                ),
                timeout=STREAM_TIMEOUT_S,
            )
        )
    assert caught.value.code() is grpc.StatusCode.NOT_FOUND


def test_wait_makes_one_watch_and_no_get(
    start_inprocess_server: Callable[..., InProcessServer],
) -> None:
    port = free_port()
    server = start_inprocess_server(
        handlers=("jobstream.client.demo",), extra_args=("--metrics-port", str(port))
    )
    with JobClient(server.target) as client:
        job = client.submit("demo.count", {"n": 3, "delay": 0.05})
        ended = client.wait(job.id, timeout=STREAM_TIMEOUT_S)
        # Waiting for a job that has ended already: its snapshot is the answer.
        again = client.wait(job.id, timeout=STREAM_TIMEOUT_S)
        stored = client.get(job.id)
    assert ended.state is JobState.SUCCEEDED and ended.result == {"total": 3}
    assert [s.name for s in ended.steps] == ["count", "summarise"]
    assert ended == again == stored
    samples = scrape(port)
    assert value(samples, "grpc_server_handled_total", **rpc("GetJob", "OK")) == 1
    watches = rpc("WatchJob", "OK", kind="server_stream")
    assert value(samples, "grpc_server_handled_total", **watches) == 2


def test_async_wait_returns_the_final_job(
    start_inprocess_server: Callable[..., InProcessServer],
) -> None:
    server = start_inprocess_server(handlers=("jobstream.client.demo",))

    async def main() -> tuple[Job, Job]:
        async with AsyncJobClient(server.target) as client:
            job = await client.submit("demo.fail", {"message": "no"}, max_attempts=1)
            ended = await client.wait(job.id, timeout=STREAM_TIMEOUT_S)
            return ended, await client.get(job.id)

    ended, stored = asyncio.run(main())
    assert ended == stored
    assert ended.state is JobState.FAILED and ended.error is not None
    assert "no" in ended.error.message
