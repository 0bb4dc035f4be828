"""Drops the job_id index of events, labels, steps and artifacts: each
table's primary key or unique key already starts with job_id and serves
every lookup by job, so the extra B-tree was only cost on each insert (one
per stored event: log lines, progress, results)."""

from __future__ import annotations

from typing import Any

import peewee as pw

REDUNDANT = ("job_event_job_id", "job_label_job_id", "job_step_job_id", "job_artifact_job_id")
"""Indexes on (job_id) alone, covered by (job_id, seq|key|name)."""


def up(migrator: Any, db: pw.Database) -> None:
    """Drops the REDUNDANT indexes where they exist."""
    for name in REDUNDANT:
        db.execute_sql(f"DROP INDEX IF EXISTS {name}")
