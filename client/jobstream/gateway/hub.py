"""One upstream watch per live job, shared by every browser following it.

A hundred people watching one job through the gateway cost the server one
WatchJob stream, not a hundred, and the gateway converts each event once.
Each subscriber still gets exactly what its own watch would have given:

- its own snapshot, read with its own token (GetJob), which is also the
  ownership check: a job the caller may not see answers 404 as always;
- then every event after its resume point, from the hub's window of recent
  events, then live. A subscriber whose resume point lies before the window
  (a reconnect after a long absence), or that reads so slowly that the
  window moves past it, carries on with an upstream call of its own, as the
  server itself moves a slow watcher back to the database. Nothing is
  skipped and nothing repeated: the hub's events are numbered without gaps.

Finished jobs are not shared: their history is read once, directly.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import grpc
from aiohttp import web

from jobstream.gateway import errors
from jobstream.gateway.streams import (
    BACKOFF_INITIAL_S,
    BACKOFF_MAX_S,
    RECONNECT_WINDOW_S,
    RESUMABLE,
    EventJson,
    EventStream,
    SseResponse,
    error_response,
    frame,
)
from jobstream.gateway.transcode import dumps
from jobstream.v1 import job_pb2
from jobstream.v1 import job_service_pb2 as js

log = logging.getLogger(__name__)

HUB_WINDOW = 10_000
"""Recent events a hub keeps for subscribers that join late or read slowly
(about 3 MB of frames at a typical 300 bytes)."""

LIVE_STATES = frozenset({job_pb2.JOB_STATE_QUEUED, job_pb2.JOB_STATE_RUNNING})
"""Jobs in these states get a shared hub; others are read directly."""

Metadata = tuple[tuple[str, str], ...]
StartWatch = Callable[[Any, Metadata], Any]
"""Starts an upstream WatchJob call: (request, metadata) -> call."""
GetJob = Callable[[js.GetJobRequest, Metadata], Any]
"""Makes a GetJob call: (request, metadata) -> awaitable answer."""


class Hub:
    """The shared upstream watch of one job and its window of frames."""

    def __init__(
        self, job_id: str, after_seq: int, metadata: Metadata, start: StartWatch, cache: EventJson
    ) -> None:
        self.job_id = job_id
        self.first = after_seq + 1
        """Seq of frames[0]."""
        self.frames: list[bytes] = []
        self.notices = 0
        """How many times the upstream call was lost and is being made again."""
        self.final: bytes | None = None
        """The frame that ends every subscriber's stream, once known."""
        self.subscribers = 0
        self._metadata = metadata
        self._start = start
        self._cache = cache
        self._tick = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def last(self) -> int:
        """Seq of the newest frame (``first - 1`` when there is none)."""
        return self.first + len(self.frames) - 1

    def start(self) -> None:
        """Starts the upstream watch."""
        self._task = asyncio.create_task(self._run(), name=f"hub {self.job_id}")

    def stop(self) -> None:
        """Cancels the upstream watch."""
        if self._task is not None:
            self._task.cancel()

    def after(self, seq: int) -> list[bytes] | None:
        """Frames after ``seq``; None when they are no longer all in the window."""
        if seq + 1 < self.first:
            return None
        return self.frames[seq + 1 - self.first :]

    @property
    def tick(self) -> asyncio.Event:
        """Set at the next frame, notice or end (take it before reading)."""
        return self._tick

    def _wake(self) -> None:
        self._tick.set()
        self._tick = asyncio.Event()

    def _append(self, event: job_pb2.JobEvent) -> None:
        if event.seq <= self.last:
            return  # already here before a reconnect
        self.frames.append(self._cache.frame(event))
        excess = len(self.frames) - HUB_WINDOW
        if excess > HUB_WINDOW // 4:  # trim in chunks: slicing a list is O(n)
            del self.frames[:excess]
            self.first += excess

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        delay = BACKOFF_INITIAL_S
        lost_at: float | None = None
        try:
            while True:
                call = self._start(
                    js.WatchJobRequest(job_id=self.job_id, after_seq=self.last),
                    self._metadata,
                )
                try:
                    async for message in call:
                        lost_at, delay = None, BACKOFF_INITIAL_S
                        for event in message.events.events:
                            self._append(event)
                        self._wake()
                    self.final = frame("end", b"{}")
                    return
                except grpc.aio.AioRpcError as exc:
                    now = loop.time()
                    lost_at = now if lost_at is None else lost_at
                    if (
                        exc.code() != grpc.StatusCode.UNAVAILABLE
                        or now - lost_at > RECONNECT_WINDOW_S
                    ):
                        status = errors.status_json(errors.status_of(exc))
                        self.final = frame("rpc-error", dumps(status))
                        return
                    self.notices += 1
                    self._wake()
                finally:
                    call.cancel()
                await asyncio.sleep(delay)
                delay = min(delay * 2, BACKOFF_MAX_S)
        finally:
            if self.final is None:  # cancelled: the last subscriber left
                self.final = frame("end", b"{}")
            self._wake()


class Hubs:
    """The gateway's hubs, by job id."""

    def __init__(self, cache: EventJson) -> None:
        self.cache = cache
        self._hubs: dict[str, Hub] = {}

    def close(self) -> None:
        """Cancels every upstream watch (the gateway stops)."""
        for hub in self._hubs.values():
            hub.stop()
        self._hubs.clear()

    async def serve(
        self,
        request: web.Request,
        message: js.WatchJobRequest,
        metadata: Metadata,
        start: StartWatch,
        get_job: GetJob,
    ) -> web.StreamResponse:
        """Answers one WatchJob event stream, through the job's hub when it
        is live, else with a call of its own."""
        last = message.after_seq

        def direct() -> EventStream:
            return EventStream(
                RESUMABLE["jobstream.v1.JobService.WatchJob"],
                message,
                lambda m: start(m, metadata),
                self.cache,
            )

        try:
            job = (await get_job(js.GetJobRequest(job_id=message.job_id), metadata)).job
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.UNAVAILABLE:
                return await direct().serve(request)  # it waits for the server
            return error_response(exc)
        if message.skip_history:
            # As the server does: the events start after the snapshot.
            last = max(last, job.last_seq)
        if job.state not in LIVE_STATES or last > job.last_seq:
            # Finished (read once), or a resume point the server must refuse.
            return await direct().serve(request)
        hub = self._hubs.get(job.id)
        if hub is None or hub.final is not None:
            hub = Hub(job.id, last, metadata, start, self.cache)
            self._hubs[job.id] = hub
            hub.start()
        elif hub.after(last) is None:
            return await direct().serve(request)  # from before the hub's window
        sse = SseResponse(request)
        hub.subscribers += 1
        try:
            await sse.open()
            async with sse.heartbeat():
                await sse.write(frame("snapshot", self.cache.message(job), last))
                await self._follow(sse, hub, last, direct)
        finally:
            hub.subscribers -= 1
            if hub.subscribers == 0 and self._hubs.get(hub.job_id) is hub:
                del self._hubs[hub.job_id]
                hub.stop()
        return sse.response

    async def _follow(
        self, sse: SseResponse, hub: Hub, last: int, direct: Callable[[], EventStream]
    ) -> None:
        notices = hub.notices
        while True:
            tick = hub.tick
            frames = hub.after(last)
            if frames is None:
                # The window moved past this reader: on with its own call.
                await direct().follow(sse, last)
                return
            if frames:
                await sse.write(b"".join(frames))
                last += len(frames)
                continue
            if hub.notices != notices:
                notices = hub.notices
                await sse.write(frame("reconnecting", b"{}"))
            if hub.final is not None and hub.after(last) == []:
                await sse.write(hub.final)
                return
            await tick.wait()
