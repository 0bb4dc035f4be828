"""Indexes for finding jobs, built and filled for the jobs already stored.

- job_end_time: jobs by when they ended (listing by an end-time window).
- job_param: one row per params member a filter can name, (key, value)
  indexed, so a params filter seeks instead of reading every job's params.
- The substring filter (JobFilter.text over id, kind, labels and error):
  SQLite, a trigram FTS5 table (job_text) kept in step with the job table
  by triggers, each row keyed by job_search.doc: an INTEGER PRIMARY KEY of
  our own, since VACUUM may renumber the job table's implicit rowids.
  PostgreSQL, a pg_trgm GIN index on each of the four columns, which
  serve the ILIKE themselves; the extension goes into the public schema,
  never a server's own schema, whose drop would take every other
  schema's index with it.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import peewee as pw

# The rule the writer follows when it stores a job's params rows; this
# migration fills the rows of the jobs stored before it by the same rule.
from jobstream.server.store.params import param_rows

log = logging.getLogger(__name__)

BACKFILL_BATCH = 2_000
"""Jobs read per batch while filling job_param."""

TEXT_COLUMNS = ("id", "kind", "labels", "error")
"""The job columns the substring filter searches."""

INSERT_ROWS = 1_000
"""job_param rows per INSERT while filling it."""

_SQLITE_TEXT = (
    'CREATE TABLE IF NOT EXISTS "job_search"'
    ' ("doc" INTEGER PRIMARY KEY, "job_id" TEXT NOT NULL UNIQUE)',
    # Contentless: the text is the job row's own; the triggers hand the old
    # values back when a row changes, as a contentless table needs. The
    # table only names candidate jobs (the LIKE decides), so it keeps no
    # positions (detail=none) and no sizes: what submit pays for it is the
    # cheapest FTS5 writes (measured 45 -> 37 us of CPU per job).
    "CREATE VIRTUAL TABLE IF NOT EXISTS job_text USING fts5"
    "(id, kind, labels, error, content='', tokenize='trigram', detail=none, columnsize=0)",
    "CREATE TRIGGER IF NOT EXISTS job_text_insert AFTER INSERT ON job BEGIN"
    " INSERT INTO job_search (job_id) VALUES (new.id);"
    " INSERT INTO job_text (rowid, id, kind, labels, error)"
    "  VALUES (last_insert_rowid(), new.id, new.kind, new.labels, new.error);"
    " END",
    # Progress reports update the job row many times a second: the WHEN
    # keeps them away from the index, which changes only with the text.
    "CREATE TRIGGER IF NOT EXISTS job_text_update AFTER UPDATE ON job"
    " WHEN old.kind IS NOT new.kind OR old.labels IS NOT new.labels"
    "  OR old.error IS NOT new.error BEGIN"
    " INSERT INTO job_text (job_text, rowid, id, kind, labels, error)"
    "  SELECT 'delete', doc, old.id, old.kind, old.labels, old.error"
    "  FROM job_search WHERE job_id = old.id;"
    " INSERT INTO job_text (rowid, id, kind, labels, error)"
    "  SELECT doc, new.id, new.kind, new.labels, new.error"
    "  FROM job_search WHERE job_id = new.id;"
    " END",
    "CREATE TRIGGER IF NOT EXISTS job_text_delete AFTER DELETE ON job BEGIN"
    " INSERT INTO job_text (job_text, rowid, id, kind, labels, error)"
    "  SELECT 'delete', doc, old.id, old.kind, old.labels, old.error"
    "  FROM job_search WHERE job_id = old.id;"
    " DELETE FROM job_search WHERE job_id = old.id;"
    " END",
    'INSERT INTO "job_search" ("job_id") SELECT "id" FROM "job" ORDER BY "create_time", "id"',
    "INSERT INTO job_text (rowid, id, kind, labels, error)"
    ' SELECT s.doc, j.id, j.kind, j.labels, j.error FROM "job_search" s'
    ' JOIN "job" j ON j.id = s.job_id',
)


def _postgres_text(db: pw.Database) -> None:
    """The pg_trgm GIN indexes; without the extension (not installable by
    this user) the substring filter keeps working, by reading every row."""
    try:
        with db.atomic():
            db.execute_sql("CREATE EXTENSION IF NOT EXISTS pg_trgm WITH SCHEMA public")
    except pw.DatabaseError as exc:
        log.warning("pg_trgm unavailable, job text search will read every row: %s", exc)
        return
    (schema,) = db.execute_sql(
        "SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace"
        " WHERE e.extname = 'pg_trgm'"
    ).fetchone()
    # One index per column, not one over all four: the planner costs a
    # multi-column GIN scan by the whole index, four times over for the OR,
    # and chose a sequential scan (250 ms at 10^5 jobs) over it (10 ms).
    for column in TEXT_COLUMNS:
        db.execute_sql(
            f'CREATE INDEX IF NOT EXISTS "job_{column}_trgm" ON "job"'
            f' USING gin ("{column}" "{schema}".gin_trgm_ops)'
        )


def up(migrator: Any, db: pw.Database) -> None:
    """Creates and fills job_param and the text index."""

    class Job(pw.Model):
        id = pw.TextField(primary_key=True)
        params = pw.TextField(default="{}")

        class Meta:
            database = db
            table_name = "job"

    class Param(pw.Model):
        job = pw.ForeignKeyField(Job, on_delete="CASCADE", column_name="job_id", index=False)
        key = pw.TextField()
        value = pw.TextField()

        class Meta:
            database = db
            table_name = "job_param"
            primary_key = pw.CompositeKey("job", "key")
            indexes = ((("key", "value", "job"), False),)

    db.create_tables([Param])
    after = ""
    while True:
        batch = list(
            Job.select(Job.id, Job.params)
            .where(Job.id > after)
            .order_by(Job.id)
            .limit(BACKFILL_BATCH)
        )
        if not batch:
            break
        rows = [r for job in batch for r in param_rows(job.id, json.loads(job.params))]
        # Chunks keep each INSERT under SQLite's limit of bound values.
        for chunk in pw.chunked(rows, INSERT_ROWS):
            Param.insert_many(chunk, fields=[Param.job, Param.key, Param.value]).execute()
        after = batch[-1].id
    # Listing by end time: without it a window of old ends walked every
    # job newest first (36 ms at 10^5 jobs). Running jobs have no end.
    db.execute_sql(
        'CREATE INDEX IF NOT EXISTS "job_end_time" ON "job" ("end_time")'
        ' WHERE "end_time" IS NOT NULL'
    )
    if isinstance(db, pw.SqliteDatabase):
        for statement in _SQLITE_TEXT:
            db.execute_sql(statement)
    else:
        _postgres_text(db)
