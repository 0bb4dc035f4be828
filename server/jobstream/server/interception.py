"""What a grpc.aio server interceptor works with: handlers, their
behaviours, and how a call ended.

A grpc.aio ``intercept_service`` returns a handler before the call runs;
to act around the call itself, the handler's behaviour function is
replaced by a wrapper with the same shape (see :mod:`jobstream.server.edge`).
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeAlias, TypeVar

import grpc

Behavior = Callable[..., Any]
"""A handler's behaviour: ``(request or request iterator, context)`` ->
awaitable response, or async iterator of responses."""

Req = TypeVar("Req")
Resp = TypeVar("Resp")

if TYPE_CHECKING:  # generic only in the stubs
    RpcHandler: TypeAlias = grpc.RpcMethodHandler[Any, Any]
    Handler: TypeAlias = grpc.RpcMethodHandler[Req, Resp] | None
else:
    RpcHandler = grpc.RpcMethodHandler
    Handler = grpc.RpcMethodHandler
Continuation: TypeAlias = Callable[[grpc.HandlerCallDetails], Awaitable["Handler[Req, Resp]"]]
"""What ``intercept_service`` is given: resolves the next handler (None when
the method is not served)."""


def is_stream(behavior: Behavior) -> bool:
    """Whether ``behavior`` yields its responses (an async generator)."""
    return inspect.isasyncgenfunction(behavior)


def is_async(behavior: Behavior) -> bool:
    """Whether ``behavior`` runs on the event loop (async def or async generator);
    a sync one runs on grpc's thread pool, where wrappers are not applied."""
    return inspect.isasyncgenfunction(behavior) or inspect.iscoroutinefunction(behavior)


def status_name(context: grpc.aio.ServicerContext[Any, Any], error: BaseException | None) -> str:
    """The name of the status a call ended with."""
    if isinstance(error, asyncio.CancelledError | GeneratorExit):
        return grpc.StatusCode.CANCELLED.name
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code.name
    if isinstance(code, int) and code != 0:
        # grpc.aio reports codes set through abort() as the raw integer.
        return next((c.name for c in grpc.StatusCode if c.value[0] == code), str(code))
    return grpc.StatusCode.OK.name if error is None else grpc.StatusCode.UNKNOWN.name


def split_method(method: str) -> tuple[str, str]:
    """``/pkg.Service/Method`` -> (``pkg.Service``, ``Method``)."""
    if method.count("/") >= 2:
        _, service, name = method.split("/", 2)
        return service, name
    return "", method
