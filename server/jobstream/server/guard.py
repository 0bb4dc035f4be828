"""Requests that cannot even be parsed (nested deeper than protobuf's
decoder allows, corrupt, a string that is not UTF-8) answer
INVALID_ARGUMENT naming the field, like any other bad input.

Left to gRPC, a request whose deserializer raises is answered UNKNOWN with
the decoder's exception text on the wire (or INTERNAL, when a servicer
reading a request stream sees the exception). The server gives every
method, ours and gRPC's own (reflection, health), a deserializer that never
raises, and its interceptor (:mod:`jobstream.server.edge`) refuses the call
before its handler sees the bad message: at once for a single request, at
the bad message for a request stream. The status message comes from
:mod:`jobstream.server.wire`, which names the field at fault.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

from google.protobuf.message import DecodeError, Message

from jobstream.server import wire
from jobstream.server.errors import InvalidArgument
from jobstream.v1 import errors_pb2


class UnparsableRequest(InvalidArgument):
    """Raised into a handler that reads a request stream, at the message
    that did not parse. An InvalidArgument, so jobstream's servicers answer
    it like any bad field; the interceptor answers it for handlers that let
    it through (gRPC's reflection service)."""

    default_reason = errors_pb2.MALFORMED_REQUEST

    def __init__(self, details: str) -> None:
        field, _, message = details.partition(": ")
        super().__init__(message, field=field)


class _Unparsable:
    """Stands in for a request whose bytes did not parse."""

    def __init__(self, details: str) -> None:
        self.details = details


def safe_deserializer(
    deserializer: Callable[[bytes], Any] | None, max_json_depth: int
) -> Callable[[bytes], Any] | None:
    """``deserializer`` made never to raise: bytes that do not parse become
    a stand-in that :func:`unparsable` and :func:`checked` refuse, naming
    the field at fault (JSON values nested beyond ``max_json_depth`` levels
    are named as such)."""
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


def unparsable(request: Any) -> UnparsableRequest | None:
    """The refusal of a single request whose bytes did not parse (it was
    deserialized by :func:`safe_deserializer`), else None."""
    if isinstance(request, _Unparsable):
        return UnparsableRequest(request.details)
    return None


async def checked(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    """A request stream, ending with UnparsableRequest at a bad message."""
    async for request in requests:
        if isinstance(request, _Unparsable):
            raise UnparsableRequest(request.details)
        yield request
