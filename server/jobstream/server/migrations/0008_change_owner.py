"""The change log records each job's owner, so a job-list watcher that is
not an admin is told of its own jobs' deletions (and only of those) however
it resumes: a deleted job's row and owner are gone from the job table.

Existing rows take their owner from the job table; rows of jobs already
deleted keep '' (no principal's name is empty, so only admins see them)."""

from __future__ import annotations

from typing import Any

import peewee as pw


def up(migrator: Any, db: pw.Database) -> None:
    """Adds job_change.owner and fills it from the job table."""
    migrator.migrate(migrator.add_column("job_change", "owner", pw.TextField(default="")))
    db.execute_sql(
        'UPDATE "job_change" SET "owner" = "job"."owner" FROM "job"'
        ' WHERE "job"."id" = "job_change"."job_id" AND NOT "job_change"."deleted"'
    )
