"""A watcher that stops reading costs the server a flag, not a backlog."""

from __future__ import annotations

import threading

import grpc
import pytest
from conftest import ServerProcess
from helpers import RawWorker, rss_bytes

from jobstream.client import JobClient, JobEvent
from jobstream.v1 import job_service_pb2, job_service_pb2_grpc

pytestmark = pytest.mark.timeout(180)

LINES = 50_000
BATCH = 1_000
RSS_GROWTH_LIMIT = 64 * 1024 * 1024


def test_stalled_watcher_does_not_hold_up_others_or_grow_memory(
    start_server: object,
) -> None:
    server: ServerProcess = start_server()  # type: ignore[operator]
    assert server.proc is not None
    with JobClient(server.target) as client:
        job = client.submit("chatty.job")
        worker = RawWorker(server.target)
        lease = worker.acquire("chatty.job", lease_s=600)

        channel = grpc.insecure_channel(server.target)
        stalled = iter(
            job_service_pb2_grpc.JobServiceStub(channel).WatchJob(
                job_service_pb2.WatchJobRequest(job_id=job.id), timeout=150
            )
        )
        first = next(stalled)  # connected; then it stops reading
        assert first.HasField("snapshot")

        fast: list[int] = []
        fast_thread = threading.Thread(
            target=lambda: fast.extend(
                e.seq for e in JobClient(server.target).watch(job.id) if isinstance(e, JobEvent)
            )
        )
        fast_thread.start()

        baseline = rss_bytes(server.proc.pid)
        peak = baseline
        for start in range(0, LINES, BATCH):
            worker.log(
                job.id, lease.lease_id, [f"line {start + i:06d} " + "x" * 80 for i in range(BATCH)]
            )
            peak = max(peak, rss_bytes(server.proc.pid))
        worker.finish(job.id, lease.lease_id)
        worker.close()
        fast_thread.join(60)
        last_seq = client.get(job.id).last_seq

    assert fast == list(range(1, last_seq + 1))
    assert peak - baseline < RSS_GROWTH_LIMIT, f"server grew {(peak - baseline) >> 20} MiB"
    # The stalled watcher now reads everything, in order, exactly once.
    late = [m.event.seq for m in stalled if m.HasField("event")]
    channel.close()
    assert late == list(range(1, last_seq + 1))
