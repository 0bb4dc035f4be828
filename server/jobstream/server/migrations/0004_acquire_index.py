"""Acquire's index gains ``id``: its ORDER BY (priority desc, create_time, id)
is then read straight off the index. Without it SQLite sorted every queued
job of the queue on each acquire (a temp b-tree), O(queued) per call."""

from __future__ import annotations

from typing import Any

import peewee as pw


def up(migrator: Any, db: pw.Database) -> None:
    """Replaces job_state_queue_priority_create_time with job_acquire."""
    db.execute_sql("DROP INDEX IF EXISTS job_state_queue_priority_create_time")
    db.execute_sql(
        "CREATE INDEX IF NOT EXISTS job_acquire"
        " ON job (state, queue, priority DESC, create_time, id)"
    )
