"""Every refusal carries a google.rpc.ErrorInfo (domain jobstream, a reason
of the protos' ErrorReason, its metadata) and the detail that fits its code,
on the real server and through the HTTP gateway. The reasons are walked from
the enum: a reason added without a scenario here fails."""

from __future__ import annotations

import ast
import hashlib
import json
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import grpc
import peewee as pw
import pytest
from authmatrix import TOKENS, write_tokens
from conftest import InProcessServer, ServerProcess
from google.protobuf import json_format
from google.rpc import error_details_pb2, status_pb2
from helpers import Raw, RawWorker, eventually
from httpclient import call

from jobstream.client import errors
from jobstream.client.security import Security
from jobstream.server.status import domain_error
from jobstream.v1 import errors_pb2, job_service_pb2, job_service_pb2_grpc

ADMIN = TOKENS["admin"][0]
READER = TOKENS["alice-reader"][0]
WORKER = TOKENS["worker"][0]
DEADLINE_S = 30


@dataclass
class Seen:
    """A refusal as the caller got it: the status code and the
    google.rpc.Status with its details."""

    code: grpc.StatusCode
    status: status_pb2.Status
    client_error: errors.JobstreamError | None = None
    """What the Python client made of it (gRPC refusals only)."""


def seen_grpc(exc: grpc.RpcError) -> Seen:
    """The Status of a failed gRPC call, from its trailer."""
    assert isinstance(exc, grpc.Call)
    status = status_pb2.Status()
    for key, value in exc.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            status.ParseFromString(value)
    return Seen(exc.code(), status, errors.from_rpc_error(exc))


def seen_http(answer_status: int, body: bytes) -> Seen:
    """The Status of an HTTP error answer (its JSON body)."""
    status = json_format.ParseDict(json.loads(body), status_pb2.Status())
    code = next(c for c in grpc.StatusCode if c.value[0] == status.code)
    assert answer_status >= 400
    return Seen(code, status)


def refused(call_it: Callable[[], object]) -> Seen:
    with pytest.raises(grpc.RpcError) as caught:
        result = call_it()
        if isinstance(result, Iterator):  # a stream fails when read
            for _ in result:
                pass
    return seen_grpc(caught.value)


class Walk:
    """A server with tokens, the HTTP face, one artifact per job and no
    lease sweep (so a lease can be seen expired), and stubs onto it."""

    def __init__(self, server: ServerProcess) -> None:
        self.server = server
        self.start_server: Callable[..., InProcessServer] | None = None
        """The test's factory of servers of its own (SHUTTING_DOWN stops one)."""
        self.admin = Security(token=ADMIN).channel(server.target, ())
        self.reader = Security(token=READER).channel(server.target, ())
        self.anonymous = grpc.insecure_channel(server.target)
        self.jobs = job_service_pb2_grpc.JobServiceStub(self.admin)
        self.worker = RawWorker(server.target, token=WORKER)

    def close(self) -> None:
        for channel in (self.admin, self.reader, self.anonymous):
            channel.close()
        self.worker.close()

    def submit(self, kind: str = "", *, job_id: str = "", request_id: str = "") -> str:
        request = job_service_pb2.SubmitJobRequest(
            kind=kind or f"walk.{uuid.uuid4().hex[:8]}", job_id=job_id, request_id=request_id
        )
        stored: str = self.jobs.SubmitJob(request, timeout=DEADLINE_S).job.id
        return stored

    def running(self, lease_s: int | None = None) -> tuple[str, str]:
        """A job held by the test's worker: (job id, lease id)."""
        kind = f"walk.{uuid.uuid4().hex[:8]}"
        job_id = self.submit(kind)
        lease = self.worker.acquire(kind, lease_s=lease_s)
        assert lease.job.id == job_id
        return job_id, lease.lease_id

    def http(self, method: str, path: str, body: object = None, **headers: str) -> Seen:
        answer = call(method, f"{self.server.http_url}{path}", body, headers)
        return seen_http(answer.status, answer.body)


def invalid_field(w: Walk) -> Seen:
    return refused(lambda: w.jobs.SubmitJob(job_service_pb2.SubmitJobRequest(kind="Not A Kind")))


def malformed_request(w: Walk) -> Seen:
    raw = Raw(w.admin).unary("/jobstream.v1.JobService/SubmitJob")
    return refused(lambda: raw(b"\x12\x05ab", timeout=DEADLINE_S))  # a string cut short


def page_token_invalid(w: Walk) -> Seen:
    request = job_service_pb2.ListJobsRequest(page_token="bm90IG91cnM=")
    return refused(lambda: w.jobs.ListJobs(request, timeout=DEADLINE_S))


def job_not_found(w: Walk) -> Seen:
    request = job_service_pb2.GetJobRequest(job_id="no-such-job")
    return refused(lambda: w.jobs.GetJob(request, timeout=DEADLINE_S))


def job_deleted(w: Walk) -> Seen:
    job_id = w.submit()  # no worker takes it: it stays queued, deletable
    stream = w.jobs.WatchJob(job_service_pb2.WatchJobRequest(job_id=job_id), timeout=DEADLINE_S)
    assert next(stream).HasField("snapshot")
    w.jobs.DeleteJob(job_service_pb2.DeleteJobRequest(job_id=job_id), timeout=DEADLINE_S)
    return refused(lambda: stream)


def artifact_not_found(w: Walk) -> Seen:
    job_id = w.submit()
    request = job_service_pb2.DownloadArtifactRequest(job_id=job_id, name="none.txt")
    return refused(lambda: w.jobs.DownloadArtifact(request, timeout=DEADLINE_S))


def route_not_found(w: Walk) -> Seen:
    return w.http("GET", "/v1/no-such-route")


def job_id_taken(w: Walk) -> Seen:
    job_id = f"walk-{uuid.uuid4().hex[:8]}"
    w.submit(job_id=job_id)
    return refused(lambda: w.submit(job_id=job_id))


def request_id_reused(w: Walk) -> Seen:
    key = uuid.uuid4().hex
    w.submit("walk.one", request_id=key)
    return refused(lambda: w.submit("walk.two", request_id=key))


def lease_expired(w: Walk) -> Seen:
    job_id, lease_id = w.running(lease_s=1)
    # No sweep runs on this server, so the job keeps its lapsed lease.
    eventually(lambda: _lease_lapsed(w, job_id), timeout=10)
    return refused(lambda: w.worker.log(job_id, lease_id, ["late"]))


def _lease_lapsed(w: Walk, job_id: str) -> bool:
    rows = w.server.sql("SELECT lease_expire FROM job WHERE id = ?", job_id)
    return bool(rows and rows[0][0] is not None and rows[0][0] < time.time() * 1_000_000)


def lease_unknown(w: Walk) -> Seen:
    job_id, _ = w.running()
    return refused(lambda: w.worker.log(job_id, "0" * 32, ["hello"]))


def job_ended(w: Walk) -> Seen:
    job_id, lease_id = w.running()
    w.worker.finish(job_id, lease_id)
    request = job_service_pb2.CancelJobRequest(job_id=job_id)
    return refused(lambda: w.jobs.CancelJob(request, timeout=DEADLINE_S))


def job_running(w: Walk) -> Seen:
    job_id, _ = w.running()
    request = job_service_pb2.DeleteJobRequest(job_id=job_id)
    return refused(lambda: w.jobs.DeleteJob(request, timeout=DEADLINE_S))


def job_not_retryable(w: Walk) -> Seen:
    request = job_service_pb2.RetryJobRequest(job_id=w.submit())
    return refused(lambda: w.jobs.RetryJob(request, timeout=DEADLINE_S))


def beyond_end(w: Walk) -> Seen:
    request = job_service_pb2.WatchJobRequest(job_id=w.submit(), after_seq=1000)
    return refused(lambda: w.jobs.WatchJob(request, timeout=DEADLINE_S))


def artifact_replaced(w: Walk) -> Seen:
    job_id, lease_id = w.running(lease_s=120)
    first = hashlib.sha256(b"seed").digest() * (24 * 1024 * 1024 // 32)
    w.worker.upload(job_id, lease_id, "out.bin", first)
    request = job_service_pb2.DownloadArtifactRequest(job_id=job_id, name="out.bin")
    stream = w.jobs.DownloadArtifact(request, timeout=DEADLINE_S)
    assert next(stream).artifact.size_bytes == len(first)
    # Deleted while the download waits: the sweep the delete wakes removes
    # the chunks, most of them not sent yet.
    request_delete = job_service_pb2.DeleteJobRequest(job_id=job_id, force=True)
    w.jobs.DeleteJob(request_delete, timeout=DEADLINE_S)
    eventually(lambda: _no_chunks(w, job_id))
    return refused(lambda: stream)


def _no_chunks(w: Walk, job_id: str) -> bool:
    rows = w.server.sql("SELECT count(*) FROM job_artifact_chunk WHERE job_id = ?", job_id)
    return rows == [(0,)]


def limit_exceeded(w: Walk) -> Seen:
    job_id, lease_id = w.running()
    w.worker.upload(job_id, lease_id, "one.txt", b"1")
    return refused(lambda: w.worker.upload(job_id, lease_id, "two.txt", b"2"))


def shutting_down(w: Walk) -> Seen:
    assert w.start_server is not None
    other = w.start_server(name="stopping")
    with grpc.insecure_channel(other.target) as channel:
        jobs = job_service_pb2_grpc.JobServiceStub(channel)
        request = job_service_pb2.WatchJobsRequest(skip_listing=True)
        stream = jobs.WatchJobs(request, timeout=DEADLINE_S)
        assert next(stream).caught_up
        other.stop()
        return refused(lambda: stream)


def unauthenticated(w: Walk) -> Seen:
    stub = job_service_pb2_grpc.JobServiceStub(w.anonymous)
    return refused(lambda: stub.GetJob(job_service_pb2.GetJobRequest(job_id="x")))


def permission_denied(w: Walk) -> Seen:
    stub = job_service_pb2_grpc.JobServiceStub(w.reader)
    return refused(lambda: stub.SubmitJob(job_service_pb2.SubmitJobRequest(kind="walk.no")))


def cross_site_request(w: Walk) -> Seen:
    return w.http("POST", "/v1/jobs", {"kind": "walk.x"}, Origin="https://elsewhere.example")


def method_not_allowed(w: Walk) -> Seen:
    return w.http("PUT", "/v1/jobs", {}, Authorization=f"Bearer {ADMIN}")


SCENARIOS: dict[str, tuple[grpc.StatusCode, Callable[[Walk], Seen]]] = {
    "INVALID_FIELD": (grpc.StatusCode.INVALID_ARGUMENT, invalid_field),
    "MALFORMED_REQUEST": (grpc.StatusCode.INVALID_ARGUMENT, malformed_request),
    "PAGE_TOKEN_INVALID": (grpc.StatusCode.INVALID_ARGUMENT, page_token_invalid),
    "JOB_NOT_FOUND": (grpc.StatusCode.NOT_FOUND, job_not_found),
    "JOB_DELETED": (grpc.StatusCode.NOT_FOUND, job_deleted),
    "ARTIFACT_NOT_FOUND": (grpc.StatusCode.NOT_FOUND, artifact_not_found),
    "ROUTE_NOT_FOUND": (grpc.StatusCode.NOT_FOUND, route_not_found),
    "JOB_ID_TAKEN": (grpc.StatusCode.ALREADY_EXISTS, job_id_taken),
    "REQUEST_ID_REUSED": (grpc.StatusCode.ALREADY_EXISTS, request_id_reused),
    "LEASE_EXPIRED": (grpc.StatusCode.FAILED_PRECONDITION, lease_expired),
    "LEASE_UNKNOWN": (grpc.StatusCode.FAILED_PRECONDITION, lease_unknown),
    "JOB_ENDED": (grpc.StatusCode.FAILED_PRECONDITION, job_ended),
    "JOB_RUNNING": (grpc.StatusCode.FAILED_PRECONDITION, job_running),
    "JOB_NOT_RETRYABLE": (grpc.StatusCode.FAILED_PRECONDITION, job_not_retryable),
    "BEYOND_END": (grpc.StatusCode.OUT_OF_RANGE, beyond_end),
    "ARTIFACT_REPLACED": (grpc.StatusCode.ABORTED, artifact_replaced),
    "LIMIT_EXCEEDED": (grpc.StatusCode.RESOURCE_EXHAUSTED, limit_exceeded),
    "SHUTTING_DOWN": (grpc.StatusCode.UNAVAILABLE, shutting_down),
    "UNAUTHENTICATED": (grpc.StatusCode.UNAUTHENTICATED, unauthenticated),
    "PERMISSION_DENIED": (grpc.StatusCode.PERMISSION_DENIED, permission_denied),
    "CROSS_SITE_REQUEST": (grpc.StatusCode.PERMISSION_DENIED, cross_site_request),
    "METHOD_NOT_ALLOWED": (grpc.StatusCode.UNIMPLEMENTED, method_not_allowed),
}
"""How to meet each reason on a healthy server, and the code it comes with."""

FAULTS: dict[str, tuple[grpc.StatusCode, Exception]] = {
    "WRITE_CONFLICT": (grpc.StatusCode.ALREADY_EXISTS, pw.IntegrityError("x")),
    "STORAGE_UNAVAILABLE": (grpc.StatusCode.UNAVAILABLE, pw.OperationalError("x")),
    "INTERNAL_ERROR": (grpc.StatusCode.INTERNAL, RuntimeError("a bug")),
}
"""Reasons a healthy server never gives on demand (a write race the store
already orders, a broken database, a bug): checked through the one mapping
every servicer error goes through."""

ELSEWHERE = {"ARTIFACT_NOT_READY"}
"""Reasons that need a database an earlier version left, walked where one is
made: tests/test_legacy_artifacts.py (test_postgres_each_server_imports_the_files_it_holds)."""

REASONS = [
    errors_pb2.ErrorReason.Name(value)
    for value in errors_pb2.ErrorReason.values()
    if value != errors_pb2.ERROR_REASON_UNSPECIFIED
]


def test_every_reason_has_a_scenario() -> None:
    covered = set(SCENARIOS) | set(FAULTS) | ELSEWHERE
    assert set(REASONS) == covered, set(REASONS) ^ covered


@pytest.fixture(scope="module")
def walk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Walk]:
    base = tmp_path_factory.mktemp("reasons")
    data = base / "data"
    data.mkdir()
    args = (
        "--tokens-file",
        str(write_tokens(base / "tokens.json")),
        "--sweep-seconds",
        "3600",
        "--max-artifacts-per-job",
        "1",
    )
    proc = ServerProcess(data, extra_args=args, http=True)
    proc.start()
    walk = Walk(proc)
    yield walk
    walk.close()
    proc.kill()


@pytest.mark.parametrize("reason", sorted(SCENARIOS))
def test_reason_on_the_real_server(
    reason: str, walk: Walk, start_inprocess_server: Callable[..., InProcessServer]
) -> None:
    code, scenario = SCENARIOS[reason]
    walk.start_server = start_inprocess_server
    seen = scenario(walk)
    assert seen.code is code, seen.status
    assert seen.status.code == code.value[0]
    info = _only(seen.status, error_details_pb2.ErrorInfo)
    assert info is not None, f"{reason}: no ErrorInfo in {seen.status}"
    assert (info.domain, info.reason) == ("jobstream", reason)
    field = info.metadata.get("field")
    if code is grpc.StatusCode.INVALID_ARGUMENT and field:
        bad = _only(seen.status, error_details_pb2.BadRequest)
        assert bad is not None and bad.field_violations[0].field == field
    if code is grpc.StatusCode.FAILED_PRECONDITION:
        failure = _only(seen.status, error_details_pb2.PreconditionFailure)
        assert failure is not None and failure.violations[0].type == reason
    if code is grpc.StatusCode.RESOURCE_EXHAUSTED:
        quota = _only(seen.status, error_details_pb2.QuotaFailure)
        assert quota is not None and quota.violations[0].subject == info.metadata["setting"]
        assert info.metadata["limit"] == "1"
    if seen.client_error is not None:
        assert seen.client_error.reason == reason
        assert dict(seen.client_error.metadata) == dict(info.metadata)
        assert seen.client_error.field == (field or None)


M = TypeVar(
    "M",
    error_details_pb2.ErrorInfo,
    error_details_pb2.BadRequest,
    error_details_pb2.PreconditionFailure,
    error_details_pb2.QuotaFailure,
)


def _only(status: status_pb2.Status, kind: type[M]) -> M | None:
    """The one detail of type ``kind``, or None."""
    found = [d for d in status.details if d.Is(kind.DESCRIPTOR)]
    assert len(found) <= 1
    if not found:
        return None
    message = kind()
    found[0].Unpack(message)
    return message


@pytest.mark.parametrize("reason", sorted(FAULTS))
def test_reason_of_a_fault(reason: str) -> None:
    from jobstream.server.error_details import rich_status

    code, exc = FAULTS[reason]
    status = rich_status(domain_error(exc))
    assert status.code == code.value[0]
    info = _only(status, error_details_pb2.ErrorInfo)
    assert info is not None and (info.domain, info.reason) == ("jobstream", reason)


def test_metadata_names_the_job_and_the_lease(walk: Walk) -> None:
    job_id, _ = walk.running()
    seen = refused(lambda: walk.worker.log(job_id, "f" * 32, ["x"]))
    assert seen.client_error is not None
    assert seen.client_error.metadata["jobId"] == job_id
    assert seen.client_error.metadata["leaseId"] == "f" * 32
    assert seen.client_error.metadata["state"] == "running"
    walk.jobs.CancelJob(job_service_pb2.CancelJobRequest(job_id=job_id))


def test_the_http_body_carries_the_servers_details(walk: Walk) -> None:
    seen = walk.http("GET", "/v1/jobs/no-such-job", Authorization=f"Bearer {ADMIN}")
    info = _only(seen.status, error_details_pb2.ErrorInfo)
    assert seen.code is grpc.StatusCode.NOT_FOUND
    assert info is not None and info.reason == "JOB_NOT_FOUND"
    assert dict(info.metadata) == {"jobId": "no-such-job", "field": "job_id"}


def test_the_readme_lists_every_reason() -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    for reason in REASONS:
        assert f"`{reason}`" in readme, f"README's API section does not list {reason}"


STATED = {"FailedPrecondition", "AlreadyExists"}
"""Domain errors with several reasons and no default: every raise site
names its reason."""


def test_every_raise_of_an_error_with_several_reasons_states_one() -> None:
    server = Path(__file__).resolve().parent.parent / "server" / "jobstream" / "server"
    unstated: list[str] = []
    for path in server.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id in STATED
                and not any(k.arg == "reason" for k in node.keywords)
            ):
                unstated.append(f"{path.name}:{node.lineno}")
    assert unstated == []
