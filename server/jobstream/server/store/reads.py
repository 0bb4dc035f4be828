"""Reading jobs and their events: one job, pages of jobs, pages of events
and results. Runs on any thread, with that thread's own connection."""

from __future__ import annotations

import json
import operator
from collections.abc import Iterable
from typing import Any

import peewee as pw

from jobstream.server.db import JobRow, LabelRow, ParamRow, StepRow, execute
from jobstream.server.domain import JSON, Event, EventKind, Job, JobFilter, LogSearch, Step
from jobstream.server.errors import not_found
from jobstream.server.store.dialect import Dialect
from jobstream.server.store.ledger import owned
from jobstream.server.store.params import index_value
from jobstream.server.store.results import Results
from jobstream.server.store.rows import job_of, step_of
from jobstream.server.store.sql import Statements


class Reads:
    """The store's queries of jobs, events and results."""

    def __init__(self, db: pw.Database, sql: Statements, results: Results) -> None:
        self.db = db
        self.sql = sql
        self.results = results

    def get_job(self, job_id: str, owner: str | None = None) -> Job:
        """One job with its steps, or NotFound (also for another owner's job
        when ``owner`` restricts the caller)."""
        with self.db.atomic():
            # SQL built once, and steps read only when the job has some:
            # every wait and watch reads its job here, and peewee building
            # the two SELECTs cost more than SQLite running them.
            row = self.sql.job_row(job_id)
            if row is None or not owned(row, owner):
                raise not_found(job_id)
            return self.job_with_steps(row)

    def job_with_steps(self, row: JobRow) -> Job:
        """The job of a row just read and written in this transaction, with
        its steps (read only when it has any): what a write answers with,
        without reading the row again."""
        stored: tuple[Step, ...] = ()
        if row.step_count:
            query = StepRow.select().where(StepRow.job == row.id).order_by(StepRow.position)
            stored = tuple(step_of(s) for s in query)
        return job_of(row, stored)

    def get_jobs(self, job_ids: Iterable[str]) -> dict[str, Job]:
        """The jobs that exist among ``job_ids`` (without steps)."""
        ids = list(job_ids)
        if not ids:
            return {}
        return {row.id: job_of(row) for row in JobRow.select().where(JobRow.id.in_(ids))}

    def list_jobs(self, flt: JobFilter, *, limit: int, cursor: tuple[int, str] | None) -> list[Job]:
        """Up to ``limit`` jobs after ``cursor`` (a (create_time, id)),
        newest first."""
        narrow = not (flt.text and self._text_common(flt.text))
        query = filtered(JobRow.select(), flt, self.sql.dialect, narrow_text=narrow)
        if cursor is not None:
            ctime, cid = cursor
            # A row-value comparison is one index seek; the equivalent OR of
            # two conditions makes SQLite scan from the top of the index.
            query = query.where(pw.Tuple(JobRow.create_time, JobRow.id) < pw.Tuple(ctime, cid))
        rows = query.order_by(JobRow.create_time.desc(), JobRow.id.desc()).limit(limit)
        return [job_of(r) for r in rows]

    def _text_common(self, text: str) -> bool:
        """Whether the trigram table finds ``text`` in so many jobs that a
        page is found sooner by walking jobs newest first and checking each
        (about LIST_PAGE * jobs / matches rows) than by reading and sorting
        every match (measured at 10^5 jobs: a substring of every job took
        375 ms through the table)."""
        if not (self.sql.dialect.sqlite and len(text) >= TRIGRAM):
            return False
        (found,) = execute(
            self.db, _TEXT_PROBE, (_trigram_query(text), COMMON_TEXT_JOBS)
        ).fetchone()
        return bool(found >= COMMON_TEXT_JOBS)

    def job_exists(self, job_id: str, owner: str | None = None) -> bool:
        """Whether the job exists (as ``owner``'s, when given)."""
        # Through the row's SQL built once: every wait asks this when its
        # watch starts with nothing new to read.
        row = self.sql.job_row(job_id)
        return row is not None and owned(row, owner)

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
        (page,) = execute(self.db, self.sql.events_page(kind is not None), params).fetchone()
        rows: list[tuple[int, int, str, JSON]] = json.loads(page) if page else []
        # SQLite's json_group_array does not promise its input's order.
        rows.sort(key=operator.itemgetter(0))
        return [
            Event(job_id=job_id, seq=seq, time=t, kind=EventKind(k), body=body)
            for seq, t, k, body in rows
        ]

    def search_logs(
        self, job_id: str, search: LogSearch, *, after_seq: int, limit: int
    ) -> list[Event]:
        """Up to ``limit`` of the job's log lines after ``after_seq`` that
        ``search`` selects, in seq order; with ``search.tail``, only the
        last ``tail`` of them (at most ``limit``). The job's events are
        walked through its primary key; the level and text conditions are
        checked on each log line's body."""
        d = self.sql.dialect
        p = d.param
        where = [f'"job_id" = {p}', f'"kind" = {p}', f'"seq" > {p}']
        params: list[Any] = [job_id, EventKind.LOG.value, after_seq]
        if search.levels:
            where.append(
                f"{d.json_text('body', 'level')} IN ({', '.join([p] * len(search.levels))})"
            )
            params.extend(level.value for level in search.levels)
        if search.text:
            where.append(f"lower({d.json_text('body', 'text')}) LIKE {p} ESCAPE '\\'")
            params.append(f"%{_like_escaped(search.text.lower())}%")
        if search.since is not None:
            where.append(f'"time" >= {p}')
            params.append(search.since)
        newest_first = search.tail > 0
        order = "DESC" if newest_first else "ASC"
        sql = (
            f'SELECT "seq", "time", "body" FROM "job_event" WHERE {" AND ".join(where)}'
            f' ORDER BY "seq" {order} LIMIT {p}'
        )
        params.append(min(search.tail, limit) if newest_first else limit)
        rows = execute(self.db, sql, tuple(params)).fetchall()
        if newest_first:
            rows.reverse()
        return [
            Event(job_id=job_id, seq=seq, time=t, kind=EventKind.LOG, body=json.loads(body))
            for seq, t, body in rows
        ]

    def read_results(self, job_id: str, *, after_seq: int, limit: int) -> list[Event]:
        """Up to ``limit`` of the job's results, the latest version of each
        key, whose version was stored after ``after_seq``; in seq order."""
        return self.results.page(job_id, after_seq=after_seq, limit=limit)


def _like_escaped(text: str) -> str:
    """``text`` with LIKE's wildcards (and the escape character) escaped."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def filtered(query: Any, flt: JobFilter, dialect: Dialect, *, narrow_text: bool = True) -> Any:
    """``query`` narrowed to the jobs ``flt`` selects; ``narrow_text``
    False checks a substring on every row the other filters leave instead
    of asking the trigram table first (SQLite; see Reads._text_common)."""
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
    for column, after, before in (
        (JobRow.create_time, flt.created_after, flt.created_before),
        (JobRow.end_time, flt.ended_after, flt.ended_before),
    ):
        if after is not None:
            query = query.where(column >= after)
        if before is not None:
            query = query.where(column < before)
    if flt.text:
        text = flt.text
        # The LIKE / ILIKE is the filter's meaning on both backends; on
        # PostgreSQL the pg_trgm index serves it, on SQLite the trigram
        # table narrows the rows it is checked on (migration 0016) to its
        # candidates and the jobs not yet in it (0017).
        query = query.where(
            JobRow.id.contains(text)
            | JobRow.kind.contains(text)
            | JobRow.labels.contains(text)
            | JobRow.error.contains(text)
        )
        if narrow_text and dialect.sqlite and len(text) >= TRIGRAM:
            query = query.where(
                pw.NodeList(
                    (
                        JobRow.id,
                        pw.SQL("IN"),
                        pw.EnclosedNodeList([pw.SQL(_TEXT_DOCS, [_trigram_query(text)])]),
                    )
                )
            )
    for path, value in flt.params:
        query = query.where(
            JobRow.id.in_(
                ParamRow.select(ParamRow.job).where(
                    (ParamRow.key == ".".join(path)) & (ParamRow.value == index_value(value))
                )
            )
        )
    return query


TRIGRAM = 3
"""Characters the trigram index needs to narrow a search: a shorter
substring is checked on every row the other filters leave."""

_TEXT_DOCS = (
    'SELECT "job_id" FROM "job_search" WHERE "doc" IN'
    " (SELECT rowid FROM job_text WHERE job_text MATCH ?)"
    ' UNION ALL SELECT "job_id" FROM "search_pending"'
)
"""The ids of the jobs whose id, kind, labels or error hold the trigrams of
a substring (any case), and of the jobs not yet in the trigram table
(store/search_index.py): a superset of the LIKE's matches, which the LIKE
then checks."""


COMMON_TEXT_JOBS = 1_000
"""Trigram matches from which a listing walks jobs newest first instead:
a page of 50 then checks at most about 50 * jobs / 1,000 rows."""

MATCH_TRIGRAMS = 16
"""Most trigrams of a substring the trigram table is asked for."""

_TEXT_PROBE = "SELECT count(*) FROM (SELECT rowid FROM job_text WHERE job_text MATCH ? LIMIT ?)"
"""How many jobs the trigram table finds for a substring, counting no
further than the bound given."""


def _trigram_query(text: str) -> str:
    """An FTS5 query naming the jobs that hold every trigram of ``text``
    (the table keeps no positions, so not whether they stand together: the
    LIKE checks that); at most MATCH_TRIGRAMS of them, spread over the text,
    so a long substring stays a short query."""
    grams = list(dict.fromkeys(text[i : i + TRIGRAM] for i in range(len(text) - TRIGRAM + 1)))
    step = max(1, len(grams) // MATCH_TRIGRAMS)
    chosen = grams[::step][:MATCH_TRIGRAMS]
    return " AND ".join('"' + g.replace('"', '""') + '"' for g in chosen)
