"""Hostile and malformed requests over real gRPC: each answers
INVALID_ARGUMENT (ALREADY_EXISTS for a conflicting idempotency key) naming
the field and the limit, never INTERNAL or UNKNOWN, and stores nothing.
Also: answers that could outgrow a client's receive limit come in pages that
fit. Input is checked before anything reaches the database, so most cases
run on SQLite; those the database answers (idempotency keys, page sizes of
stored rows) run on PostgreSQL too."""

from __future__ import annotations

import base64
import functools
import json
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
from conftest import Server
from google.api import field_behavior_pb2
from google.protobuf import struct_pb2
from google.protobuf.duration_pb2 import Duration
from helpers import Raw, RawWorker

from jobstream.client import JobClient
from jobstream.server import limits
from jobstream.v1 import (
    job_pb2,
    job_service_pb2,
    job_service_pb2_grpc,
    worker_service_pb2,
    worker_service_pb2_grpc,
)
from jobstream.v1 import job_service_pb2 as js
from jobstream.v1 import worker_service_pb2 as ws

CALL_TIMEOUT_S = 15.0
"""Deadline of every call (and of every stream read)."""

CLIENT_RECEIVE_LIMIT = 4 * 1024 * 1024
"""gRPC's default receive limit, which JobClient keeps."""


@pytest.fixture
def channel(bare_server: Server) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(bare_server.target) as ch:
        yield ch


@pytest.fixture
def jobs(channel: grpc.Channel) -> job_service_pb2_grpc.JobServiceStub:
    return job_service_pb2_grpc.JobServiceStub(channel)


@pytest.fixture
def workers(channel: grpc.Channel) -> worker_service_pb2_grpc.WorkerServiceStub:
    return worker_service_pb2_grpc.WorkerServiceStub(channel)


def refused(call: Callable[[], Any]) -> grpc.RpcError:
    """The error ``call`` raised (it must raise one)."""
    with pytest.raises(grpc.RpcError) as info:
        call()
    error = info.value
    assert isinstance(error, grpc.RpcError)
    return error


def invalid(call: Callable[[], Any], field: str) -> str:
    """Asserts INVALID_ARGUMENT whose message starts with ``field: ``;
    returns the message."""
    error = refused(call)
    details = error.details() or ""
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT, (error.code(), details)
    assert details.startswith(f"{field}: "), details
    return details


def labelled(jobs: job_service_pb2_grpc.JobServiceStub, label: str) -> list[str]:
    """Ids of the jobs carrying ``suite=<label>``."""
    flt = job_pb2.JobFilter(labels={"suite": label})
    page = jobs.ListJobs(job_service_pb2.ListJobsRequest(filter=flt), timeout=CALL_TIMEOUT_S)
    return [j.id for j in page.jobs]


def token(value: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode()


# ------------------------------------------------------ idempotency in a batch


@pytest.mark.both_backends
def test_one_request_id_twice_in_a_batch_is_one_job(
    jobs: job_service_pb2_grpc.JobServiceStub,
) -> None:
    suite = uuid.uuid4().hex
    same = job_service_pb2.SubmitJobRequest(
        kind="batch.twice", request_id=f"r-{suite}", labels={"suite": suite}
    )
    answer = jobs.SubmitJobs(
        job_service_pb2.SubmitJobsRequest(requests=[same, same]), timeout=CALL_TIMEOUT_S
    )
    first, second = answer.responses
    assert first.job.id == second.job.id
    assert (first.created, second.created) == (True, False)
    assert labelled(jobs, suite) == [first.job.id]
    # Sent again, the whole batch is a retry.
    again = jobs.SubmitJobs(
        job_service_pb2.SubmitJobsRequest(requests=[same, same]), timeout=CALL_TIMEOUT_S
    )
    assert [(r.job.id, r.created) for r in again.responses] == [(first.job.id, False)] * 2


@pytest.mark.both_backends
def test_one_request_id_for_two_jobs_in_a_batch_is_already_exists(
    jobs: job_service_pb2_grpc.JobServiceStub,
) -> None:
    suite = uuid.uuid4().hex
    requests = [
        job_service_pb2.SubmitJobRequest(kind="batch.a", request_id=suite, labels={"suite": suite}),
        job_service_pb2.SubmitJobRequest(kind="batch.b", labels={"suite": suite}),
        job_service_pb2.SubmitJobRequest(kind="batch.c", request_id=suite, labels={"suite": suite}),
    ]
    error = refused(
        lambda: jobs.SubmitJobs(
            job_service_pb2.SubmitJobsRequest(requests=requests), timeout=CALL_TIMEOUT_S
        )
    )
    assert error.code() is grpc.StatusCode.ALREADY_EXISTS
    assert (error.details() or "").startswith("requests[2].request_id: ")
    assert "requests[0]" in (error.details() or "")
    assert labelled(jobs, suite) == []


def test_a_batch_whose_answer_could_not_be_received_is_refused(
    jobs: job_service_pb2_grpc.JobServiceStub,
) -> None:
    suite = uuid.uuid4().hex
    blob = {"blob": "x" * 200_000}
    requests = [
        job_service_pb2.SubmitJobRequest(
            kind="batch.big", params=_struct(blob), labels={"suite": suite}
        )
        for _ in range(20)
    ]
    details = invalid(
        lambda: jobs.SubmitJobs(
            job_service_pb2.SubmitJobsRequest(requests=requests), timeout=CALL_TIMEOUT_S
        ),
        "requests",
    )
    assert str(limits.MAX_BATCH_SUBMIT_BYTES) in details
    assert labelled(jobs, suite) == []


# ------------------------------------------------------------- page tokens

FOREIGN_TOKENS = {
    "huge integers": token([2**63, "x"]),
    "huge seq": token(2**63),
    "deep JSON": base64.urlsafe_b64encode(b"[" * 100_000 + b"]" * 100_000).decode(),
    "deep JSON, short": base64.urlsafe_b64encode(b"[" * 300 + b"]" * 300).decode(),
    "bool for int": token([True, "job_" + "0" * 26]),
    "negative time": token([-1, "job_" + "0" * 26]),
    "not an id": token([1, "../etc"]),
    "padded": token([1, "job_" + "0" * 26]) + "!!",
    "too long": "A" * (limits.MAX_PAGE_TOKEN_BYTES + 4),
    "not base64 JSON": "%%%",
}


@pytest.mark.parametrize("bad", FOREIGN_TOKENS.values(), ids=list(FOREIGN_TOKENS))
@pytest.mark.parametrize("rpc", ["ListJobs", "ListJobLogs", "ListJobResults"])
def test_page_tokens_are_checked_to_their_exact_shape(
    jobs: job_service_pb2_grpc.JobServiceStub, rpc: str, bad: str
) -> None:
    job_id = jobs.SubmitJob(
        job_service_pb2.SubmitJobRequest(kind="tokens.own"), timeout=CALL_TIMEOUT_S
    ).job.id
    if rpc == "ListJobs":
        request: Any = job_service_pb2.ListJobsRequest(page_token=bad)
    elif rpc == "ListJobLogs":
        request = job_service_pb2.ListJobLogsRequest(job_id=job_id, page_token=bad)
    else:
        request = job_service_pb2.ListJobResultsRequest(job_id=job_id, page_token=bad)
    details = invalid(lambda: getattr(jobs, rpc)(request, timeout=CALL_TIMEOUT_S), "page_token")
    assert "is not a page token issued for this request" in details


def test_tokens_the_server_issued_still_page(jobs: job_service_pb2_grpc.JobServiceStub) -> None:
    suite = uuid.uuid4().hex
    made = [
        jobs.SubmitJob(
            job_service_pb2.SubmitJobRequest(kind="tokens.page", labels={"suite": suite}),
            timeout=CALL_TIMEOUT_S,
        ).job.id
        for _ in range(5)
    ]
    seen: list[str] = []
    page_token = ""
    flt = job_pb2.JobFilter(labels={"suite": suite})
    while True:
        page = jobs.ListJobs(
            job_service_pb2.ListJobsRequest(filter=flt, page_size=2, page_token=page_token),
            timeout=CALL_TIMEOUT_S,
        )
        seen += [j.id for j in page.jobs]
        page_token = page.next_page_token
        if not page_token:
            break
    assert seen == list(reversed(made))


# ---------------------------------------------------------------- durations

BAD_DURATIONS = {
    "2**62 seconds": Duration(seconds=2**62),
    "nanos 2e9": Duration(nanos=2_000_000_000),
    "nanos -2e9": Duration(nanos=-2_000_000_000),
    "signs differ": Duration(seconds=1, nanos=-1),
    "signs differ, negative seconds": Duration(seconds=-1, nanos=1),
    "most negative": Duration(seconds=-(2**63)),
}


def _acquire(field: str, value: Duration) -> worker_service_pb2.AcquireJobRequest:
    request = worker_service_pb2.AcquireJobRequest(
        worker_id="w", kinds=["durations.none"], wait=Duration()
    )
    getattr(request, field).CopyFrom(value)
    return request


@pytest.mark.parametrize("value", BAD_DURATIONS.values(), ids=list(BAD_DURATIONS))
@pytest.mark.parametrize("field", ["wait", "lease_duration", "older_than", "window"])
def test_every_duration_is_checked_without_overflow(
    jobs: job_service_pb2_grpc.JobServiceStub,
    workers: worker_service_pb2_grpc.WorkerServiceStub,
    field: str,
    value: Duration,
) -> None:
    call: Callable[[], Any]
    if field in ("wait", "lease_duration"):
        call = lambda: workers.AcquireJob(_acquire(field, value), timeout=CALL_TIMEOUT_S)  # noqa: E731
    elif field == "older_than":
        purge = job_service_pb2.PurgeJobsRequest(older_than=value, dry_run=True)
        call = lambda: jobs.PurgeJobs(purge, timeout=CALL_TIMEOUT_S)  # noqa: E731
    else:
        stats = job_service_pb2.GetStatsRequest(window=value)
        call = lambda: jobs.GetStats(stats, timeout=CALL_TIMEOUT_S)  # noqa: E731
    invalid(call, field)


def test_a_wait_with_nanos_still_waits_that_long(
    workers: worker_service_pb2_grpc.WorkerServiceStub,
) -> None:
    request = _acquire("wait", Duration(nanos=300_000_000))
    began = time.monotonic()
    answer = workers.AcquireJob(request, timeout=CALL_TIMEOUT_S)
    waited = time.monotonic() - began
    assert not answer.lease_id
    # A lower bound: a slow machine only makes the call longer.
    assert waited >= 0.3, waited


# ---------------------------------------------------------- repeated fields

HUGE = 250_000
"""Values sent in one repeated field: past every database's parameter limit."""


def _filter(field: str, count: int) -> job_pb2.JobFilter:
    flt = job_pb2.JobFilter()
    if field == "states":
        flt.states.extend([job_pb2.JOB_STATE_QUEUED] * count)
    else:
        getattr(flt, field).extend(["k"] * count)
    return flt


@pytest.mark.parametrize("field", ["states", "kinds", "queues"])
@pytest.mark.parametrize("rpc", ["ListJobs", "WatchJobs", "GetStats", "PurgeJobs"])
def test_filter_lists_are_bounded(
    jobs: job_service_pb2_grpc.JobServiceStub, rpc: str, field: str
) -> None:
    flt = _filter(field, HUGE)
    call: Callable[[], Any]
    if rpc == "ListJobs":
        call = lambda: jobs.ListJobs(  # noqa: E731
            job_service_pb2.ListJobsRequest(filter=flt), timeout=CALL_TIMEOUT_S
        )
    elif rpc == "WatchJobs":
        call = lambda: next(  # noqa: E731
            iter(
                jobs.WatchJobs(job_service_pb2.WatchJobsRequest(filter=flt), timeout=CALL_TIMEOUT_S)
            )
        )
    elif rpc == "GetStats":
        call = lambda: jobs.GetStats(  # noqa: E731
            job_service_pb2.GetStatsRequest(filter=flt), timeout=CALL_TIMEOUT_S
        )
    else:
        purge = job_service_pb2.PurgeJobsRequest(filter=flt, older_than=Duration(), dry_run=True)
        call = lambda: jobs.PurgeJobs(purge, timeout=CALL_TIMEOUT_S)  # noqa: E731
    details = invalid(call, f"filter.{field}")
    assert f"the limit is {limits.MAX_FILTER_VALUES}" in details
    # At the limit it is served.
    at_limit = _filter(field, limits.MAX_FILTER_VALUES)
    jobs.ListJobs(job_service_pb2.ListJobsRequest(filter=at_limit), timeout=CALL_TIMEOUT_S)


@pytest.mark.parametrize("field", ["kinds", "queues"])
def test_acquire_lists_are_bounded(
    workers: worker_service_pb2_grpc.WorkerServiceStub, field: str
) -> None:
    request = worker_service_pb2.AcquireJobRequest(worker_id="w", kinds=["k"], wait=Duration())
    getattr(request, field).extend(["k"] * HUGE)
    details = invalid(lambda: workers.AcquireJob(request, timeout=CALL_TIMEOUT_S), field)
    assert f"the limit is {limits.MAX_ACQUIRE_NAMES}" in details


# ------------------------------------------------------ unparsable requests


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        out.append(low | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _deep_struct(levels: int) -> bytes:
    """A Struct of ``levels`` nested objects, as bytes: deeper than
    protobuf's encoder builds."""
    inner = b""
    for _ in range(levels - 1):
        value = _field(5, inner)  # Value.struct_value
        entry = _field(1, b"d") + _field(2, value)  # map entry "d" -> value
        inner = _field(1, entry)  # Struct.fields
    return inner


def _struct(value: dict[str, Any]) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    struct.update(value)
    return struct


def _nested(levels: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(levels - 1):
        value = {"d": value}
    return value


def test_params_too_deep_to_parse_name_the_field_and_limit(channel: grpc.Channel) -> None:
    submit = Raw(channel).unary("/jobstream.v1.JobService/SubmitJob")
    request = _field(2, b"deep.params") + _field(5, _deep_struct(40))
    details = invalid(lambda: submit(request, timeout=CALL_TIMEOUT_S), "params")
    assert details == "params: nests deeper than the limit of 32 levels"


def test_step_data_too_deep_to_parse_names_the_step(channel: grpc.Channel) -> None:
    report = Raw(channel).unary("/jobstream.v1.WorkerService/ReportJob")
    ok_step = _field(1, b"fine")
    deep_step = _field(1, b"deep") + _field(5, _deep_struct(40))
    request = (
        _field(1, b"job_" + b"0" * 26)
        + _field(2, b"0" * 32)
        + _field(5, ok_step)
        + _field(5, deep_step)
    )
    details = invalid(lambda: report(request, timeout=CALL_TIMEOUT_S), "steps[1].data")
    assert "the limit of 32 levels" in details


def test_depth_limit_is_one_rule_whether_parsed_or_not(
    jobs: job_service_pb2_grpc.JobServiceStub,
) -> None:
    # 33 levels parse, and are refused by the same rule, in the same words.
    deep = job_service_pb2.SubmitJobRequest(kind="deep.params", params=_struct(_nested(33)))
    details = invalid(lambda: jobs.SubmitJob(deep, timeout=CALL_TIMEOUT_S), "params")
    assert details == "params: nests deeper than the limit of 32 levels"
    fine = job_service_pb2.SubmitJobRequest(kind="deep.params", params=_struct(_nested(32)))
    assert jobs.SubmitJob(fine, timeout=CALL_TIMEOUT_S).created


def test_upload_with_an_unparsable_message_is_invalid_and_leaves_nothing(
    bare_server: Server, channel: grpc.Channel, jobs: job_service_pb2_grpc.JobServiceStub
) -> None:
    kind = f"upload.{uuid.uuid4().hex[:8]}"
    job_id = jobs.SubmitJob(job_service_pb2.SubmitJobRequest(kind=kind), timeout=CALL_TIMEOUT_S)
    worker = RawWorker(bare_server.target)
    try:
        lease = worker.acquire(kind)
    finally:
        worker.close()
    upload = Raw(channel).client_stream("/jobstream.v1.WorkerService/UploadArtifact")
    header = worker_service_pb2.UploadArtifactRequest(
        header=worker_service_pb2.ArtifactHeader(
            job_id=lease.job.id,
            lease_id=lease.lease_id,
            name="out.bin",
            size_bytes=4,
            sha256="0" * 64,
        )
    ).SerializeToString()
    bad_name = _field(1, _field(1, lease.job.id.encode()) + _field(3, b"\xff\xfe.bin"))
    cases = {
        "header.name": [bad_name],
        "request": [b"\xff\xff\xff"],
        "chunk": [header, _varint(2 << 3 | 2) + _varint(100) + b"ab"],  # cut short
    }
    for field, messages in cases.items():
        details = invalid(functools.partial(upload, iter(messages), timeout=CALL_TIMEOUT_S), field)
        assert "Error" not in details and "upb" not in details
    listed = jobs.ListArtifacts(
        job_service_pb2.ListArtifactsRequest(job_id=job_id.job.id), timeout=CALL_TIMEOUT_S
    )
    assert list(listed.artifacts) == []
    leftovers = list((bare_server.data_dir / "artifacts").rglob("*"))
    assert [p for p in leftovers if p.is_file()] == []


def test_reflection_garbage_is_invalid_argument_without_decoder_text(
    channel: grpc.Channel,
) -> None:
    reflect = Raw(channel).bidi("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo")
    details = invalid(
        lambda: list(reflect(iter([b"\xff\xff\xff"]), timeout=CALL_TIMEOUT_S)), "request"
    )
    assert "DecodeError" not in details and "Wire" not in details


# ------------------------------------------------------------ answer sizes


@pytest.mark.both_backends
def test_pages_fit_a_clients_receive_limit(bare_server: Server) -> None:
    suite = uuid.uuid4().hex
    blob = "x" * 240_000
    count = 2 * CLIENT_RECEIVE_LIMIT // len(blob)
    with JobClient(bare_server.target) as client:
        made = [
            client.submit("pages.big", {"blob": blob}, labels={"suite": suite}).id
            for _ in range(count)
        ]
        listed = [j.id for j in client.list(labels={"suite": suite}, page_size=1000)]
        assert listed == list(reversed(made))
        kind = f"pages.results.{uuid.uuid4().hex[:8]}"
        job = client.submit(kind)
        worker = RawWorker(bare_server.target)
        try:
            lease = worker.acquire(kind)
            for part in range(2):
                worker.stub.ReportJob(
                    worker_service_pb2.ReportJobRequest(
                        job_id=job.id,
                        lease_id=lease.lease_id,
                        report_seq=part + 1,
                        results=[
                            job_pb2.ResultItem(
                                key=f"{part}-{i}",
                                status=job_pb2.RESULT_STATUS_SUCCEEDED,
                                data=_struct({"blob": blob}),
                            )
                            for i in range(count // 2)
                        ],
                    ),
                    timeout=CALL_TIMEOUT_S,
                )
        finally:
            worker.close()
        keys = [e.result_item.key for e in client.results(job.id) if e.result_item is not None]
        assert len(keys) == 2 * (count // 2) and len(set(keys)) == len(keys)


# ------------------------------------------ REQUIRED fields (field_behavior)

LEASE = "0" * 32
"""A lease id of the server's shape that no job holds."""

HEADER = worker_service_pb2.ArtifactHeader(
    job_id="no-such-job", lease_id=LEASE, name="a.txt", size_bytes=0, sha256="0" * 64
)
"""An upload header with every required field set."""


def _report(**item: Any) -> worker_service_pb2.ReportJobRequest:
    return worker_service_pb2.ReportJobRequest(job_id="no-such-job", lease_id=LEASE, **item)


def _upload(header: worker_service_pb2.ArtifactHeader) -> Callable[[Any, Any], Any]:
    request = worker_service_pb2.UploadArtifactRequest(header=header)
    return lambda _, w: w.UploadArtifact(iter([request]), timeout=CALL_TIMEOUT_S)


def _without(message: Any, field: str) -> Any:
    """A copy of ``message`` with ``field`` cleared."""
    copy = type(message)()
    copy.CopyFrom(message)
    copy.ClearField(field)
    return copy


STEP = job_pb2.Step(name="s", state=job_pb2.STEP_STATE_RUNNING)
ITEM = job_pb2.ResultItem(key="k", status=job_pb2.RESULT_STATUS_SUCCEEDED)
Call = Callable[
    [job_service_pb2_grpc.JobServiceStub, worker_service_pb2_grpc.WorkerServiceStub], Any
]
T = CALL_TIMEOUT_S

REQUIRED: dict[tuple[str, str], tuple[Call, str]] = {
    ("SubmitJobRequest", "kind"): (
        lambda j, _: j.SubmitJob(js.SubmitJobRequest(), timeout=T),
        "kind",
    ),
    ("SubmitJobsRequest", "requests"): (
        lambda j, _: j.SubmitJobs(js.SubmitJobsRequest(), timeout=T),
        "requests",
    ),
    ("GetJobRequest", "job_id"): (lambda j, _: j.GetJob(js.GetJobRequest(), timeout=T), "job_id"),
    ("WatchJobRequest", "job_id"): (
        lambda j, _: list(j.WatchJob(js.WatchJobRequest(), timeout=T)),
        "job_id",
    ),
    ("CancelJobRequest", "job_id"): (
        lambda j, _: j.CancelJob(js.CancelJobRequest(), timeout=T),
        "job_id",
    ),
    ("DeleteJobRequest", "job_id"): (
        lambda j, _: j.DeleteJob(js.DeleteJobRequest(), timeout=T),
        "job_id",
    ),
    ("ListJobLogsRequest", "job_id"): (
        lambda j, _: j.ListJobLogs(js.ListJobLogsRequest(), timeout=T),
        "job_id",
    ),
    ("ListJobResultsRequest", "job_id"): (
        lambda j, _: j.ListJobResults(js.ListJobResultsRequest(), timeout=T),
        "job_id",
    ),
    ("RetryJobRequest", "job_id"): (
        lambda j, _: j.RetryJob(js.RetryJobRequest(), timeout=T),
        "job_id",
    ),
    ("PurgeJobsRequest", "older_than"): (
        lambda j, _: j.PurgeJobs(js.PurgeJobsRequest(dry_run=True), timeout=T),
        "older_than",
    ),
    ("ListArtifactsRequest", "job_id"): (
        lambda j, _: j.ListArtifacts(js.ListArtifactsRequest(), timeout=T),
        "job_id",
    ),
    ("DownloadArtifactRequest", "job_id"): (
        lambda j, _: list(j.DownloadArtifact(js.DownloadArtifactRequest(name="a"), timeout=T)),
        "job_id",
    ),
    ("DownloadArtifactRequest", "name"): (
        lambda j, _: list(
            j.DownloadArtifact(js.DownloadArtifactRequest(job_id="no-such-job"), timeout=T)
        ),
        "name",
    ),
    ("AcquireJobRequest", "worker_id"): (
        lambda _, w: w.AcquireJob(ws.AcquireJobRequest(kinds=["k"]), timeout=T),
        "worker_id",
    ),
    ("AcquireJobRequest", "kinds"): (
        lambda _, w: w.AcquireJob(ws.AcquireJobRequest(worker_id="w"), timeout=T),
        "kinds",
    ),
    ("ReportJobRequest", "job_id"): (
        lambda _, w: w.ReportJob(_without(_report(), "job_id"), timeout=T),
        "job_id",
    ),
    ("ReportJobRequest", "lease_id"): (
        lambda _, w: w.ReportJob(_without(_report(), "lease_id"), timeout=T),
        "lease_id",
    ),
    ("Step", "name"): (
        lambda _, w: w.ReportJob(_report(steps=[_without(STEP, "name")]), timeout=T),
        "steps[0].name",
    ),
    ("Step", "state"): (
        lambda _, w: w.ReportJob(_report(steps=[_without(STEP, "state")]), timeout=T),
        "steps[0].state",
    ),
    ("ResultItem", "key"): (
        lambda _, w: w.ReportJob(_report(results=[_without(ITEM, "key")]), timeout=T),
        "results[0].key",
    ),
    ("ResultItem", "status"): (
        lambda _, w: w.ReportJob(_report(results=[_without(ITEM, "status")]), timeout=T),
        "results[0].status",
    ),
    ("FinishJobRequest", "job_id"): (
        lambda _, w: w.FinishJob(
            ws.FinishJobRequest(lease_id=LEASE, outcome=ws.JOB_OUTCOME_SUCCEEDED), timeout=T
        ),
        "job_id",
    ),
    ("FinishJobRequest", "lease_id"): (
        lambda _, w: w.FinishJob(
            ws.FinishJobRequest(job_id="no-such-job", outcome=ws.JOB_OUTCOME_SUCCEEDED), timeout=T
        ),
        "lease_id",
    ),
    ("FinishJobRequest", "outcome"): (
        lambda _, w: w.FinishJob(
            ws.FinishJobRequest(job_id="no-such-job", lease_id=LEASE), timeout=T
        ),
        "outcome",
    ),
    ("FinishJobsRequest", "finishes"): (
        lambda _, w: w.FinishJobs(ws.FinishJobsRequest(), timeout=T),
        "finishes",
    ),
    ("ArtifactHeader", "job_id"): (
        _upload(_without(HEADER, "job_id")),
        "header.job_id",
    ),
    ("ArtifactHeader", "lease_id"): (
        _upload(_without(HEADER, "lease_id")),
        "header.lease_id",
    ),
    ("ArtifactHeader", "name"): (
        _upload(_without(HEADER, "name")),
        "header.name",
    ),
    ("ArtifactHeader", "sha256"): (
        _upload(_without(HEADER, "sha256")),
        "header.sha256",
    ),
}
"""Every field the protos mark REQUIRED: a call that leaves it out, and the
field its INVALID_ARGUMENT must name."""


def _annotated(behavior: int) -> set[tuple[str, str]]:
    """(message, field) of every field of jobstream.v1 marked ``behavior``."""
    found = set()
    for module in (job_pb2, job_service_pb2, worker_service_pb2):
        for message in module.DESCRIPTOR.message_types_by_name.values():
            for f in message.fields:
                if behavior in f.GetOptions().Extensions[field_behavior_pb2.field_behavior]:
                    found.add((message.name, f.name))
    return found


def test_every_required_field_has_a_case() -> None:
    assert _annotated(field_behavior_pb2.REQUIRED) == set(REQUIRED)


@pytest.mark.parametrize("case", list(REQUIRED), ids=[".".join(c) for c in REQUIRED])
def test_a_required_field_left_out_is_invalid_argument_naming_it(
    jobs: job_service_pb2_grpc.JobServiceStub,
    workers: worker_service_pb2_grpc.WorkerServiceStub,
    case: tuple[str, str],
) -> None:
    call, field = REQUIRED[case]
    invalid(lambda: call(jobs, workers), field)


def test_the_shortest_lease_is_one_second(
    workers: worker_service_pb2_grpc.WorkerServiceStub,
) -> None:
    """lease_duration below 1 s is refused; 1 s is a lease (no job is
    waiting, so the answer is empty)."""
    request = ws.AcquireJobRequest(worker_id="w", kinds=["lease.none"], wait=Duration())
    request.lease_duration.CopyFrom(Duration(nanos=999_000_000))
    details = invalid(lambda: workers.AcquireJob(request, timeout=T), "lease_duration")
    assert "1" in details
    request.lease_duration.CopyFrom(Duration(seconds=1))
    assert not workers.AcquireJob(request, timeout=T).HasField("job")
