"""JobClient (blocking) and AsyncJobClient (asyncio): two faces on one
implementation.

Each operation is written once in :mod:`jobstream.client.operations`, as a
program of effects (:mod:`jobstream.client.program`). A face owns a channel
and a driver that performs those effects: JobClient with blocking calls on
a ``grpc.Channel``, AsyncJobClient with awaited calls on a
``grpc.aio.Channel``. Each public method is made from its operation, whose
signature and docstring it keeps; a face's method returns what the program
returns (awaitable in the asyncio face), or an iterator over what it emits.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Generator, Iterator
from types import TracebackType
from typing import Any, Concatenate, Generic, ParamSpec, Protocol, Self, TypeVar, cast

import grpc
import grpc.aio
from google.protobuf.message import Message

from jobstream.client import operations
from jobstream.client.calls import (
    DEFAULT_READ_RETRY_TIMEOUT,
    DEFAULT_RESUME_TIMEOUT,
    DEFAULT_TIMEOUT,
    Session,
)
from jobstream.client.connection import CHANNEL_OPTIONS, DEFAULT_TARGET
from jobstream.client.program import (
    Call,
    Effect,
    Emit,
    Items,
    Open,
    Program,
    Receive,
    Runner,
    Sleep,
    Stream,
)
from jobstream.client.security import PLAINTEXT, Security
from jobstream.v1 import job_service_pb2_grpc

__all__ = [
    "DEFAULT_READ_RETRY_TIMEOUT",
    "DEFAULT_RESUME_TIMEOUT",
    "DEFAULT_TIMEOUT",
    "AsyncJobClient",
    "JobClient",
]

P = ParamSpec("P")
T = TypeVar("T")
Resp = TypeVar("Resp", bound=Message)
Resp_co = TypeVar("Resp_co", bound=Message, covariant=True)

Operation = Callable[Concatenate[Session, P], Program[T]]
"""An operation that returns a value (see jobstream.client.operations)."""

Listing = Callable[Concatenate[Session, P], Items[T]]
"""An operation that emits items (see jobstream.client.operations)."""


def _method(method: Callable[..., Any], op: Callable[..., Any], returns: str) -> None:
    """Give a face's method its operation's name, docstring and signature:
    ``self`` instead of the session, and ``returns`` (with ``{}`` standing
    for what the program returns or emits) as its return annotation."""
    signature = inspect.signature(op)
    result = str(signature.return_annotation)
    inner = result[result.index("[") + 1 : -1]
    self_param = inspect.Parameter("self", inspect.Parameter.POSITIONAL_ONLY)
    params = [self_param, *list(signature.parameters.values())[1:]]
    method.__name__ = op.__name__
    method.__qualname__ = op.__name__
    method.__doc__ = op.__doc__
    method.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=params, return_annotation=returns.format(inner)
    )


# --------------------------------------------------------------- blocking face


class _StreamCall(Protocol[Resp_co]):
    """What a blocking server-streaming call returns: its messages, and a
    way to end it."""

    def __iter__(self) -> Iterator[Resp_co]: ...

    def cancel(self) -> bool: ...


class _BlockingStream(Stream[Resp]):
    """A server stream of the blocking channel."""

    def __init__(self, call: _StreamCall[Resp]) -> None:
        self._call = call
        self._messages = iter(call)

    def next(self) -> Resp | None:
        """The next message; None at the end (errors raise grpc.RpcError)."""
        return next(self._messages, None)

    def cancel(self) -> None:
        self._call.cancel()


def _blocking(op: Operation[P, T]) -> Callable[Concatenate[JobClient, P], T]:
    def method(self: JobClient, /, *args: P.args, **kwargs: P.kwargs) -> T:
        return self._run(op(self, *args, **kwargs))

    _method(method, op, "{}")
    return method


def _blocking_items(op: Listing[P, T]) -> Callable[Concatenate[JobClient, P], Iterator[T]]:
    def method(self: JobClient, /, *args: P.args, **kwargs: P.kwargs) -> Iterator[T]:
        return self._drive(op(self, *args, **kwargs))

    _method(method, op, "Iterator[{}]")
    return method


class JobClient(Session):
    """Blocking client for the JobService.

    ``timeout`` is the deadline of every unary call (None: none);
    ``resume_timeout`` bounds how long a watch tries to resume after the
    server became unreachable; ``read_retry_timeout`` how long a read
    (``get``, ``list``, ``logs``, ``results``, ``stats``, ``artifacts``) is
    sent again while a server that answered before is unavailable. Pass
    ``channel`` to use your own (TLS, credentials, interceptors); it is then
    not closed by ``close()``. Errors are raised as
    ``jobstream.client.errors.JobstreamError`` subclasses.
    """

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        timeout: float | None = DEFAULT_TIMEOUT,
        channel: grpc.Channel | None = None,
        resume_timeout: float = DEFAULT_RESUME_TIMEOUT,
        read_retry_timeout: float = DEFAULT_READ_RETRY_TIMEOUT,
        security: Security = PLAINTEXT,
    ) -> None:
        super().__init__(
            target,
            timeout=timeout,
            resume_timeout=resume_timeout,
            read_retry_timeout=read_retry_timeout,
        )
        self._owns_channel = channel is None
        if channel is None:
            channel = security.channel(target, CHANNEL_OPTIONS)
        self._channel = channel
        self._stub = job_service_pb2_grpc.JobServiceStub(channel)

    def close(self) -> None:
        """Close the channel (only one this client made)."""
        if self._owns_channel:
            self._channel.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- the driver

    def _perform(self, effect: Effect) -> Any:
        if isinstance(effect, Call):
            return effect.rpc(self._stub)(effect.request, timeout=effect.timeout)
        if isinstance(effect, Open):
            return _BlockingStream(effect.rpc(self._stub)(effect.request, timeout=effect.timeout))
        if isinstance(effect, Receive):
            # A program only reads streams its own driver opened.
            return cast(_BlockingStream[Any], effect.stream).next()
        if isinstance(effect, Sleep):
            time.sleep(effect.seconds)
            return None
        return effect.fn()

    def _drive(self, program: Generator[Effect | Emit[T], Any, Any]) -> Iterator[T]:
        """Perform ``program``'s effects, yielding what it emits."""
        runner = Runner(program)
        try:
            while (effect := runner.next()) is not None:
                if isinstance(effect, Emit):
                    yield effect.item
                    continue
                try:
                    runner.succeeded(self._perform(effect))
                except Exception as exc:
                    runner.failed(exc)
        finally:
            runner.close()

    def _run(self, program: Program[T]) -> T:
        """Perform ``program``'s effects and return its value."""
        runner = Runner(program)
        try:
            while (effect := runner.next()) is not None:
                try:
                    runner.succeeded(self._perform(cast(Effect, effect)))
                except Exception as exc:
                    runner.failed(exc)
        finally:
            runner.close()
        return runner.result

    # -- the API (documented in jobstream.client.operations)

    submit = _blocking(operations.submit)
    submit_many = _blocking(operations.submit_many)
    get = _blocking(operations.get)
    list = _blocking_items(operations.list)
    watch = _blocking_items(operations.watch)
    wait = _blocking(operations.wait)
    cancel = _blocking(operations.cancel)
    delete = _blocking(operations.delete)
    logs = _blocking_items(operations.logs)
    results = _blocking_items(operations.results)
    retry = _blocking(operations.retry)
    purge = _blocking(operations.purge)
    stats = _blocking(operations.stats)
    workers = _blocking_items(operations.workers)
    artifacts = _blocking(operations.artifacts)
    download = _blocking(operations.download)
    watch_jobs = _blocking_items(operations.watch_jobs)


# ---------------------------------------------------------------- asyncio face


class _AsyncStream(Stream[Resp], Generic[Resp]):
    """A server stream of the asyncio channel."""

    def __init__(self, call: grpc.aio.UnaryStreamCall[Any, Resp]) -> None:
        self._call = call
        self._messages = aiter(call)

    async def next(self) -> Resp | None:
        """The next message; None at the end (errors raise grpc.RpcError)."""
        return await anext(self._messages, None)

    def cancel(self) -> None:
        self._call.cancel()


def _awaiting(
    op: Operation[P, T],
) -> Callable[Concatenate[AsyncJobClient, P], Coroutine[Any, Any, T]]:
    async def method(self: AsyncJobClient, /, *args: P.args, **kwargs: P.kwargs) -> T:
        return await self._run(op(self, *args, **kwargs))

    _method(method, op, "{}")
    return method


def _async_items(op: Listing[P, T]) -> Callable[Concatenate[AsyncJobClient, P], AsyncIterator[T]]:
    def method(self: AsyncJobClient, /, *args: P.args, **kwargs: P.kwargs) -> AsyncIterator[T]:
        return self._drive(op(self, *args, **kwargs))

    _method(method, op, "AsyncIterator[{}]")
    return method


class AsyncJobClient(Session):
    """asyncio client for the JobService: JobClient's API with ``async def``
    methods and async iterators, and the same settings.

    The channel is made on first use, inside the running event loop (a
    grpc.aio channel belongs to one loop). Use ``async with`` or ``await
    close()``.
    """

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        timeout: float | None = DEFAULT_TIMEOUT,
        channel: grpc.aio.Channel | None = None,
        resume_timeout: float = DEFAULT_RESUME_TIMEOUT,
        read_retry_timeout: float = DEFAULT_READ_RETRY_TIMEOUT,
        security: Security = PLAINTEXT,
    ) -> None:
        super().__init__(
            target,
            timeout=timeout,
            resume_timeout=resume_timeout,
            read_retry_timeout=read_retry_timeout,
        )
        self.security = security
        self._owns_channel = channel is None
        self._channel = channel
        self._stub_cache: job_service_pb2_grpc.JobServiceAsyncStub | None = None

    @property
    def _stub(self) -> job_service_pb2_grpc.JobServiceAsyncStub:
        if self._stub_cache is None:
            if self._channel is None:
                self._channel = self.security.aio_channel(self.target, CHANNEL_OPTIONS)
            self._stub_cache = job_service_pb2_grpc.JobServiceStub(self._channel)
        return self._stub_cache

    async def close(self) -> None:
        """Close the channel (only one this client made)."""
        if self._owns_channel and self._channel is not None:
            await self._channel.close(None)
            self._channel = None
            self._stub_cache = None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- the driver

    async def _perform(self, effect: Effect) -> Any:
        # The asyncio stub's attributes are the awaitable twins of the
        # blocking stub's that a program picks (mypy-protobuf declares the
        # one a subclass of the other), hence the casts.
        if isinstance(effect, Call):
            unary = cast("grpc.aio.UnaryUnaryMultiCallable[Any, Any]", effect.rpc(self._stub))
            return await unary(effect.request, timeout=effect.timeout)
        if isinstance(effect, Open):
            stream = cast("grpc.aio.UnaryStreamMultiCallable[Any, Any]", effect.rpc(self._stub))
            return _AsyncStream(stream(effect.request, timeout=effect.timeout))
        if isinstance(effect, Receive):
            # A program only reads streams its own driver opened.
            return await cast(_AsyncStream[Any], effect.stream).next()
        if isinstance(effect, Sleep):
            await asyncio.sleep(effect.seconds)
            return None
        return await asyncio.to_thread(effect.fn)

    async def _drive(self, program: Generator[Effect | Emit[T], Any, Any]) -> AsyncIterator[T]:
        """Perform ``program``'s effects, yielding what it emits."""
        runner = Runner(program)
        try:
            while (effect := runner.next()) is not None:
                if isinstance(effect, Emit):
                    yield effect.item
                    continue
                try:
                    runner.succeeded(await self._perform(effect))
                except Exception as exc:
                    runner.failed(exc)
        finally:
            runner.close()

    async def _run(self, program: Program[T]) -> T:
        """Perform ``program``'s effects and return its value."""
        runner = Runner(program)
        try:
            while (effect := runner.next()) is not None:
                try:
                    runner.succeeded(await self._perform(cast(Effect, effect)))
                except Exception as exc:
                    runner.failed(exc)
        finally:
            runner.close()
        return runner.result

    # -- the API (documented in jobstream.client.operations)

    submit = _awaiting(operations.submit)
    submit_many = _awaiting(operations.submit_many)
    get = _awaiting(operations.get)
    list = _async_items(operations.list)
    watch = _async_items(operations.watch)
    wait = _awaiting(operations.wait)
    cancel = _awaiting(operations.cancel)
    delete = _awaiting(operations.delete)
    logs = _async_items(operations.logs)
    results = _async_items(operations.results)
    retry = _awaiting(operations.retry)
    purge = _awaiting(operations.purge)
    stats = _awaiting(operations.stats)
    workers = _async_items(operations.workers)
    artifacts = _awaiting(operations.artifacts)
    download = _awaiting(operations.download)
    watch_jobs = _async_items(operations.watch_jobs)
