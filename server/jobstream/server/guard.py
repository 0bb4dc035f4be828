"""Requests that cannot even be parsed (nested deeper than protobuf's
decoder allows, corrupt, a string that is not UTF-8) answer
INVALID_ARGUMENT naming the field, like any other bad input.

Left to gRPC, a request whose deserializer raises is answered UNKNOWN with
the decoder's exception text on the wire (or INTERNAL, when a servicer
reading a request stream sees the exception). This interceptor gives every
method, ours and gRPC's own (reflection, health), a deserializer that never
raises, and refuses the call before its handler sees the bad message: at
once for a single request, at the bad message for a request stream. The
status message comes from :mod:`jobstream.server.wire`, which names the
field at fault.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError, Message

from jobstream.server import wire
from jobstream.server.errors import InvalidArgument
from jobstream.server.interception import Continuation, Handler, Req, Resp
from jobstream.server.status import abort
from jobstream.v1 import errors_pb2

Context = grpc.aio.ServicerContext[Any, Any]


class UnparsableRequest(InvalidArgument):
    """Raised into a handler that reads a request stream, at the message
    that did not parse. An InvalidArgument, so jobstream's servicers answer
    it like any bad field; the guard answers it for handlers that let it
    through (gRPC's reflection service)."""

    default_reason = errors_pb2.MALFORMED_REQUEST

    def __init__(self, details: str) -> None:
        field, _, message = details.partition(": ")
        super().__init__(message, field=field)


class _Unparsable:
    """Stands in for a request whose bytes did not parse."""

    def __init__(self, details: str) -> None:
        self.details = details


def _safe(
    deserializer: Callable[[bytes], Any] | None, max_json_depth: int
) -> Callable[[bytes], Any] | None:
    if deserializer is None:
        return None
    # Generated stubs deserialize with ``MessageClass.FromString``.
    owner = getattr(deserializer, "__self__", None)
    descriptor: Any = None  # protobuf's stubs type upb's Descriptor apart
    if isinstance(owner, type) and issubclass(owner, Message):
        descriptor = owner.DESCRIPTOR

    def parse(data: bytes) -> Any:
        try:
            return deserializer(data)
        except (DecodeError, RecursionError):
            if descriptor is None:
                return _Unparsable(wire.UNDIAGNOSED)
            return _Unparsable(wire.diagnose(data, descriptor, max_json_depth))

    return parse


async def _refuse(context: Context, request: _Unparsable) -> None:
    await abort(context, UnparsableRequest(request.details))


async def _checked(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    """The request stream, ending with UnparsableRequest at a bad message."""
    async for request in requests:
        if isinstance(request, _Unparsable):
            raise UnparsableRequest(request.details)
        yield request


class RequestGuard(grpc.aio.ServerInterceptor):
    """Refuses unparsable requests, single or streamed, with INVALID_ARGUMENT."""

    def __init__(self, max_json_depth: int) -> None:
        self.max_json_depth = max_json_depth
        """The server's JSON depth limit, which a request nested too deep
        for protobuf's decoder is told of."""

    async def intercept_service(
        self,
        continuation: Continuation[Req, Resp],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler[Req, Resp]:
        """See grpc.aio.ServerInterceptor."""
        found = await continuation(handler_call_details)
        if found is None:
            return found
        # Typed loosely: the behaviours below are grpc.aio coroutines and
        # async generators, which the stubs' sync handler type does not describe.
        handler: Any = found
        des, ser = (
            _safe(handler.request_deserializer, self.max_json_depth),
            handler.response_serializer,
        )
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                _single(handler.unary_unary), request_deserializer=des, response_serializer=ser
            )
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                _single(handler.unary_stream), request_deserializer=des, response_serializer=ser
            )
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                _streamed(handler.stream_unary), request_deserializer=des, response_serializer=ser
            )
        if handler.stream_stream:
            return grpc.stream_stream_rpc_method_handler(
                _streamed(handler.stream_stream), request_deserializer=des, response_serializer=ser
            )
        return found


def _single(inner: Any) -> Any:
    """Wraps a handler of a single request, keeping its shape: an async
    generator stays one; a coroutine (a unary call, or a stream written
    with ``context.write`` like grpc's Health.Watch) stays one."""
    if inspect.isasyncgenfunction(inner):

        async def stream(request: Any, context: Context) -> Any:
            if isinstance(request, _Unparsable):
                await _refuse(context, request)
            async for item in inner(request, context):
                yield item

        return stream

    async def call(request: Any, context: Context) -> Any:
        if isinstance(request, _Unparsable):
            await _refuse(context, request)
        return await inner(request, context)

    return call


def _streamed(inner: Any) -> Any:
    """Wraps a handler of a request stream: it reads the stream through
    :func:`_checked`, and an UnparsableRequest it lets escape is answered
    here. (A handler that reads with ``context.read()`` instead of the
    iterator would see the stand-in object; none of the served ones does.)"""
    if inspect.isasyncgenfunction(inner):

        async def stream(requests: AsyncIterator[Any], context: Context) -> Any:
            try:
                async for item in inner(_checked(requests), context):
                    yield item
            except UnparsableRequest as exc:
                await abort(context, exc)

        return stream

    async def call(requests: AsyncIterator[Any], context: Context) -> Any:
        try:
            return await inner(_checked(requests), context)
        except UnparsableRequest as exc:
            await abort(context, exc)

    return call
