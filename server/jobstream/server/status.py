"""Any exception of a servicer becomes a domain error, and so a status with
its details (see :mod:`jobstream.server.error_details`): domain errors as
they are, the database's own errors by what they mean for the caller,
anything else INTERNAL with the details left in the server log. The
decorators apply it to servicer methods."""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc
import peewee as pw

from jobstream.server.error_details import abort_with
from jobstream.server.errors import AlreadyExists, Internal, ServiceError, Unavailable
from jobstream.v1 import errors_pb2

log = logging.getLogger(__name__)

Req = TypeVar("Req")
Resp = TypeVar("Resp")
Servicer = TypeVar("Servicer")
Context = grpc.aio.ServicerContext[Any, Any]


def domain_error(exc: Exception) -> ServiceError:
    """The one mapping from an exception to what the caller is told: a
    domain error as it is, the database's own errors by what they mean for
    the caller, anything else INTERNAL with the details left in the log."""
    if isinstance(exc, ServiceError):
        return exc
    if isinstance(exc, pw.IntegrityError):
        return AlreadyExists(
            "conflicts with a concurrent change; retry", reason=errors_pb2.WRITE_CONFLICT
        )
    if isinstance(exc, (pw.OperationalError, pw.InterfaceError)):
        return Unavailable(f"storage unavailable: {exc}")
    log.error("unexpected error", exc_info=exc)
    return Internal("internal error (see the server log)")


async def abort(context: Context, exc: Exception) -> None:
    """Ends the call with ``exc`` as a status carrying its details."""
    await abort_with(context, domain_error(exc))


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
