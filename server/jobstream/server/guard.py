"""Requests that cannot even be parsed (e.g. nested deeper than protobuf's
decoder allows) answer INVALID_ARGUMENT like any other bad input.

Left to gRPC, a request whose deserializer raises is answered UNKNOWN with
the decoder's exception text on the wire. This interceptor gives every
unary-request method a deserializer that never raises, and refuses the call
before the servicer runs when it could not parse.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from jobstream.server.interception import Continuation, Handler, Req, Resp

UNPARSABLE = "request: cannot be parsed (malformed, or nested too deeply)"
"""The status message of a request that could not be parsed."""


class _Unparsable:
    """Stands in for a request whose bytes did not parse."""


def _safe(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserializer is None:
        return None

    def parse(data: bytes) -> Any:
        try:
            return deserializer(data)
        except (DecodeError, RecursionError):
            return _Unparsable()

    return parse


class RequestGuard(grpc.aio.ServerInterceptor):
    """Refuses unparsable unary requests with INVALID_ARGUMENT."""

    async def intercept_service(
        self,
        continuation: Continuation[Req, Resp],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler[Req, Resp]:
        """See grpc.aio.ServerInterceptor."""
        found = await continuation(handler_call_details)
        if found is None or found.request_streaming:
            return found
        # Typed loosely: the behaviours below are grpc.aio coroutines and
        # async generators, which the stubs' sync handler type does not describe.
        handler: Any = found
        des, ser = _safe(handler.request_deserializer), handler.response_serializer
        if handler.unary_unary:
            inner = handler.unary_unary

            async def unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
                if isinstance(request, _Unparsable):
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, UNPARSABLE)
                return await inner(request, context)

            return grpc.unary_unary_rpc_method_handler(
                unary, request_deserializer=des, response_serializer=ser
            )
        if handler.unary_stream and not inspect.isasyncgenfunction(handler.unary_stream):
            # A coroutine that writes with context.write() (the health
            # service's Watch): wrapping it as a generator would break it.
            inner_writer = handler.unary_stream

            async def writer(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
                if isinstance(request, _Unparsable):
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, UNPARSABLE)
                return await inner_writer(request, context)

            return grpc.unary_stream_rpc_method_handler(
                writer, request_deserializer=des, response_serializer=ser
            )
        if handler.unary_stream:
            inner_stream = handler.unary_stream
            behavior: Any
            if inspect.isasyncgenfunction(inner_stream):

                async def stream(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
                    if isinstance(request, _Unparsable):
                        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, UNPARSABLE)
                    async for item in inner_stream(request, context):
                        yield item

                behavior = stream
            else:
                # A streaming handler that writes with context.write (e.g.
                # grpc's Health.Watch) is a plain coroutine: stay one.
                async def writer(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
                    if isinstance(request, _Unparsable):
                        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, UNPARSABLE)
                    return await inner_stream(request, context)

                behavior = writer
            return grpc.unary_stream_rpc_method_handler(
                behavior, request_deserializer=des, response_serializer=ser
            )
        return found
