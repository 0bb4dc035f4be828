"""Deleting jobs: one (DeleteJob) or a batch of old ended ones (purge,
retention). A job's rows go in the transaction (events, steps, labels and
results cascade); its artifacts' chunks are marked for the sweep (see
artifacts.py), and the files it recorded are returned for the caller to
remove after the commit."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import peewee as pw

from jobstream.server.db import JobRow
from jobstream.server.domain import TERMINAL_STATES, Deletion, Effects, JobFilter, JobState
from jobstream.server.errors import FailedPrecondition, not_found
from jobstream.server.store.artifacts import ArtifactStore
from jobstream.server.store.dialect import Dialect
from jobstream.server.store.ledger import Ledger, owned
from jobstream.server.store.reads import filtered
from jobstream.v1 import errors_pb2


class Deletions:
    """Deletes jobs, one or a batch."""

    def __init__(
        self, db: pw.Database, dialect: Dialect, ledger: Ledger, artifacts: ArtifactStore
    ) -> None:
        self.db = db
        self.dialect = dialect
        self.ledger = ledger
        self.artifacts = artifacts

    def delete(
        self,
        effects: Effects,
        job_id: str,
        *,
        force: bool,
        allow_missing: bool,
        now: int,
        owner: str | None = None,
    ) -> Deletion | None:
        """Deletes a job's rows (events, steps, labels and results cascade)
        and its artifacts, whose bytes it leaves to the sweep (see
        ArtifactStore.drop_for_jobs); returns the files recorded for it, which the
        caller removes after the commit. With ``owner``, another principal's
        job is missing."""
        row = self.ledger.locked_row(job_id)
        if row is None or not owned(row, owner):
            if allow_missing:
                return None
            raise not_found(job_id)
        if row.state == JobState.RUNNING.value and not force:
            raise FailedPrecondition(
                f"job {job_id!r} is running: cancel it first or delete with force",
                field="force",
                reason=errors_pb2.JOB_RUNNING,
                metadata={"jobId": job_id, "state": row.state},
            )
        garbage = self.artifacts.drop_for_jobs([job_id], now)
        JobRow.delete().where(JobRow.id == job_id).execute()
        effects.deleted_jobs[job_id] = row.owner
        return Deletion(
            job_id=job_id, files=tuple(json.loads(row.files)), garbage=garbage.get(job_id, 0)
        )

    def purge_batch(
        self, effects: Effects, flt: JobFilter, *, ended_before: int, limit: int, now: int
    ) -> list[Deletion]:
        """Deletes up to ``limit`` terminal jobs that match ``flt`` and ended
        at or before ``ended_before``, oldest first, as delete does; returns
        their recorded files for the caller to remove after the commit."""
        query = self._purgeable(
            JobRow.select(JobRow.id, JobRow.files, JobRow.owner), flt, ended_before
        )
        query = query.order_by(JobRow.end_time, JobRow.id).limit(limit)
        if self.dialect.skip_locked:
            query = query.for_update(skip_locked=True)
        rows = list(query)
        if not rows:
            return []
        ids = [r.id for r in rows]
        garbage = self.artifacts.drop_for_jobs(ids, now)
        JobRow.delete().where(JobRow.id.in_(ids)).execute()
        effects.deleted_jobs.update((r.id, r.owner) for r in rows)
        return [
            Deletion(job_id=r.id, files=tuple(json.loads(r.files)), garbage=garbage.get(r.id, 0))
            for r in rows
        ]

    def purge_preview(
        self, flt: JobFilter, *, ended_before: int, list_limit: int
    ) -> tuple[int, list[str]]:
        """How many jobs a purge would delete now, and the first of their ids."""
        with self.db.atomic():
            count = self._purgeable(JobRow.select(), flt, ended_before).count()
            ids = [
                r.id
                for r in self._purgeable(JobRow.select(JobRow.id), flt, ended_before)
                .order_by(JobRow.end_time, JobRow.id)
                .limit(list_limit)
            ]
        return int(count), ids

    def _purgeable(self, query: Any, flt: JobFilter, ended_before: int) -> Any:
        states = [s for s in flt.states if s.terminal] if flt.states else TERMINAL_STATES
        scoped = dataclasses.replace(flt, states=())
        return filtered(query, scoped, self.dialect).where(
            JobRow.state.in_([s.value for s in states]) & (JobRow.end_time <= ended_before)
        )
