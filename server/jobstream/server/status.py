"""The one place errors become gRPC statuses: domain errors by class, the
database's own errors by what they mean for the caller, anything else as
INTERNAL with the details left in the server log. INVALID_ARGUMENT also
carries a google.rpc.BadRequest naming the field, for clients that read
details. The decorators apply it to servicer methods."""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, TypeVar

import grpc
import peewee as pw
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from jobstream.server.errors import (
    Aborted,
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    OutOfRange,
    ResourceExhausted,
    ServiceError,
    Unavailable,
)

log = logging.getLogger(__name__)

Req = TypeVar("Req")
Resp = TypeVar("Resp")
Servicer = TypeVar("Servicer")
Context = grpc.aio.ServicerContext[Any, Any]

CODES: Mapping[type[ServiceError], grpc.StatusCode] = {
    InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    NotFound: grpc.StatusCode.NOT_FOUND,
    AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    OutOfRange: grpc.StatusCode.OUT_OF_RANGE,
    Aborted: grpc.StatusCode.ABORTED,
    ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Unavailable: grpc.StatusCode.UNAVAILABLE,
}
"""The status code of each domain error class (a subclass takes its
nearest listed base's)."""


def code_of(exc: ServiceError) -> grpc.StatusCode:
    """The status code of a domain error."""
    for cls in type(exc).__mro__:
        code = CODES.get(cls)
        if code is not None:
            return code
    return grpc.StatusCode.UNKNOWN


def status_of(exc: Exception) -> tuple[grpc.StatusCode, str]:
    """The one mapping from an exception to what the caller is told."""
    if isinstance(exc, ServiceError):
        return code_of(exc), exc.details()
    if isinstance(exc, pw.IntegrityError):
        return grpc.StatusCode.ALREADY_EXISTS, "conflicts with a concurrent change; retry"
    if isinstance(exc, (pw.OperationalError, pw.InterfaceError)):
        return grpc.StatusCode.UNAVAILABLE, f"storage unavailable: {exc}"
    log.error("unexpected error", exc_info=exc)
    return grpc.StatusCode.INTERNAL, "internal error (see the server log)"


async def abort(context: Context, exc: Exception) -> None:
    """Ends the call with ``status_of(exc)``; INVALID_ARGUMENT also carries a
    google.rpc.BadRequest naming the field, for clients that read details."""
    code, message = status_of(exc)
    trailers: Any = ()
    if code is grpc.StatusCode.INVALID_ARGUMENT and isinstance(exc, ServiceError) and exc.field:
        violation = error_details_pb2.BadRequest.FieldViolation(
            field=exc.field, description=exc.message
        )
        status = status_pb2.Status(code=code.value[0], message=message)
        status.details.add().Pack(error_details_pb2.BadRequest(field_violations=[violation]))
        trailers = rpc_status.to_status(status).trailing_metadata
    await context.abort(code, message, trailers)


def unary(
    fn: Callable[[Servicer, Req, Context], Awaitable[Resp]],
) -> Callable[[Servicer, Req, Context], Awaitable[Resp]]:
    """Maps errors of a unary method to statuses."""

    @functools.wraps(fn)
    async def wrapper(self: Servicer, request: Req, context: Context) -> Resp:
        try:
            return await fn(self, request, context)
        except Exception as exc:
            await abort(context, exc)
            raise  # unreachable: abort raises

    return wrapper


def streaming(
    fn: Callable[[Servicer, Req, Context], AsyncIterator[Resp]],
) -> Callable[[Servicer, Req, Context], AsyncIterator[Resp]]:
    """Maps errors of a server-streaming method to statuses."""

    @functools.wraps(fn)
    async def wrapper(self: Servicer, request: Req, context: Context) -> AsyncIterator[Resp]:
        try:
            async for item in fn(self, request, context):
                yield item
        except Exception as exc:
            await abort(context, exc)

    return wrapper
