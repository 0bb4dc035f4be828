"""Event kinds are stored under the names the wire gives them (JobEvent's
payload fields): ``state`` becomes ``state_change``, ``result``
``result_item``, ``cancel`` ``cancel_requested`` and ``artifact``
``artifact_added``; ``progress``, ``log`` and ``step`` already were. One
UPDATE, so the events table is read once."""

from __future__ import annotations

from typing import Any

import peewee as pw

RENAMED = (
    ("state", "state_change"),
    ("result", "result_item"),
    ("cancel", "cancel_requested"),
    ("artifact", "artifact_added"),
)
"""(stored before, stored from now on) for every kind whose name changes."""


def up(migrator: Any, db: pw.Database) -> None:
    """Renames the stored event kinds."""
    p = db.param
    cases = " ".join(f"WHEN {p} THEN {p}" for _ in RENAMED)
    olds = ", ".join([p] * len(RENAMED))
    db.execute_sql(  # type: ignore[no-untyped-call]
        f'UPDATE "job_event" SET "kind" = CASE "kind" {cases} END WHERE "kind" IN ({olds})',
        (*(name for pair in RENAMED for name in pair), *(old for old, _ in RENAMED)),
    )
