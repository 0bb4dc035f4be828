"""The workers the servers have seen polling: one row per worker id, upserted
in batches (see presence.py), read with the jobs each holds a live lease on.
Rows of workers gone for long are removed with the next batch."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import peewee as pw

from jobstream.server.db import JobRow, WorkerRow, dumps
from jobstream.server.domain import JobState, WorkerInfo, WorkerSeen


class WorkerRegistry:
    """Stores and lists the workers seen."""

    def __init__(self, db: pw.Database) -> None:
        self.db = db

    def record(self, seen: Sequence[WorkerSeen], *, forget_before: int) -> None:
        """Upserts ``seen`` (the first sighting keeps its first_seen) and
        removes the rows of workers last seen before ``forget_before``.
        Runs in the writer's transaction."""
        if seen:
            rows = [
                {
                    WorkerRow.id: w.id,
                    WorkerRow.host: w.host,
                    WorkerRow.kinds: dumps(list(w.kinds)),
                    WorkerRow.queues: dumps(list(w.queues)),
                    WorkerRow.concurrency: w.concurrency,
                    WorkerRow.first_seen: w.last_seen,
                    WorkerRow.last_seen: w.last_seen,
                }
                for w in seen
            ]
            WorkerRow.insert_many(rows).on_conflict(
                conflict_target=[WorkerRow.id],
                preserve=[
                    WorkerRow.host,
                    WorkerRow.kinds,
                    WorkerRow.queues,
                    WorkerRow.concurrency,
                    WorkerRow.last_seen,
                ],
            ).execute()
        WorkerRow.delete().where(WorkerRow.last_seen < forget_before).execute()

    def list(self, *, now: int, live_after: int, seen_after: int) -> list[WorkerInfo]:
        """Workers seen since ``seen_after``, by id; live when seen since
        ``live_after`` or holding a live lease."""
        held: Any = (
            JobRow.select(JobRow.worker_id, pw.fn.COUNT(JobRow.id))
            .where((JobRow.state == JobState.RUNNING.value) & (JobRow.lease_expire >= now))
            .group_by(JobRow.worker_id)
            .tuples()
        )
        running: dict[str, int] = {str(worker): int(count) for worker, count in held}
        rows = WorkerRow.select().where(WorkerRow.last_seen >= seen_after).order_by(WorkerRow.id)
        return [
            WorkerInfo(
                id=row.id,
                host=row.host,
                kinds=tuple(json.loads(row.kinds)),
                queues=tuple(json.loads(row.queues)),
                concurrency=row.concurrency,
                first_seen=row.first_seen,
                last_seen=row.last_seen,
                running=running.get(row.id, 0),
                live=row.last_seen >= live_after or running.get(row.id, 0) > 0,
            )
            for row in rows
        ]
