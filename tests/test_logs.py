"""Structured server logs: text by default, JSON lines with --log-json, and
the request id and job id on the lines of a call, read from a real server's
log while real clients call it."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any

import grpc
from conftest import ServerProcess
from helpers import eventually

from jobstream.client import JobClient
from jobstream.v1 import job_service_pb2, job_service_pb2_grpc

CALL_TIMEOUT_S = 10.0
"""Deadline of each raw call."""

DEBUG = ("--log-level", "DEBUG")
"""The access log (one line per RPC) is at DEBUG."""


def get_job(target: str, job_id: str, request_id: str) -> None:
    """GetJob with our own x-request-id."""
    with grpc.insecure_channel(target) as channel:
        stub = job_service_pb2_grpc.JobServiceStub(channel)
        stub.GetJob(
            job_service_pb2.GetJobRequest(job_id=job_id),
            metadata=(("x-request-id", request_id),),
            timeout=CALL_TIMEOUT_S,
        )


def json_lines(server: ServerProcess) -> list[dict[str, Any]]:
    """Every line of the server's log, each of which must be JSON."""
    return [json.loads(line) for line in server.log().splitlines() if line.strip()]


def test_json_lines_carry_request_and_job_ids(
    start_server: Callable[..., ServerProcess],
) -> None:
    server = start_server(extra_args=(*DEBUG, "--log-json"))
    request_id = "req-" + uuid.uuid4().hex[:8]
    with JobClient(server.target) as client:
        job = client.submit("logs.test")
    get_job(server.target, job.id, request_id)

    def access_line() -> dict[str, Any] | None:
        return next(
            (line for line in json_lines(server) if line.get("request_id") == request_id), None
        )

    line = eventually(access_line)
    assert line["job_id"] == job.id
    assert line["logger"] == "jobstream.server.access"
    assert line["method"] == "/jobstream.v1.JobService/GetJob"
    assert line["code"] == "OK"
    assert line["level"] == "DEBUG" and line["duration_ms"] >= 0
    lines = json_lines(server)
    # SubmitJob's request names no job; its line names the job it made.
    submits = [x for x in lines if x.get("method") == "/jobstream.v1.JobService/SubmitJob"]
    assert [x["job_id"] for x in submits] == [job.id]
    assert submits[0]["request_id"] != request_id  # a fresh id when the caller sends none
    assert any(x["message"].startswith("serving on") for x in lines)
    # Library chatter (every SQL statement) stays out even at DEBUG.
    assert not any(x["logger"] == "peewee" and x["level"] == "DEBUG" for x in lines)


def test_errors_and_unusable_request_ids(start_server: Callable[..., ServerProcess]) -> None:
    server = start_server(extra_args=(*DEBUG, "--log-json"))
    forged = 'x" level=ERROR ' + "y" * 80
    try:
        get_job(server.target, "no-such-job", forged)
    except grpc.RpcError as exc:
        assert exc.code() == grpc.StatusCode.NOT_FOUND
    else:
        raise AssertionError("GetJob of a missing job succeeded")

    def line() -> dict[str, Any] | None:
        return next((x for x in json_lines(server) if x.get("job_id") == "no-such-job"), None)

    found = eventually(line)
    assert found["code"] == "NOT_FOUND"
    assert found["request_id"] != forged and len(found["request_id"]) <= 64
    assert forged not in server.log()


def test_text_lines_by_default(start_server: Callable[..., ServerProcess]) -> None:
    server = start_server(extra_args=DEBUG)
    request_id = "req-" + uuid.uuid4().hex[:8]
    with JobClient(server.target) as client:
        job = client.submit("logs.test")
    get_job(server.target, job.id, request_id)
    suffix = f"[request_id={request_id} job_id={job.id}]"
    text = eventually(lambda: server.log() if suffix in server.log() else None)
    line = next(x for x in text.splitlines() if suffix in x)
    assert "DEBUG jobstream.server.access: /jobstream.v1.JobService/GetJob OK" in line
    assert not text.lstrip().startswith("{")
