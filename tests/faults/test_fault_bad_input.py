"""Scenario 8: hypothesis-generated hostile input for every RPC (ids with
``../``, NUL and emoji, huge and deep params, SQL metacharacters in filters,
absurd page sizes and seqs). No call answers UNKNOWN or INTERNAL, and a
refused call leaves the database as it was."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import grpc
from conftest import ServerProcess
from google.protobuf import struct_pb2
from google.protobuf.duration_pb2 import Duration
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from faults.record import FULL, record, size
from jobstream.v1 import (
    job_pb2,
    job_service_pb2,
    job_service_pb2_grpc,
    worker_service_pb2,
    worker_service_pb2_grpc,
)

CALL_TIMEOUT_S = 10.0
"""Deadline of every call."""

CLIENT_MAX_DEPTH = 33
"""Deepest params protobuf's own encoder builds (its decoder stops near 100
message levels, three per JSON level); one past the server's default 32.
Deeper requests are sent as raw bytes, see :func:`_raw_deep_submit`."""

FORBIDDEN = frozenset({grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL})
"""Codes that would mean the server did not understand its own failure."""

NASTY = st.sampled_from(
    [
        "../etc/passwd",
        "..",
        "a\x00b",
        "job_\U0001f4a3",
        "' OR 1=1 --",
        '"; DROP TABLE job; --',
        "%_%",
        "\\",
        "a" * 5000,
        "",
        " ",
        "\u202e",
        "job_" + "z" * 26,
    ]
)
"""Hand-picked hostile strings, mixed with generated text."""

TEXT = st.one_of(NASTY, st.text(max_size=80))
INT32 = st.integers(-(2**31), 2**31 - 1)
INT64 = st.integers(-(2**63), 2**63 - 1)


def _deep(depth: int) -> struct_pb2.Struct:
    value: Any = "leaf"
    for _ in range(depth):
        value = {"d": value}
    struct = struct_pb2.Struct()
    struct.update(value if isinstance(value, dict) else {"v": value})
    return struct


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        out.append(low | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _raw_deep_submit(levels: int) -> bytes:
    """A serialized SubmitJobRequest whose params nest ``levels`` deep:
    deeper than protobuf will build, so only raw bytes can carry it."""
    inner = b""
    for _ in range(levels):
        value = b"\x2a" + _varint(len(inner)) + inner  # Value.struct_value
        entry = b"\x0a\x01d\x12" + _varint(len(value)) + value  # map entry "d" -> value
        inner = b"\x0a" + _varint(len(entry)) + entry  # Struct.fields
    return b"\x12\x03x.y" + b"\x2a" + _varint(len(inner)) + inner  # kind, params


def _params(kind: str) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    if kind == "deep":
        return _deep(CLIENT_MAX_DEPTH)
    if kind == "huge":
        struct.update({"blob": "x" * 400_000})
    elif kind == "wide":
        struct.update({str(i): i for i in range(20_000)})
    return struct


@st.composite
def requests(draw: st.DrawFn) -> tuple[str, Any]:
    """One RPC name and a hostile request for it."""
    rpc = draw(
        st.sampled_from(
            [
                "SubmitJob",
                "GetJob",
                "ListJobs",
                "WatchJob",
                "WatchJobs",
                "CancelJob",
                "DeleteJob",
                "GetJobLogs",
                "ListJobResults",
                "AcquireJob",
                "ReportJob",
                "FinishJob",
            ]
        )
    )
    job_id = draw(TEXT)
    if rpc == "SubmitJob":
        return rpc, job_service_pb2.SubmitJobRequest(
            job_id=draw(st.one_of(st.just(""), TEXT)),
            kind=draw(TEXT),
            queue=draw(st.one_of(st.just(""), TEXT)),
            priority=draw(INT32),
            params=_params(draw(st.sampled_from(["none", "deep", "huge", "wide"]))),
            labels=draw(st.dictionaries(TEXT, TEXT, max_size=40)),
            max_attempts=draw(INT32),
            request_id=draw(st.one_of(st.just(""), TEXT)),
        )
    flt = job_pb2.JobFilter(
        states=draw(st.lists(st.integers(-5, 50), max_size=3)),  # type: ignore[arg-type]
        kinds=draw(st.lists(TEXT, max_size=3)),
        labels=draw(st.dictionaries(TEXT, TEXT, max_size=3)),
        queues=draw(st.lists(TEXT, max_size=3)),
    )
    token = draw(TEXT)
    page = draw(INT32)
    match rpc:
        case "GetJob":
            return rpc, job_service_pb2.GetJobRequest(job_id=job_id)
        case "ListJobs":
            return rpc, job_service_pb2.ListJobsRequest(
                filter=flt, page_size=page, page_token=token
            )
        case "WatchJob":
            return rpc, job_service_pb2.WatchJobRequest(job_id=job_id, after_seq=draw(INT64))
        case "WatchJobs":
            return rpc, job_service_pb2.WatchJobsRequest(filter=flt, after_position=draw(INT64))
        case "CancelJob":
            return rpc, job_service_pb2.CancelJobRequest(job_id=job_id, reason=draw(TEXT))
        case "DeleteJob":
            return rpc, job_service_pb2.DeleteJobRequest(job_id=job_id, force=draw(st.booleans()))
        case "GetJobLogs":
            return rpc, job_service_pb2.GetJobLogsRequest(
                job_id=job_id, page_size=page, page_token=token
            )
        case "ListJobResults":
            return rpc, job_service_pb2.ListJobResultsRequest(
                job_id=job_id, page_size=page, page_token=token
            )
        case "AcquireJob":
            return rpc, worker_service_pb2.AcquireJobRequest(
                worker_id=draw(TEXT),
                kinds=draw(st.lists(TEXT, max_size=3)),
                queues=draw(st.lists(TEXT, max_size=3)),
                wait=Duration(seconds=draw(st.integers(-10, 10**6)) % 2),
            )
        case "ReportJob":
            return rpc, worker_service_pb2.ReportJobRequest(
                job_id=job_id,
                lease_id=draw(TEXT),
                logs=[job_pb2.LogLine(text=t) for t in draw(st.lists(TEXT, max_size=3))],
                files=draw(st.lists(TEXT, max_size=3)),
            )
        case _:
            return rpc, worker_service_pb2.FinishJobRequest(job_id=job_id, lease_id=draw(TEXT))


def _snapshot(jobs: Any) -> str:
    listed = jobs.ListJobs(job_service_pb2.ListJobsRequest(page_size=1000), timeout=CALL_TIMEOUT_S)
    return json.dumps(sorted((j.id, j.last_seq, j.state) for j in listed.jobs))


def test_hostile_input_never_breaks_the_server(
    start_server: Callable[..., ServerProcess],
) -> None:
    server = start_server()
    channel = grpc.insecure_channel(server.target)
    jobs = job_service_pb2_grpc.JobServiceStub(channel)
    workers = worker_service_pb2_grpc.WorkerServiceStub(channel)
    jobs.SubmitJob(job_service_pb2.SubmitJobRequest(kind="faults.seed"), timeout=CALL_TIMEOUT_S)
    seen = {"calls": 0, "refused": 0, "bad_codes": 0, "changed": 0}
    bad: list[str] = []
    raw_submit: grpc.UnaryUnaryMultiCallable[bytes, Any] = channel.unary_unary(
        "/jobstream.v1.JobService/SubmitJob", None, None
    )
    for levels in (60, 5_000):
        seen["calls"] += 1
        try:
            raw_submit(_raw_deep_submit(levels), timeout=CALL_TIMEOUT_S)
            bad.append(f"params {levels} deep were accepted")
        except grpc.RpcError as exc:
            seen["refused"] += 1
            if exc.code() is not grpc.StatusCode.INVALID_ARGUMENT:
                seen["bad_codes"] += 1
                bad.append(f"params {levels} deep: {exc.code().name} {exc.details()}")

    @settings(
        max_examples=size(150, 2000),
        deadline=None,
        database=None,
        # Reproducible in `make test`; new examples every `make faults`.
        derandomize=not FULL,
        suppress_health_check=list(HealthCheck),
    )
    @given(requests())
    def check(case: tuple[str, Any]) -> None:
        rpc, request = case
        stub = workers if rpc in ("AcquireJob", "ReportJob", "FinishJob") else jobs
        before = _snapshot(jobs)
        seen["calls"] += 1
        try:
            answer = getattr(stub, rpc)(request, timeout=CALL_TIMEOUT_S)
            if rpc.startswith("Watch"):
                try:
                    next(iter(answer))
                finally:
                    answer.cancel()
        except grpc.RpcError as exc:
            seen["refused"] += 1
            if exc.code() in FORBIDDEN:
                seen["bad_codes"] += 1
                bad.append(f"{rpc}: {exc.code().name} {exc.details()}")
            if _snapshot(jobs) != before:
                seen["changed"] += 1
                bad.append(f"{rpc} was refused ({exc.code().name}) but changed the database")

    try:
        check()
    finally:
        channel.close()
    passed = seen["bad_codes"] == 0 and seen["changed"] == 0
    record(
        8,
        f"{seen['calls']} calls, {seen['refused']} refused: {seen['bad_codes']} UNKNOWN/INTERNAL, "
        f"{seen['changed']} refused calls changed data",
        passed,
    )
    assert bad == []
