"""The reader threads: store reads run here, off the event loop, each
thread with its own connection (peewee keeps one per thread). Writes never
run here (they go through the writer), nor does file-system work (it runs
on threads of its own, see files.py)."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar

import peewee as pw

from jobstream.server.db import bind_thread

P = ParamSpec("P")
T = TypeVar("T")

DEFAULT_READERS = 4
"""Reader threads per server: reads are short (one indexed query or a page
of events), and more threads only contend for the GIL."""


@dataclass(frozen=True, slots=True)
class _Read:
    call: Callable[[], Any]
    context: contextvars.Context
    """The caller's: its log lines keep the request and job ids."""
    future: asyncio.Future[Any]
    loop: asyncio.AbstractEventLoop


class Readers:
    """Threads that run store reads, handed each read through one queue.

    A read is a queue entry and an event-loop future, answered with one
    ``call_soon_threadsafe``: the executor's concurrent future, its
    condition and the callbacks that chain it to an asyncio future cost a
    GetJob about as much CPU as its SQL did."""

    def __init__(self, db: pw.Database, count: int = DEFAULT_READERS) -> None:
        self.db = db
        self.count = count
        self._queue: queue.SimpleQueue[_Read | None] = queue.SimpleQueue()
        self._threads = [
            threading.Thread(target=self._serve, name=f"jobstream-read_{i}", daemon=True)
            for i in range(count)
        ]
        for thread in self._threads:
            thread.start()

    async def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Runs a store read on a reader thread."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        call = functools.partial(fn, *args, **kwargs)
        self._queue.put(_Read(call, contextvars.copy_context(), future, loop))
        return await future

    def _serve(self) -> None:
        bind_thread(self.db)
        try:
            while (read := self._queue.get()) is not None:
                try:
                    answer: tuple[Any, Exception | None] = (read.context.run(read.call), None)
                except Exception as exc:
                    answer = (None, exc)
                # A closed loop: the server is gone, and nobody waits any more.
                with contextlib.suppress(RuntimeError):
                    read.loop.call_soon_threadsafe(_settle, read.future, *answer)
        finally:
            # peewee keeps a connection per thread, which only that thread
            # can close. Left open, they would outlive a server stopped
            # inside a process that carries on.
            self.db.close()

    def close(self) -> None:
        """Lets the reads queued so far finish, then stops the threads
        (each closes its own connection)."""
        for _ in self._threads:
            self._queue.put(None)
        for thread in self._threads:
            thread.join()


def _settle(future: asyncio.Future[Any], result: Any, error: Exception | None) -> None:
    """Answers a read's caller (on the event loop), unless it went away."""
    if future.done():
        return
    if error is None:
        future.set_result(result)
    else:
        future.set_exception(error)
