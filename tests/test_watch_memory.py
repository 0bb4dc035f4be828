"""The watch memory budget and the byte bounds on what one watcher holds
(quotas.py, broker.py, service.py). The budget's effect on a real server's
memory is fault scenario 12 (tests/faults/test_fault_stalled_memory.py)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
import pytest
from conftest import InProcessServer
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from helpers import RawWorker, eventually, open_watch

from jobstream.client import JobClient, JobEvent
from jobstream.server.broker import Broker
from jobstream.server.config import from_args
from jobstream.server.domain import Effects, Event, EventKind, event_bytes
from jobstream.server.quotas import DEFAULT_WATCH_MEMORY_BUDGET, MIB, WATCH_RESERVE_BYTES
from jobstream.v1 import job_service_pb2, job_service_pb2_grpc

StartServer = Callable[..., InProcessServer]

CALL_TIMEOUT_S = 30.0
"""Deadline of every watch opened here."""


def _open(stub: job_service_pb2_grpc.JobServiceStub, job_id: str) -> Any:
    """A watch holding its reservation, or None when the server refused it."""
    request = job_service_pb2.WatchJobRequest(job_id=job_id)
    return open_watch(stub, request, CALL_TIMEOUT_S)


def test_watches_past_the_memory_budget_are_refused_naming_it(
    start_inprocess_server: StartServer,
) -> None:
    server = start_inprocess_server(extra_args=("--watch-memory-budget", "1536KiB"))
    fits = 1536 * 1024 // WATCH_RESERVE_BYTES
    channel = grpc.insecure_channel(server.target)
    stub = job_service_pb2_grpc.JobServiceStub(channel)
    streams: list[Any] = []
    try:
        job_id = stub.SubmitJob(job_service_pb2.SubmitJobRequest(kind="x.y")).job.id
        for _ in range(fits):
            stream = _open(stub, job_id)
            assert stream is not None
            streams.append(stream)
        refused: Any = stub.WatchJob(
            job_service_pb2.WatchJobRequest(job_id=job_id), timeout=CALL_TIMEOUT_S
        )
        with pytest.raises(grpc.RpcError) as exc:
            next(refused)
        assert exc.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        details = exc.value.details() or ""
        assert "--watch-memory-budget" in details
        assert "of 1536 KiB (--watch-memory-budget)" in details
        assert f"{WATCH_RESERVE_BYTES // 1024} KiB" in details
        status = rpc_status.from_call(exc.value)
        assert status is not None
        info = error_details_pb2.ErrorInfo()
        assert [d for d in status.details if d.Unpack(info)], status.details
        assert info.reason == "LIMIT_EXCEEDED"
        assert info.metadata["setting"] == "--watch-memory-budget"
        assert info.metadata["limit"] == str(1536 * 1024)
        # WatchJobs counts against the same budget.
        listing: Any = stub.WatchJobs(job_service_pb2.WatchJobsRequest(), timeout=CALL_TIMEOUT_S)
        with pytest.raises(grpc.RpcError) as exc:
            next(listing)
        assert exc.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        # A watch that ends gives its reservation back.
        streams.pop().cancel()
        streams.append(eventually(lambda: _open(stub, job_id), timeout=15))
    finally:
        for stream in streams:
            stream.cancel()
        channel.close()


def test_watchers_within_the_budget_receive_every_event(
    start_inprocess_server: StartServer,
) -> None:
    """Events of 32 KiB each, read by a watcher that starts behind (catch-up
    pages sized by bytes) and one that follows live: both get every event."""
    server = start_inprocess_server()
    worker = RawWorker(server.target)
    try:
        with JobClient(server.target) as client:
            job_id = client.submit("x.big").id
            lease_id = worker.acquire("x.big", lease_s=120).lease_id
            for round_ in range(3):
                worker.log(job_id, lease_id, [f"{round_}-{i} " + "y" * 32_000 for i in range(40)])
            live = client.watch(job_id)
            next(live)  # the snapshot
            for round_ in range(3, 6):
                worker.log(job_id, lease_id, [f"{round_}-{i} " + "y" * 32_000 for i in range(40)])
            worker.finish(job_id, lease_id)
            last_seq = client.get(job_id).last_seq
            behind = [e.seq for e in client.watch(job_id) if isinstance(e, JobEvent)]
            followed = [e.seq for e in live if isinstance(e, JobEvent)]
    finally:
        worker.close()
    assert behind == list(range(1, last_seq + 1))
    assert followed == list(range(1, last_seq + 1))


def _log_event(seq: int, text: str) -> Event:
    return Event(
        job_id="j", seq=seq, time=seq, kind=EventKind.LOG, body={"text": text, "level": "info"}
    )


def test_a_watcher_queue_overflows_by_bytes_before_count() -> None:
    """A stalled watcher of a job nobody else follows keeps its queued events
    alive alone: the queue holds about WATCH_QUEUE_BYTES of them, not 2,000
    events of any size."""
    broker = Broker(queue_limit=2_000, queue_bytes=90_000)
    big = [_log_event(i, "z" * 32_000) for i in range(1, 4)]
    with broker.job("j") as sub:
        broker.publish(Effects(events=big[:2]))
        assert [e.seq for e in sub.events] == [1, 2]
        assert sub.queued_bytes == sum(event_bytes(e) for e in big[:2])
        broker.publish(Effects(events=big[2:]))  # 3 x 32 KB passes 90,000 bytes
        assert sub.overflowed and not sub.events and sub.queued_bytes == 0


def test_the_budget_flag_reads_sizes_and_refuses_less_than_one_watch(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert from_args([]).watch_memory_budget == DEFAULT_WATCH_MEMORY_BUDGET
    assert from_args(["--watch-memory-budget", "64MiB"]).watch_memory_budget == 64 * MIB
    environ = {"JOBSTREAM_WATCH_MEMORY_BUDGET": "1g"}
    assert from_args([], environ=environ).watch_memory_budget == 1024 * MIB
    assert from_args(["--watch-memory-budget", "2097152"]).watch_memory_budget == 2 * MIB
    for bad in ("lots", "1.5GiB", "12TB"):
        with pytest.raises(SystemExit) as exited:
            from_args(["--watch-memory-budget", bad])
        assert exited.value.code == 2
        assert "expected a size such as" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        from_args(["--watch-memory-budget", "1KiB"])
    assert "--watch-memory-budget must be at least" in capsys.readouterr().err
