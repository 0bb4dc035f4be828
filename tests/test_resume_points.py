"""A resume point outside the kept history is an error, never a silent
skip: beyond the newest event / position is OUT_OF_RANGE, a deleted job is
NOT_FOUND (also for a watch that is open when the job is deleted)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
import pytest
from conftest import InProcessServer

from jobstream.v1 import job_service_pb2, job_service_pb2_grpc

CALL_TIMEOUT_S = 15.0
"""Deadline of every stream read here."""


def _drain(stream: Any) -> None:
    for _ in stream:
        pass


def test_resume_points_outside_history(
    start_inprocess_server: Callable[..., InProcessServer],
) -> None:
    server = start_inprocess_server()
    with grpc.insecure_channel(server.target) as channel:
        stub = job_service_pb2_grpc.JobServiceStub(channel)
        job = stub.SubmitJob(job_service_pb2.SubmitJobRequest(kind="x.idle")).job
        with pytest.raises(grpc.RpcError) as beyond:
            _drain(
                stub.WatchJob(
                    job_service_pb2.WatchJobRequest(job_id=job.id, after_seq=job.last_seq + 5),
                    timeout=CALL_TIMEOUT_S,
                )
            )
        assert beyond.value.code() is grpc.StatusCode.OUT_OF_RANGE
        assert "after_seq" in (beyond.value.details() or "")
        with pytest.raises(grpc.RpcError) as beyond_list:
            _drain(
                stub.WatchJobs(
                    job_service_pb2.WatchJobsRequest(after_position=10**12),
                    timeout=CALL_TIMEOUT_S,
                )
            )
        assert beyond_list.value.code() is grpc.StatusCode.OUT_OF_RANGE

        open_watch: Any = stub.WatchJob(
            job_service_pb2.WatchJobRequest(job_id=job.id), timeout=CALL_TIMEOUT_S
        )
        next(open_watch)  # the snapshot
        stub.DeleteJob(job_service_pb2.DeleteJobRequest(job_id=job.id))
        with pytest.raises(grpc.RpcError) as deleted_while_open:
            _drain(open_watch)
        assert deleted_while_open.value.code() is grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.RpcError) as deleted:
            _drain(
                stub.WatchJob(
                    job_service_pb2.WatchJobRequest(job_id=job.id, after_seq=1),
                    timeout=CALL_TIMEOUT_S,
                )
            )
        assert deleted.value.code() is grpc.StatusCode.NOT_FOUND
