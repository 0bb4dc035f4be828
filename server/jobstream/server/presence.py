"""Which workers are polling, kept cheaply: AcquireJob is the hot path, so a
poll only touches memory, and a background flush writes the workers seen
since the last one (and those still waiting in a long poll) in one writer
operation every PRESENCE_WRITE_S seconds: at most one row write per worker
per interval, however often it polls. The rows are shared, so every server
of a PostgreSQL cluster lists every worker; a worker counts as live while
it was seen within LIVE_S (three flushes) or holds a live lease (a worker
whose slots are all busy does not poll)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace

from jobstream.server.domain import Acquire, WorkerInfo, WorkerSeen, now_us
from jobstream.server.errors import FailedPrecondition
from jobstream.server.readers import Readers
from jobstream.server.store.workers import WorkerRegistry
from jobstream.server.writer import Writer

log = logging.getLogger(__name__)

PRESENCE_WRITE_S = 5.0
"""How often a server writes the workers it saw: a worker's row is written
at most this often."""

LIVE_S = 3 * PRESENCE_WRITE_S
"""A worker seen within this long is live (a missed flush is tolerated)."""

RECENT_S = 3_600.0
"""ListWorkers shows workers seen within this long (the gone ones with
live false); older rows are removed."""

MAX_REMEMBERED = 10_000
"""Worker ids a server remembers having written (each new worker id is
written at once); past this it forgets them all, bounding its memory."""

SERVED_CACHE_S = 2.0
"""How long ``--refuse-unserved`` trusts its last read of the workers."""


class Presence:
    """Workers seen polling this server, flushed to the shared table."""

    def __init__(self, registry: WorkerRegistry, writer: Writer, readers: Readers) -> None:
        self.registry = registry
        self.writer = writer
        self.readers = readers
        self._seen: dict[str, WorkerSeen] = {}
        """Seen since the last flush."""
        self._polling: Counter[str] = Counter()
        """Long polls waiting now, per worker."""
        self._latest: dict[str, WorkerSeen] = {}
        """The last sighting of each worker polling now."""
        self._served: tuple[float, list[WorkerInfo]] | None = None
        self._written: set[str] = set()
        """Workers this server has written a row for."""
        self._newcomer = asyncio.Event()
        """Set by a worker not written yet: it is written at once, so a new
        worker is listed (and its kinds count as served) without waiting
        for the next interval."""

    def seen(self, spec: Acquire) -> WorkerSeen:
        """Marks the worker of an AcquireJob (or of a FinishJob's
        ``acquire_next``) as seen now. Memory only."""
        seen = WorkerSeen(
            id=spec.worker_id,
            host=spec.host,
            kinds=spec.kinds,
            queues=spec.queues,
            concurrency=spec.concurrency,
            last_seen=now_us(),
        )
        self._seen[spec.worker_id] = seen
        if spec.worker_id not in self._written:
            self._newcomer.set()
        return seen

    @contextmanager
    def polling(self, spec: Acquire) -> Iterator[None]:
        """Marks the worker as seen, and as seen at every flush while the
        block (its long poll) lasts. Memory only."""
        worker_id = spec.worker_id
        self._latest[worker_id] = self.seen(spec)
        self._polling[worker_id] += 1
        try:
            yield
        finally:
            self._polling[worker_id] -= 1
            if self._polling[worker_id] <= 0:
                del self._polling[worker_id]
                self._latest.pop(worker_id, None)

    async def flush(self) -> int:
        """Writes the workers seen since the last flush and those polling
        now, in one writer operation; returns how many."""
        now = now_us()
        due = dict(self._seen)
        for worker_id in self._polling:
            due[worker_id] = replace(self._latest[worker_id], last_seen=now)
        self._seen.clear()
        forget_before = now - int(RECENT_S * 1e6)
        rows = list(due.values())
        if not rows:
            return 0
        await self.writer.run(lambda _: self.registry.record(rows, forget_before=forget_before))
        if len(self._written) > MAX_REMEMBERED:
            self._written.clear()  # costs each worker one early write, no more
        self._written.update(due)
        self._served = None  # the next --refuse-unserved check reads them anew
        return len(rows)

    async def run(self, every_s: float = PRESENCE_WRITE_S) -> None:
        """Flushes every ``every_s`` seconds, and at once when a new worker
        polls, forever."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._newcomer.wait(), every_s)
            self._newcomer.clear()
            try:
                await self.flush()
            except Exception:
                log.exception("recording workers failed; will retry")

    async def workers(self) -> list[WorkerInfo]:
        """Workers seen within RECENT_S, by id, from the shared table."""
        now = now_us()
        return await self.readers.run(
            self.registry.list,
            now=now,
            live_after=now - int(LIVE_S * 1e6),
            seen_after=now - int(RECENT_S * 1e6),
        )

    async def require_served(self, kind: str, queue: str) -> None:
        """FAILED_PRECONDITION unless a live worker serves ``kind`` on
        ``queue`` (``--refuse-unserved``); the workers are read at most every
        SERVED_CACHE_S seconds."""
        loop = asyncio.get_running_loop()
        if self._served is None or loop.time() - self._served[0] > SERVED_CACHE_S:
            self._served = (loop.time(), await self.workers())
        if not any(w.live and w.serves(kind, queue) for w in self._served[1]):
            raise FailedPrecondition(
                f"no live worker serves kind {kind!r} on queue {queue!r}; this server "
                "refuses such submits (--refuse-unserved)",
                field="kind",
            )
