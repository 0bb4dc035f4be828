"""Server-streaming RPCs as Server-Sent Events (``text/event-stream``).

Each event's ``id:`` is its resume point: a job event's seq (WatchJob), a
change's position (WatchJobs). A client that reconnects with
``Last-Event-ID`` (as a browser's EventSource does by itself) resumes
exactly after it, on this gateway or another, across server restarts: the
server's history is the truth, and nothing is lost or repeated. When the
server goes away in the middle of a stream the gateway says ``reconnecting``
and calls it again from the last id it sent, for up to
:data:`RECONNECT_WINDOW_S`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from aiohttp import web
from google.protobuf.message import Message

from jobstream.gateway import errors
from jobstream.gateway.jsonmap import JsonMapper
from jobstream.gateway.transcode import dumps
from jobstream.v1 import job_pb2
from jobstream.v1 import job_service_pb2 as js

log = logging.getLogger(__name__)

HEARTBEAT_S = 15.0
"""A comment line is sent after this long without an event, so proxies and
load balancers that close idle connections (commonly after 30-60 s) keep the
stream open, and a client that left is noticed."""

RECONNECT_WINDOW_S = 30.0
"""How long the gateway keeps calling a server that went away (a restart)
before it gives the stream up; the client can still resume later."""

RETRY_MS = 1000
"""The reconnect delay the stream asks EventSource to use."""

BACKOFF_INITIAL_S = 0.1
"""First wait before calling an unavailable server again; doubles."""

BACKOFF_MAX_S = 2.0
"""Longest wait between calls to an unavailable server."""

EVENT_JSON_CACHE = 8192
"""Job events whose JSON is kept: 100 browsers following one job share one
conversion per event instead of making 100."""

SSE_HEADERS = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache, no-transform",
    # nginx buffers proxied responses unless told not to.
    "X-Accel-Buffering": "no",
    "X-Content-Type-Options": "nosniff",
}
"""Headers of every event stream."""


def frame(event: str, data: bytes, event_id: int | str | None = None) -> bytes:
    """One SSE event. JSON from :func:`dumps` never holds a raw newline, so
    it is always one ``data:`` line."""
    head = f"event: {event}\n" + (f"id: {event_id}\n" if event_id is not None else "")
    return head.encode() + b"data: " + data + b"\n\n"


class EventJson:
    """SSE frames of job events, cached by the events' serialized bytes: an
    event converted once serves every subscriber, and a key can never map to
    another event's frame (a deleted job's id reused included)."""

    def __init__(self, mapper: JsonMapper, size: int = EVENT_JSON_CACHE) -> None:
        self.mapper = mapper
        self.size = size
        self._cache: OrderedDict[bytes, bytes] = OrderedDict()

    def message(self, message: Message) -> bytes:
        """Any message's compact JSON (not cached)."""
        return dumps(self.mapper.to_json(message))

    def frame(self, event: job_pb2.JobEvent) -> bytes:
        """The event's whole SSE frame: ``event: event``, its seq as the
        id, its compact JSON as the data."""
        key = event.SerializeToString()
        found = self._cache.get(key)
        if found is not None:
            self._cache.move_to_end(key)
            return found
        data = frame("event", dumps(self.mapper.to_json(event)), event.seq)
        self._cache[key] = data
        if len(self._cache) > self.size:
            self._cache.popitem(last=False)
        return data


@dataclass(frozen=True, kw_only=True, slots=True)
class Resumable:
    """How one streaming RPC resumes and frames its messages."""

    field: str
    """The request field a resume point goes into."""
    frames: Callable[[Any, EventJson, int], tuple[list[bytes], int]]
    """(message, cache, last id) -> (SSE frames, new last id)."""
    token_field: str | None = None
    """The request field a resume token goes into, for the part of a
    stream that has no numbered resume point (WatchJobs' listing): a
    Last-Event-ID that is not a number, and the token of the last message
    sent when the gateway calls again itself."""


def _watch_job_frames(
    message: js.WatchJobResponse, cache: EventJson, last: int
) -> tuple[list[bytes], int]:
    kind = message.WhichOneof("item")
    if kind == "snapshot":
        # The snapshot carries the resume point it was taken at, not the
        # job's last seq: events up to that may still be on their way.
        return [frame("snapshot", cache.message(message.snapshot), last)], last
    events: Sequence[job_pb2.JobEvent] = message.events.events
    out = []
    for event in events:
        if event.seq <= last:
            continue  # already sent before a reconnect
        out.append(cache.frame(event))
        last = event.seq
    return out, last


def _watch_jobs_frames(
    message: js.WatchJobsResponse, cache: EventJson, last: int
) -> tuple[list[bytes], int]:
    kind = message.WhichOneof("change")
    if kind == "caught_up":
        return [frame("caught_up", b"{}", message.position)], message.position
    if kind == "deleted_job_id":
        data = dumps({"jobId": message.deleted_job_id})
        return [frame("deleted", data, message.position)], message.position
    if message.listing_token:
        # An item of the initial listing (only those carry a token): they
        # share the head position, so their id is their listing token, from
        # which a reconnect lists the rest. Not "last == 0": a database with
        # no change yet catches up at position 0 too.
        return [frame("job", cache.message(message.job), message.listing_token)], last
    if message.position <= last:
        return [], last
    return [frame("job", cache.message(message.job), message.position)], message.position


RESUMABLE: dict[str, Resumable] = {
    "jobstream.v1.JobService.WatchJob": Resumable(field="after_seq", frames=_watch_job_frames),
    "jobstream.v1.JobService.WatchJobs": Resumable(
        field="after_position", frames=_watch_jobs_frames, token_field="listing_token"
    ),
}
"""The streaming RPCs served as event streams, by full method name."""


def resume_point(request: web.Request, message: Message, spec: Resumable) -> int:
    """``Last-Event-ID`` when the client sent one (a reconnect), else the
    request's own resume field; an id that is not a number is a resume
    token (the server checks it)."""
    header = request.headers.get("Last-Event-ID", "").strip()
    if header.isdigit():
        setattr(message, spec.field, int(header))
    elif header and spec.token_field is not None:
        setattr(message, spec.token_field, header)
    value: int = getattr(message, spec.field)
    return value


Call = Callable[[Message], Any]
"""Starts the upstream streaming call for a request message."""


class SseResponse:
    """An open event-stream answer: serialized writes and a heartbeat."""

    def __init__(self, request: web.Request) -> None:
        self.request = request
        self.response = web.StreamResponse(status=200, headers=SSE_HEADERS)
        self._lock = asyncio.Lock()
        self._idle = asyncio.Event()

    async def open(self) -> None:
        """Sends the headers and the reconnect delay."""
        await self.response.prepare(self.request)
        await self.write(f"retry: {RETRY_MS}\n\n".encode())

    async def write(self, data: bytes) -> None:
        """Sends ``data`` (whole frames)."""
        async with self._lock:
            await self.response.write(data)
        self._idle.clear()

    @contextlib.asynccontextmanager
    async def heartbeat(self) -> AsyncIterator[None]:
        """Sends a comment whenever the stream was idle for HEARTBEAT_S."""

        async def beat() -> None:
            while True:
                self._idle.set()
                await asyncio.sleep(HEARTBEAT_S)
                if self._idle.is_set():
                    await self.write(b": keep-alive\n\n")

        task = asyncio.create_task(beat())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def error_response(exc: grpc.aio.AioRpcError) -> web.Response:
    """A refused first call as an HTTP error with its google.rpc.Status."""
    status = errors.status_of(exc)
    return web.Response(
        status=errors.http_status(status.code),
        body=dumps(errors.status_json(status)),
        content_type="application/json",
    )


class EventStream:
    """One client's own upstream stream: calls, frames, reconnects."""

    def __init__(self, spec: Resumable, message: Message, start: Call, cache: EventJson) -> None:
        self.spec = spec
        self.message = message
        self.start = start
        self.cache = cache

    async def serve(self, request: web.Request) -> web.StreamResponse:
        """Answers the request: an HTTP error when the first call fails,
        else the event stream until the RPC ends."""
        last = getattr(self.message, self.spec.field)
        stream = self._messages(last)
        try:
            first = await self._first(stream)
        except grpc.aio.AioRpcError as exc:
            return error_response(exc)
        sse = SseResponse(request)
        await sse.open()
        async with sse.heartbeat():
            await self._pump(sse, first, stream, last)
        return sse.response

    async def follow(self, sse: SseResponse, last: int) -> None:
        """Carries an open stream on from ``last`` with a call of its own."""
        stream = self._messages(last)
        try:
            first = await self._first(stream)
        except grpc.aio.AioRpcError as exc:
            await sse.write(frame("rpc-error", dumps(errors.status_json(errors.status_of(exc)))))
            return
        await self._pump(sse, first, stream, last)

    async def _messages(self, last: int) -> AsyncIterator[Any]:
        setattr(self.message, self.spec.field, last)
        call = self.start(self.message)
        try:
            async for item in call:
                yield item
        finally:
            call.cancel()

    async def _first(self, stream: AsyncIterator[Any]) -> Any:
        """The first message, calling again while the server is unavailable
        (it may be restarting) for up to RECONNECT_WINDOW_S. None when the
        stream ended at once."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + RECONNECT_WINDOW_S
        delay = BACKOFF_INITIAL_S
        while True:
            try:
                return await anext(stream, None)
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.UNAVAILABLE or loop.time() > deadline:
                    raise
            await asyncio.sleep(delay)
            delay = min(delay * 2, BACKOFF_MAX_S)
            stream = self._messages(getattr(self.message, self.spec.field))

    def _carry_token(self, item: Any) -> None:
        """Keeps the resume token of the last message sent, so that a call
        of our own after a drop goes on from there."""
        name = self.spec.token_field
        token: str | None = getattr(item, name, None) if name is not None else None
        if name is not None and token:
            setattr(self.message, name, token)

    async def _pump(
        self, sse: SseResponse, first: Any, stream: AsyncIterator[Any], last: int
    ) -> None:
        item = first
        while True:
            try:
                while item is not None:
                    frames, last = self.spec.frames(item, self.cache, last)
                    if frames:
                        await sse.write(b"".join(frames))
                    self._carry_token(item)
                    item = await anext(stream, None)
                await sse.write(frame("end", b"{}"))
                return
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.UNAVAILABLE:
                    status = errors.status_json(errors.status_of(exc))
                    await sse.write(frame("rpc-error", dumps(status)))
                    return
                await sse.write(frame("reconnecting", b"{}"))
                stream = self._messages(last)
                try:
                    item = await self._first(stream)
                except grpc.aio.AioRpcError as again:
                    status = errors.status_json(errors.status_of(again))
                    await sse.write(frame("rpc-error", dumps(status)))
                    return
