"""A job's life, as state transitions: submit, acquire, release, finish,
cancel, retry and lease expiry. Each runs inside the writer's transaction
and records what it did in the commit's ``Effects``."""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import peewee as pw

from jobstream.server.db import JobRow, LabelRow, ParamRow, dumps
from jobstream.server.domain import (
    Effects,
    ErrorInfo,
    EventKind,
    Finish,
    Job,
    JobState,
    Lease,
    NewJob,
    Outcome,
    Rescue,
    StepState,
    Submitted,
)
from jobstream.server.errors import AlreadyExists, FailedPrecondition
from jobstream.server.ids import new_job_ids
from jobstream.server.store import steps
from jobstream.server.store.dialect import Dialect
from jobstream.server.store.ledger import Ledger, owned
from jobstream.server.store.params import param_rows
from jobstream.server.store.reads import Reads
from jobstream.server.store.rows import job_of
from jobstream.server.store.sql import JOB_COLUMNS, JOB_DEFAULTS, RawInsert, Statements
from jobstream.v1 import errors_pb2

RETRYABLE_STATES = frozenset({JobState.FAILED, JobState.INTERRUPTED, JobState.CANCELLED})
"""States RetryJob accepts: a succeeded job is done, a live one is not over."""

SUBMIT_COLUMNS = (
    "id",
    "kind",
    "queue",
    "priority",
    "params",
    "labels",
    "max_attempts",
    "not_before",
    "owner",
    "request_id",
    "request_hash",
    "create_time",
    "update_time",
)
"""The job columns a submit fills, in the order of its rows' values."""

SUBMIT_FIXED = {c: JOB_DEFAULTS[c] for c in JOB_COLUMNS if c not in SUBMIT_COLUMNS} | {
    "state": JobState.QUEUED.value,
    "last_seq": 1,
}
"""The other columns: the same in every new job."""


@dataclass(frozen=True, kw_only=True, slots=True)
class RetryPolicy:
    """How attempts are spaced: ``base * 2**(attempt-1)``, capped."""

    default_max_attempts: int = 3
    backoff_base_us: int = 1_000_000
    backoff_max_us: int = 300_000_000

    def backoff_us(self, attempt: int) -> int:
        """The delay before attempt ``attempt + 1``."""
        return int(min(self.backoff_max_us, self.backoff_base_us * 2 ** max(0, attempt - 1)))


class Lifecycle:
    """The state transitions of jobs."""

    def __init__(
        self,
        db: pw.Database,
        *,
        dialect: Dialect,
        sql: Statements,
        ledger: Ledger,
        reads: Reads,
        policy: RetryPolicy,
    ) -> None:
        self.dialect = dialect
        self.sql = sql
        self.ledger = ledger
        self.reads = reads
        self.policy = policy
        self._insert_job = RawInsert(db, JobRow, SUBMIT_COLUMNS, fixed=SUBMIT_FIXED)
        self._insert_label = RawInsert(db, LabelRow, ("job_id", "key", "value"))
        self._insert_param = RawInsert(db, ParamRow, ("job_id", "key", "value"))

    def submit(
        self, effects: Effects, specs: Sequence[NewJob], now: int, *, batch: bool = False
    ) -> Submitted:
        """Stores new jobs (all or none); a repeated request_id with the same
        payload returns the earlier job with ``created`` False, whether the
        earlier submit is stored or sits earlier in the same batch. With
        ``batch``, errors name the field as ``requests[i].<field>``.

        Each table's rows go in together (sql.RawInsert), and what every
        new job shares (its first event's body, the column defaults) is
        made once per call."""
        made = new_job_ids(len(specs), now)
        ids: list[str] = []
        created: list[bool] = []
        found: dict[int, Job] = {}
        rows: list[tuple[Any, ...]] = []
        acquirable: set[tuple[str, str]] = set()
        labels: list[tuple[str, str, str]] = []
        params: list[tuple[str, str, str]] = []
        seen_ids: set[str] = set()
        # (owner, request_id) -> (payload digest, index of the spec that made or found it)
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
                            reason=errors_pb2.REQUEST_ID_REUSED,
                            metadata={"requestId": spec.request_id, "index": str(first)},
                        )
                    # The same payload as spec ``first``: the same job.
                    ids.append(ids[first])
                    created.append(False)
                    if first in found:
                        found[i] = found[first]
                    continue
                seen_requests[key] = (digest, i)
                earlier = JobRow.get_or_none(
                    (JobRow.owner == spec.owner) & (JobRow.request_id == spec.request_id)
                )
                if earlier is not None:
                    if earlier.request_hash != digest:
                        raise AlreadyExists(
                            f"request_id {spec.request_id!r} was used for a different job "
                            f"({earlier.id})",
                            field=f"{where}request_id",
                            reason=errors_pb2.REQUEST_ID_REUSED,
                            metadata={"requestId": spec.request_id, "jobId": earlier.id},
                        )
                    ids.append(earlier.id)
                    created.append(False)
                    found[i] = job_of(earlier)
                    continue
            job_id = spec.job_id or made[i]
            if job_id in seen_ids or (
                spec.job_id and JobRow.select().where(JobRow.id == job_id).exists()
            ):
                raise AlreadyExists(
                    f"job {job_id!r} already exists",
                    field=f"{where}job_id",
                    reason=errors_pb2.JOB_ID_TAKEN,
                    metadata={"jobId": job_id},
                )
            seen_ids.add(job_id)
            rows.append(
                (
                    job_id,
                    spec.kind,
                    spec.queue,
                    spec.priority,
                    spec.params_json or dumps(spec.params),
                    dumps(spec.labels) if spec.labels else "{}",
                    spec.max_attempts or self.policy.default_max_attempts,
                    spec.not_before or now,
                    spec.owner,
                    spec.request_id,
                    digest,
                    now,
                    now,
                )
            )
            if spec.labels:
                labels.extend((job_id, k, v) for k, v in spec.labels.items())
            params.extend(param_rows(job_id, spec.params))
            effects.owners[job_id] = spec.owner
            acquirable.add((spec.queue, spec.kind))
            ids.append(job_id)
            created.append(True)
        if rows:
            self._insert_job.run(rows)
            self._insert_label.run(labels)
            self._insert_param.run(params)
            self.ledger.insert_first_events(
                effects,
                [row[0] for row in rows],
                now,
                EventKind.STATE_CHANGE,
                {"state": JobState.QUEUED.value, "reason": "submitted", "attempt": 0},
            )
            effects.acquirable |= acquirable
        return Submitted(
            specs=specs,
            ids=ids,
            created=created,
            found=found,
            time=now,
            default_max_attempts=self.policy.default_max_attempts,
        )

    def submit_calls(
        self, effects: Effects, calls: Sequence[tuple[Sequence[NewJob], bool]], now: int
    ) -> list[Submitted]:
        """Several submit calls (specs, batch) stored as one: each call's
        answer is what it would have had alone. Errors are a lone call's
        (the writer runs a merged run that fails again call by call, see
        writer.Merge), so ``batch`` only names fields for a lone call."""
        if len(calls) == 1:
            [(specs, batch)] = calls
            return [self.submit(effects, specs, now, batch=batch)]
        every = [spec for specs, _ in calls for spec in specs]
        return self.submit(effects, every, now).split([len(specs) for specs, _ in calls])

    def acquire(
        self,
        effects: Effects,
        *,
        worker_id: str,
        kinds: Sequence[str],
        queues: Sequence[str],
        lease_us: int,
        now: int,
    ) -> Lease | None:
        """Leases the best runnable job, or returns None."""
        leases = self.acquire_many(
            effects, worker_id=worker_id, kinds=kinds, queues=queues, lease_us=lease_us, now=now
        )
        return leases[0] if leases else None

    def acquire_many(
        self,
        effects: Effects,
        *,
        worker_id: str,
        kinds: Sequence[str],
        queues: Sequence[str],
        lease_us: int,
        now: int,
        limit: int = 1,
    ) -> list[Lease]:
        """Leases the best ``limit`` runnable jobs (none when none is), best
        first, each with a lease of its own; one SELECT for all of them."""
        sql = self.sql.acquire(len(queues), len(kinds))
        # All read before any is updated: the updates must not move rows
        # under an open cursor.
        rows = self.sql.job_rows_by(sql, (JobState.QUEUED.value, *queues, *kinds, now, limit))
        with self.ledger.together():
            return [self._lease(effects, row, worker_id, lease_us, now) for row in rows]

    def _lease(
        self, effects: Effects, row: JobRow, worker_id: str, lease_us: int, now: int
    ) -> Lease:
        """Makes ``row`` (QUEUED, just selected) RUNNING under a new lease."""
        lease_id = secrets.token_hex(16)
        attempt = row.attempt + 1
        expire = now + lease_us
        seq = self.ledger.append(
            effects,
            row,
            now,
            [
                (
                    EventKind.STATE_CHANGE,
                    {"state": "running", "reason": f"acquired by {worker_id}", "attempt": attempt},
                )
            ],
        )
        self.sql.update(
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
            job_of(row),
            state=JobState.RUNNING,
            attempt=attempt,
            start_time=now,
            end_time=None,
            worker_id=worker_id,
            update_time=now,
            last_seq=seq,
        )
        return Lease(job=job, lease_id=lease_id, expire_time=expire)

    def release(self, effects: Effects, job_id: str, lease_id: str, now: int) -> None:
        """Returns a job whose lease never reached its worker (the AcquireJob
        call was cancelled as it completed) to the queue; the attempt does
        not count."""
        row = JobRow.get_or_none(JobRow.id == job_id)
        if row is None or row.state != JobState.RUNNING.value or row.lease_id != lease_id:
            return
        reason = "lease released: the worker went away before receiving it"
        self.ledger.release(effects, row, reason, now)

    def finish(self, effects: Effects, job_id: str, lease_id: str, finish: Finish, now: int) -> Job:
        """Ends the leased attempt: terminal, or QUEUED again for a retry."""
        row = self.ledger.leased(job_id, lease_id, now)
        if finish.outcome is Outcome.RELEASED and not row.cancel_requested:
            # The worker gave the job back before its handler ended (it is
            # stopping, or the job waited too long in hand for a slot): back
            # to the queue now, and the attempt does not count.
            reason = f"released by worker {row.worker_id} before the job finished"
            self.ledger.release(effects, row, reason, now, not_before=now)
            # From the row as written, not read again: inside a batch of
            # finishes the update is still held (Ledger.together).
            return self.reads.job_with_steps(row)
        fields: dict[str, Any] = {}
        if finish.outcome is Outcome.SUCCEEDED:
            state, reason, step_end = JobState.SUCCEEDED, "handler succeeded", StepState.SUCCEEDED
            fields["result"] = dumps(finish.result) if finish.result is not None else None
        elif finish.outcome in (Outcome.CANCELLED, Outcome.RELEASED):
            state, step_end = JobState.CANCELLED, StepState.CANCELLED
            reason = "handler stopped after cancel"
        elif finish.retryable and not row.cancel_requested and row.attempt < row.max_attempts:
            state, step_end = JobState.QUEUED, StepState.FAILED
            delay = self.policy.backoff_us(row.attempt)
            fields["not_before"] = now + delay
            reason = (
                f"attempt {row.attempt}/{row.max_attempts} failed; retrying in {delay / 1e6:g}s"
            )
        else:
            state, reason, step_end = JobState.FAILED, "handler failed", StepState.FAILED
        error = finish.error
        if state is JobState.CANCELLED and error is None:
            error = ErrorInfo(code="cancelled", message="cancelled while running")
        why = "" if state is JobState.SUCCEEDED else (error.message if error else reason)
        # Steps exist only once reported (step_count counts them): most jobs
        # have none, and finish is on every job's path.
        ended = steps.end_running(row.id, step_end, now, why) if row.step_count else []
        self.ledger.transition(
            effects, row, state, reason, now, error=error, step_changes=ended, **fields
        )
        job = self.reads.job_with_steps(row)
        if state.terminal:
            effects.ended[job.id] = job
        return job

    def cancel(
        self, effects: Effects, job_id: str, reason: str, now: int, *, owner: str | None = None
    ) -> Job:
        """Cancels a queued job at once; asks a running one to stop. With
        ``owner``, another principal's job is NotFound."""
        row = self.ledger.row(job_id, owner)
        state = JobState(row.state)
        why = reason or "cancelled by client"
        if state is JobState.QUEUED:
            self._cancelled(effects, row, why, now)
        elif state is JobState.RUNNING:
            if not row.cancel_requested:
                seq = self.ledger.append(
                    effects, row, now, [(EventKind.CANCEL_REQUESTED, {"reason": why})]
                )
                JobRow.update(cancel_requested=True, last_seq=seq, update_time=now).where(
                    JobRow.id == row.id
                ).execute()
        elif state is not JobState.CANCELLED:
            raise FailedPrecondition(
                f"job {job_id!r} already ended {state.value}",
                field="job_id",
                reason=errors_pb2.JOB_ENDED,
                metadata={"jobId": job_id, "state": state.value},
            )
        return self.reads.get_job(job_id)

    def cancel_running(
        self, effects: Effects, job_id: str, reason: str, now: int, *, owner: str | None = None
    ) -> bool:
        """Ends a RUNNING job as CANCELLED at once, without waiting for its
        worker (whose lease ends with it); False if it was not running."""
        row = JobRow.get_or_none(JobRow.id == job_id)
        if row is None or not owned(row, owner) or row.state != JobState.RUNNING.value:
            return False
        error = ErrorInfo(code="cancelled", message=reason)
        self.ledger.transition(effects, row, JobState.CANCELLED, reason, now, error=error)
        return True

    def _cancelled(self, effects: Effects, row: JobRow, reason: str, now: int) -> None:
        """Ends a job (queued, or running with a cancel pending) as
        CANCELLED, its running steps with it."""
        self.ledger.transition(
            effects,
            row,
            JobState.CANCELLED,
            reason,
            now,
            error=ErrorInfo(code="cancelled", message=reason),
            step_changes=steps.end_running(row.id, StepState.CANCELLED, now, reason),
        )

    def expire_leases(
        self, effects: Effects, now: int, *, limit: int, worker_prefix: str | None = None
    ) -> list[Rescue]:
        """Returns jobs whose lease ran out (or, with ``worker_prefix``, that
        dead in-process workers held) to the queue, or ends them; says what
        it did with each."""
        cond = JobRow.state == JobState.RUNNING.value
        if worker_prefix is None:
            cond &= JobRow.lease_expire < now
            why = "lease expired: worker {w} stopped reporting"
        else:
            cond &= JobRow.worker_id.startswith(worker_prefix)
            why = "server restarted while its worker {w} ran the job"
        query = JobRow.select().where(cond).limit(limit)
        if self.dialect.skip_locked:
            query = query.for_update(skip_locked=True)
        rescues: list[Rescue] = []
        for row in query:
            reason = why.format(w=row.worker_id)
            if row.cancel_requested:
                self._cancelled(effects, row, reason, now)
                rescues.append(_rescue(row, JobState.CANCELLED, reason))
                continue
            # Nobody will end the steps the vanished worker was running.
            cut = steps.end_running(row.id, StepState.INTERRUPTED, now, reason)
            if row.attempt < row.max_attempts:
                delay = self.policy.backoff_us(row.attempt)
                reason = f"{reason}; retrying in {delay / 1e6:g}s"
                self.ledger.transition(
                    effects,
                    row,
                    JobState.QUEUED,
                    reason,
                    now,
                    step_changes=cut,
                    not_before=now + delay,
                )
                rescues.append(_rescue(row, JobState.QUEUED, reason))
            else:
                self.ledger.transition(
                    effects,
                    row,
                    JobState.INTERRUPTED,
                    reason,
                    now,
                    error=ErrorInfo(code="lease_expired", message=reason),
                    step_changes=cut,
                )
                rescues.append(_rescue(row, JobState.INTERRUPTED, reason))
        return rescues

    def retry(
        self,
        effects: Effects,
        job_id: str,
        reason: str,
        additional_attempts: int,
        now: int,
        *,
        owner: str | None = None,
    ) -> Job:
        """Queues an ended (not succeeded) job again as a new attempt.

        The history stays: the QUEUED event follows the job's last seq, the
        attempt counter keeps counting (the next acquire makes attempt + 1)
        and max_attempts becomes the current attempt plus
        ``additional_attempts``, so the lease sweeper and FinishJob's retry
        logic work on the new attempt exactly as on the first. Results (and
        so counters), steps and artifacts are kept: the new attempt's items
        replace those of the same key. The error, result, end time, cancel
        flag and progress of the ended attempt are cleared. With ``owner``,
        another principal's job is NotFound.
        """
        row = self.ledger.row(job_id, owner)
        state = JobState(row.state)
        if state not in RETRYABLE_STATES:
            raise FailedPrecondition(
                f"job {job_id!r} is {state.value}; only failed, interrupted or cancelled "
                "jobs can be retried",
                field="job_id",
                reason=errors_pb2.JOB_NOT_RETRYABLE,
                metadata={"jobId": job_id, "state": state.value},
            )
        why = f"retried: {reason}" if reason else "retried by client"
        self.ledger.transition(effects, row, JobState.QUEUED, why, now)
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
        return self.reads.get_job(job_id)


def _rescue(row: JobRow, state: JobState, reason: str) -> Rescue:
    return Rescue(job_id=row.id, worker_id=row.worker_id or "", state=state, reason=reason)


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
