"""A client call written once, as a program of effects that a blocking or an
asyncio driver performs.

An operation (see :mod:`jobstream.client.operations`) is a generator. It
yields *effects* — send this unary call, open this stream, take its next
message, sleep, run this blocking function — and gets back each effect's
outcome at the ``yield``: the response, or the exception the effect raised.
It yields :class:`Emit` for each item its caller iterates over. What to
send, how to read the answers, when to retry or resume: all of it is in the
program. JobClient's driver performs the effects with blocking calls,
AsyncJobClient's with awaited ones (see :mod:`jobstream.client.client`).

Programs compose with ``yield from``: the typed helpers below (``call``,
``open_stream``, ``receive``, ``sleep``, ``blocking``) are one-effect
programs that give their outcome its type.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass
from functools import partial
from typing import Any, Generic, ParamSpec, TypeAlias, TypeVar

import grpc
from google.protobuf.message import Message

from jobstream.v1.job_service_pb2_grpc import JobServiceStub

__all__ = [
    "Blocking",
    "Call",
    "Effect",
    "Emit",
    "Items",
    "Open",
    "Program",
    "Receive",
    "Runner",
    "Sleep",
    "Stream",
    "StreamRpc",
    "UnaryRpc",
    "blocking",
    "call",
    "collect",
    "drain",
    "open_stream",
    "receive",
    "sleep",
]

P = ParamSpec("P")
T = TypeVar("T")
Req = TypeVar("Req", bound=Message)
Resp = TypeVar("Resp", bound=Message)

# Strings: grpc's multi-callables are generic in its type stubs only.
UnaryRpc: TypeAlias = "Callable[[JobServiceStub], grpc.UnaryUnaryMultiCallable[Req, Resp]]"
"""Picks a unary method from the JobService stub, e.g. ``lambda s: s.GetJob``.
The asyncio driver applies it to the asyncio stub, whose same-named
attribute is that method's awaitable twin."""

StreamRpc: TypeAlias = "Callable[[JobServiceStub], grpc.UnaryStreamMultiCallable[Req, Resp]]"
"""Picks a server-streaming method from the JobService stub."""


@dataclass(frozen=True, slots=True)
class Call(Generic[Req, Resp]):
    """Send one unary call; the outcome is its response."""

    rpc: UnaryRpc[Req, Resp]
    request: Req
    timeout: float | None


class Stream(Generic[Resp]):
    """A server stream a driver opened; the program reads it with
    ``receive`` and must ``cancel`` it when done (in a ``finally``)."""

    def cancel(self) -> None:
        """End the call (a no-op once it has ended)."""
        raise NotImplementedError


@dataclass(frozen=True, slots=True)
class Open(Generic[Req, Resp]):
    """Start a server stream; the outcome is a :class:`Stream`."""

    rpc: StreamRpc[Req, Resp]
    request: Req
    timeout: float | None


@dataclass(frozen=True, slots=True)
class Receive(Generic[Resp]):
    """Take a stream's next message; the outcome is the message, or None
    when the stream ended cleanly."""

    stream: Stream[Resp]


@dataclass(frozen=True, slots=True)
class Sleep:
    """Wait; the outcome is None."""

    seconds: float


@dataclass(frozen=True, slots=True)
class Blocking(Generic[T]):
    """Run a function that may block on the disk: inline for the blocking
    client, in a thread for the asyncio one (its event loop runs on)."""

    fn: Callable[[], T]


@dataclass(frozen=True, slots=True)
class Emit(Generic[T]):
    """Hand one item to the caller iterating over the program."""

    item: T


Effect = Call[Any, Any] | Open[Any, Any] | Receive[Any] | Sleep | Blocking[Any]
"""What a program asks its driver to do."""

Program = Generator[Effect, Any, T]
"""A program that returns a ``T`` (a unary operation, ``wait``, ``download``)."""

Items = Generator[Effect | Emit[T], Any, None]
"""A program that emits ``T`` items (a listing, a watch)."""


def call(rpc: UnaryRpc[Req, Resp], request: Req, timeout: float | None) -> Program[Resp]:
    """Send one unary call and return its response."""
    response: Resp = yield Call(rpc, request, timeout)
    return response


def open_stream(
    rpc: StreamRpc[Req, Resp], request: Req, timeout: float | None
) -> Program[Stream[Resp]]:
    """Start a server stream."""
    stream: Stream[Resp] = yield Open(rpc, request, timeout)
    return stream


def receive(stream: Stream[Resp]) -> Program[Resp | None]:
    """The stream's next message; None once it ended cleanly."""
    message: Resp | None = yield Receive(stream)
    return message


def sleep(seconds: float) -> Program[None]:
    """Wait ``seconds``."""
    yield Sleep(seconds)


def blocking(fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Program[T]:
    """``fn(*args, **kwargs)``, off the event loop in the asyncio client."""
    result: T = yield Blocking(partial(fn, *args, **kwargs))
    return result


class Runner(Generic[T]):
    """Steps a program for a driver: hands out its next effect (or emitted
    item), and takes back what that effect gave or raised."""

    result: T
    """The program's return value, once ``next`` returned None."""

    def __init__(self, program: Generator[Effect | Emit[Any], Any, T]) -> None:
        self._program = program
        self._value: Any = None
        self._error: BaseException | None = None

    def next(self) -> Effect | Emit[Any] | None:
        """The program's next effect; None once it has returned."""
        try:
            if self._error is not None:
                error, self._error = self._error, None
                return self._program.throw(error)
            value, self._value = self._value, None
            return self._program.send(value)
        except StopIteration as stop:
            self.result = stop.value
            return None

    def succeeded(self, value: Any) -> None:
        """The last effect's outcome."""
        self._value = value

    def failed(self, error: BaseException) -> None:
        """The last effect raised ``error``: it is raised in the program."""
        self._error = error

    def close(self) -> None:
        """Stop the program where it is (its ``finally`` blocks run)."""
        self._program.close()


def drain(items: Items[Any]) -> Program[None]:
    """Run an item program for its effects alone, dropping its items
    (``wait`` follows a watch to its end this way)."""
    yield from _run(items, None)


def collect(items: Items[T]) -> Program[list[T]]:
    """Run an item program to its end; its items, as a list (every page
    of a listing a caller wants whole)."""
    kept: list[T] = []
    yield from _run(items, kept)
    return kept


def _run(items: Items[T], kept: list[T] | None) -> Program[None]:
    runner = Runner(items)
    try:
        while (effect := runner.next()) is not None:
            if isinstance(effect, Emit):
                if kept is not None:
                    kept.append(effect.item)
                continue
            try:
                runner.succeeded((yield effect))
            except Exception as exc:
                runner.failed(exc)
    finally:
        runner.close()
