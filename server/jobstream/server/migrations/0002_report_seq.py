"""Idempotent ReportJob: remember the last report number stored per lease."""

from __future__ import annotations

from typing import Any

import peewee as pw


def up(migrator: Any, db: pw.Database) -> None:
    """Adds job.report_seq."""
    migrator.migrate(migrator.add_column("job", "report_seq", pw.BigIntegerField(default=0)))
