"""The report buffer: what a handler reported and the server has not yet
acknowledged, taken off in ReportJob-sized batches.

The handler side (its own thread, or the event loop for async handlers)
adds updates; the sender side (the job's flusher, on the event loop) takes
batches, sends them, and acknowledges each once the server has stored it.
Every update gets a number, so "everything reported so far is stored" is a
comparison: what ``flush`` waits for. The latest progress wins; log lines,
steps, results and files keep their order and none is dropped while the
buffer is open. A checkpoint takes its place in that order, so it is sent
in the batch holding the last update reported before it (or a later one):
the server stores it only with everything it covers.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Literal

from google.protobuf import struct_pb2
from google.protobuf.message import Message

from jobstream.client.convert import progress_to_pb
from jobstream.client.models import Progress
from jobstream.v1 import job_pb2

__all__ = [
    "MAX_BATCH_BYTES",
    "MAX_BATCH_ITEMS",
    "MAX_PENDING_ITEMS",
    "ReportBatch",
    "ReportBuffer",
    "Section",
]

MAX_BATCH_ITEMS = 1000
"""Most log lines, steps, results and files in one ReportJob."""

MAX_BATCH_BYTES = 1 << 20
"""Rough size limit of one ReportJob, in bytes (gRPC's default limit is 4 MiB)."""

MAX_PENDING_ITEMS = 10_000
"""Buffered items at which a sync handler's log()/step()/result_item() blocks
until the flusher catches up, so a fast handler cannot exhaust memory."""

Section = Literal["logs", "steps", "results", "files", "checkpoint"]
"""Where in a ReportJob an update goes (the request's field)."""


@dataclass(slots=True)
class ReportBatch:
    """One ReportJob's worth of updates."""

    progress: job_pb2.Progress | None = None
    logs: list[job_pb2.LogLine] = field(default_factory=list)
    steps: list[job_pb2.Step] = field(default_factory=list)
    results: list[job_pb2.ResultItem] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    checkpoint: struct_pb2.Struct | None = None
    """The newest checkpoint taken into the batch, if any."""

    @property
    def items(self) -> int:
        """Log lines, steps, results and files in the batch."""
        return len(self.logs) + len(self.steps) + len(self.results) + len(self.files)


@dataclass(frozen=True, slots=True)
class _Item:
    """A buffered update: its number, where it goes, its size."""

    number: int
    section: Section
    payload: Message | str
    size: int


class ReportBuffer:
    """Updates of one attempt, from the handler to the flusher.

    Safe from any thread. A handler thread that adds to a full buffer waits
    for room; the event loop's thread never waits (it runs the flusher that
    makes room). Once closed (the attempt ended, or its lease is lost) the
    buffer drops what it holds and whatever is added, and releases every
    waiter.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, progress: Progress) -> None:
        self.loop = loop
        """The event loop the flusher runs on."""
        self._loop_thread = threading.get_ident()
        self._cond = threading.Condition()
        self._items: deque[_Item] = deque()
        self._bytes = 0
        self._progress = progress
        self._progress_number = 0  # number of the oldest unsent progress; 0: none
        self._number = 0  # updates so far
        self._acked = 0  # every update up to this number was acknowledged
        self._wake_sent = False
        self._closed = False
        self._wake = asyncio.Event()
        self._acked_event = asyncio.Event()

    # -- the handler's side

    def on_loop_thread(self) -> bool:
        """Whether the caller runs on the event loop's thread."""
        return threading.get_ident() == self._loop_thread

    def update_progress(self, change: Callable[[Progress], Progress]) -> None:
        """Replace the progress with ``change(current)``, computed under the
        buffer's lock so that concurrent partial updates compose."""
        with self._cond:
            if self._closed:
                return
            self._number += 1
            self._progress = change(self._progress)
            if not self._progress_number:
                self._progress_number = self._number
            wake = not self._wake_sent
            self._wake_sent = True
        if wake:
            self._wake_flusher()

    def add(self, section: Section, payload: Message | str) -> None:
        """Buffer one update, waking the flusher (see ``woken``)."""
        size = payload.ByteSize() if isinstance(payload, Message) else len(payload.encode())
        with self._cond:
            if not self.on_loop_thread():
                while len(self._items) >= MAX_PENDING_ITEMS and not self._closed:
                    self._cond.wait()
            if self._closed:
                return
            self._number += 1
            self._items.append(_Item(self._number, section, payload, size))
            self._bytes += size
            wake = not self._wake_sent
            self._wake_sent = True
        if wake:
            self._wake_flusher()

    def wait_acknowledged(self) -> None:
        """Block until every update added so far is acknowledged, or the
        buffer is closed. From a handler thread only: on the loop's thread
        it would stop the flusher it waits for."""
        with self._cond:
            target = self._number
            self._wake_sent = True
        self._wake_flusher()
        with self._cond:
            while self._acked < target and not self._closed:
                self._cond.wait()

    async def acknowledged(self) -> None:
        """Wait (on the event loop) until every update added so far is
        acknowledged, or the buffer is closed."""
        with self._cond:
            target = self._number
            self._wake_sent = True
        self._wake.set()
        while True:
            with self._cond:
                if self._acked >= target or self._closed:
                    return
            self._acked_event.clear()
            await self._acked_event.wait()

    def _wake_flusher(self) -> None:
        if self.on_loop_thread():
            self._wake.set()
            return
        # A closed loop means the worker is gone, and this job's lease with it.
        with suppress(RuntimeError):
            self.loop.call_soon_threadsafe(self._wake.set)

    # -- the flusher's side (the event loop's thread)

    async def woken(self) -> None:
        """Wait until there is something to send: the first update since
        the flusher last took batches wakes it. Updates added while a report
        is in flight wait for its answer and go together in the next one,
        so batching costs latency only when there is a batch to make."""
        await self._wake.wait()

    def wake(self) -> None:
        """End the current ``wait`` now."""
        self._wake.set()

    def rearm(self) -> None:
        """Before taking batches: updates added from now on may wake the
        flusher again."""
        with self._cond:
            self._wake_sent = False
            self._wake.clear()

    def take_batch(self) -> ReportBatch | None:
        """The next batch to send (the progress, if it changed, and the
        oldest updates up to the batch limits); None when there is nothing
        to send or the buffer is closed."""
        with self._cond:
            if self._closed or (not self._items and not self._progress_number):
                return None
            batch = ReportBatch()
            if self._progress_number:
                batch.progress = progress_to_pb(self._progress)
                self._progress_number = 0
            count = size = 0
            while self._items and count < MAX_BATCH_ITEMS:
                item = self._items[0]
                if count and size + item.size > MAX_BATCH_BYTES:
                    break
                self._items.popleft()
                count += 1
                size += item.size
                if item.section == "checkpoint":
                    assert isinstance(item.payload, struct_pb2.Struct)
                    batch.checkpoint = item.payload  # a later one in the batch wins
                else:
                    getattr(batch, item.section).append(item.payload)
            self._bytes -= size
            self._cond.notify_all()  # room for a handler thread waiting in add()
            return batch

    def acknowledge(self) -> None:
        """Everything taken so far is stored (or given up on): release the
        waiters whose updates it covers."""
        with self._cond:
            unsent = [n for n in (self._progress_number,) if n]
            if self._items:
                unsent.append(self._items[0].number)
            self._acked = min(unsent) - 1 if unsent else self._number
            self._cond.notify_all()
        self._acked_event.set()

    def close(self) -> None:
        """Drop what is buffered and whatever comes, releasing every waiter."""
        with self._cond:
            self._closed = True
            self._items.clear()
            self._bytes = 0
            self._progress_number = 0
            self._cond.notify_all()
        self._acked_event.set()

    @property
    def acknowledged_number(self) -> int:
        """Number of the newest update acknowledged with every one before it."""
        return self._acked

    @property
    def settled(self) -> bool:
        """Whether every update so far was acknowledged: none waits to be
        taken, none is in flight."""
        with self._cond:
            return self._acked == self._number

    @property
    def pending(self) -> int:
        """Log lines, steps, results and files waiting to be taken."""
        return len(self._items)
