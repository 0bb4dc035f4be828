"""Artifacts in the database: uploads staged chunk by chunk under a lease,
completed into an artifact row, discarded when they cannot complete; reads
of artifacts and their chunks; the import of files an earlier version kept
on disk; and, when jobs are deleted, their artifact rows dropped and their
chunks marked for the sweep.

Chunks never cascade from a job: freeing a large blob holds SQLite's one
writer for seconds. Chunks that are no artifact's bytes belong to a
job_artifact_upload row; one whose lease has ended (NO_LEASE included) is
dead, and the sweep removes its chunks a few per operation.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from typing import cast

import peewee as pw

from jobstream.server.db import ArtifactRow, ChunkRow, JobRow, UploadRow
from jobstream.server.domain import Artifact, Effects, EventKind, JobState
from jobstream.server.errors import FailedPrecondition, NotFound, ResourceExhausted
from jobstream.server.store.dialect import Dialect
from jobstream.server.store.ledger import Ledger
from jobstream.server.store.rows import artifact_body, artifact_of
from jobstream.server.store.sql import RawInsert
from jobstream.v1 import errors_pb2

NO_LEASE = ""
"""The lease of a job_artifact_upload row whose chunks are to be removed (a
replaced artifact's, a deleted job's, or an upload being discarded). No
lease id is empty: no upload goes on under it, and the row counts as dead
at once."""

GARBAGE_INSERT_ROWS = 500
"""Garbage job_artifact_upload rows inserted per statement while deleting
jobs (a purge batch may hold many artifacts): well under SQLite's limit of
bound parameters."""


class ArtifactStore:
    """The artifact, upload and chunk tables."""

    def __init__(self, db: pw.Database, dialect: Dialect, ledger: Ledger) -> None:
        self.db = db
        self.dialect = dialect
        self.ledger = ledger
        self._insert_chunk = RawInsert(db, ChunkRow, ("job_id", "upload_id", "chunk_index", "data"))
        self._insert_upload = RawInsert(
            db, UploadRow, ("upload_id", "job_id", "lease_id", "chunks", "create_time")
        )

    def drop_for_jobs(self, job_ids: Sequence[str], now: int) -> dict[str, int]:
        """Deletes the artifact rows of jobs about to be deleted and marks
        every upload whose chunks must go with them (each artifact's, every
        one in progress) as garbage, NO_LEASE rows of job_artifact_upload;
        returns how many uploads each job left to the sweep.

        Chunks do not cascade from the job: SQLite reads every page of a
        blob to free it, so a 200 MiB artifact held every other write for
        seconds. Nothing reaches a deleted job's chunks once its artifact
        rows are gone, and the sweep removes them a few per operation.

        The job rows must be locked (PostgreSQL) before this runs: no
        completion can then add an artifact row meanwhile (it locks the job
        row first, see complete_upload). The artifact rows are deleted with
        RETURNING rather than read first, so an import that set a row's
        upload meanwhile is waited for and its upload is marked too.
        """
        ids = list(job_ids)
        left: Counter[str] = Counter()
        # Uploads in progress die with the job. One whose row another
        # server's operation holds (a chunk being staged) is skipped rather
        # than waited for: once the job is gone, its upload is dead anyway
        # (see dead_uploads).
        open_uploads = UploadRow.select(UploadRow.upload_id).where(
            UploadRow.job_id.in_(ids) & (UploadRow.lease_id != NO_LEASE)
        )
        if self.dialect.skip_locked:
            open_uploads = open_uploads.for_update(skip_locked=True)
        marked = (
            UploadRow.update(lease_id=NO_LEASE)
            .where(UploadRow.upload_id.in_(open_uploads))
            .returning(UploadRow.job_id)
            .tuples()
        )
        left.update(job_id for (job_id,) in marked)
        dropped = (
            ArtifactRow.delete()
            .where(ArtifactRow.job.in_(ids))
            .returning(ArtifactRow.job, ArtifactRow.upload_id, ArtifactRow.size_bytes)
            .tuples()
        )
        # An empty artifact has no chunks; a file of an earlier version not
        # imported yet has no upload.
        garbage = [
            (upload_id, job_id, NO_LEASE, 0, now)
            for job_id, upload_id, size in dropped
            if upload_id is not None and size > 0
        ]
        left.update(job_id for _, job_id, *_ in garbage)
        for rows in pw.chunked(garbage, GARBAGE_INSERT_ROWS):
            # No row can hold these upload ids (completing an upload deletes
            # its row); ignoring a conflict keeps a delete from ever failing
            # on one.
            UploadRow.insert_many(
                rows,
                fields=[
                    UploadRow.upload_id,
                    UploadRow.job_id,
                    UploadRow.lease_id,
                    UploadRow.chunks,
                    UploadRow.create_time,
                ],
            ).on_conflict_ignore().as_rowcount().execute()
        return dict(left)

    def check_lease(self, job_id: str, lease_id: str, now: int) -> None:
        """FailedPrecondition (or NotFound) unless ``lease_id`` is the job's
        live lease: lets an upload be refused before its bytes are taken."""
        self.ledger.leased(job_id, lease_id, now)

    def stage_chunk(
        self,
        effects: Effects,
        job_id: str,
        lease_id: str,
        upload_id: str,
        *,
        index: int,
        data: bytes,
        now: int,
    ) -> None:
        """Stores chunk ``index`` of an upload in progress, fenced by the
        lease. The first chunk opens the upload (its job_artifact_upload
        row); later ones count themselves on that row, which fails once a
        discard or the job's delete has marked it (see discard_upload)."""
        self.ledger.leased(job_id, lease_id, now)
        if index == 0:
            self._insert_upload.run([(upload_id, job_id, lease_id, 1, now)])
        elif not self._upload_open(upload_id, lease_id, chunks=index + 1):
            raise _discarded(job_id, lease_id)
        self._insert_chunk.run([(job_id, upload_id, index, data)])

    def complete_upload(
        self,
        effects: Effects,
        job_id: str,
        lease_id: str,
        upload_id: str,
        *,
        staged: int,
        last: bytes | None,
        name: str,
        size_bytes: int,
        sha256: str,
        content_type: str,
        max_per_job: int,
        now: int,
    ) -> tuple[Artifact, int]:
        """Makes upload ``upload_id`` (``staged`` chunks stored before, then
        ``last``, if any, as the next) artifact ``name`` of the leased job,
        replacing one of the same name (whose chunks are left to the sweep,
        see dead_uploads); adds the event and renews the lease. Returns the
        artifact and the event's seq.

        On PostgreSQL the job's row is locked first, as a delete does, so
        the two are ordered: a delete that came first leaves no job
        (NotFound), one that comes second finds this artifact and marks its
        chunks as garbage."""
        row = self.ledger.leased(job_id, lease_id, now, lock=True)
        existing = ArtifactRow.select().where(ArtifactRow.job == job_id)
        previous = existing.where(ArtifactRow.name == name).first()
        if previous is None and existing.count() >= max_per_job:
            raise ResourceExhausted(
                f"job {job_id!r} has {max_per_job} artifacts; the limit is {max_per_job}",
                field="name",
                metadata={
                    "jobId": job_id,
                    "limit": str(max_per_job),
                    "setting": "--max-artifacts-per-job",
                },
            )
        if staged:
            if not self._upload_open(upload_id, lease_id, chunks=staged):
                raise _discarded(job_id, lease_id)
            UploadRow.delete().where(UploadRow.upload_id == upload_id).execute()
        if last is not None:
            self._insert_chunk.run([(job_id, upload_id, staged, last)])
        if previous is not None:
            ArtifactRow.delete().where(
                (ArtifactRow.job == job_id) & (ArtifactRow.name == name)
            ).execute()
            if previous.upload_id is not None:
                # Deleting a large file's chunks here would hold the writer
                # (SQLite walks every page of a blob to free it: seconds per
                # 100 MiB); marked as an upload that can never complete, they
                # are removed by the next sweep in small operations.
                self._insert_upload.run([(previous.upload_id, job_id, NO_LEASE, 0, now)])
        artifact = Artifact(
            name=name,
            size_bytes=size_bytes,
            sha256=sha256,
            content_type=content_type,
            create_time=now,
            attempt=row.attempt,
        )
        ArtifactRow.insert(job=job_id, upload_id=upload_id, **artifact_body(artifact)).execute()
        seq = self.ledger.append(
            effects, row, now, [(EventKind.ARTIFACT_ADDED, artifact_body(artifact))]
        )
        JobRow.update(lease_expire=now + row.lease_us, update_time=now, last_seq=seq).where(
            JobRow.id == row.id
        ).execute()
        return artifact, seq

    def discard_upload(self, effects: Effects, job_id: str, upload_id: str, *, limit: int) -> bool:
        """Removes up to ``limit`` chunks of an upload that will not complete;
        True once all are gone, and its row with them.

        The row is marked first (its lease becomes NO_LEASE), so neither
        stage_chunk nor complete_upload goes on with it. On PostgreSQL that
        UPDATE takes the row's lock: an upload completing meanwhile on
        another server (whose clock says its lease is still live) either
        commits first, and its chunks, now an artifact's bytes, are left
        alone, or finds the mark and is refused.
        """
        UploadRow.update(lease_id=NO_LEASE).where(UploadRow.upload_id == upload_id).execute()
        # Looked for after the mark: on PostgreSQL a completion that held the
        # row's lock has committed by now, and its artifact row is visible.
        if (
            ArtifactRow.select()
            .where((ArtifactRow.job == job_id) & (ArtifactRow.upload_id == upload_id))
            .exists()
        ):
            # It completed after all (its caller went away meanwhile).
            UploadRow.delete().where(UploadRow.upload_id == upload_id).execute()
            return True
        first = (
            ChunkRow.select(ChunkRow.chunk_index)
            .where((ChunkRow.job_id == job_id) & (ChunkRow.upload_id == upload_id))
            .order_by(ChunkRow.chunk_index)
            .limit(limit)
        )
        removed = (
            ChunkRow.delete()
            .where(
                (ChunkRow.job_id == job_id)
                & (ChunkRow.upload_id == upload_id)
                & ChunkRow.chunk_index.in_(first)
            )
            .execute()
        )
        if removed == limit:
            return False
        UploadRow.delete().where(UploadRow.upload_id == upload_id).execute()
        return True

    def dead_uploads(self, now: int, *, limit: int, every: bool) -> list[tuple[str, str]]:
        """``(job_id, upload_id)`` of uploads that can no longer complete:
        completing needs the lease they were opened under, and that lease
        has ended (the job moved on or is deleted, or the lease expired,
        which nothing renews), or it is NO_LEASE (replaced artifacts,
        deleted jobs' uploads, discards under way). With ``every``, all of
        them: right for SQLite at start-up, where no other process can be
        receiving an upload."""
        query = UploadRow.select(UploadRow.job_id, UploadRow.upload_id)
        if not every:
            query = query.join(JobRow, pw.JOIN.LEFT_OUTER, on=UploadRow.job_id == JobRow.id).where(
                JobRow.id.is_null()
                | (JobRow.state != JobState.RUNNING.value)
                | JobRow.lease_id.is_null()
                | (JobRow.lease_id != UploadRow.lease_id)
                | (JobRow.lease_expire < now)
            )
        return list(cast(Iterable[tuple[str, str]], query.limit(limit).tuples()))

    def list_artifacts(
        self, job_id: str, owner: str | None = None, *, after: str = "", limit: int | None = None
    ) -> list[Artifact]:
        """A job's artifacts by name, those after ``after``, up to ``limit``;
        NotFound for an unknown job (or, with ``owner``, another principal's)."""
        with self.db.atomic():
            self.ledger.row(job_id, owner)
            query = ArtifactRow.select().where(
                (ArtifactRow.job == job_id) & (ArtifactRow.name > after)
            )
            rows = list(query.order_by(ArtifactRow.name).limit(limit))
        return [artifact_of(r) for r in rows]

    def get_artifact(
        self, job_id: str, name: str, owner: str | None = None
    ) -> tuple[Artifact, str | None]:
        """One artifact and the upload whose chunks are its bytes (None for
        a file of an earlier version not imported yet); NotFound naming the
        job (unknown, or with ``owner`` another principal's) or the artifact."""
        with self.db.atomic():
            self.ledger.row(job_id, owner)
            row = ArtifactRow.get_or_none((ArtifactRow.job == job_id) & (ArtifactRow.name == name))
        if row is None:
            raise NotFound(
                f"job {job_id!r} has no artifact {name!r}",
                field="name",
                reason=errors_pb2.ARTIFACT_NOT_FOUND,
                metadata={"jobId": job_id, "name": name},
            )
        return artifact_of(row), row.upload_id

    def read_chunk(self, job_id: str, upload_id: str, index: int) -> bytes | None:
        """Chunk ``index`` of an upload; None when there is none (the
        artifact was replaced or deleted since its upload was looked up)."""
        data = (
            ChunkRow.select(ChunkRow.data)
            .where(
                (ChunkRow.job_id == job_id)
                & (ChunkRow.upload_id == upload_id)
                & (ChunkRow.chunk_index == index)
            )
            .scalar()
        )
        return None if data is None else bytes(data)

    def legacy_artifacts(
        self, *, after: tuple[str, str], limit: int
    ) -> list[tuple[str, str, int, str]]:
        """``(job_id, name, size_bytes, sha256)`` of artifacts stored as files
        by an earlier version and not imported yet, after ``after`` in
        (job_id, name) order (the partial index job_artifact_legacy)."""
        query = (
            ArtifactRow.select(
                ArtifactRow.job, ArtifactRow.name, ArtifactRow.size_bytes, ArtifactRow.sha256
            )
            .where(
                ArtifactRow.upload_id.is_null()
                & (pw.Tuple(ArtifactRow.job, ArtifactRow.name) > pw.Tuple(*after))
            )
            .order_by(ArtifactRow.job, ArtifactRow.name)
            .limit(limit)
        )
        return list(cast(Iterable[tuple[str, str, int, str]], query.tuples()))

    def import_artifact(
        self,
        effects: Effects,
        job_id: str,
        name: str,
        upload_id: str,
        chunks: Iterable[bytes],
        *,
        size_bytes: int,
        sha256: str,
    ) -> None:
        """Stores ``chunks`` as the bytes of an artifact an earlier version
        kept as a file, in one transaction; FailedPrecondition (and nothing
        stored) when the row changed meanwhile (replaced, or its job
        deleted) or when ``chunks`` raises."""
        for index, data in enumerate(chunks):
            self._insert_chunk.run([(job_id, upload_id, index, data)])
        updated = (
            ArtifactRow.update(upload_id=upload_id)
            .where(
                (ArtifactRow.job == job_id)
                & (ArtifactRow.name == name)
                & ArtifactRow.upload_id.is_null()
                & (ArtifactRow.size_bytes == size_bytes)
                & (ArtifactRow.sha256 == sha256)
            )
            .execute()
        )
        if updated != 1:
            raise FailedPrecondition(
                f"artifact {name!r} of job {job_id!r} changed while its file was imported",
                field="name",
                reason=errors_pb2.ARTIFACT_NOT_READY,
                metadata={"jobId": job_id, "name": name},
            )

    def drop_legacy_artifact(self, effects: Effects, job_id: str, name: str) -> None:
        """Deletes an artifact of an earlier version whose file is gone."""
        ArtifactRow.delete().where(
            (ArtifactRow.job == job_id)
            & (ArtifactRow.name == name)
            & ArtifactRow.upload_id.is_null()
        ).execute()

    def _upload_open(self, upload_id: str, lease_id: str, *, chunks: int) -> bool:
        """Whether the upload's row is still there under its lease (not
        marked by a discard); records its chunk count. On PostgreSQL the
        UPDATE locks the row until commit, which orders this against a
        discard's marking UPDATE on another server."""
        updated = (
            UploadRow.update(chunks=chunks)
            .where((UploadRow.upload_id == upload_id) & (UploadRow.lease_id == lease_id))
            .execute()
        )
        return bool(updated == 1)


def _discarded(job_id: str, lease_id: str) -> FailedPrecondition:
    """An upload whose staged chunks a sweep removed: only one under an
    ended lease is removed, so that is what the worker is told."""
    return FailedPrecondition(
        f"lease {lease_id!r} of job {job_id!r} ended during the upload; its bytes were discarded",
        field="lease_id",
        reason=errors_pb2.LEASE_UNKNOWN,
        metadata={"jobId": job_id, "leaseId": lease_id},
    )
