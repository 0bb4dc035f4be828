"""The one writer: every state change goes through a single thread that
commits concurrent operations in groups.

Many RPCs arriving together share one transaction (and one fsync), which is
what makes ``synchronous=FULL`` nearly free. Each operation runs in its own
savepoint, so one rejected call rolls back alone (an operation alone in its
group needs none: its failure rolls back the whole transaction). An RPC's
future resolves only after the group commits: what was acknowledged is on
disk.

Operations of one kind that follow each other in a group may also run as
one call (see run_merged): many SubmitJob calls then write their jobs in
one INSERT, as one SubmitJobs would. If that call fails, each operation
runs again alone, so only the ones at fault hear of it.

Operations record what they did in an :class:`Effects`; the group's merged
``Effects`` goes to the commit steps inside the transaction (the change log,
the NOTIFY other servers receive at commit), then, once committed, to the
commit listeners on the event loop (the broker, metrics), so nothing
uncommitted is ever published.

An operation may also be parked: it waits, outside any group, for a group
whose operations did what it looks for, and then runs in that group's
transaction, after them (a waiting AcquireJob leases the job a submit made
in the submit's own commit: one fsync and one hand-off fewer).

Between groups, an idle step (the SQLite trigram table's upkeep) may run
in a transaction of its own: work taken off the operations' path.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import peewee as pw

from jobstream.server.db import bind_thread, prepare_writer_connection
from jobstream.server.domain import Effects
from jobstream.server.errors import ServiceError, Unavailable

log = logging.getLogger(__name__)

T = TypeVar("T")
In = TypeVar("In")

MAX_GROUP = 512
"""Most operations committed in one transaction; bounds a group's latency."""

OP_SAVEPOINT = "jobstream_op"
"""The name of the savepoint around each operation of a group."""

CommitStep = Callable[[Effects], None]
"""Runs on the writer thread inside a group's transaction, after its
operations, with what they did together; an error fails the whole group."""

IdleStep = Callable[[], bool]
"""Upkeep run on the writer thread, in its own transaction, when no
operation is queued; returns whether it left work (then it runs again as
soon as the writer is idle, else IDLE_EVERY_S later)."""

IDLE_EVERY_S = 0.1
"""How often the idle step runs once it has caught up: each run that finds
work commits on its own (an fsync), so at most this often for a trickle of
single operations."""

BUSY_EVERY_S = 1.0
"""How often the idle step runs even while operations keep the writer busy,
so its work cannot grow without end under a steady stream of them."""

IDLE_RETRY_S = 10.0
"""How long after a failed idle step the next one runs: a step that keeps
failing logs its error this often, not at every pause."""

CommitListener = Callable[[Effects], None]
"""Runs on the event loop after a group committed, with what it did; must
be quick (every caller of the group waits for it)."""


class _Broken(Exception):
    """A failed operation's writes could not be undone (the rollback itself
    failed: the database ended the transaction on its own, or went away).
    What the group did can no longer be trusted, so all of it fails."""


@dataclass(frozen=True, slots=True)
class Merge(Generic[In, T]):
    """Operations of one kind that may run as one call: ``run`` takes the
    inputs of several and returns one result per input, in order, each what
    that operation would have had alone."""

    run: Callable[[Effects, Sequence[In]], Sequence[T]]

    def alone(self, item: In, effects: Effects) -> T:
        """One operation's call, as it runs when it cannot join others."""
        [result] = self.run(effects, [item])
        return result


@dataclass(slots=True)
class _Op:
    fn: Callable[[Effects], Any]
    future: asyncio.Future[Any]
    effects: Effects = field(default_factory=Effects)
    context: contextvars.Context = field(default_factory=contextvars.copy_context)
    """The caller's context (made on the caller's side): the operation runs
    in it, so its log lines carry the caller's request and job ids."""
    merge: Merge[Any, Any] | None = None
    """Set for an operation made by run_merged: ``fn`` is its call alone."""
    item: Any = None
    """Its input to ``merge``."""


@dataclass(slots=True)
class _Parked:
    op: _Op
    wants: Callable[[Effects], bool]
    """Whether a group's (merged) effects call for the operation; runs on the
    writer thread, so it must only read its argument and its own closure."""


class Writer:
    """Runs write operations on one thread, committing them in groups."""

    def __init__(
        self,
        db: pw.Database,
        loop: asyncio.AbstractEventLoop,
        *,
        at_commit: Sequence[CommitStep] = (),
        on_commit: Sequence[CommitListener] = (),
        idle: IdleStep | None = None,
    ) -> None:
        self._db = db
        self._loop = loop
        self._at_commit = tuple(at_commit)
        self._on_commit = tuple(on_commit)
        self._idle = idle
        # When the idle step next runs if nothing is queued, and at the
        # latest; at once on start: work may be left from before a restart.
        self._idle_next = 0.0
        self._idle_latest = 0.0
        self._queue: queue.SimpleQueue[_Op | None] = queue.SimpleQueue()
        # Parked operations by their future (see park); the lock because the
        # event loop parks and takes back while the writer thread claims.
        self._parked: dict[asyncio.Future[Any], _Parked] = {}
        self._parked_lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="jobstream-writer", daemon=True)
        self.groups = 0
        self.ops = 0
        self.on_group: Callable[[int, float], None] | None = None
        """Called on the writer thread after each group with its size and
        seconds taken (metrics); must be quick and thread-safe."""

    def start(self) -> None:
        """Starts the writer thread."""
        self._thread.start()

    def stop(self) -> None:
        """Commits what is queued, then ends the thread."""
        self._queue.put(None)
        self._thread.join()

    async def run(self, fn: Callable[[Effects], T]) -> T:
        """Runs ``fn`` in the next group; returns its result after the commit."""
        future: asyncio.Future[T] = self._loop.create_future()
        self._queue.put(_Op(fn, future))
        return await future

    async def run_merged(self, merge: Merge[In, T], item: In) -> T:
        """Runs ``merge`` on ``item`` in the next group, and returns its
        result after the commit, as ``run`` does. Operations with the same
        ``merge`` next to each other in a group run as one call, in one
        savepoint; if that call fails, each runs again alone, in a
        savepoint of its own, and hears its own outcome."""
        future: asyncio.Future[T] = self._loop.create_future()
        fn = functools.partial(merge.alone, item)
        self._queue.put(_Op(fn, future, merge=merge, item=item))
        return await future

    def park(
        self, wants: Callable[[Effects], bool], fn: Callable[[Effects], T]
    ) -> asyncio.Future[T]:
        """Parks ``fn`` until a group's operations did what ``wants`` looks
        for (checked on the writer thread with the group's merged effects);
        then ``fn`` runs once, in that group's transaction after them, in a
        savepoint of its own, and the future this returns resolves after
        that group's commit, as ``run``'s would (with its error if the group
        failed). Call ``unpark`` when no longer waiting."""
        future: asyncio.Future[T] = self._loop.create_future()
        with self._parked_lock:
            self._parked[future] = _Parked(_Op(fn, future), wants)
        return future

    @property
    def parked(self) -> int:
        """How many parked operations wait for a group."""
        return len(self._parked)

    def unpark(self, future: asyncio.Future[Any]) -> bool:
        """Takes a parked operation back: True if it never ran and never
        will; False if a group took it, and its future will resolve with
        that group's commit (leases it took must then be dealt with)."""
        with self._parked_lock:
            return self._parked.pop(future, None) is not None

    def _claim(self, effects: Effects) -> _Op | None:
        """Takes the first parked operation that ``effects`` calls for; it
        is taken once, and its future is then resolved by this group."""
        if not self._parked:  # read without the lock: parking races a group anyway
            return None
        with self._parked_lock:
            for future, parked in self._parked.items():
                if parked.wants(effects):
                    return self._parked.pop(future).op
        return None

    def _run(self) -> None:
        bind_thread(self._db)
        prepare_writer_connection(self._db)
        stopping = False
        while not stopping:
            first = self._next()
            if first is None:
                break
            group = [first]
            while len(group) < MAX_GROUP:
                try:
                    op = self._queue.get_nowait()
                except queue.Empty:
                    break
                if op is None:
                    stopping = True
                    break
                group.append(op)
            self._commit(group)
        self._db.close()

    def _next(self) -> _Op | None:
        """The next queued operation; until one comes, the idle step runs
        when it is due."""
        if self._idle is None:
            return self._queue.get()
        while True:
            now = time.monotonic()
            if now < self._idle_latest:
                try:
                    if self._idle_next > now:
                        return self._queue.get(timeout=self._idle_next - now)
                    return self._queue.get_nowait()
                except queue.Empty:
                    pass
            self._run_idle(self._idle)

    def _run_idle(self, step: IdleStep) -> None:
        try:
            with self._db.atomic():
                more = step()
        except Exception:
            log.exception("idle step failed; next try in %g s", IDLE_RETRY_S)
            wait = IDLE_RETRY_S
        else:
            wait = 0.0 if more else IDLE_EVERY_S
        now = time.monotonic()
        self._idle_next = now + wait
        self._idle_latest = now + max(wait, BUSY_EVERY_S)

    def _commit(self, group: list[_Op]) -> None:
        started = time.perf_counter()
        done: list[tuple[_Op, Any, BaseException | None]] = []
        committed = Effects()
        try:
            with self._db.atomic() as transaction:
                runs = list(_runs(group))
                # The group's only run has nothing beside it to keep: it
                # runs without a savepoint, and a failure rolls back the
                # whole transaction instead. A savepoint costs two
                # statements (on SQLite each passes the GIL to the event
                # loop and back, and SQLite keeps a copy of every page the
                # operation changes; on PostgreSQL each is a round trip).
                sole = transaction if len(runs) == 1 else None
                for run in runs:
                    if len(run) == 1:
                        self._apply(run[0], done, committed, sole)
                    elif not self._apply_merged(run, done, committed, sole):
                        for op in run:
                            self._apply(op, done, committed)
                # Parked operations join after the group's own, seeing what
                # they did; they are claimed (so owed an answer) only here,
                # one by one until one changes nothing: with many idle
                # workers parked, a submit's commit runs the lease of as
                # many as find a job, plus one (the rest stay parked, and
                # the broker's wake-up still reaches them).
                while (joined := self._claim(committed)) is not None:
                    group.append(joined)
                    written = len(committed.events)
                    self._apply(joined, done, committed)
                    if len(committed.events) == written:
                        break
                for step in self._at_commit:
                    step(committed)
        except Exception as exc:
            # The commit itself failed (disk full, database gone), or an
            # operation's undo did: nothing of this group is stored, so
            # every caller hears so.
            log.exception("commit of %d operations failed", len(group))
            if isinstance(exc, _Broken) and isinstance(exc.__cause__, Exception):
                exc = exc.__cause__
            error = Unavailable(f"storage unavailable: {type(exc).__name__}: {exc}")
            done = [(op, None, error) for op in group]
            committed = Effects()
        self.groups += 1
        self.ops += len(group)
        if self.on_group is not None:
            self.on_group(len(group), time.perf_counter() - started)
        self._loop.call_soon_threadsafe(self._deliver, done, committed)

    def _apply(
        self,
        op: _Op,
        done: list[tuple[_Op, Any, BaseException | None]],
        committed: Effects,
        sole: Any = None,
    ) -> None:
        """Runs one operation of a group in its savepoint (with ``sole``,
        the group's transaction, in none: see _undone); notes its answer in
        ``done`` and, if it stood, its effects in ``committed``."""
        try:
            with self._undone(sole):  # a failed op's writes are undone, no one else's
                result = op.context.run(op.fn, op.effects)
        except _Broken:
            raise
        except ServiceError as exc:
            done.append((op, None, exc))
        except Exception as exc:
            op.context.run(log.exception, "write operation failed")
            done.append((op, None, exc))
        else:
            committed.merge(op.effects)
            done.append((op, result, None))

    def _apply_merged(
        self,
        run: list[_Op],
        done: list[tuple[_Op, Any, BaseException | None]],
        committed: Effects,
        sole: Any = None,
    ) -> bool:
        """Runs operations of one Merge as one call in one savepoint (in the
        first one's context; ``sole`` as for _apply); False, with nothing
        kept, if the call failed."""
        merge = run[0].merge
        assert merge is not None
        effects = Effects()
        try:
            with self._undone(sole):
                results = run[0].context.run(merge.run, effects, [op.item for op in run])
                answers = list(zip(run, results, strict=True))
        except _Broken:
            raise
        except Exception:  # each runs again alone: only the ones at fault fail
            return False
        committed.merge(effects)
        done.extend((op, result, None) for op, result in answers)
        return True

    @contextlib.contextmanager
    def _undone(self, sole: Any) -> Iterator[None]:
        """What undoes an operation that fails: a savepoint around it, by a
        fixed name (peewee's ``atomic()`` names each with a fresh uuid4: a
        system call and two objects per operation, on the one thread every
        write waits for); or, given ``sole`` (the group's transaction, when
        the operation is all it holds), rolling that back, which begins it
        anew. Operations may still open savepoints of their own inside."""
        if sole is not None:
            try:
                yield
            except BaseException:
                _undo(sole.rollback)
                raise
            return
        self._db.execute_sql(f"SAVEPOINT {OP_SAVEPOINT}")  # type: ignore[no-untyped-call]
        try:
            yield
            self._db.execute_sql(f"RELEASE SAVEPOINT {OP_SAVEPOINT}")  # type: ignore[no-untyped-call]
        except BaseException:
            _undo(self._back_to_savepoint)
            raise

    def _back_to_savepoint(self) -> None:
        self._db.execute_sql(f"ROLLBACK TO SAVEPOINT {OP_SAVEPOINT}")  # type: ignore[no-untyped-call]
        self._db.execute_sql(f"RELEASE SAVEPOINT {OP_SAVEPOINT}")  # type: ignore[no-untyped-call]

    def _deliver(
        self, done: list[tuple[_Op, Any, BaseException | None]], committed: Effects
    ) -> None:
        for listener in self._on_commit:
            listener(committed)
        for op, result, exc in done:
            if op.future.done():  # the caller went away; the work is committed anyway
                continue
            if exc is None:
                op.future.set_result(result)
            else:
                op.future.set_exception(exc)


def _undo(undo: Callable[[], object]) -> None:
    """Runs an undo; if it fails, the group's transaction is broken."""
    try:
        undo()
    except Exception as exc:
        raise _Broken(f"a failed operation could not be undone: {exc}") from exc


def _runs(group: list[_Op]) -> Iterator[list[_Op]]:
    """The group's operations in order, those next to each other with the
    same Merge together."""
    run: list[_Op] = []
    for op in group:
        if run and (op.merge is None or op.merge is not run[0].merge):
            yield run
            run = []
        run.append(op)
    if run:
        yield run
