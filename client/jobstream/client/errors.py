"""Typed errors for every gRPC status, and the one place a ``grpc.RpcError``
becomes one of them, with the reason and particulars the server sent in its
google.rpc.ErrorInfo (and the field its BadRequest names)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType

import grpc
from google.protobuf import any_pb2
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2

from jobstream.v1 import errors_pb2

__all__ = [
    "AbortedError",
    "AlreadyExistsError",
    "CancelledError",
    "DataLossError",
    "DeadlineExceededError",
    "ErrorReason",
    "FailedPreconditionError",
    "InternalError",
    "InvalidArgumentError",
    "JobstreamError",
    "NotFoundError",
    "OutOfRangeError",
    "PermissionDeniedError",
    "ResourceExhaustedError",
    "UnauthenticatedError",
    "UnavailableError",
    "UnimplementedError",
    "UnknownError",
    "from_rpc_error",
    "sent_status",
    "unreachable_reason",
]

ErrorReason = errors_pb2.ErrorReason
"""The reasons a jobstream server gives (the protos' ErrorReason):
``error.reason == ErrorReason.Name(ErrorReason.LEASE_EXPIRED)``, or compare
with the names as strings (``"LEASE_EXPIRED"``)."""

DOMAIN = "jobstream"
"""The google.rpc.ErrorInfo domain of a jobstream server's refusals."""

DETAILS_TRAILER = "grpc-status-details-bin"
"""The trailer holding the serialized google.rpc.Status of a failed call."""

_NO_METADATA: Mapping[str, str] = MappingProxyType({})


class JobstreamError(Exception):
    """A call to the jobstream server failed.

    ``code`` is the gRPC status code and ``message`` the server's status
    message as sent, for people. Programs act on ``reason``: the name of one
    of the protos' ErrorReason values (``"LEASE_EXPIRED"``, see
    :data:`Reason`) from the google.rpc.ErrorInfo every refusal of a
    jobstream server carries, or None when the status came from gRPC itself
    (no connection, a deadline, a cancel). ``metadata`` holds its
    particulars (``jobId``, ``limit``, ``setting`` …) and ``field`` the
    request field at fault, or None.
    """

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        field: str | None = None,
        *,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field
        self.reason = reason
        self.metadata: Mapping[str, str] = (
            MappingProxyType(dict(metadata)) if metadata else _NO_METADATA
        )

    def __repr__(self) -> str:
        reason = f", reason={self.reason}" if self.reason else ""
        return f"{type(self).__name__}(code={self.code.name}{reason}, message={self.message!r})"


class CancelledError(JobstreamError):
    """CANCELLED: the call was cancelled, usually by the caller.

    Not to be confused with ``asyncio.CancelledError``; this one is a normal
    exception about an RPC.
    """


class UnknownError(JobstreamError):
    """UNKNOWN: the server failed in a way it did not classify."""


class InvalidArgumentError(JobstreamError):
    """INVALID_ARGUMENT: a request field is malformed or beyond its limit."""


class DeadlineExceededError(JobstreamError):
    """DEADLINE_EXCEEDED: the call did not finish within its deadline."""


class NotFoundError(JobstreamError):
    """NOT_FOUND: the named job does not exist."""


class AlreadyExistsError(JobstreamError):
    """ALREADY_EXISTS: the job id, or the request_id with another payload, is taken."""


class PermissionDeniedError(JobstreamError):
    """PERMISSION_DENIED: the caller may not do this to this job."""


class ResourceExhaustedError(JobstreamError):
    """RESOURCE_EXHAUSTED: a configured limit (size, count, watchers) was reached."""


class FailedPreconditionError(JobstreamError):
    """FAILED_PRECONDITION: the job's state does not allow the call, or a
    worker's lease is no longer the job's current one."""


class AbortedError(JobstreamError):
    """ABORTED: the call lost a race with a concurrent change; retrying may succeed."""


class OutOfRangeError(JobstreamError):
    """OUT_OF_RANGE: a resume point (seq, position) is outside the kept history."""


class UnimplementedError(JobstreamError):
    """UNIMPLEMENTED: the server does not offer this RPC."""


class InternalError(JobstreamError):
    """INTERNAL: the server broke an invariant."""


class UnavailableError(JobstreamError):
    """UNAVAILABLE: the server cannot be reached or cannot take the call now;
    retrying later may succeed."""


class DataLossError(JobstreamError):
    """DATA_LOSS: stored data is damaged."""


class UnauthenticatedError(JobstreamError):
    """UNAUTHENTICATED: the call carried no valid credentials."""


_ERROR_CLASSES: dict[grpc.StatusCode, type[JobstreamError]] = {
    grpc.StatusCode.CANCELLED: CancelledError,
    grpc.StatusCode.UNKNOWN: UnknownError,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExistsError,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDeniedError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhaustedError,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPreconditionError,
    grpc.StatusCode.ABORTED: AbortedError,
    grpc.StatusCode.OUT_OF_RANGE: OutOfRangeError,
    grpc.StatusCode.UNIMPLEMENTED: UnimplementedError,
    grpc.StatusCode.INTERNAL: InternalError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.DATA_LOSS: DataLossError,
    grpc.StatusCode.UNAUTHENTICATED: UnauthenticatedError,
}
"""The exception class for each non-OK status code."""


def error_class(code: grpc.StatusCode) -> type[JobstreamError]:
    """The exception class that stands for ``code`` (JobstreamError for OK or
    a code this client does not know)."""
    return _ERROR_CLASSES.get(code, JobstreamError)


def from_rpc_error(error: grpc.RpcError) -> JobstreamError:
    """The typed exception for a failed call, keeping the server's message
    and reading the reason, metadata and field from the status details.

    Works for sync and ``grpc.aio`` errors alike. An RpcError that carries no
    status (it should not happen) becomes UNKNOWN.
    """
    # The base grpc.RpcError has no code()/details(); the concrete errors
    # raised by calls (and grpc.aio.AioRpcError) do.
    code_fn = getattr(error, "code", None)
    code = code_fn() if callable(code_fn) else grpc.StatusCode.UNKNOWN
    if not isinstance(code, grpc.StatusCode):
        code = grpc.StatusCode.UNKNOWN
    details_fn = getattr(error, "details", None)
    message = (details_fn() if callable(details_fn) else None) or ""
    if not isinstance(message, str):
        message = str(message)
    status = sent_status(error, code)
    reason, metadata, field = _read_details(status.details if status else ())
    return error_class(code)(code, message, field, reason=reason, metadata=metadata)


def sent_status(error: grpc.RpcError, code: grpc.StatusCode) -> status_pb2.Status | None:
    """The google.rpc.Status the server sent in the call's trailer (with its
    details), when it sent one for this very ``code``; None otherwise (a
    status gRPC made itself, or a broken trailer)."""
    trailers_fn = getattr(error, "trailing_metadata", None)
    trailers = trailers_fn() if callable(trailers_fn) else None
    for key, value in trailers or ():
        if key != DETAILS_TRAILER or not isinstance(value, bytes):
            continue
        status = status_pb2.Status()
        try:
            status.ParseFromString(value)
        except DecodeError:
            return None
        return status if status.code == code.value[0] else None
    return None


def _read_details(
    details: Sequence[any_pb2.Any],
) -> tuple[str | None, Mapping[str, str] | None, str | None]:
    """(reason, metadata, field) from a Status's details: the ErrorInfo of
    the jobstream domain, and the field its metadata or a BadRequest names."""
    reason: str | None = None
    metadata: Mapping[str, str] | None = None
    field: str | None = None
    for any_detail in details:
        info = error_details_pb2.ErrorInfo()
        bad = error_details_pb2.BadRequest()
        if any_detail.Unpack(info):
            if info.domain == DOMAIN:
                reason, metadata = info.reason, dict(info.metadata)
                field = field or metadata.get("field") or None
        elif any_detail.Unpack(bad) and bad.field_violations:
            field = field or bad.field_violations[0].field or None
    return reason, metadata, field


_UNREACHABLE_REASONS: tuple[tuple[tuple[str, ...], str], ...] = (
    (("connection refused",), "connection refused"),
    (
        (
            "errors resolving",
            "domain name not found",
            "dns resolution",
            "name or service not known",
        ),
        "host name not found",
    ),
    (("network is unreachable", "no route to host"), "network unreachable"),
    (("handshake", "ssl", "tls"), "TLS handshake failed"),
    (("timed out", "timeout"), "connection timed out"),
)
"""What gRPC's own wording of a failed connection (which differs by cause
and version, and comes with no details to read instead) means, in a few
words; anything else is "connection failed"."""


def unreachable_reason(error: JobstreamError) -> str | None:
    """Why the server could not be reached, in a few words (``connection
    refused``, ``host name not found`` …), when ``error`` says the channel
    got no connection: UNAVAILABLE with no reason, for every UNAVAILABLE a
    jobstream server sends itself (shutting down, its storage down) carries
    one. None for any other error."""
    if error.code is not grpc.StatusCode.UNAVAILABLE or error.reason is not None:
        return None
    text = error.message.lower()
    for words, reason in _UNREACHABLE_REASONS:
        if any(word in text for word in words):
            return reason
    return "connection failed"
