"""The job-change log that WatchJobs follows: one row per job a commit
changed or deleted, with its owner, at a position that only grows. Written
once per commit, inside the commit's transaction; read by job-list
watchers from any position they resume at."""

from __future__ import annotations

from collections.abc import Iterable
from typing import cast

import peewee as pw

from jobstream.server import cluster
from jobstream.server.db import ChangeRow, JobRow
from jobstream.server.domain import Effects, JobChange
from jobstream.server.store.dialect import Dialect
from jobstream.server.store.sql import RawInsert

CHANGE_OWNER_LOOKUP = 500
"""Job ids looked up per query for their owners when a commit's changes are
logged: far below every backend's limit on query parameters."""


class ChangeLog:
    """Writes and reads the job_change table."""

    def __init__(self, db: pw.Database, dialect: Dialect) -> None:
        self.db = db
        self.dialect = dialect
        self._insert_change = RawInsert(db, ChangeRow, ("job_id", "deleted", "time", "owner"))

    def record(self, effects: Effects, now: int) -> None:
        """Appends the transaction's changed and deleted jobs to the change
        log, once each, with their owners, in the same transaction."""
        changed = sorted(effects.changed_jobs - effects.deleted_jobs.keys())
        owners = {j: effects.owners[j] for j in changed if j in effects.owners}
        unknown = [j for j in changed if j not in owners]
        for start in range(0, len(unknown), CHANGE_OWNER_LOOKUP):
            chunk = unknown[start : start + CHANGE_OWNER_LOOKUP]
            owners.update(
                cast(
                    Iterable[tuple[str, str]],
                    JobRow.select(JobRow.id, JobRow.owner).where(JobRow.id.in_(chunk)).tuples(),
                )
            )
        rows = [(job_id, False, now, owners.get(job_id, "")) for job_id in changed]
        deleted = sorted(effects.deleted_jobs.items())
        rows += [(job_id, True, now, owner) for job_id, owner in deleted]
        if rows:
            if self.dialect.ordered_changes:
                cluster.lock_change_log(self.db)
            self._insert_change.run(rows)

    def read(self, *, after_position: int, limit: int) -> list[JobChange]:
        """Up to ``limit`` change-log rows after ``after_position``, in order."""
        query = cast(
            Iterable[tuple[int, str, bool, str]],
            ChangeRow.select(
                ChangeRow.position, ChangeRow.job_id, ChangeRow.deleted, ChangeRow.owner
            )
            .where(ChangeRow.position > after_position)
            .order_by(ChangeRow.position)
            .limit(limit)
            .tuples(),
        )
        return [JobChange(position=p, job_id=j, deleted=bool(d), owner=o) for p, j, d, o in query]

    def head_position(self) -> int:
        """The newest change-log position (0 when empty); an index lookup."""
        value = ChangeRow.select(pw.fn.MAX(ChangeRow.position)).scalar()
        return int(value or 0)
