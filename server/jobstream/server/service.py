"""What the RPCs do, in domain terms: writes go through the writer, reads
run on the reader threads, live updates come from the broker. The gRPC layer
(servicers.py) validates and converts around this; artifacts.py and
purge.py are the rest of the service layer."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import ParamSpec, TypeVar

from jobstream.server.broker import Broker, JobSubscription
from jobstream.server.domain import (
    Acquire,
    Effects,
    Event,
    EventKind,
    Finish,
    FinishItem,
    Job,
    JobFilter,
    Lease,
    LogSearch,
    NewJob,
    Outcome,
    Report,
    ReportAck,
    RequestKey,
    Rescue,
    Stats,
    Submitted,
    event_bytes,
    now_us,
)
from jobstream.server.errors import (
    InvalidArgument,
    NotFound,
    OutOfRange,
    ServiceError,
    Unavailable,
    not_found,
)
from jobstream.server.files import FileRoots, Removal, check_recorded, remove_job_files
from jobstream.server.readers import Readers
from jobstream.server.store import Store
from jobstream.server.writer import Merge, Writer
from jobstream.v1 import errors_pb2

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

EVENT_PAGE = 1_000
"""Most events read from the database per query while a watcher catches up."""

WATCH_PAGE_BYTES = 64 * 1024
"""About how many bytes of events (domain.event_bytes) one catch-up read
brings in. A watcher whose client stalls holds its last page until the
client reads again, so this, not EVENT_PAGE, bounds that memory: a page of
1,000 log lines of 1 KiB was 1.5 MiB per stalled watcher. The page's count
follows the size of the events just read."""

FIRST_EVENT_PAGE = 32
"""Events in a watcher's first catch-up read, before it knows their size."""

CHANGE_PAGE = 100
"""Change-log rows (and so changed jobs) read per query by a job-list
watcher, and jobs per page of its initial listing. A list watcher whose
client stalls holds its last page: 100 jobs of a few KiB each fit inside
its reservation of the watch memory budget (quotas.py); the 500 of earlier
versions need not."""

FORCE_DELETE_REASON = "deleted with force"
"""Why a running job deleted with force was cancelled (its state event and
error message say so)."""

ACQUIRE_RECHECK_S = 1.0
"""A waiting AcquireJob looks again this often even without a wake-up, so a
job whose not_before passes is found."""


@dataclass(frozen=True, kw_only=True, slots=True)
class WatchItem:
    """One step of a job watch: the snapshot, or a run of consecutive events
    (all that were ready at once, in seq order)."""

    snapshot: Job | None = None
    events: Sequence[Event] = ()
    final: Job | None = None
    """With the events that end the watch, when asked for: the job as it is
    after its terminal event."""


@dataclass(frozen=True, kw_only=True, slots=True)
class ListChange:
    """One message of a job-list watch."""

    position: int
    job: Job | None = None
    deleted_job_id: str | None = None
    caught_up: bool = False
    listed: bool = False
    """A job of the initial listing (resumable after it, see ListingResume)."""


@dataclass(frozen=True, slots=True)
class ListingResume:
    """Where an initial listing that was cut off resumes: its position,
    and the (create_time, id) of the last job it sent."""

    position: int
    after: tuple[int, str]


@dataclass(frozen=True, kw_only=True, slots=True)
class DeleteOutcome:
    """What a delete did."""

    deleted: bool
    removal: Removal


class JobService:
    """The job service's behaviour, independent of gRPC."""

    def __init__(
        self,
        *,
        store: Store,
        writer: Writer,
        readers: Readers,
        broker: Broker,
        roots: FileRoots,
        sweep_wanted: asyncio.Event,
        lease_us: int,
        max_lease_us: int,
    ) -> None:
        self.store = store
        self.writer = writer
        self.readers = readers
        self.broker = broker
        self.roots = roots
        self.sweep_wanted = sweep_wanted
        """Set when a commit left chunks to remove (a delete of a job holding
        artifacts): wakes the sweeper at once."""
        self.lease_us = lease_us
        self.max_lease_us = max_lease_us
        self._submits: Merge[tuple[Sequence[NewJob], bool], Submitted] = Merge(
            lambda c, calls: store.jobs.submit_calls(c, calls, now_us())
        )

    # ---------------------------------------------------------------- producers

    async def submit(self, specs: Sequence[NewJob], *, batch: bool = False) -> Submitted:
        """Stores new jobs; see Lifecycle.submit. Submits that meet in one
        group of the writer are stored as one (one INSERT per table)."""
        return await self.writer.run_merged(self._submits, (specs, batch))

    async def get(self, job_id: str, owner: str | None = None) -> Job:
        """One job with its steps; with ``owner``, another principal's job
        is NotFound."""
        return await self.readers.run(self.store.reads.get_job, job_id, owner)

    async def list_jobs(
        self, flt: JobFilter, limit: int, cursor: tuple[int, str] | None
    ) -> list[Job]:
        """Up to ``limit`` jobs after ``cursor``, newest first."""
        return await self.readers.run(self.store.reads.list_jobs, flt, limit=limit, cursor=cursor)

    async def cancel(self, job_id: str, reason: str, *, owner: str | None = None) -> Job:
        """Cancels or asks to stop; see Lifecycle.cancel."""
        return await self.writer.run(
            lambda c: self.store.jobs.cancel(c, job_id, reason, now_us(), owner=owner)
        )

    async def delete(
        self,
        job_id: str,
        *,
        force: bool,
        allow_missing: bool,
        owner: str | None = None,
        actor: str = "",
    ) -> DeleteOutcome:
        """Deletes the rows, then (after the commit) the files; the chunks of
        its artifacts are left to the sweep, woken at once. With ``force`` a
        running job is first cancelled in a commit of its own, so its
        watchers receive the terminal event (and their streams end) before
        the job is gone. With ``owner``, another principal's job is missing.
        ``actor`` (the caller's name) goes into the log line."""
        stopped = False
        if force:
            stopped = await self.writer.run(
                lambda c: self.store.jobs.cancel_running(
                    c, job_id, FORCE_DELETE_REASON, now_us(), owner=owner
                )
            )
        deletion = await self.writer.run(
            lambda c: self.store.deletions.delete(
                c, job_id, force=force, allow_missing=allow_missing, now=now_us(), owner=owner
            )
        )
        if deletion is None:
            return DeleteOutcome(deleted=False, removal=Removal(removed=(), refused=()))
        if deletion.garbage:
            self.sweep_wanted.set()
        removal = await remove_job_files(self.roots, deletion.job_id, deletion.files)
        log.info(
            "deleted job %s (by %s%s; %d paths removed, %d refused)",
            job_id,
            who(actor),
            ", with force: it was running and was cancelled" if stopped else "",
            len(removal.removed),
            len(removal.refused),
        )
        return DeleteOutcome(deleted=True, removal=removal)

    async def retry(
        self,
        job_id: str,
        reason: str,
        additional_attempts: int,
        *,
        answer: Callable[[Job], bytes],
        key: RequestKey | None = None,
        owner: str | None = None,
    ) -> bytes:
        """Queues an ended job again as a new attempt (see Lifecycle.retry)
        and returns ``answer`` of the job. With ``key``, the answer is
        recorded in the retry's own transaction, and a repeat of the key
        returns it without retrying again."""

        def run(effects: Effects) -> bytes:
            first = self.store.answers.first(key) if key is not None else None
            if first is not None:
                return first
            job = self.store.jobs.retry(
                effects, job_id, reason, additional_attempts, now_us(), owner=owner
            )
            if key is None:
                return answer(job)
            return self.store.answers.record(key, answer(job), now_us())

        return await self.writer.run(run)

    async def first_answer(self, key: RequestKey) -> bytes | None:
        """The answer recorded for ``key`` (see Answers.first)."""
        return await self.readers.run(self.store.answers.first, key)

    async def record_answer(self, key: RequestKey, answer: bytes) -> bytes:
        """Records the first answer of a call that has no single transaction
        of its own (a purge runs in batches); returns the one that counts."""
        return await self.writer.run(lambda c: self.store.answers.record(key, answer, now_us()))

    async def stats(self, flt: JobFilter, window_us: int) -> Stats:
        """Counts and timings of the selected jobs; see Statistics.summary."""
        return await self.readers.run(
            self.store.stats.summary, flt, window_us=window_us, now=now_us()
        )

    async def events_page(
        self,
        job_id: str,
        kind: EventKind,
        after_seq: int,
        page_size: int,
        *,
        owner: str | None = None,
        search: LogSearch | None = None,
    ) -> list[Event]:
        """A page of one kind of event (log lines, results); NotFound for an
        unknown job (or, with ``owner``, another principal's) rather than an
        empty page. Log lines may be narrowed by ``search``."""
        reads = self.store.reads

        def page() -> list[Event]:
            if owner is not None and not reads.job_exists(job_id, owner):
                raise not_found(job_id)
            if search is not None and not search.empty:
                events = reads.search_logs(job_id, search, after_seq=after_seq, limit=page_size)
            elif kind is EventKind.RESULT_ITEM:
                # Results are read from their keyed table: each key once, at
                # its latest version (see store/results.py).
                events = self.store.reads.read_results(job_id, after_seq=after_seq, limit=page_size)
            else:
                events = self.store.reads.read_events(
                    job_id, after_seq=after_seq, limit=page_size, kind=kind
                )
            if not events and owner is None and not reads.job_exists(job_id):
                raise not_found(job_id)
            return events

        return await self.readers.run(page)

    # ---------------------------------------------------------------- watchers

    async def watch(
        self,
        job_id: str,
        after_seq: int,
        *,
        owner: str | None = None,
        skip_history: bool = False,
        final: bool = False,
    ) -> AsyncIterator[WatchItem]:
        """Snapshot, stored events after ``after_seq`` (with ``skip_history``,
        none the snapshot accounts for), then live events; ends after the
        terminal event, which comes with the job as it ended when ``final``
        asks for it. With ``owner``, another principal's job is NotFound.

        The subscription starts before the snapshot is read, so an event
        committed after the read is queued for us; one committed before it may
        come twice and is dropped by seq. On overflow or a gap the watcher
        re-reads from the database: it never skips and never holds a backlog.
        A retried job's history holds earlier terminal events; only one at or
        after the snapshot's last seq ends the stream.
        """
        with self.broker.job(job_id) as sub:
            job = await self.get(job_id, owner)
            if after_seq > job.last_seq:
                raise OutOfRange(
                    f"after_seq {after_seq} is beyond the job's last seq {job.last_seq}",
                    field="after_seq",
                    metadata={"jobId": job_id, "value": str(after_seq), "last": str(job.last_seq)},
                )
            yield WatchItem(snapshot=job)
            last = max(after_seq, job.last_seq) if skip_history else after_seq
            if job.state.terminal and last >= job.last_seq:
                return
            # Nothing stored is newer than the snapshot until the subscription
            # (opened before the snapshot was read) says so: a database read
            # would find nothing.
            from_db = last < job.last_seq
            page = FIRST_EVENT_PAGE
            while True:
                self._check_open()
                if sub.deleted:
                    # The rows are gone; what the broker queued before the
                    # deletion (a forced delete's cancel) is all there is.
                    run, ended = _until_end(_queued_run(sub, last), job.last_seq)
                    if run:
                        yield WatchItem(events=run)
                    if ended:
                        return
                    raise NotFound(
                        f"job {job_id!r} was deleted",
                        field="job_id",
                        reason=errors_pb2.JOB_DELETED,
                        metadata={"jobId": job_id},
                    )
                if from_db or sub.overflowed:
                    # Kept in case the read finds the job deleted: then the
                    # queue is the only place its last events still exist.
                    queued = () if sub.overflowed else tuple(sub.events)
                    sub.reset()
                    events = await self.readers.run(
                        self.store.reads.read_events, job_id, after_seq=last, limit=page
                    )
                    from_db = len(events) == page
                    page = _next_page(events, page)
                    run, ended = _until_end(events, job.last_seq)
                    if run:
                        yield await self._watch_item(sub, run, ended and final, owner)
                        last = run[-1].seq
                    if ended:
                        return
                    if not events and not await self.readers.run(
                        self.store.reads.job_exists, job_id
                    ):
                        # Gone: deleted through another server (no local
                        # publish said so), or here after the reset above.
                        # Either way the deleted branch ends the stream, with
                        # the events that were queued when the read began.
                        sub.deleted = True
                        sub.events.extendleft(reversed(queued))
                    continue
                ready: list[Event] = []
                while sub.events and not sub.overflowed:
                    event = sub.take()
                    if event.seq <= last:
                        continue
                    if event.seq != last + 1:
                        from_db = True
                        break
                    ready.append(event)
                    last = event.seq
                run, ended = _until_end(ready, job.last_seq)
                if run:
                    yield await self._watch_item(sub, run, ended and final, owner)
                if ended:
                    return
                if from_db or sub.overflowed or sub.events or sub.deleted:
                    continue
                sub.wake.clear()
                await sub.wake.wait()

    async def _watch_item(
        self, sub: JobSubscription, events: Sequence[Event], final: bool, owner: str | None
    ) -> WatchItem:
        """A run of events; with ``final`` (the run ends the watch), the job
        as it ended: as the finish that stored the run's last event left it,
        when it was committed here, else as it is now, unless it is gone."""
        if not final:
            return WatchItem(events=events)
        if sub.ended is not None and sub.ended.last_seq == events[-1].seq:
            # Read back, it would be the same job: the wait of every job a
            # worker finishes here ends with this, one read fewer.
            return WatchItem(events=events, final=sub.ended)
        try:
            job = await self.get(sub.job_id, owner)
        except NotFound:
            job = None
        return WatchItem(events=events, final=job)

    async def watch_list(
        self,
        flt: JobFilter,
        after_position: int,
        *,
        skip_listing: bool = False,
        resume: ListingResume | None = None,
    ) -> AsyncIterator[ListChange]:
        """Job-level changes of matching jobs, from the change log, and the
        deletions of jobs of the filter's owner (of every job for admins).
        From position 0 the matching jobs are listed first, newest first,
        each as it is when read, at the position read before the listing;
        unless ``skip_listing``: then only the caught-up marker at the
        newest position. With ``resume``, a listing cut off part-way goes on
        after the last job it sent, at its own position: the jobs made
        since come from the change log after that position, which is
        replayed next, so none is missed and none is listed twice."""
        with self.broker.changes() as wake:
            head = await self.readers.run(self.store.changes.head_position)
            if after_position > head:
                raise OutOfRange(
                    f"after_position {after_position} is beyond the newest position {head}",
                    field="after_position",
                    metadata={"value": str(after_position), "last": str(head)},
                )
            position = after_position
            if after_position == 0:
                cursor: tuple[int, str] | None = None
                if resume is not None:
                    head, cursor = min(resume.position, head), resume.after
                while not skip_listing:
                    jobs = await self.list_jobs(flt, CHANGE_PAGE, cursor)
                    for job in jobs:
                        yield ListChange(position=head, job=job, listed=True)
                    if len(jobs) < CHANGE_PAGE:
                        break
                    cursor = (jobs[-1].create_time, jobs[-1].id)
                yield ListChange(position=head, caught_up=True)
                position = head
            while True:
                self._check_open()
                wake.clear()
                changes = await self.readers.run(
                    self.store.changes.read, after_position=position, limit=CHANGE_PAGE
                )
                if not changes:
                    await wake.wait()
                    continue
                position = changes[-1].position
                # Owner first: another principal's change, a deletion
                # included, is never even looked at for this watcher.
                changes = [c for c in changes if flt.owner is None or c.owner == flt.owner]
                current = await self.readers.run(
                    self.store.reads.get_jobs, {c.job_id for c in changes if not c.deleted}
                )
                newest = {c.job_id: c.position for c in changes}
                for change in changes:
                    if newest[change.job_id] != change.position:
                        continue  # a later row of this page carries the job's newer state
                    found = current.get(change.job_id)
                    if change.deleted:
                        yield ListChange(position=change.position, deleted_job_id=change.job_id)
                    elif found is not None and flt.matches(found):
                        yield ListChange(position=change.position, job=found)

    def _check_open(self) -> None:
        """Ends streams when the server shuts down; clients resume elsewhere."""
        if self.broker.closed:
            raise Unavailable(
                "server is shutting down; resume from your last position",
                reason=errors_pb2.SHUTTING_DOWN,
            )

    # ---------------------------------------------------------------- workers

    async def acquire(
        self,
        *,
        worker_id: str,
        kinds: Sequence[str],
        queues: Sequence[str],
        wait_s: float,
        lease_us: int | None,
        max_jobs: int = 1,
    ) -> list[Lease]:
        """Leases up to ``max_jobs`` jobs, waiting up to ``wait_s`` for any;
        none once the server is shutting down. While it waits, the commit
        that makes a matching job acquirable leases it (see _parked); the
        broker's wake-up stays the fallback (another server's commit, a
        not_before passing, a lease that found nothing)."""
        lease = min(lease_us or self.lease_us, self.max_lease_us)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s

        def take(effects: Effects) -> list[Lease]:  # on the writer thread
            if self.broker.draining:
                return []  # shutting down: no new leases
            return self.store.jobs.acquire_many(
                effects,
                worker_id=worker_id,
                kinds=kinds,
                queues=queues,
                lease_us=lease,
                now=now_us(),
                limit=max_jobs,
            )

        while not self.broker.draining:
            with self.broker.acquirable(queues, kinds) as wake:
                got = await self._leasing(take, _same)
                remaining = deadline - loop.time()
                if got or remaining <= 0 or self.broker.draining:
                    return got
                got = await self._parked(
                    take, queues, kinds, wake, min(remaining, ACQUIRE_RECHECK_S)
                )
                if got:
                    return got
        return []

    async def _parked(
        self,
        take: Callable[[Effects], list[Lease]],
        queues: Sequence[str],
        kinds: Sequence[str],
        wake: asyncio.Event,
        wait_s: float,
    ) -> list[Lease]:
        """Waits up to ``wait_s`` for a wake-up, with ``take`` parked in the
        writer meanwhile: the group that makes a job we can run acquirable
        (a submit) leases it to us in its own transaction, so the job starts
        with the submit's commit, not one commit (an fsync) and one writer
        hand-off later. Returns what that lease took once it is committed;
        nothing when no group took ``take`` or its group failed (the caller
        then looks again, as after any wake-up)."""
        queue_set, kind_set = frozenset(queues), frozenset(kinds)

        def wants(effects: Effects) -> bool:  # the broker's test (publish)
            return any(q in queue_set and k in kind_set for q, k in effects.acquirable)

        claim = self.writer.park(wants, take)
        # A taken lease ends the wait even if the broker says nothing.
        claim.add_done_callback(lambda _: wake.set())
        try:
            # Not wait_for: on 3.11 it swallows a cancel that comes as the
            # wake-up does, and the call would return leases nobody receives.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait_s):
                    await wake.wait()
        except asyncio.CancelledError:
            if not self.writer.unpark(claim):
                await self._give_back(claim, _same)  # the call went away: release
            raise
        if self.writer.unpark(claim):
            return []
        try:
            return await self._kept(claim, _same)
        except asyncio.CancelledError:
            raise
        except Exception:  # the group failed (the writer logged it): nothing leased
            return []

    async def _leasing(
        self, op: Callable[[Effects], T], leases_of: Callable[[T], Sequence[Lease]]
    ) -> T:
        """Runs a write that may lease jobs. If the caller goes away while
        it commits, the leases it took are released: a cancelled call never
        strands a job as RUNNING with nobody holding its lease."""
        return await self._kept(asyncio.ensure_future(self.writer.run(op)), leases_of)

    async def _kept(
        self, attempt: asyncio.Future[T], leases_of: Callable[[T], Sequence[Lease]]
    ) -> T:
        """Awaits a write that may lease jobs; if the caller goes away
        meanwhile, releases what it leased (see _give_back)."""
        try:
            return await asyncio.shield(attempt)
        except asyncio.CancelledError:
            await self._give_back(attempt, leases_of)
            raise

    async def _give_back(
        self, attempt: asyncio.Future[T], leases_of: Callable[[T], Sequence[Lease]]
    ) -> None:
        """Releases the leases ``attempt`` took, once it is committed: its
        caller went away, and nobody else will ever hold them. An attempt
        that failed leased nothing: the caller still ends cancelled."""
        try:
            done = await attempt
        except Exception:
            return
        taken = [(lease.job.id, lease.lease_id) for lease in leases_of(done)]
        if taken:

            def release(c: Effects) -> None:
                for job_id, lease_id in taken:
                    self.store.jobs.release(c, job_id, lease_id, now_us())

            await self.writer.run(release)

    async def report(self, job_id: str, lease_id: str, report: Report) -> ReportAck:
        """Stores a worker's batch and renews its lease. A recorded file the
        job does not own refuses the whole batch before anything is stored."""
        if report.files:
            await asyncio.to_thread(self._check_files, job_id, report.files)
        return await self.writer.run(
            lambda c: self.store.reports.report(c, job_id, lease_id, report, now=now_us())
        )

    def _check_files(self, job_id: str, files: Sequence[str]) -> None:
        """Refuses the first recorded path the job does not own (files.py)."""
        for i, raw in enumerate(files):
            checked = check_recorded(self.roots, job_id, raw)
            if checked.target is None:
                raise InvalidArgument(checked.refusal, field=f"server_paths[{i}]")

    async def finish(
        self, job_id: str, lease_id: str, finish: Finish, *, acquire_next: Acquire | None = None
    ) -> tuple[Job, list[Lease]]:
        """Ends an attempt; with ``acquire_next``, also leases the worker's
        next jobs in the same transaction (never waiting for one): one call
        and one commit per job for a worker running job after job."""
        if acquire_next is None:
            job = await self.writer.run(
                lambda c: self.store.jobs.finish(c, job_id, lease_id, finish, now_us())
            )
            _log_release(job, finish)
            return job, []

        def finish_then_acquire(effects: Effects) -> tuple[Job, list[Lease]]:
            now = now_us()
            job = self.store.jobs.finish(effects, job_id, lease_id, finish, now)
            return job, self._lease_next(effects, acquire_next, now)

        job, leases = await self._leasing(finish_then_acquire, lambda done: done[1])
        _log_release(job, finish)
        return job, leases

    async def finish_many(
        self, items: Sequence[FinishItem], *, acquire_next: Acquire | None = None
    ) -> tuple[list[Job | ServiceError], list[Lease]]:
        """Ends several attempts in one transaction: a finish refused (its
        lease gone) is answered with its error and changes nothing, the
        others are stored. With ``acquire_next``, then leases up to its
        ``max_jobs`` next jobs."""

        def finish_all(effects: Effects) -> tuple[list[Job | ServiceError], list[Lease]]:
            now = now_us()
            with self.store.jobs.ledger.together(rows_of=[item.job_id for item in items]):
                answers = finish_each(effects, now)
            # After the finishes are written: a job one of them queued
            # again may be leased.
            leases = self._lease_next(effects, acquire_next, now) if acquire_next else []
            return answers, leases

        def finish_each(effects: Effects, now: int) -> list[Job | ServiceError]:
            answers: list[Job | ServiceError] = []
            for item in items:
                # No savepoint per finish (on PostgreSQL each costs two round
                # trips): a finish is refused by its fencing check, before it
                # writes anything. Should one ever fail after writing, the
                # whole call fails and the writer rolls all of it back.
                written = len(effects.events)
                try:
                    answers.append(
                        self.store.jobs.finish(
                            effects, item.job_id, item.lease_id, item.finish, now
                        )
                    )
                except ServiceError as exc:
                    if len(effects.events) != written:
                        raise
                    answers.append(exc)
            return answers

        answers, leases = await self._leasing(finish_all, lambda done: done[1])
        for item, answer in zip(items, answers, strict=True):
            if not isinstance(answer, ServiceError):
                _log_release(answer, item.finish)
        return answers, leases

    def _lease_next(self, effects: Effects, spec: Acquire, now: int) -> list[Lease]:
        """The leases a finish's ``acquire_next`` asks for (writer thread)."""
        if self.broker.draining:
            return []  # shutting down: no new leases
        return self.store.jobs.acquire_many(
            effects,
            worker_id=spec.worker_id,
            kinds=spec.kinds,
            queues=spec.queues,
            lease_us=min(spec.lease_us or self.lease_us, self.max_lease_us),
            now=now,
            limit=spec.max_jobs,
        )

    async def expire_leases(
        self, *, limit: int = 500, worker_prefix: str | None = None
    ) -> list[Rescue]:
        """Rescues jobs from dead workers; see Lifecycle.expire_leases."""
        return await self.writer.run(
            lambda c: self.store.jobs.expire_leases(
                c, now_us(), limit=limit, worker_prefix=worker_prefix
            )
        )


def _same(leases: list[Lease]) -> list[Lease]:
    """The leases of an acquire's answer: the answer itself."""
    return leases


def who(actor: str) -> str:
    """A caller as log lines name it (the anonymous single user has no name)."""
    return actor or "anonymous"


def _log_release(job: Job, finish: Finish) -> None:
    """The INFO line of a job its worker gave back (stopping, or a job it
    leased ahead and could not start soon enough)."""
    if finish.outcome is Outcome.RELEASED and not job.state.terminal:
        log.info(
            "released job %s: its worker %s gave it back before it finished", job.id, job.worker_id
        )


def _next_page(events: Sequence[Event], page: int) -> int:
    """How many events the next catch-up read asks for: as many as fit in
    WATCH_PAGE_BYTES at the size of ``events`` (``page`` when none came)."""
    if not events:
        return page
    average = max(1, sum(event_bytes(e) for e in events) // len(events))
    return max(1, min(EVENT_PAGE, WATCH_PAGE_BYTES // average))


def _queued_run(sub: JobSubscription, last: int) -> list[Event]:
    """The queued events that follow seq ``last`` without a gap."""
    run: list[Event] = []
    if sub.overflowed:
        return run
    for event in sub.events:
        if event.seq <= last:
            continue
        if event.seq != last + 1:
            break
        run.append(event)
        last = event.seq
    return run


def _until_end(events: Sequence[Event], snapshot_last_seq: int) -> tuple[Sequence[Event], bool]:
    """The events up to and including the one that ends the watch, and
    whether one did: a terminal event at or after the snapshot's last seq (a
    retried job's history holds earlier terminal events)."""
    for i, event in enumerate(events):
        if event.terminal and event.seq >= snapshot_last_seq:
            return events[: i + 1], True
    return events, False
