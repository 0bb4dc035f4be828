"""grpc.RpcError -> typed JobstreamError: one class per status, the server's
message kept whole, reason, metadata and field read from the status details
(never from the message)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from concurrent import futures

import grpc
import grpc.aio
import pytest
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from jobstream.client import (
    AlreadyExistsError,
    AsyncJobClient,
    FailedPreconditionError,
    InvalidArgumentError,
    JobClient,
    JobstreamError,
    NotFoundError,
    UnavailableError,
    errors,
)
from jobstream.v1 import job_service_pb2, job_service_pb2_grpc


class FakeRpcError(grpc.RpcError):
    """What a failed call raises: an RpcError with code(), details() and,
    when the server sent one, its google.rpc.Status in the trailer."""

    def __init__(
        self, code: grpc.StatusCode, details: str | None, status: status_pb2.Status | None = None
    ) -> None:
        super().__init__(details)
        self._code = code
        self._details = details
        self._status = status

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str | None:
        return self._details

    def trailing_metadata(self) -> tuple[tuple[str, bytes], ...]:  # type: ignore[override]
        if self._status is None:
            return ()
        return (("grpc-status-details-bin", self._status.SerializeToString()),)


def rich(
    code: grpc.StatusCode,
    message: str,
    reason: str,
    metadata: dict[str, str],
    *extra: Message,
    domain: str = "jobstream",
) -> status_pb2.Status:
    """A google.rpc.Status as a jobstream server sends it."""
    status = status_pb2.Status(code=code.value[0], message=message)
    status.details.add().Pack(
        error_details_pb2.ErrorInfo(reason=reason, domain=domain, metadata=metadata)
    )
    for detail in extra:
        status.details.add().Pack(detail)
    return status


NON_OK = [code for code in grpc.StatusCode if code is not grpc.StatusCode.OK]


@pytest.mark.parametrize("code", NON_OK, ids=lambda c: c.name)
def test_every_status_has_its_own_class(code: grpc.StatusCode) -> None:
    error = errors.from_rpc_error(FakeRpcError(code, "something"))
    assert type(error) is not JobstreamError
    assert isinstance(error, JobstreamError)
    assert error.code is code
    assert error.message == "something"
    # The class is named for the status: NOT_FOUND -> NotFoundError.
    assert type(error).__name__ == code.name.title().replace("_", "") + "Error"


def test_error_classes_are_exported() -> None:
    for code in NON_OK:
        cls = errors.error_class(code)
        assert cls.__name__ in errors.__all__
        assert getattr(errors, cls.__name__) is cls
    assert errors.error_class(grpc.StatusCode.OK) is JobstreamError


def test_reason_metadata_and_field_come_from_the_details() -> None:
    code = grpc.StatusCode.FAILED_PRECONDITION
    status = rich(code, "lease_id: expired", "LEASE_EXPIRED", {"jobId": "j", "field": "lease_id"})
    error = errors.from_rpc_error(FakeRpcError(code, "lease_id: expired", status))
    assert (
        error.reason == "LEASE_EXPIRED" == errors.ErrorReason.Name(errors.ErrorReason.LEASE_EXPIRED)
    )
    assert dict(error.metadata) == {"jobId": "j", "field": "lease_id"}
    assert error.field == "lease_id"
    assert error.message == str(error) == "lease_id: expired"


def test_field_of_a_bad_request_without_error_info() -> None:
    code = grpc.StatusCode.INVALID_ARGUMENT
    status = status_pb2.Status(code=code.value[0], message="kind: bad")
    violation = error_details_pb2.BadRequest.FieldViolation(field="kind", description="bad")
    status.details.add().Pack(error_details_pb2.BadRequest(field_violations=[violation]))
    error = errors.from_rpc_error(FakeRpcError(code, "kind: bad", status))
    assert error.field == "kind" and error.reason is None and not error.metadata


@pytest.mark.parametrize(
    "status",
    [
        None,  # no details at all: the message is never read for a field
        rich(grpc.StatusCode.INTERNAL, "x", "INVALID_FIELD", {"field": "kind"}),  # another code
        rich(  # another domain's reason is not ours
            grpc.StatusCode.INVALID_ARGUMENT, "x", "BAD", {"field": "kind"}, domain="other"
        ),
    ],
)
def test_no_reason_and_no_field_without_our_details(status: status_pb2.Status | None) -> None:
    error = errors.from_rpc_error(
        FakeRpcError(grpc.StatusCode.INVALID_ARGUMENT, "kind: looks like a field", status)
    )
    assert error.reason is None and error.field is None and not error.metadata


def test_missing_details_and_code() -> None:
    error = errors.from_rpc_error(FakeRpcError(grpc.StatusCode.UNAVAILABLE, None))
    assert isinstance(error, UnavailableError)
    assert error.message == ""
    bare = errors.from_rpc_error(grpc.RpcError())
    assert bare.code is grpc.StatusCode.UNKNOWN
    assert isinstance(bare, errors.UnknownError)


def test_repr_names_the_code_and_reason() -> None:
    error = errors.from_rpc_error(FakeRpcError(grpc.StatusCode.NOT_FOUND, "job_id: no job 'x'"))
    assert repr(error) == "NotFoundError(code=NOT_FOUND, message=\"job_id: no job 'x'\")"
    code = grpc.StatusCode.NOT_FOUND
    status = rich(code, "no job", "JOB_NOT_FOUND", {})
    with_reason = errors.from_rpc_error(FakeRpcError(code, "no job", status))
    assert (
        repr(with_reason) == "NotFoundError(code=NOT_FOUND, reason=JOB_NOT_FOUND, message='no job')"
    )


def test_aio_errors_map_the_same_way() -> None:
    code = grpc.StatusCode.ALREADY_EXISTS
    status = rich(code, "taken", "REQUEST_ID_REUSED", {"field": "request_id", "jobId": "job_1"})
    aio_error = grpc.aio.AioRpcError(
        code,
        grpc.aio.Metadata(),
        grpc.aio.Metadata(("grpc-status-details-bin", status.SerializeToString())),
        "request_id: taken by job_1 with another payload",
        None,
    )
    error = errors.from_rpc_error(aio_error)
    assert isinstance(error, AlreadyExistsError)
    assert error.field == "request_id" and error.reason == "REQUEST_ID_REUSED"
    assert error.metadata["jobId"] == "job_1"


def test_cancelled_error_is_not_asyncio_cancellation() -> None:
    assert not issubclass(errors.CancelledError, asyncio.CancelledError)
    assert issubclass(errors.CancelledError, Exception)


# -- through a real gRPC call: a minimal in-process JobService that refuses


def abort_rich(context: grpc.ServicerContext, status: status_pb2.Status) -> None:
    context.abort_with_status(rpc_status.to_status(status))


class RefusingJobService(job_service_pb2_grpc.JobServiceServicer):
    """GetJob says NOT_FOUND, CancelJob FAILED_PRECONDITION, SubmitJob
    INVALID_ARGUMENT, each with the details a jobstream server sends."""

    def GetJob(
        self, request: job_service_pb2.GetJobRequest, context: grpc.ServicerContext
    ) -> job_service_pb2.GetJobResponse:
        message = f"job_id: no job {request.job_id!r}"
        code = grpc.StatusCode.NOT_FOUND
        abort_rich(context, rich(code, message, "JOB_NOT_FOUND", {"field": "job_id"}))
        raise AssertionError("unreachable")

    def CancelJob(
        self, request: job_service_pb2.CancelJobRequest, context: grpc.ServicerContext
    ) -> job_service_pb2.CancelJobResponse:
        code = grpc.StatusCode.FAILED_PRECONDITION
        abort_rich(context, rich(code, "job_id: the job already ended", "JOB_ENDED", {}))
        raise AssertionError("unreachable")

    def SubmitJob(
        self, request: job_service_pb2.SubmitJobRequest, context: grpc.ServicerContext
    ) -> job_service_pb2.SubmitJobResponse:
        message = f"kind: {request.kind!r} is not valid"
        code = grpc.StatusCode.INVALID_ARGUMENT
        abort_rich(context, rich(code, message, "INVALID_FIELD", {"field": "kind"}))
        raise AssertionError("unreachable")


@pytest.fixture(scope="module")
def refusing_target() -> Iterator[str]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    # Only three RPCs are implemented; the rest are never called here.
    servicer = RefusingJobService()  # type: ignore[abstract]
    job_service_pb2_grpc.add_JobServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}"
    server.stop(None).wait()


def test_sync_client_raises_typed_errors(refusing_target: str) -> None:
    with JobClient(refusing_target, timeout=10) as client:
        with pytest.raises(NotFoundError) as not_found:
            client.get("nope")
        assert not_found.value.field == "job_id"
        assert not_found.value.message == "job_id: no job 'nope'"
        assert isinstance(not_found.value.__cause__, grpc.RpcError)
        assert not_found.value.reason == "JOB_NOT_FOUND"
        with pytest.raises(FailedPreconditionError) as ended:
            client.cancel("j")
        assert ended.value.reason == "JOB_ENDED"
        with pytest.raises(InvalidArgumentError, match="kind: 'Bad' is not valid") as bad:
            client.submit("Bad")
        assert bad.value.field == "kind"


def test_async_client_raises_typed_errors(refusing_target: str) -> None:
    async def main() -> None:
        async with AsyncJobClient(refusing_target, timeout=10) as client:
            with pytest.raises(NotFoundError, match="job_id: no job 'nope'"):
                await client.get("nope")
            with pytest.raises(InvalidArgumentError) as bad:
                await client.submit("Bad")
            assert bad.value.field == "kind"

    asyncio.run(main())


def test_unreachable_server_is_unavailable() -> None:
    # Port 1 on loopback: nothing listens, the connection is refused at once.
    with JobClient("127.0.0.1:1", timeout=10) as client:
        with pytest.raises(UnavailableError):
            client.get("j")
        with pytest.raises(UnavailableError):
            next(iter(client.watch("j")))


def test_unreachable_reason_reads_grpcs_words_for_a_failed_connection() -> None:
    with JobClient("127.0.0.1:1", timeout=5) as client, pytest.raises(UnavailableError) as refused:
        client.get("x")
    assert errors.unreachable_reason(refused.value) == "connection refused"
    resolving = errors.from_rpc_error(
        FakeRpcError(
            grpc.StatusCode.UNAVAILABLE,
            "errors resolving nohost.invalid:1: [field:hostname lookup error:address lookup "
            "failed for nohost.invalid:1: Domain name not found]",
        )
    )
    assert errors.unreachable_reason(resolving) == "host name not found"
    # A server that answers UNAVAILABLE itself was reached, whatever it
    # quotes: its answer carries a reason.
    code = grpc.StatusCode.UNAVAILABLE
    for message in ("storage unavailable: connection to db failed: Connection refused", ""):
        status = rich(code, message, "STORAGE_UNAVAILABLE", {})
        answered = errors.from_rpc_error(FakeRpcError(code, message, status))
        assert errors.unreachable_reason(answered) is None
    other = errors.from_rpc_error(FakeRpcError(grpc.StatusCode.NOT_FOUND, "failed to connect"))
    assert errors.unreachable_reason(other) is None
