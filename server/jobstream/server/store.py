"""All SQL of jobstream: one store over Peewee, the same code on SQLite and
PostgreSQL. Dialect differences are decided once, in ``Store.__init__``.
Keyed per-item results (results.py) and steps across attempts (steps.py)
are the store's too, in modules of their own.

Write methods take a :class:`Changes` collector and must run inside the
writer's transaction (see writer.py); they record the events they store so
the broker can publish them after the commit. Read methods run on any thread
with that thread's own connection.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import operator
import secrets
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any, cast

import peewee as pw

from jobstream.server import limits, steps
from jobstream.server.db import (
    ArtifactRow,
    ChangeRow,
    ChunkRow,
    EventRow,
    JobRow,
    LabelRow,
    StepRow,
    UploadRow,
    dumps,
    execute,
    is_sqlite,
)
from jobstream.server.domain import (
    JSON,
    Artifact,
    Changes,
    Counters,
    Deletion,
    ErrorInfo,
    Event,
    EventKind,
    Finish,
    Job,
    JobChange,
    JobFilter,
    JobState,
    Lease,
    LogLine,
    NewJob,
    Outcome,
    Progress,
    Report,
    ReportAck,
    Stats,
    Step,
)
from jobstream.server.errors import (
    AlreadyExists,
    FailedPrecondition,
    NotFound,
    ResourceExhausted,
    not_found,
)
from jobstream.server.ids import new_job_id
from jobstream.server.results import Results

CHANGE_LOG_LOCK = 0x6A6F6263
"""PostgreSQL advisory lock key that orders change-log writers (see
Store.record_changes)."""

CHANGE_OWNER_LOOKUP = 500
"""Job ids looked up per query for their owners when a commit's changes are
logged: far below every backend's limit on query parameters."""

NOTIFY_MAX_IDS = 100
"""Job ids named in one NOTIFY; past this the hint says "everything"."""

TERMINAL_STATES = tuple(s for s in JobState if s.terminal)
"""The states purge and stats treat as ended."""

RETRYABLE_STATES = frozenset({JobState.FAILED, JobState.INTERRUPTED, JobState.CANCELLED})
"""States RetryJob accepts: a succeeded job is done, a live one is not over."""

STATS_PERCENTILES = (0.50, 0.95)
"""The run-time percentiles GetStats reports."""

NO_LEASE = ""
"""The lease of a job_artifact_upload row whose chunks are to be removed (a
replaced artifact's, a deleted job's, or an upload being discarded). No
lease id is empty: no upload goes on under it, and the row counts as dead
at once."""

GARBAGE_INSERT_ROWS = 500
"""Garbage job_artifact_upload rows inserted per statement while deleting
jobs (a purge batch may hold many artifacts): well under SQLite's limit of
bound parameters."""


@dataclass(frozen=True, kw_only=True, slots=True)
class RetryPolicy:
    """How attempts are spaced: ``base * 2**(attempt-1)``, capped."""

    default_max_attempts: int = 3
    backoff_base_us: int = 1_000_000
    backoff_max_us: int = 300_000_000

    def backoff_us(self, attempt: int) -> int:
        """The delay before attempt ``attempt + 1``."""
        return int(min(self.backoff_max_us, self.backoff_base_us * 2 ** max(0, attempt - 1)))


class _RawInsert:
    """A fixed INSERT run with ``executemany``. Peewee builds the SQL of
    every row it inserts, which profiles showed dominating the write hot
    paths (submit, report); the statement here is built once."""

    def __init__(self, db: pw.Database, model: type[pw.Model], columns: Sequence[str]) -> None:
        names = ", ".join(f'"{c}"' for c in columns)
        marks = ", ".join([db.param] * len(columns))
        self.sql = f'INSERT INTO "{model._meta.table_name}" ({names}) VALUES ({marks})'
        self.db = db

    def run(self, rows: Sequence[tuple[Any, ...]]) -> None:
        """Inserts ``rows`` (tuples in the column order) on the current
        transaction's connection."""
        if rows:
            # Raw cursors raise the driver's own errors; peewee's wrapper turns
            # them into peewee's, which the servicers map to status codes.
            with pw.__exception_wrapper__:  # type: ignore[attr-defined]
                self.db.cursor().executemany(self.sql, rows)  # type: ignore[no-untyped-call]


class _Compiled:
    """SQL of hot-path queries, built once per shape: for a one-row acquire,
    peewee building the SELECT and UPDATE cost more than SQLite running them."""

    def __init__(self, db: pw.Database) -> None:
        self.db = db
        self._cache: dict[tuple[Any, ...], str] = {}

    def acquire(self, queues: int, kinds: int, skip_locked: bool) -> str:
        """The acquire SELECT; parameters: state, *queues, *kinds, now, limit."""
        key = ("acquire", queues, kinds, skip_locked)
        if key not in self._cache:
            query = (
                JobRow.select()
                .where(
                    (JobRow.state == "")
                    & JobRow.queue.in_([""] * queues)
                    & JobRow.kind.in_([""] * kinds)
                    & (JobRow.not_before <= 0)
                )
                .order_by(JobRow.priority.desc(), JobRow.create_time, JobRow.id)
                .limit(1)
            )
            if skip_locked:
                query = query.for_update(skip_locked=True)
            sql, params = query.sql()
            assert len(params) == 3 + queues + kinds, "acquire parameters out of order"
            self._cache[key] = sql
        return self._cache[key]

    def update_job(self, columns: Sequence[str]) -> str:
        """``UPDATE job SET <columns> WHERE id``; parameters: values, then id."""
        key = ("update", *columns)
        if key not in self._cache:
            sets = ", ".join(f'"{c}" = {self.db.param}' for c in columns)
            self._cache[key] = f'UPDATE "job" SET {sets} WHERE "id" = {self.db.param}'
        return self._cache[key]

    def events_page(self, by_kind: bool) -> str:
        """A page of a job's events as one JSON text, ``[[seq, time, kind,
        body], ...]`` (NULL when there are none); parameters: job id, after
        seq, [kind,] limit."""
        key = ("events", by_kind)
        if key not in self._cache:
            p = self.db.param
            kind = f' AND "kind" = {p}' if by_kind else ""
            page = (
                'SELECT "seq", "time", "kind", "body" FROM "job_event"'
                f' WHERE "job_id" = {p} AND "seq" > {p}{kind} ORDER BY "seq" LIMIT {p}'
            )
            if is_sqlite(self.db):
                row = 'json_array("seq", "time", "kind", json("body"))'
                self._cache[key] = f"SELECT json_group_array({row}) FROM ({page})"
            else:
                row = 'json_build_array("seq", "time", "kind", "body"::json)'
                self._cache[key] = f'SELECT json_agg({row} ORDER BY "seq")::text FROM ({page}) AS p'
        return self._cache[key]

    def update(self, job_id: str, values: dict[str, Any]) -> None:
        """Sets plain column values of one job."""
        execute(self.db, self.update_job(tuple(values)), (*values.values(), job_id))


JOB_COLUMNS = tuple(f.column_name for f in JobRow._meta.sorted_fields)
"""Every column of the job table, in the order a raw insert fills them."""

JOB_DEFAULTS = {f.column_name: f.default for f in JobRow._meta.sorted_fields}
"""Column values a new job row takes unless submit sets them (peewee keeps
defaults in Python, not in the schema, so a raw insert must supply them)."""


class Store:
    """Jobs, events, steps, labels and the change log, in one database."""

    def __init__(
        self, db: pw.Database, policy: RetryPolicy | None = None, *, origin: str = ""
    ) -> None:
        self.db = db
        self.policy = policy or RetryPolicy()
        self.origin = origin
        shared = not is_sqlite(db)
        # SQLite has one writer at a time (ours), so a plain SELECT is enough;
        # PostgreSQL servers race for the same rows and must skip locked ones
        # (SELECT ... FOR UPDATE SKIP LOCKED), lock a job's row before
        # deciding what its delete or an upload's completion does, order
        # their change-log writes and tell each other about commits.
        self.skip_locked = shared
        self.row_locks = shared
        self.ordered_changes = shared
        self.channel: str | None = None
        if shared:
            with db.connection_context():
                schema = execute(db, "SELECT current_schema()").fetchone()[0]
            # NOTIFY is database-wide; one channel per schema keeps
            # deployments (and test runs) sharing a database apart.
            self.channel = f"jobstream_{schema}"[:63]
        self._compiled = _Compiled(db)
        self._insert_job = _RawInsert(db, JobRow, JOB_COLUMNS)
        self._insert_label = _RawInsert(db, LabelRow, ("job_id", "key", "value"))
        self._insert_event = _RawInsert(db, EventRow, ("job_id", "seq", "time", "kind", "body"))
        self._insert_change = _RawInsert(db, ChangeRow, ("job_id", "deleted", "time", "owner"))
        self._results = Results(db)
        self._insert_chunk = _RawInsert(
            db, ChunkRow, ("job_id", "upload_id", "chunk_index", "data")
        )
        self._insert_upload = _RawInsert(
            db, UploadRow, ("upload_id", "job_id", "lease_id", "chunks", "create_time")
        )

    # ------------------------------------------------------------------ writes

    def submit(
        self, changes: Changes, specs: Sequence[NewJob], now: int, *, batch: bool = False
    ) -> list[tuple[Job, bool]]:
        """Stores new jobs (all or none); a repeated request_id with the same
        payload returns the earlier job with ``created`` False, whether the
        earlier submit is stored or sits earlier in the same batch. With
        ``batch``, errors name the field as ``requests[i].<field>``."""
        out: list[tuple[Job, bool]] = []
        rows: list[dict[str, Any]] = []
        labels: list[tuple[str, str, str]] = []
        seen_ids: set[str] = set()
        # (owner, request_id) -> (payload digest, index in ``out``)
        seen_requests: dict[tuple[str, str], tuple[str | None, int]] = {}
        for i, spec in enumerate(specs):
            where = f"requests[{i}]." if batch else ""
            digest = _spec_digest(spec) if spec.request_id else None
            if spec.request_id:
                key = (spec.owner, spec.request_id)
                if key in seen_requests:
                    first_digest, first = seen_requests[key]
                    if first_digest != digest:
                        raise AlreadyExists(
                            f"request_id {spec.request_id!r} is used by requests[{first}] "
                            "of this batch for a different job",
                            field=f"{where}request_id",
                        )
                    out.append((out[first][0], False))
                    continue
                seen_requests[key] = (digest, len(out))
                earlier = JobRow.get_or_none(
                    (JobRow.owner == spec.owner) & (JobRow.request_id == spec.request_id)
                )
                if earlier is not None:
                    if earlier.request_hash != digest:
                        raise AlreadyExists(
                            f"request_id {spec.request_id!r} was used for a different job "
                            f"({earlier.id})",
                            field=f"{where}request_id",
                        )
                    out.append((self._job(earlier), False))
                    continue
            job_id = spec.job_id or new_job_id()
            if job_id in seen_ids or (
                spec.job_id and JobRow.select().where(JobRow.id == job_id).exists()
            ):
                raise AlreadyExists(f"job {job_id!r} already exists", field=f"{where}job_id")
            seen_ids.add(job_id)
            row = {
                "id": job_id,
                "kind": spec.kind,
                "queue": spec.queue,
                "priority": spec.priority,
                "params": dumps(spec.params),
                "labels": dumps(spec.labels),
                "state": JobState.QUEUED.value,
                "max_attempts": spec.max_attempts or self.policy.default_max_attempts,
                "not_before": spec.not_before or now,
                "owner": spec.owner,
                "request_id": spec.request_id,
                "request_hash": digest,
                "create_time": now,
                "update_time": now,
                "last_seq": 1,
            }
            rows.append(row)
            labels.extend((job_id, k, v) for k, v in spec.labels.items())
            out.append((self._job_from_new(row, spec), True))
        if rows:
            self._insert_job.run(
                [tuple(r.get(c, JOB_DEFAULTS[c]) for c in JOB_COLUMNS) for r in rows]
            )
            self._insert_label.run(labels)
            events = [
                Event(
                    job_id=r["id"],
                    seq=1,
                    time=now,
                    kind=EventKind.STATE,
                    body={"state": "queued", "reason": "submitted", "attempt": 0},
                )
                for r in rows
            ]
            self._insert_events(changes, events)
            changes.owners.update((r["id"], r["owner"]) for r in rows)
            changes.acquirable.update((r["queue"], r["kind"]) for r in rows)
        return out

    def acquire(
        self,
        changes: Changes,
        *,
        worker_id: str,
        kinds: Sequence[str],
        queues: Sequence[str],
        lease_us: int,
        now: int,
    ) -> Lease | None:
        """Leases the best runnable job, or returns None."""
        sql = self._compiled.acquire(len(queues), len(kinds), self.skip_locked)
        rows = list(JobRow.raw(sql, JobState.QUEUED.value, *queues, *kinds, now, 1))
        if not rows:
            return None
        row = rows[0]
        lease_id = secrets.token_hex(16)
        attempt = row.attempt + 1
        expire = now + lease_us
        seq = self._append(
            changes,
            row,
            now,
            [
                (
                    EventKind.STATE,
                    {"state": "running", "reason": f"acquired by {worker_id}", "attempt": attempt},
                )
            ],
        )
        self._compiled.update(
            row.id,
            {
                "state": JobState.RUNNING.value,
                "attempt": attempt,
                "start_time": now,
                "end_time": None,
                "worker_id": worker_id,
                "lease_id": lease_id,
                "lease_expire": expire,
                "lease_us": lease_us,
                "report_seq": 0,
                "update_time": now,
                "last_seq": seq,
            },
        )
        # Built from the row just read rather than read again: acquire sits
        # on the submit-to-start latency path.
        job = replace(
            self._job(row),
            state=JobState.RUNNING,
            attempt=attempt,
            start_time=now,
            end_time=None,
            worker_id=worker_id,
            update_time=now,
            last_seq=seq,
        )
        return Lease(job=job, lease_id=lease_id, expire_time=expire)

    def release(self, changes: Changes, job_id: str, lease_id: str, now: int) -> None:
        """Returns a job whose lease never reached its worker (the AcquireJob
        call was cancelled as it completed) to the queue; the attempt does
        not count."""
        row = JobRow.get_or_none(JobRow.id == job_id)
        if row is None or row.state != JobState.RUNNING.value or row.lease_id != lease_id:
            return
        reason = "lease released: the worker went away before receiving it"
        self._release(changes, row, reason, now)

    def report(
        self, changes: Changes, job_id: str, lease_id: str, report: Report, *, now: int
    ) -> ReportAck:
        """Stores a worker's batch and renews its lease for the length it
        was granted."""
        row = self._leased(job_id, lease_id, now)
        expire = now + row.lease_us
        if report.report_seq and report.report_seq <= row.report_seq:
            # A retry of a report we stored (its answer was lost): renew only.
            JobRow.update(lease_expire=expire).where(JobRow.id == row.id).execute()
            return ReportAck(
                cancel_requested=row.cancel_requested,
                lease_expire_time=expire,
                last_seq=row.last_seq,
            )
        items: list[tuple[EventKind, JSON]] = []
        update: dict[Any, Any] = {}
        if report.progress is not None:
            p = report.progress
            items.append((EventKind.PROGRESS, _progress_body(p)))
            update.update(
                {
                    JobRow.fraction: p.fraction,
                    JobRow.done: p.done,
                    JobRow.total: p.total,
                    JobRow.phase: p.phase,
                    JobRow.message: p.message,
                }
            )
        items.extend((EventKind.LOG, body) for body in self._capped_logs(row, report.logs))
        step_count = row.step_count
        for step in report.steps:
            stored, step_count = steps.upsert(row.id, row.attempt, step, step_count, now)
            items.append((EventKind.STEP, _step_body(stored)))
        if report.steps:
            update[JobRow.step_count] = step_count
        results = self._results.prepare(row, report.results) if report.results else None
        if results is not None:
            first_result_seq = row.last_seq + 1 + len(items)
            items.extend((EventKind.RESULT, body) for body in results.bodies)
            update.update(results.counter_moves)
        if report.files:
            files = json.loads(row.files)
            files.extend(f for f in report.files if f not in files)
            update[JobRow.files] = dumps(files)
        seq = self._append(changes, row, now, items) if items else row.last_seq
        if results is not None:
            self._results.store(
                row.id, results, first_seq=first_result_seq, attempt=row.attempt, now=now
            )
        if report.report_seq:
            update[JobRow.report_seq] = report.report_seq
        update.update({JobRow.lease_expire: expire, JobRow.update_time: now, JobRow.last_seq: seq})
        JobRow.update(update).where(JobRow.id == row.id).execute()
        return ReportAck(
            cancel_requested=row.cancel_requested, lease_expire_time=expire, last_seq=seq
        )

    def _capped_logs(self, row: JobRow, logs: Sequence[LogLine]) -> list[JSON]:
        """Event bodies of ``logs`` within MAX_LOG_LINES_PER_JOB: the lines
        that fit, then one "truncated" line; once that is stored, any
        further line is refused. Counting runs only when the job's whole
        event count could have reached the limit."""
        bodies: list[JSON] = []
        for ln in logs:
            body: JSON = {"level": ln.level, "text": ln.text, "stream": ln.stream}
            if ln.truncated:
                body["truncated"] = True
            bodies.append(body)
        limit = limits.MAX_LOG_LINES_PER_JOB
        if not bodies or row.last_seq + len(bodies) <= limit:
            return bodies
        stored = (
            EventRow.select()
            .where((EventRow.job == row.id) & (EventRow.kind == EventKind.LOG.value))
            .count()
        )
        if stored > limit:
            raise ResourceExhausted(
                f"the job has reached its limit of {limit} log lines "
                "(--max-log-lines-per-job); later lines are refused",
                field="logs",
            )
        room = limit - stored
        if len(bodies) <= room:
            return bodies
        marker: JSON = {
            "level": "warning",
            "text": f"log truncated: the job reached its limit of {limit} log lines "
            "(--max-log-lines-per-job); later lines are refused",
            "stream": "",
        }
        return [*bodies[:room], marker]

    def finish(self, changes: Changes, job_id: str, lease_id: str, finish: Finish, now: int) -> Job:
        """Ends the leased attempt: terminal, or QUEUED again for a retry."""
        row = self._leased(job_id, lease_id, now)
        if finish.outcome is Outcome.RELEASED and not row.cancel_requested:
            # The worker stopped (graceful shutdown) before the handler ended:
            # back to the queue now, and the attempt does not count.
            reason = f"released by worker {row.worker_id}: it stopped before the job finished"
            self._release(changes, row, reason, now, not_before=now)
            return self.get_job(job_id)
        fields: dict[str, Any] = {}
        if finish.outcome is Outcome.SUCCEEDED:
            state, reason, step_end = JobState.SUCCEEDED, "handler succeeded", "succeeded"
            fields["result"] = dumps(finish.result) if finish.result is not None else None
        elif finish.outcome in (Outcome.CANCELLED, Outcome.RELEASED):
            state, step_end = JobState.CANCELLED, "cancelled"
            reason = "handler stopped after cancel"
        elif finish.retryable and not row.cancel_requested and row.attempt < row.max_attempts:
            state, step_end = JobState.QUEUED, "failed"
            delay = self.policy.backoff_us(row.attempt)
            fields["not_before"] = now + delay
            reason = (
                f"attempt {row.attempt}/{row.max_attempts} failed; retrying in {delay / 1e6:g}s"
            )
        else:
            state, reason, step_end = JobState.FAILED, "handler failed", "failed"
        error = finish.error
        if state is JobState.CANCELLED and error is None:
            error = ErrorInfo(code="cancelled", message="cancelled while running")
        why = "" if state is JobState.SUCCEEDED else (error.message if error else reason)
        ended = steps.end_running(row.id, step_end, now, why)
        self._transition(
            changes, row, state, reason, now, error=error, step_changes=ended, **fields
        )
        return self.get_job(job_id)

    def cancel(self, changes: Changes, job_id: str, reason: str, now: int) -> Job:
        """Cancels a queued job at once; asks a running one to stop."""
        row = self._row(job_id)
        state = JobState(row.state)
        why = reason or "cancelled by client"
        if state is JobState.QUEUED:
            self._transition(
                changes,
                row,
                JobState.CANCELLED,
                why,
                now,
                error=ErrorInfo(code="cancelled", message=why),
                step_changes=steps.end_running(row.id, "cancelled", now, why),
            )
        elif state is JobState.RUNNING:
            if not row.cancel_requested:
                seq = self._append(changes, row, now, [(EventKind.CANCEL, {"reason": why})])
                JobRow.update(cancel_requested=True, last_seq=seq, update_time=now).where(
                    JobRow.id == row.id
                ).execute()
        elif state is not JobState.CANCELLED:
            raise FailedPrecondition(f"job {job_id!r} already ended {state.value}", field="job_id")
        return self.get_job(job_id)

    def cancel_running(self, changes: Changes, job_id: str, reason: str, now: int) -> bool:
        """Ends a RUNNING job as CANCELLED at once, without waiting for its
        worker (whose lease ends with it); False if it was not running."""
        row = JobRow.get_or_none(JobRow.id == job_id)
        if row is None or row.state != JobState.RUNNING.value:
            return False
        error = ErrorInfo(code="cancelled", message=reason)
        self._transition(changes, row, JobState.CANCELLED, reason, now, error=error)
        return True

    def delete(
        self, changes: Changes, job_id: str, *, force: bool, allow_missing: bool, now: int
    ) -> Deletion | None:
        """Deletes a job's rows (events, steps, labels and results cascade)
        and its artifacts, whose bytes it leaves to the sweep (see
        _drop_artifacts); returns the files recorded for it, which the
        caller removes after the commit."""
        row = self._locked_row(job_id)
        if row is None:
            if allow_missing:
                return None
            raise not_found(job_id)
        if row.state == JobState.RUNNING.value and not force:
            raise FailedPrecondition(
                f"job {job_id!r} is running: cancel it first or delete with force", field="force"
            )
        garbage = self._drop_artifacts([job_id], now)
        JobRow.delete().where(JobRow.id == job_id).execute()
        changes.deleted_jobs[job_id] = row.owner
        return Deletion(
            job_id=job_id, files=tuple(json.loads(row.files)), garbage=garbage.get(job_id, 0)
        )

    def _drop_artifacts(self, job_ids: Sequence[str], now: int) -> dict[str, int]:
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
        if self.skip_locked:
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

    def expire_leases(
        self, changes: Changes, now: int, *, limit: int, worker_prefix: str | None = None
    ) -> int:
        """Returns jobs whose lease ran out (or, with ``worker_prefix``, that
        dead in-process workers held) to the queue, or ends them."""
        cond = JobRow.state == JobState.RUNNING.value
        if worker_prefix is None:
            cond &= JobRow.lease_expire < now
            why = "lease expired: worker {w} stopped reporting"
        else:
            cond &= JobRow.worker_id.startswith(worker_prefix)
            why = "server restarted while its worker {w} ran the job"
        query = JobRow.select().where(cond).limit(limit)
        if self.skip_locked:
            query = query.for_update(skip_locked=True)
        rows = list(query)
        for row in rows:
            reason = why.format(w=row.worker_id)
            if row.cancel_requested:
                self._transition(
                    changes,
                    row,
                    JobState.CANCELLED,
                    reason,
                    now,
                    error=ErrorInfo(code="cancelled", message=reason),
                    step_changes=steps.end_running(row.id, "cancelled", now, reason),
                )
                continue
            # Nobody will end the steps the vanished worker was running.
            cut = steps.end_running(row.id, "interrupted", now, reason)
            if row.attempt < row.max_attempts:
                delay = self.policy.backoff_us(row.attempt)
                self._transition(
                    changes,
                    row,
                    JobState.QUEUED,
                    f"{reason}; retrying in {delay / 1e6:g}s",
                    now,
                    step_changes=cut,
                    not_before=now + delay,
                )
            else:
                self._transition(
                    changes,
                    row,
                    JobState.INTERRUPTED,
                    reason,
                    now,
                    error=ErrorInfo(code="lease_expired", message=reason),
                    step_changes=cut,
                )
        return len(rows)

    def record_changes(self, changes: Changes, now: int) -> None:
        """Appends the transaction's changed and deleted jobs to the change
        log, once each, with their owners, in the same transaction."""
        changed = sorted(changes.changed_jobs - changes.deleted_jobs.keys())
        owners = {j: changes.owners[j] for j in changed if j in changes.owners}
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
        deleted = sorted(changes.deleted_jobs.items())
        rows += [(job_id, True, now, owner) for job_id, owner in deleted]
        if rows:
            if self.ordered_changes:
                # Positions come from a sequence, and on PostgreSQL a position
                # taken first could commit last: a watcher that had read past
                # the later one would skip it forever. Taking this lock before
                # drawing positions, and holding it to commit, makes positions
                # commit in the order they are drawn, so everything below a
                # visible position is already visible.
                execute(self.db, "SELECT pg_advisory_xact_lock(%s)", (CHANGE_LOG_LOCK,))
            self._insert_change.run(rows)

    def notify(self, changes: Changes) -> None:
        """Tells the other servers (PostgreSQL NOTIFY, sent at commit) which
        jobs changed. A hint only: they read the data from the tables."""
        if self.channel is None or not (
            changes.changed_jobs or changes.deleted_jobs or changes.acquirable
        ):
            return
        ids = sorted(changes.changed_jobs | changes.deleted_jobs.keys())
        payload = {
            "origin": self.origin,
            "jobs": ids if len(ids) <= NOTIFY_MAX_IDS else None,
            "acquirable": bool(changes.acquirable),
        }
        execute(self.db, "SELECT pg_notify(%s, %s)", (self.channel, dumps(payload)))

    # ------------------------------------------------------------------ reads

    def get_job(self, job_id: str) -> Job:
        """One job with its steps, or NotFound."""
        with self.db.atomic():
            row = self._row(job_id)
            stored = tuple(
                steps.to_step(s)
                for s in StepRow.select().where(StepRow.job == job_id).order_by(StepRow.position)
            )
        return self._job(row, stored)

    def get_jobs(self, job_ids: Iterable[str]) -> dict[str, Job]:
        """The jobs that exist among ``job_ids`` (without steps)."""
        ids = list(job_ids)
        if not ids:
            return {}
        return {row.id: self._job(row) for row in JobRow.select().where(JobRow.id.in_(ids))}

    def list_jobs(
        self, flt: JobFilter, *, page_size: int, cursor: tuple[int, str] | None
    ) -> tuple[list[Job], tuple[int, str] | None]:
        """A page of jobs, newest first, and the cursor of the next page."""
        query = _filtered(JobRow.select(), flt)
        if cursor is not None:
            ctime, cid = cursor
            # A row-value comparison is one index seek; the equivalent OR of
            # two conditions makes SQLite scan from the top of the index.
            query = query.where(pw.Tuple(JobRow.create_time, JobRow.id) < pw.Tuple(ctime, cid))
        rows = list(
            query.order_by(JobRow.create_time.desc(), JobRow.id.desc()).limit(page_size + 1)
        )
        more = len(rows) > page_size
        jobs = [self._job(r) for r in rows[:page_size]]
        last = jobs[-1] if more else None
        return jobs, (last.create_time, last.id) if last else None

    def job_exists(self, job_id: str) -> bool:
        """Whether the job exists."""
        return bool(JobRow.select().where(JobRow.id == job_id).exists())

    def read_events(
        self, job_id: str, *, after_seq: int, limit: int, kind: EventKind | None = None
    ) -> list[Event]:
        """Up to ``limit`` stored events after ``after_seq``, in order.

        The page comes back as one JSON text in one row: Python's sqlite3
        hands the GIL back for every row it steps, so reader threads reading
        rows one at a time pass the GIL to and fro per row (measured: 4
        threads took 4.6x as long per row as one); one row, one hand-over.
        """
        params = (job_id, after_seq, *([] if kind is None else [kind.value]), limit)
        (page,) = execute(self.db, self._compiled.events_page(kind is not None), params).fetchone()
        rows: list[tuple[int, int, str, JSON]] = json.loads(page) if page else []
        # SQLite's json_group_array does not promise its input's order.
        rows.sort(key=operator.itemgetter(0))
        return [
            Event(job_id=job_id, seq=seq, time=t, kind=EventKind(k), body=body)
            for seq, t, k, body in rows
        ]

    def read_results(self, job_id: str, *, after_seq: int, limit: int) -> list[Event]:
        """Up to ``limit`` of the job's results, the latest version of each
        key, whose version was stored after ``after_seq``; in seq order."""
        return self._results.page(job_id, after_seq=after_seq, limit=limit)

    def read_changes(self, *, after_position: int, limit: int) -> list[JobChange]:
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

    def count_jobs(self, now: int) -> tuple[dict[str, int], dict[str, int]]:
        """Jobs by state, and queued jobs ready to run at ``now`` by queue
        (for metrics). Both GROUP BYs lead with ``state``, which the acquire
        index starts with."""
        by_state = dict(
            cast(
                Iterable[tuple[str, int]],
                JobRow.select(JobRow.state, pw.fn.COUNT(JobRow.id)).group_by(JobRow.state).tuples(),
            )
        )
        ready = dict(
            cast(
                Iterable[tuple[str, int]],
                JobRow.select(JobRow.queue, pw.fn.COUNT(JobRow.id))
                .where((JobRow.state == JobState.QUEUED.value) & (JobRow.not_before <= now))
                .group_by(JobRow.queue)
                .tuples(),
            )
        )
        return by_state, ready

    # ------------------------------------------- retry, purge, stats, artifacts

    def retry(
        self, changes: Changes, job_id: str, reason: str, additional_attempts: int, now: int
    ) -> Job:
        """Queues an ended (not succeeded) job again as a new attempt.

        The history stays: the QUEUED event follows the job's last seq, the
        attempt counter keeps counting (the next acquire makes attempt + 1)
        and max_attempts becomes the current attempt plus
        ``additional_attempts``, so the lease sweeper and FinishJob's retry
        logic work on the new attempt exactly as on the first. Results (and
        so counters), steps and artifacts are kept: the new attempt's items
        replace those of the same key. The error, result, end time, cancel
        flag and progress of the ended attempt are cleared.
        """
        row = self._row(job_id)
        state = JobState(row.state)
        if state not in RETRYABLE_STATES:
            raise FailedPrecondition(
                f"job {job_id!r} is {state.value}; only failed, interrupted or cancelled "
                "jobs can be retried",
                field="job_id",
            )
        why = f"retried: {reason}" if reason else "retried by client"
        self._transition(changes, row, JobState.QUEUED, why, now)
        JobRow.update(
            max_attempts=row.attempt + additional_attempts,
            not_before=now,
            error=None,
            result=None,
            end_time=None,
            cancel_requested=False,
            fraction=0.0,
            done=0,
            total=0,
            phase="",
            message="",
        ).where(JobRow.id == row.id).execute()
        return self.get_job(job_id)

    def purge_batch(
        self, changes: Changes, flt: JobFilter, *, ended_before: int, limit: int, now: int
    ) -> list[Deletion]:
        """Deletes up to ``limit`` terminal jobs that match ``flt`` and ended
        at or before ``ended_before``, oldest first, as delete does; returns
        their recorded files for the caller to remove after the commit."""
        query = self._purgeable(
            JobRow.select(JobRow.id, JobRow.files, JobRow.owner), flt, ended_before
        )
        query = query.order_by(JobRow.end_time, JobRow.id).limit(limit)
        if self.skip_locked:
            query = query.for_update(skip_locked=True)
        rows = list(query)
        if not rows:
            return []
        ids = [r.id for r in rows]
        garbage = self._drop_artifacts(ids, now)
        JobRow.delete().where(JobRow.id.in_(ids)).execute()
        changes.deleted_jobs.update((r.id, r.owner) for r in rows)
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
        return _filtered(query, scoped).where(
            JobRow.state.in_([s.value for s in states]) & (JobRow.end_time <= ended_before)
        )

    def stats(self, flt: JobFilter, *, window_us: int, now: int) -> Stats:
        """Counts by state and kind over every selected job; success rate,
        run-time percentiles and ended count over the jobs that ended within
        the window."""
        since = now - window_us
        with self.db.atomic():
            by_kind = [
                (kind, JobState(state), int(n))
                for kind, state, n in _filtered(
                    JobRow.select(JobRow.kind, JobRow.state, pw.fn.COUNT(JobRow.id)), flt
                )
                .group_by(JobRow.kind, JobRow.state)
                .order_by(JobRow.kind, JobRow.state)
                .tuples()
            ]
            ended = {
                JobState(state): int(n)
                for state, n in _filtered(JobRow.select(JobRow.state, pw.fn.COUNT(JobRow.id)), flt)
                .where(
                    JobRow.state.in_([s.value for s in TERMINAL_STATES])
                    & (JobRow.end_time >= since)
                )
                .group_by(JobRow.state)
                .tuples()
            }
            run = JobRow.end_time - JobRow.start_time
            timed = _filtered(JobRow.select(run), flt).where(
                JobRow.state.in_([JobState.SUCCEEDED.value, JobState.FAILED.value])
                & (JobRow.end_time >= since)
                & JobRow.start_time.is_null(False)
            )
            n_timed = timed.count()
            p50, p95 = (_nearest_rank(timed.order_by(run), n_timed, q) for q in STATS_PERCENTILES)
        by_state: dict[JobState, int] = {}
        for _, state, n in by_kind:
            by_state[state] = by_state.get(state, 0) + n
        total_ended = sum(ended.values())
        decided = total_ended - ended.get(JobState.CANCELLED, 0)
        return Stats(
            by_state=tuple((s, by_state[s]) for s in JobState if s in by_state),
            by_kind=tuple(by_kind),
            window_us=window_us,
            ended=total_ended,
            success_rate=ended.get(JobState.SUCCEEDED, 0) / decided if decided else 0.0,
            duration_p50_us=p50,
            duration_p95_us=p95,
        )

    def check_lease(self, job_id: str, lease_id: str, now: int) -> None:
        """FailedPrecondition (or NotFound) unless ``lease_id`` is the job's
        live lease: lets an upload be refused before its bytes are taken."""
        self._leased(job_id, lease_id, now)

    def stage_chunk(
        self,
        changes: Changes,
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
        self._leased(job_id, lease_id, now)
        if index == 0:
            self._insert_upload.run([(upload_id, job_id, lease_id, 1, now)])
        elif not self._upload_open(upload_id, lease_id, chunks=index + 1):
            raise _discarded(job_id, lease_id)
        self._insert_chunk.run([(job_id, upload_id, index, data)])

    def complete_upload(
        self,
        changes: Changes,
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
        row = self._leased(job_id, lease_id, now, lock=True)
        existing = ArtifactRow.select().where(ArtifactRow.job == job_id)
        previous = existing.where(ArtifactRow.name == name).first()
        if previous is None and existing.count() >= max_per_job:
            raise ResourceExhausted(
                f"job {job_id!r} has {max_per_job} artifacts; the limit is {max_per_job}",
                field="name",
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
        ArtifactRow.insert(job=job_id, upload_id=upload_id, **_artifact_body(artifact)).execute()
        seq = self._append(changes, row, now, [(EventKind.ARTIFACT, _artifact_body(artifact))])
        JobRow.update(lease_expire=now + row.lease_us, update_time=now, last_seq=seq).where(
            JobRow.id == row.id
        ).execute()
        return artifact, seq

    def discard_upload(self, changes: Changes, job_id: str, upload_id: str, *, limit: int) -> bool:
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

    def list_artifacts(self, job_id: str) -> list[Artifact]:
        """A job's artifacts by name; NotFound for an unknown job."""
        with self.db.atomic():
            self._row(job_id)
            rows = list(
                ArtifactRow.select().where(ArtifactRow.job == job_id).order_by(ArtifactRow.name)
            )
        return [_artifact(r) for r in rows]

    def get_artifact(self, job_id: str, name: str) -> tuple[Artifact, str | None]:
        """One artifact and the upload whose chunks are its bytes (None for
        a file of an earlier version not imported yet); NotFound naming the
        job or the artifact."""
        with self.db.atomic():
            self._row(job_id)
            row = ArtifactRow.get_or_none((ArtifactRow.job == job_id) & (ArtifactRow.name == name))
        if row is None:
            raise NotFound(f"job {job_id!r} has no artifact {name!r}", field="name")
        return _artifact(row), row.upload_id

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
        changes: Changes,
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
            )

    def drop_legacy_artifact(self, changes: Changes, job_id: str, name: str) -> None:
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

    # ------------------------------------------------------------------ helpers

    def _row(self, job_id: str) -> JobRow:
        row = JobRow.get_or_none(JobRow.id == job_id)
        if row is None:
            raise not_found(job_id)
        return row

    def _locked_row(self, job_id: str) -> JobRow | None:
        """The job's row, on PostgreSQL locked (FOR UPDATE) until the
        transaction ends; None when there is none, also when a transaction
        that held the lock meanwhile deleted it."""
        query = JobRow.select().where(JobRow.id == job_id)
        if self.row_locks:
            query = query.for_update()
        row: JobRow | None = query.get_or_none()
        return row

    def _leased(self, job_id: str, lease_id: str, now: int, *, lock: bool = False) -> JobRow:
        """The job, if ``lease_id`` is its live lease; fencing for workers.
        With ``lock``, its row is locked as by _locked_row."""
        row = self._locked_row(job_id) if lock else JobRow.get_or_none(JobRow.id == job_id)
        if row is None:
            raise not_found(job_id)
        if row.state != JobState.RUNNING.value or row.lease_id != lease_id:
            raise FailedPrecondition(
                f"lease {lease_id!r} is not the current lease of job {job_id!r} "
                f"(job is {row.state}, attempt {row.attempt})",
                field="lease_id",
            )
        if (row.lease_expire or 0) < now:
            raise FailedPrecondition(
                f"lease {lease_id!r} of job {job_id!r} expired", field="lease_id"
            )
        return row

    def _release(self, changes: Changes, row: JobRow, reason: str, now: int, **fields: Any) -> None:
        """Returns a running job to the queue without counting its attempt,
        for the job or for the steps the attempt started."""
        given_back = steps.take_back(row.id, row.attempt)
        # A step still running now was not started by this attempt (it was
        # stored before starts were tracked per attempt): nothing to take
        # back, but it must not stay running.
        left = steps.end_running(row.id, "interrupted", now, reason)
        self._transition(
            changes,
            row,
            JobState.QUEUED,
            reason,
            now,
            step_changes=[*given_back, *left],
            attempt=row.attempt - 1,
            **fields,
        )

    def _transition(
        self,
        changes: Changes,
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
            body["error"] = _error_body(error)
            fields["error"] = dumps(body["error"])
        items = [(EventKind.STEP, _step_body(s)) for s in step_changes]
        seq = self._append(changes, row, now, [*items, (EventKind.STATE, body)])
        if state.terminal:
            fields["end_time"] = now
        else:
            changes.acquirable.add((row.queue, row.kind))
        self._compiled.update(
            row.id,
            {
                "state": state.value,
                "lease_id": None,
                "lease_expire": None,
                "update_time": now,
                "last_seq": seq,
                **fields,
            },
        )

    def _append(
        self, changes: Changes, row: JobRow, now: int, items: Sequence[tuple[EventKind, JSON]]
    ) -> int:
        """Stores events for ``row`` after its last seq; returns the new last seq."""
        first = row.last_seq + 1
        events = [
            Event(job_id=row.id, seq=first + i, time=now, kind=kind, body=body)
            for i, (kind, body) in enumerate(items)
        ]
        self._insert_events(changes, events)
        row.last_seq = first + len(items) - 1
        return int(row.last_seq)

    def _insert_events(self, changes: Changes, events: list[Event]) -> None:
        self._insert_event.run(
            [(e.job_id, e.seq, e.time, e.kind.value, dumps(e.body)) for e in events]
        )
        changes.events.extend(events)
        changes.changed_jobs.update(e.job_id for e in events)

    def _job(self, row: JobRow, steps: tuple[Step, ...] = ()) -> Job:
        return Job(
            id=row.id,
            kind=row.kind,
            queue=row.queue,
            priority=row.priority,
            params=json.loads(row.params),
            labels=json.loads(row.labels),
            state=JobState(row.state),
            cancel_requested=bool(row.cancel_requested),
            progress=Progress(
                fraction=row.fraction,
                done=row.done,
                total=row.total,
                phase=row.phase,
                message=row.message,
            ),
            counters=Counters(succeeded=row.succeeded, failed=row.failed, skipped=row.skipped),
            result=json.loads(row.result) if row.result is not None else None,
            error=_error(json.loads(row.error)) if row.error else None,
            attempt=row.attempt,
            max_attempts=row.max_attempts,
            not_before=row.not_before,
            owner=row.owner,
            request_id=row.request_id or "",
            create_time=row.create_time,
            start_time=row.start_time,
            end_time=row.end_time,
            update_time=row.update_time,
            last_seq=row.last_seq,
            worker_id=row.worker_id,
            steps=steps,
        )

    def _job_from_new(self, row: dict[str, Any], spec: NewJob) -> Job:
        """The Job just inserted, without reading it back."""
        return Job(
            id=row["id"],
            kind=spec.kind,
            queue=spec.queue,
            priority=spec.priority,
            params=spec.params,
            labels=spec.labels,
            state=JobState.QUEUED,
            cancel_requested=False,
            progress=Progress(),
            counters=Counters(),
            result=None,
            error=None,
            attempt=0,
            max_attempts=row["max_attempts"],
            not_before=row["not_before"],
            owner=spec.owner,
            request_id=spec.request_id or "",
            create_time=row["create_time"],
            start_time=None,
            end_time=None,
            update_time=row["update_time"],
            last_seq=1,
            worker_id="",
        )


def _filtered(query: Any, flt: JobFilter) -> Any:
    """``query`` narrowed to the jobs ``flt`` selects."""
    if flt.owner is not None:
        query = query.where(JobRow.owner == flt.owner)
    if flt.states:
        query = query.where(JobRow.state.in_([s.value for s in flt.states]))
    if flt.kinds:
        query = query.where(JobRow.kind.in_(list(flt.kinds)))
    if flt.queues:
        query = query.where(JobRow.queue.in_(list(flt.queues)))
    for key, value in flt.labels:
        query = query.where(
            JobRow.id.in_(
                LabelRow.select(LabelRow.job).where(
                    (LabelRow.key == key) & (LabelRow.value == value)
                )
            )
        )
    return query


def _discarded(job_id: str, lease_id: str) -> FailedPrecondition:
    """An upload whose staged chunks a sweep removed: only one under an
    ended lease is removed, so that is what the worker is told."""
    return FailedPrecondition(
        f"lease {lease_id!r} of job {job_id!r} ended during the upload; its bytes were discarded",
        field="lease_id",
    )


def _artifact(row: ArtifactRow) -> Artifact:
    return Artifact(
        name=row.name,
        size_bytes=row.size_bytes,
        sha256=row.sha256,
        content_type=row.content_type,
        create_time=row.create_time,
        attempt=row.attempt,
    )


def _artifact_body(a: Artifact) -> JSON:
    return {
        "name": a.name,
        "size_bytes": a.size_bytes,
        "sha256": a.sha256,
        "content_type": a.content_type,
        "create_time": a.create_time,
        "attempt": a.attempt,
    }


def _nearest_rank(ordered: Any, n: int, q: float) -> int:
    """The ``q`` quantile (nearest-rank) of an ordered one-column query of
    ``n`` rows, read with OFFSET so only one row comes back; 0 when empty."""
    if n == 0:
        return 0
    rank = max(1, math.ceil(q * n))
    value = ordered.limit(1).offset(rank - 1).scalar()
    return int(value or 0)


def _spec_digest(spec: NewJob) -> str:
    """A fingerprint of what a submit asked for, to tell a retry from a
    different request reusing its request_id."""
    payload = [
        spec.job_id,
        spec.kind,
        spec.queue,
        spec.priority,
        spec.params,
        sorted(spec.labels.items()),
        spec.max_attempts,
        spec.not_before,
    ]
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _progress_body(p: Progress) -> JSON:
    return {
        "fraction": p.fraction,
        "done": p.done,
        "total": p.total,
        "phase": p.phase,
        "message": p.message,
    }


def _step_body(s: Step) -> JSON:
    return {
        "name": s.name,
        "state": s.state,
        "attempts": s.attempts,
        "error": s.error,
        "data": s.data,
        "start_time": s.start_time,
        "end_time": s.end_time,
    }


def _error_body(e: ErrorInfo) -> JSON:
    return {"code": e.code, "message": e.message, "details": e.details}


def _error(body: JSON) -> ErrorInfo:
    return ErrorInfo(code=body["code"], message=body["message"], details=body.get("details"))
