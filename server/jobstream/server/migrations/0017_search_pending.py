"""SQLite: the trigram table is filled after the submit, not in it.

A new job gets only a mark in search_pending (one row, the job's id); the
writer's idle step (store/search_index.py) moves marked jobs into
job_search and job_text in batches, in one transaction each, and removes
their marks. A search reads the trigram table's candidates and the marked
jobs, so a job is found from its submit's commit on. Measured on the store
(batches of 500 of bench T9's jobs): 84 us of writer CPU per job with the
trigram rows written in the submit, 48 us with the mark instead.

The update trigger stays: it changes the rows of indexed jobs only (a
marked job is indexed with the values it has then), and fires only when
the kind, labels or error change. The delete trigger also drops the mark.
PostgreSQL is unchanged: its GIN indexes defer their own work (fastupdate).
"""

from __future__ import annotations

from typing import Any

import peewee as pw

_SQLITE = (
    'CREATE TABLE IF NOT EXISTS "search_pending" ("job_id" TEXT PRIMARY KEY) WITHOUT ROWID',
    "DROP TRIGGER IF EXISTS job_text_insert",
    "CREATE TRIGGER job_text_insert AFTER INSERT ON job BEGIN"
    ' INSERT INTO "search_pending" ("job_id") VALUES (new.id);'
    " END",
    "DROP TRIGGER IF EXISTS job_text_delete",
    "CREATE TRIGGER job_text_delete AFTER DELETE ON job BEGIN"
    " INSERT INTO job_text (job_text, rowid, id, kind, labels, error)"
    "  SELECT 'delete', doc, old.id, old.kind, old.labels, old.error"
    "  FROM job_search WHERE job_id = old.id;"
    " DELETE FROM job_search WHERE job_id = old.id;"
    ' DELETE FROM "search_pending" WHERE "job_id" = old.id;'
    " END",
)


def up(migrator: Any, db: pw.Database) -> None:
    """Makes search_pending and points the job insert trigger at it."""
    if isinstance(db, pw.SqliteDatabase):
        for statement in _SQLITE:
            db.execute_sql(statement)
