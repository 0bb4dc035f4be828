"""Typed errors for every gRPC status, and the one place a ``grpc.RpcError``
becomes one of them."""

from __future__ import annotations

import re

import grpc

__all__ = [
    "AbortedError",
    "AlreadyExistsError",
    "CancelledError",
    "DataLossError",
    "DeadlineExceededError",
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
    "unreachable_reason",
]

# The server words its status messages "field: what is wrong", e.g.
# "job_id: no job 'x'" or "requests[2].kind: too long"; only the leading
# token is taken, and only when it looks like a field path.
_FIELD_PREFIX = re.compile(
    r"^([A-Za-z_][A-Za-z0-9_]*(?:\[\d+\])?(?:\.[A-Za-z_][A-Za-z0-9_]*(?:\[\d+\])?)*): "
)


class JobstreamError(Exception):
    """A call to the jobstream server failed.

    ``code`` is the gRPC status code, ``message`` the server's status message
    as sent (it starts with the offending field when there is one), and
    ``field`` that field's name, or None.
    """

    def __init__(self, code: grpc.StatusCode, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code.name}, message={self.message!r})"


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
    """The typed exception for a failed call, keeping the server's message.

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
    match = _FIELD_PREFIX.match(message)
    return error_class(code)(code, message, match.group(1) if match else None)


_NO_CONNECTION = re.compile(
    r"^(failed to connect to all addresses|errors resolving|DNS resolution failed"
    r"|Socket closed|Connection reset|connections to all backends failing)",
    re.IGNORECASE,
)
"""How gRPC's C core begins the message of a call that got no connection.
A server's own UNAVAILABLE (shutting down, storage down) never starts so,
even when it quotes a refused connection of its own (to its database)."""

_UNREACHABLE_REASONS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"connection refused", re.IGNORECASE), "connection refused"),
    (
        re.compile(
            r"errors resolving|domain name not found|dns resolution|name or service not known",
            re.IGNORECASE,
        ),
        "host name not found",
    ),
    (re.compile(r"network is unreachable|no route to host", re.IGNORECASE), "network unreachable"),
    (re.compile(r"handshake|ssl|tls", re.IGNORECASE), "TLS handshake failed"),
    (re.compile(r"timed out|timeout", re.IGNORECASE), "connection timed out"),
)
"""What gRPC's wording of a failed connection (which differs by cause and
version) means, in a few words; anything else is "connection failed"."""


def unreachable_reason(error: JobstreamError) -> str | None:
    """Why the server could not be reached, in a few words (``connection
    refused``, ``host name not found`` …), when ``error`` says the channel
    got no connection; None for any other error, including a server that
    answers UNAVAILABLE itself (shutting down, its storage down)."""
    if error.code is not grpc.StatusCode.UNAVAILABLE or not _NO_CONNECTION.match(error.message):
        return None
    for pattern, reason in _UNREACHABLE_REASONS:
        if pattern.search(error.message):
            return reason
    return "connection failed"
