"""SQL built once: fixed INSERTs run with ``executemany``, and the hot-path
queries compiled once per shape. Peewee builds the SQL of every query and
every row it inserts, which profiles showed dominating the write hot paths
(submit, report, a one-row acquire)."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from itertools import chain
from typing import Any

import peewee as pw

from jobstream.server.db import JobRow, execute
from jobstream.server.store.dialect import Dialect

JOB_COLUMNS = tuple(f.column_name for f in JobRow._meta.sorted_fields)
"""Every column of the job table, in the order a raw insert fills them."""

JOB_DEFAULTS = {f.column_name: f.default for f in JobRow._meta.sorted_fields}
"""Column values a new job row takes unless submit sets them (peewee keeps
defaults in Python, not in the schema, so a raw insert must supply them)."""


MAX_INSERT_ROWS = 512
"""Most rows one INSERT statement carries. A batch of rows goes in as a few
multi-row statements of power-of-two sizes (500 rows: 256 + 128 + 64 + 32 +
16 + 4), so each table has at most ten such statements for the driver to
keep prepared. One statement per row (``executemany``) made SQLite step
once per row, releasing and taking back the GIL each time: with the event
loop busy on the other thread, every row of a 500-job submit waited for the
GIL (the writer's insert time doubled under load)."""


class RawInsert:
    """A fixed INSERT of whole rows; each statement is built once. Columns
    in ``fixed`` take the same value in every row, written into the
    statement as SQL literals: binding them row by row cost more than the
    rest of the row (most columns of a new job hold their defaults)."""

    def __init__(
        self,
        db: pw.Database,
        model: type[pw.Model],
        columns: Sequence[str],
        *,
        fixed: Mapping[str, Any] | None = None,
    ) -> None:
        fixed = fixed or {}
        names = ", ".join(f'"{c}"' for c in (*columns, *fixed))
        self._head = f'INSERT INTO "{model._meta.table_name}" ({names}) VALUES '
        values = [db.param] * len(columns) + [_literal(v) for v in fixed.values()]
        self._row = "(" + ", ".join(values) + ")"
        self.sql = self._head + self._row
        self.db = db
        most = min(MAX_INSERT_ROWS, max(1, Dialect.of(db).max_params // len(columns)))
        self._most = 1 << (most.bit_length() - 1)
        """The largest statement's rows: a power of two within the
        backend's limit on bound parameters."""
        self._statements: dict[int, str] = {1: self.sql}

    def run(self, rows: Sequence[Sequence[Any]]) -> None:
        """Inserts ``rows`` (values in the column order) on the current
        transaction's connection."""
        if not rows:
            return
        cursor = self.db.cursor()  # type: ignore[no-untyped-call]
        # Raw cursors raise the driver's own errors; peewee's wrapper turns
        # them into peewee's, which status.py maps to statuses.
        with pw.__exception_wrapper__:  # type: ignore[attr-defined]
            start, left = 0, len(rows)
            while left:
                size = min(self._most, 1 << (left.bit_length() - 1))
                chunk = rows[start : start + size]
                cursor.execute(self._statement(size), list(chain.from_iterable(chunk)))
                start += size
                left -= size

    def _statement(self, rows: int) -> str:
        sql = self._statements.get(rows)
        if sql is None:
            sql = self._head + ", ".join([self._row] * rows)
            self._statements[rows] = sql
        return sql


def _literal(value: Any) -> str:
    """A constant as an SQL literal both backends read alike (no ``%``: the
    PostgreSQL driver's parameter marks start with it)."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str) and "%" not in value:
        return "'" + value.replace("'", "''") + "'"
    raise ValueError(f"{value!r} cannot be written as a literal")


class _HeldUpdates(threading.local):
    """Updates an ``updates_together`` block holds, per thread (only the
    writer thread's own statements are held)."""

    updates: dict[str, list[tuple[Any, ...]]] | None = None
    """By statement; None: not in a block."""


class Statements:
    """SQL of hot-path queries, built once per shape: for a one-row acquire,
    peewee building the SELECT and UPDATE cost more than SQLite running them."""

    def __init__(self, db: pw.Database, dialect: Dialect) -> None:
        self.db = db
        self.dialect = dialect
        self._cache: dict[tuple[Any, ...], str] = {}
        self._row_fields: dict[str, tuple[tuple[str, Callable[[Any], Any]], ...]] = {}
        """Per job SELECT: each column's field name and conversion."""
        self._held = _HeldUpdates()

    def acquire(self, queues: int, kinds: int) -> str:
        """The acquire SELECT; parameters: state, *queues, *kinds, now, limit."""
        key = ("acquire", queues, kinds)
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
            if self.dialect.skip_locked:
                query = query.for_update(skip_locked=True)
            sql, params = query.sql()
            assert len(params) == 3 + queues + kinds, "acquire parameters out of order"
            self._cache[key] = sql
        return self._cache[key]

    def job_by_id(self, *, lock: bool) -> str:
        """``SELECT * FROM job WHERE id`` (``FOR UPDATE`` with ``lock``, on
        backends with row locks); parameter: the id. Every worker call
        reads its job's row through this."""
        key = ("job", lock)
        if key not in self._cache:
            query = JobRow.select().where(JobRow.id == "")
            if lock and self.dialect.row_locks:
                query = query.for_update()
            self._cache[key] = query.sql()[0]
        return self._cache[key]

    def job_row(self, job_id: str, *, lock: bool = False) -> JobRow | None:
        """The job's row or None, through :meth:`job_by_id`, made from the
        cursor's values with each field's own conversion: peewee's cursor
        wrapper (``JobRow.raw``) resolved the columns again for every row,
        80 of the 90 µs a read of one job took."""
        sql = self.job_by_id(lock=lock)
        cursor = execute(self.db, sql, (job_id,))
        values = cursor.fetchone()
        return None if values is None else self._row(sql, cursor, values)

    def job_rows(self, job_ids: Sequence[str]) -> dict[str, JobRow]:
        """On PostgreSQL, the rows of those of ``job_ids`` that exist, by id,
        read in one round trip: the one-row SELECT of each, pipelined (an
        ``id IN (...)`` list gets a generic plan through the trigram index on
        ``id``, hundreds of times slower). Nothing on SQLite, where a read
        is a call into the library, not a round trip."""
        if not job_ids or self.dialect.sqlite:
            return {}
        sql = self.job_by_id(lock=False)
        found: dict[str, JobRow] = {}
        cursor = self.db.cursor()  # type: ignore[no-untyped-call]
        with pw.__exception_wrapper__:  # type: ignore[attr-defined]
            cursor.executemany(sql, [(job_id,) for job_id in job_ids], returning=True)
            while True:
                values = cursor.fetchone()
                if values is not None:
                    row = self._row(sql, cursor, values)
                    found[row.id] = row
                if not cursor.nextset():
                    break
        return found

    def job_rows_by(self, sql: str, params: Sequence[Any]) -> list[JobRow]:
        """The job rows a SELECT of ``job`` columns finds, made as by
        :meth:`job_row` (not through peewee's cursor wrapper)."""
        cursor = execute(self.db, sql, tuple(params))
        return [self._row(sql, cursor, values) for values in cursor.fetchall()]

    def _row(self, sql: str, cursor: Any, values: Sequence[Any]) -> JobRow:
        """A JobRow from one row of ``sql``'s cursor."""
        fields = self._row_fields.get(sql)
        if fields is None:
            by_column = {f.column_name: f for f in JobRow._meta.sorted_fields}
            fields = tuple(
                (by_column[column[0]].name, by_column[column[0]].python_value)
                for column in cursor.description
            )
            self._row_fields[sql] = fields
        row = JobRow(__no_default__=1)
        row.__data__ = {
            name: python_value(value)
            for (name, python_value), value in zip(fields, values, strict=True)
        }
        return row

    def update_job(self, columns: Sequence[str]) -> str:
        """``UPDATE job SET <columns> WHERE id``; parameters: values, then id."""
        key = ("update", *columns)
        if key not in self._cache:
            sets = ", ".join(f'"{c}" = {self.dialect.param}' for c in columns)
            self._cache[key] = f'UPDATE "job" SET {sets} WHERE "id" = {self.dialect.param}'
        return self._cache[key]

    def events_page(self, by_kind: bool) -> str:
        """A page of a job's events as one JSON text, ``[[seq, time, kind,
        body], ...]`` (NULL when there are none); parameters: job id, after
        seq, [kind,] limit."""
        key = ("events", by_kind)
        if key not in self._cache:
            d = self.dialect
            p = d.param
            kind = f' AND "kind" = {p}' if by_kind else ""
            page = (
                'SELECT "seq", "time", "kind", "body" FROM "job_event"'
                f' WHERE "job_id" = {p} AND "seq" > {p}{kind} ORDER BY "seq" LIMIT {p}'
            )
            row = d.json_array('"seq"', '"time"', '"kind"', d.json_of('"body"'))
            self._cache[key] = d.json_rows(row, page, '"seq"')
        return self._cache[key]

    def update(self, job_id: str, values: dict[str, Any]) -> None:
        """Sets plain column values of one job (inside ``updates_together``,
        when that block ends)."""
        sql = self.update_job(tuple(values))
        params = (*values.values(), job_id)
        if self._held.updates is not None:
            self._held.updates.setdefault(sql, []).append(params)
        else:
            execute(self.db, sql, params)

    @contextlib.contextmanager
    def updates_together(self) -> Iterator[None]:
        """The job updates made inside run when the block ends, one
        ``executemany`` per statement shape (on PostgreSQL, one round trip
        for all of them instead of one each). Nothing inside may read a row
        it updated, nor update one row twice (the shapes run one after the
        other, not in the order made); an error drops the updates with the
        operation."""
        if self._held.updates is not None:
            yield  # already inside one
            return
        self._held.updates = {}
        try:
            yield
            held = self._held.updates
        finally:
            self._held.updates = None
        if held:
            cursor = self.db.cursor()  # type: ignore[no-untyped-call]
            with pw.__exception_wrapper__:  # type: ignore[attr-defined]
                for sql, rows in held.items():
                    cursor.executemany(sql, rows)
