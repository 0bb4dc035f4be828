"""A job keeps the last checkpoint its handler stored (a small JSON object,
NULL when none), so a rerun after a release, a rescue or a retry can pick
up where the earlier attempt stopped."""

from __future__ import annotations

from typing import Any

import peewee as pw


def up(migrator: Any, db: pw.Database) -> None:
    """Adds job.checkpoint."""
    migrator.migrate(migrator.add_column("job", "checkpoint", pw.TextField(null=True)))
