"""A job's row and its events, written together: what every write that
changes a job does. Events get the seqs after the row's last one in the
same transaction, so a job's seqs are gap-free; a state transition stores
its event and ends the lease in one step; worker calls are fenced by the
lease. Lifecycle, reports and artifact storage share these.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import peewee as pw

from jobstream.server.db import EventRow, JobRow, dumps
from jobstream.server.domain import (
    JSON,
    Effects,
    ErrorInfo,
    Event,
    EventKind,
    JobState,
    Step,
    StepState,
)
from jobstream.server.errors import FailedPrecondition, not_found
from jobstream.server.store import steps
from jobstream.server.store.dialect import Dialect
from jobstream.server.store.rows import error_body, step_body
from jobstream.server.store.sql import RawInsert, Statements
from jobstream.v1 import errors_pb2


def owned(row: JobRow, owner: str | None) -> bool:
    """Whether the job exists for a caller restricted to ``owner``'s jobs
    (None: an admin, for whom every job does)."""
    return owner is None or row.owner == owner


class _Held(threading.local):
    """What a ``together`` block holds, per thread: the writer thread holds
    its writes while reader threads read rows through the same Ledger, and
    must never see them."""

    events: list[tuple[Any, ...]] | None = None
    """Event rows waiting for the end of the block (None: not in one)."""
    rows: dict[str, JobRow] = {}  # replaced per block, never changed in place
    """Rows read at the start of the block, as written since."""


class Ledger:
    """Reads a job's row for a write, appends its events, moves its state."""

    def __init__(self, db: pw.Database, dialect: Dialect, sql: Statements) -> None:
        self.db = db
        self.dialect = dialect
        self.sql = sql
        self._insert_event = RawInsert(db, EventRow, ("job_id", "seq", "time", "kind", "body"))
        self._held = _Held()

    @contextlib.contextmanager
    def together(self, rows_of: Sequence[str] = ()) -> Iterator[None]:
        """The events appended and the job rows updated inside are stored
        when the block ends: a few multi-row INSERTs and one executemany
        per update shape, instead of a statement each (on PostgreSQL each
        is a round trip, and a worker's batch of finishes and leases writes
        every job). Nothing inside may read back what it wrote; the block
        is one operation's, on the writer thread, so an error drops what it
        held with the operation. On PostgreSQL the rows of the jobs
        ``rows_of`` are read first, in one round trip (Statements.job_rows),
        and ``by_id`` answers from them inside."""
        held = self._held
        if held.events is not None:
            yield  # already inside one
            return
        held.events = []
        try:
            held.rows = self.sql.job_rows(rows_of)
            with self.sql.updates_together():
                yield
            rows = held.events
        finally:
            held.events = None
            held.rows = {}
        self._insert_event.run(rows)

    def row(self, job_id: str, owner: str | None = None) -> JobRow:
        """The job's row, or NotFound; with ``owner``, also NotFound (in the
        same words) when another principal owns the job."""
        row = self.by_id(job_id)
        if row is None or not owned(row, owner):
            raise not_found(job_id)
        return row

    def by_id(self, job_id: str, *, lock: bool = False) -> JobRow | None:
        """The job's row or None, through SQL built once (peewee building a
        SELECT per call cost more than SQLite running it)."""
        known = self._held.rows.get(job_id)
        if known is not None and not lock:
            return known
        return self.sql.job_row(job_id, lock=lock)

    def locked_row(self, job_id: str) -> JobRow | None:
        """The job's row, on PostgreSQL locked (FOR UPDATE) until the
        transaction ends; None when there is none, also when a transaction
        that held the lock meanwhile deleted it."""
        return self.by_id(job_id, lock=True)

    def leased(self, job_id: str, lease_id: str, now: int, *, lock: bool = False) -> JobRow:
        """The job, if ``lease_id`` is its live lease; fencing for workers.
        With ``lock``, its row is locked as by locked_row."""
        row = self.by_id(job_id, lock=lock)
        if row is None:
            raise not_found(job_id)
        if row.state != JobState.RUNNING.value or row.lease_id != lease_id:
            raise FailedPrecondition(
                f"lease {lease_id!r} is not the current lease of job {job_id!r} "
                f"(job is {row.state}, attempt {row.attempt})",
                field="lease_id",
                reason=errors_pb2.LEASE_UNKNOWN,
                metadata={"jobId": job_id, "leaseId": lease_id, "state": row.state},
            )
        if (row.lease_expire or 0) < now:
            raise FailedPrecondition(
                f"lease {lease_id!r} of job {job_id!r} expired",
                field="lease_id",
                reason=errors_pb2.LEASE_EXPIRED,
                metadata={"jobId": job_id, "leaseId": lease_id},
            )
        return row

    def release(self, effects: Effects, row: JobRow, reason: str, now: int, **fields: Any) -> None:
        """Returns a running job to the queue without counting its attempt,
        for the job or for the steps the attempt started."""
        given_back = steps.take_back(row.id, row.attempt)
        # A step still running now was not started by this attempt (it was
        # stored before starts were tracked per attempt): nothing to take
        # back, but it must not stay running.
        left = steps.end_running(row.id, StepState.INTERRUPTED, now, reason)
        self.transition(
            effects,
            row,
            JobState.QUEUED,
            reason,
            now,
            step_changes=[*given_back, *left],
            attempt=row.attempt - 1,
            **fields,
        )

    def transition(
        self,
        effects: Effects,
        row: JobRow,
        state: JobState,
        reason: str,
        now: int,
        *,
        error: ErrorInfo | None = None,
        step_changes: Sequence[Step] = (),
        **fields: Any,
    ) -> None:
        """Moves a job to ``state`` with an event saying why; ends the lease.
        ``step_changes`` (steps the attempt's end changed) get their events
        first: a watch ends at a terminal state event."""
        body: JSON = {"state": state.value, "reason": reason, "attempt": row.attempt}
        if error is not None:
            body["error"] = error_body(error)
            fields["error"] = dumps(body["error"])
        items = [(EventKind.STEP, step_body(s)) for s in step_changes]
        seq = self.append(effects, row, now, [*items, (EventKind.STATE_CHANGE, body)])
        if state.terminal:
            fields["end_time"] = now
        else:
            effects.acquirable.add((row.queue, row.kind))
        values = {
            "state": state.value,
            "lease_id": None,
            "lease_expire": None,
            "update_time": now,
            "last_seq": seq,
            **fields,
        }
        self.sql.update(row.id, values)
        # The row now says what is stored, so callers can answer from it
        # without reading it again.
        row.__data__.update(values)

    def append(
        self, effects: Effects, row: JobRow, now: int, items: Sequence[tuple[EventKind, JSON]]
    ) -> int:
        """Stores events for ``row`` after its last seq; returns the new last seq."""
        first = row.last_seq + 1
        events = [
            Event(job_id=row.id, seq=first + i, time=now, kind=kind, body=body)
            for i, (kind, body) in enumerate(items)
        ]
        self.insert_events(effects, events)
        row.last_seq = first + len(items) - 1
        # Known here, so the change log need not look the owner up.
        effects.owners.setdefault(row.id, row.owner)
        return int(row.last_seq)

    def insert_events(self, effects: Effects, events: list[Event]) -> None:
        """Stores events whose seqs are already assigned, and records them
        (and their jobs as changed) in ``effects``."""
        rows = [(e.job_id, e.seq, e.time, e.kind.value, dumps(e.body)) for e in events]
        if self._held.events is not None:
            self._held.events.extend(rows)
        else:
            self._insert_event.run(rows)
        effects.events.extend(events)
        effects.changed_jobs.update(e.job_id for e in events)

    def insert_first_events(
        self, effects: Effects, job_ids: Sequence[str], now: int, kind: EventKind, body: JSON
    ) -> None:
        """Stores the same first event (seq 1) for each of the new jobs
        ``job_ids``, its body written as JSON once for all of them, and
        records them as insert_events does."""
        text = dumps(body)
        self._insert_event.run([(job_id, 1, now, kind.value, text) for job_id in job_ids])
        effects.events.extend(
            [Event(job_id=job_id, seq=1, time=now, kind=kind, body=body) for job_id in job_ids]
        )
        effects.changed_jobs.update(job_ids)
