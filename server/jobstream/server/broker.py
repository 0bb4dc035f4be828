"""Fan-out after commit. The broker is a wake-up, never the truth: watchers
fall back to the database whenever the broker cannot give them every event.

Each job watcher has a queue of committed events, bounded in count and in
bytes. A watcher that falls behind (its client reads slowly) overflows: its
queue is dropped and it re-reads from the database until it has caught up,
so a slow reader costs the server a flag, not a backlog.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict, deque
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from jobstream.server.domain import Effects, Event, Job, event_bytes

WATCH_QUEUE_LIMIT = 2_000
"""Events a job watcher may have waiting before it falls back to the database."""

WATCH_QUEUE_BYTES = 64 * 1024
"""Bytes of events (domain.event_bytes) a job watcher may have waiting before
it falls back to the database. The events are shared with the job's other
watchers, but a stalled watcher of a job nobody else follows keeps them
alive on its own: this bounds what it can hold (2,000 events of 32 KiB log
lines would be 64 MiB). It is part of the per-watch memory the watch budget
reserves (quotas.py)."""


class JobSubscription:
    """One watcher's view of a job's live events."""

    def __init__(self, job_id: str, limit: int, max_bytes: int) -> None:
        self.job_id = job_id
        self.limit = limit
        self.max_bytes = max_bytes
        self.events: deque[Event] = deque()
        self.queued_bytes = 0
        self.overflowed = False
        self.deleted = False
        self.ended: Job | None = None
        """The job as a committed finish here ended it (None: not seen)."""
        self.wake = asyncio.Event()

    def offer(self, events: list[Event], size: int) -> None:
        """Queues committed events (``size``: their event_bytes), or marks
        the watcher as behind."""
        if not self.overflowed:
            if (
                len(self.events) + len(events) > self.limit
                or self.queued_bytes + size > self.max_bytes
            ):
                self.poke()
                return
            self.events.extend(events)
            self.queued_bytes += size
        self.wake.set()

    def take(self) -> Event:
        """The oldest queued event, removed from the queue."""
        event = self.events.popleft()
        if not self.events:
            self.queued_bytes = 0
        return event

    def poke(self) -> None:
        """Tells the watcher to re-read from the database (the events are
        committed elsewhere, e.g. by another server)."""
        self.overflowed = True
        self.clear()
        self.wake.set()

    def reset(self) -> None:
        """Starts a database read: what is queued will be read anyway."""
        self.overflowed = False
        self.clear()

    def clear(self) -> None:
        """Drops what is queued."""
        self.events.clear()
        self.queued_bytes = 0


class Broker:
    """Wakes job watchers, job-list watchers and waiting workers after commits."""

    def __init__(
        self, queue_limit: int = WATCH_QUEUE_LIMIT, queue_bytes: int = WATCH_QUEUE_BYTES
    ) -> None:
        self.queue_limit = queue_limit
        self.queue_bytes = queue_bytes
        self._jobs: defaultdict[str, set[JobSubscription]] = defaultdict(set)
        self._lists: set[asyncio.Event] = set()
        # Each waiting AcquireJob with the (queues, kinds) it can take: a new
        # job wakes only the workers that could lease it.
        self._acquirers: dict[asyncio.Event, tuple[frozenset[str], frozenset[str]]] = {}
        self.draining = False
        """Shutting down: no new leases; watchers are still served."""
        self.closed = False

    def drain(self) -> None:
        """First step of a shutdown: waiting AcquireJob calls return empty and
        new ones lease nothing, while watchers keep receiving the events of
        the jobs still running (an embedded worker finishing its handlers)."""
        self.draining = True
        _set_all(self._acquirers)

    def close(self) -> None:
        """Shutting down: wakes everyone so streams and long polls can end."""
        self.drain()
        self.closed = True
        for subs in self._jobs.values():
            for sub in subs:
                sub.wake.set()
        _set_all(self._lists)

    @property
    def watcher_count(self) -> int:
        """Job watchers and list watchers connected to this server."""
        return sum(len(s) for s in self._jobs.values()) + len(self._lists)

    def publish(self, effects: Effects) -> None:
        """Hands a commit's events to the watchers of their jobs."""
        by_job: defaultdict[str, list[Event]] = defaultdict(list)
        for event in effects.events:
            if event.job_id in self._jobs:
                by_job[event.job_id].append(event)
        for job_id, events in by_job.items():
            size = sum(event_bytes(e) for e in events)  # once for all its watchers
            ended = effects.ended.get(job_id)
            for sub in self._jobs.get(job_id, ()):
                if ended is not None:
                    sub.ended = ended
                sub.offer(events, size)
        for job_id in effects.deleted_jobs:
            for sub in self._jobs.get(job_id, ()):
                sub.deleted = True
                sub.wake.set()
        if effects.changed_jobs or effects.deleted_jobs:
            _set_all(self._lists)
        if effects.acquirable:
            for wake, (queues, kinds) in self._acquirers.items():
                if any(q in queues and k in kinds for q, k in effects.acquirable):
                    wake.set()

    def poke(self, job_ids: Iterable[str] | None, *, acquirable: bool = True) -> None:
        """Wakes everyone interested in ``job_ids`` (None: every job) to read
        from the database: the changes were committed elsewhere."""
        ids = list(self._jobs) if job_ids is None else job_ids
        for job_id in ids:
            for sub in self._jobs.get(job_id, ()):
                sub.poke()
        _set_all(self._lists)
        if acquirable:
            _set_all(self._acquirers)

    @contextmanager
    def job(self, job_id: str) -> Iterator[JobSubscription]:
        """Subscribes to a job's live events for the block's duration."""
        sub = JobSubscription(job_id, self.queue_limit, self.queue_bytes)
        self._jobs[job_id].add(sub)
        try:
            yield sub
        finally:
            subs = self._jobs.get(job_id)
            if subs is not None:
                subs.discard(sub)
                if not subs:
                    del self._jobs[job_id]

    @contextmanager
    def changes(self) -> Iterator[asyncio.Event]:
        """An event set whenever any job changes or is deleted."""
        with _member(self._lists) as wake:
            yield wake

    @contextmanager
    def acquirable(self, queues: Iterable[str], kinds: Iterable[str]) -> Iterator[asyncio.Event]:
        """An event set whenever a job of one of ``kinds`` on one of
        ``queues`` may have become acquirable."""
        wake = asyncio.Event()
        self._acquirers[wake] = (frozenset(queues), frozenset(kinds))
        try:
            yield wake
        finally:
            del self._acquirers[wake]


@contextmanager
def _member(registry: set[asyncio.Event]) -> Iterator[asyncio.Event]:
    wake = asyncio.Event()
    registry.add(wake)
    try:
        yield wake
    finally:
        registry.discard(wake)


def _set_all(events: Iterable[asyncio.Event]) -> None:
    for event in events:
        event.set()
