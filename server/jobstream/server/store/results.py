"""Per-item results, keyed per job: the ``job_result`` table. Part of the
store: its methods run inside the store's transactions.

A job's results are its work, not the sum of its attempts: each key has one
row, its latest version, which a later item of the same key replaces (from
a retry, a rescued or released run, or the same attempt). Every item is
still a ``result`` event in the job's stream, so watchers see the history as
it happens; each such event names the status it replaced, and the job's
counters move by the same amounts in the same transaction, so they always
equal the rows ListJobResults reads.
"""

from __future__ import annotations

import json
import operator
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import peewee as pw

from jobstream.server.db import JobRow, dumps, execute
from jobstream.server.domain import JSON, Event, EventKind, ResultItem, ResultStatus
from jobstream.server.store.dialect import Dialect

RESULT_COLUMNS = ("job_id", "key", "status", "data", "error", "attempt", "seq", "time")
"""Columns of job_result in the order an upsert fills them."""


@dataclass(frozen=True, kw_only=True, slots=True)
class ResultBatch:
    """A report's items made ready to store: their event bodies, in order,
    the counter moves they make and the rows they leave, by key."""

    bodies: list[JSON]
    counter_moves: dict[Any, Any]
    """Peewee UPDATE assignments (``JobRow.failed: JobRow.failed - 1``) for
    the counters that change."""
    latest: dict[str, tuple[int, str, str | None, str]]
    """Per key, the last item's (index in ``bodies``, status, data as JSON
    text, error): of two items with one key in a batch, the later stays."""


class Results:
    """The SQL of job_result for one database, built once."""

    def __init__(self, db: pw.Database, dialect: Dialect) -> None:
        self.db = db
        p = dialect.param
        names = ", ".join(f'"{c}"' for c in RESULT_COLUMNS)
        marks = ", ".join([p] * len(RESULT_COLUMNS))
        newer = ", ".join(f'"{c}" = excluded."{c}"' for c in RESULT_COLUMNS[2:])
        # ON CONFLICT ... DO UPDATE reads the same on SQLite (3.24+) and
        # PostgreSQL.
        self._upsert = (
            f'INSERT INTO "job_result" ({names}) VALUES ({marks})'
            f' ON CONFLICT ("job_id", "key") DO UPDATE SET {newer}'
        )
        page = (
            'SELECT "seq", "time", "key", "status", "data", "error" FROM "job_result"'
            f' WHERE "job_id" = {p} AND "seq" > {p} ORDER BY "seq" LIMIT {p}'
        )
        # One JSON text in one row per page, like a page of events (see
        # Reads.read_events on why).
        item = dialect.json_object(
            key='"key"', status='"status"', data=dialect.json_of('"data"'), error='"error"'
        )
        self._page = dialect.json_rows(dialect.json_array('"seq"', '"time"', item), page, '"seq"')

    def prepare(self, row: JobRow, items: Sequence[ResultItem]) -> ResultBatch:
        """The event bodies of ``items`` for job ``row``, each naming the
        status it replaces, and the counter moves they make."""
        # Counters equal the stored rows, so all-zero counters mean no rows:
        # a job's first run skips the lookup.
        stored = row.succeeded or row.failed or row.skipped
        current = self._statuses(row.id, {i.key for i in items}) if stored else {}
        moves = dict.fromkeys(ResultStatus, 0)
        bodies: list[JSON] = []
        latest: dict[str, tuple[int, str, str | None, str]] = {}
        for index, item in enumerate(items):
            body: JSON = {
                "key": item.key,
                "status": item.status,
                "data": item.data,
                "error": item.error,
            }
            replaced = current.get(item.key)
            if replaced is not None:
                body["replaced"] = replaced
                moves[replaced] -= 1
            moves[item.status] += 1
            current[item.key] = item.status
            bodies.append(body)
            data = None if item.data is None else dumps(item.data)
            latest[item.key] = (index, item.status, data, item.error)
        columns = {
            getattr(JobRow, name): getattr(JobRow, name) + n for name, n in moves.items() if n
        }
        return ResultBatch(bodies=bodies, counter_moves=columns, latest=latest)

    def store(
        self, job_id: str, batch: ResultBatch, *, first_seq: int, attempt: int, now: int
    ) -> None:
        """Stores ``batch`` as the latest versions of its keys, its events
        having been appended with seqs from ``first_seq`` on."""
        rows = [
            (job_id, key, status, data, error, attempt, first_seq + index, now)
            for key, (index, status, data, error) in batch.latest.items()
        ]
        cursor = self.db.cursor()  # type: ignore[no-untyped-call]
        cursor.executemany(self._upsert, rows)

    def page(self, job_id: str, *, after_seq: int, limit: int) -> list[Event]:
        """Up to ``limit`` of the job's results with a seq after
        ``after_seq``, in seq order, each as the result event that stored it
        (without ``replaced``: a row is a version, not a change)."""
        (text,) = execute(self.db, self._page, (job_id, after_seq, limit)).fetchone()
        rows: list[tuple[int, int, JSON]] = json.loads(text) if text else []
        # SQLite's json_group_array does not promise its input's order.
        rows.sort(key=operator.itemgetter(0))
        return [
            Event(job_id=job_id, seq=seq, time=t, kind=EventKind.RESULT_ITEM, body=body)
            for seq, t, body in rows
        ]

    def _statuses(self, job_id: str, keys: set[str]) -> dict[str, ResultStatus]:
        """The stored status of each of ``keys`` that has a row (a report
        holds at most MAX_REPORT_ITEMS keys, within both backends' limits on
        parameters)."""
        p = self.db.param
        marks = ", ".join([p] * len(keys))
        cursor = execute(
            self.db,
            f'SELECT "key", "status" FROM "job_result" WHERE "job_id" = {p} AND "key" IN ({marks})',
            (job_id, *keys),
        )
        return {key: ResultStatus(status) for key, status in cursor.fetchall()}
