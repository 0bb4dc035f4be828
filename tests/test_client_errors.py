"""grpc.RpcError -> typed JobstreamError: one class per status, the server's
message kept whole, the offending field picked out of it."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from concurrent import futures

import grpc
import grpc.aio
import pytest

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
    """What a failed call raises: an RpcError with code() and details()."""

    def __init__(self, code: grpc.StatusCode, details: str | None) -> None:
        super().__init__(details)
        self._code = code
        self._details = details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str | None:
        return self._details


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


@pytest.mark.parametrize(
    ("details", "field"),
    [
        ("job_id: no job 'x'", "job_id"),
        ("params: too large (70000 bytes > 65536)", "params"),
        ("requests[2].kind: must match [a-z0-9]", "requests[2].kind"),
        ("filter.labels: too many", "filter.labels"),
        ("after_seq: 10 is beyond the job's last seq 3", "after_seq"),
        ("no job here", None),
        ("the job 'x': not found", None),
        ("", None),
        (": nothing", None),
    ],
)
def test_field_is_taken_from_the_message(details: str, field: str | None) -> None:
    error = errors.from_rpc_error(FakeRpcError(grpc.StatusCode.INVALID_ARGUMENT, details))
    assert error.field == field
    assert error.message == details
    assert str(error) == details


def test_missing_details_and_code() -> None:
    error = errors.from_rpc_error(FakeRpcError(grpc.StatusCode.UNAVAILABLE, None))
    assert isinstance(error, UnavailableError)
    assert error.message == ""
    bare = errors.from_rpc_error(grpc.RpcError())
    assert bare.code is grpc.StatusCode.UNKNOWN
    assert isinstance(bare, errors.UnknownError)


def test_repr_names_the_code() -> None:
    error = errors.from_rpc_error(FakeRpcError(grpc.StatusCode.NOT_FOUND, "job_id: no job 'x'"))
    assert repr(error) == "NotFoundError(code=NOT_FOUND, message=\"job_id: no job 'x'\")"


def test_aio_errors_map_the_same_way() -> None:
    aio_error = grpc.aio.AioRpcError(
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.aio.Metadata(),
        grpc.aio.Metadata(),
        "request_id: taken by job_1 with another payload",
        None,
    )
    error = errors.from_rpc_error(aio_error)
    assert isinstance(error, AlreadyExistsError)
    assert error.field == "request_id"


def test_cancelled_error_is_not_asyncio_cancellation() -> None:
    assert not issubclass(errors.CancelledError, asyncio.CancelledError)
    assert issubclass(errors.CancelledError, Exception)


# -- through a real gRPC call: a minimal in-process JobService that refuses


class RefusingJobService(job_service_pb2_grpc.JobServiceServicer):
    """GetJob says NOT_FOUND, CancelJob FAILED_PRECONDITION, SubmitJob
    INVALID_ARGUMENT, each with a field-prefixed message."""

    def GetJob(
        self, request: job_service_pb2.GetJobRequest, context: grpc.ServicerContext
    ) -> job_service_pb2.GetJobResponse:
        context.abort(grpc.StatusCode.NOT_FOUND, f"job_id: no job {request.job_id!r}")

    def CancelJob(
        self, request: job_service_pb2.CancelJobRequest, context: grpc.ServicerContext
    ) -> job_service_pb2.CancelJobResponse:
        context.abort(grpc.StatusCode.FAILED_PRECONDITION, "job_id: the job already ended")

    def SubmitJob(
        self, request: job_service_pb2.SubmitJobRequest, context: grpc.ServicerContext
    ) -> job_service_pb2.SubmitJobResponse:
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"kind: {request.kind!r} is not valid")


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
        with pytest.raises(FailedPreconditionError):
            client.cancel("j")
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
    # A server that answers UNAVAILABLE itself was reached, whatever it quotes.
    for message in ("storage unavailable: connection to db failed: Connection refused", ""):
        answered = errors.from_rpc_error(FakeRpcError(grpc.StatusCode.UNAVAILABLE, message))
        assert errors.unreachable_reason(answered) is None
    other = errors.from_rpc_error(FakeRpcError(grpc.StatusCode.NOT_FOUND, "failed to connect"))
    assert errors.unreachable_reason(other) is None
