"""The reader threads: store reads run here, off the event loop, each
thread with its own connection (peewee keeps one per thread). Writes never
run here (they go through the writer), nor does file-system work (it runs
on threads of its own, see files.py)."""

from __future__ import annotations

import asyncio
import contextvars
import functools
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

import peewee as pw

from jobstream.server.db import bind_thread

P = ParamSpec("P")
T = TypeVar("T")

DEFAULT_READERS = 4
"""Reader threads per server: reads are short (one indexed query or a page
of events), and more threads only contend for the GIL."""


class Readers:
    """A pool of threads that run store reads."""

    def __init__(self, db: pw.Database, count: int = DEFAULT_READERS) -> None:
        self.db = db
        self.count = count
        self._pool = ThreadPoolExecutor(
            max_workers=count,
            thread_name_prefix="jobstream-read",
            initializer=bind_thread,
            initargs=(db,),
        )

    async def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Runs a store read on a reader thread."""
        loop = asyncio.get_running_loop()
        # In the caller's context, so its log lines keep the request and job ids.
        context = contextvars.copy_context()
        return await loop.run_in_executor(
            self._pool, context.run, functools.partial(fn, *args, **kwargs)
        )

    def close(self) -> None:
        """Closes the threads' connections and stops the threads."""
        # peewee keeps a connection per thread, which only that thread can
        # close: one task per reader, held at a barrier until every reader
        # has one, so each thread closes its own. Left open, they would
        # outlive a server stopped inside a process that carries on.
        barrier = threading.Barrier(self.count)

        def close_own() -> None:
            barrier.wait()
            self.db.close()

        for _ in range(self.count):
            self._pool.submit(close_own)
        self._pool.shutdown(wait=True)
