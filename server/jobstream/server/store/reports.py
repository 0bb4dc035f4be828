"""What a running attempt reports: progress, log lines (within the job's
log limit), steps, per-item results and recorded files, stored in one
transaction that also renews the lease."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from jobstream.server.db import EventRow, JobRow, dumps
from jobstream.server.domain import (
    JSON,
    Effects,
    EventKind,
    LogLevel,
    LogLine,
    Report,
    ReportAck,
)
from jobstream.server.errors import ResourceExhausted
from jobstream.server.limits import Limits
from jobstream.server.store import steps
from jobstream.server.store.ledger import Ledger
from jobstream.server.store.results import Results
from jobstream.server.store.rows import progress_body, step_body


class Reports:
    """Stores workers' reports."""

    def __init__(self, ledger: Ledger, results: Results, limits: Limits) -> None:
        self.ledger = ledger
        self.results = results
        self.limits = limits

    def report(
        self, effects: Effects, job_id: str, lease_id: str, report: Report, *, now: int
    ) -> ReportAck:
        """Stores a worker's batch and renews its lease for the length it
        was granted."""
        row = self.ledger.leased(job_id, lease_id, now)
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
            items.append((EventKind.PROGRESS, progress_body(p)))
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
            items.append((EventKind.STEP, step_body(stored)))
        if report.steps:
            update[JobRow.step_count] = step_count
        results = self.results.prepare(row, report.results) if report.results else None
        if results is not None:
            first_result_seq = row.last_seq + 1 + len(items)
            items.extend((EventKind.RESULT_ITEM, body) for body in results.bodies)
            update.update(results.counter_moves)
        if report.files:
            files = json.loads(row.files)
            files.extend(f for f in report.files if f not in files)
            update[JobRow.files] = dumps(files)
        seq = self.ledger.append(effects, row, now, items) if items else row.last_seq
        if results is not None:
            self.results.store(
                row.id, results, first_seq=first_result_seq, attempt=row.attempt, now=now
            )
        if report.checkpoint is not None:
            # In the batch's own update: the checkpoint is stored exactly
            # when what was reported before it is.
            update[JobRow.checkpoint] = dumps(report.checkpoint)
        if report.report_seq:
            update[JobRow.report_seq] = report.report_seq
        update.update({JobRow.lease_expire: expire, JobRow.update_time: now, JobRow.last_seq: seq})
        if results is None:
            # Plain values (a log line's or progress update's report): the
            # UPDATE built once per set of columns, as peewee building it
            # on every report cost more than SQLite running it.
            self.ledger.sql.update(row.id, {f.column_name: v for f, v in update.items()})
        else:  # result counters move by expressions (``failed - 1``)
            JobRow.update(update).where(JobRow.id == row.id).execute()
        return ReportAck(
            cancel_requested=row.cancel_requested, lease_expire_time=expire, last_seq=seq
        )

    def _capped_logs(self, row: JobRow, logs: Sequence[LogLine]) -> list[JSON]:
        """Event bodies of ``logs`` within the job's log line limit: the lines
        that fit, then one "truncated" line; once that is stored, any
        further line is refused. Counting runs only when the job's whole
        event count could have reached the limit."""
        bodies: list[JSON] = []
        for ln in logs:
            body: JSON = {"level": ln.level, "text": ln.text, "stream": ln.stream}
            if ln.truncated:
                body["truncated"] = True
            bodies.append(body)
        limit = self.limits.max_log_lines_per_job
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
                metadata={
                    "jobId": row.id,
                    "limit": str(limit),
                    "setting": "--max-log-lines-per-job",
                },
            )
        room = limit - stored
        if len(bodies) <= room:
            return bodies
        marker: JSON = {
            "level": LogLevel.WARNING,
            "text": f"log truncated: the job reached its limit of {limit} log lines "
            "(--max-log-lines-per-job); later lines are refused",
            "stream": "",
        }
        return [*bodies[:room], marker]
