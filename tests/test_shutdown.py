"""Graceful shutdown: open watches end with UNAVAILABLE (so clients resume
elsewhere or later) instead of hanging or ending as if the job were done."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
import pytest
from conftest import ServerProcess

from jobstream.v1 import job_service_pb2, job_service_pb2_grpc

CALL_TIMEOUT_S = 30.0
"""Generous deadline of the watch: shutdown must end it well before."""


def test_sigterm_ends_watches_with_unavailable(
    start_server: Callable[..., ServerProcess],
) -> None:
    server = start_server()
    with grpc.insecure_channel(server.target) as channel:
        stub = job_service_pb2_grpc.JobServiceStub(channel)
        job_id = stub.SubmitJob(job_service_pb2.SubmitJobRequest(kind="x.idle")).job.id
        streams: list[Any] = [
            stub.WatchJob(job_service_pb2.WatchJobRequest(job_id=job_id), timeout=CALL_TIMEOUT_S),
            stub.WatchJobs(job_service_pb2.WatchJobsRequest(), timeout=CALL_TIMEOUT_S),
        ]
        for stream in streams:
            next(stream)  # the stream is established
        assert server.stop() == 0
        for stream in streams:
            with pytest.raises(grpc.RpcError) as exc:
                for _ in stream:
                    pass
            assert exc.value.code() is grpc.StatusCode.UNAVAILABLE
