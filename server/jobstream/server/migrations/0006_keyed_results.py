"""Keyed per-item results, and step starts that a released attempt can take
back.

``job_result`` holds one row per (job, key): the latest version of each
result, so a rerun replaces items instead of adding to them. It is filled
from the result events already stored (the newest event of each key wins,
with the attempt that was running when it was stored) and the counters of
every job that has any are recounted from it, so they equal what
ListJobResults lists. Before this, items were only events: a job that ran
twice counted every item twice.

``job_step`` gains the attempt that last started a step and how often that
attempt started it. A step left running by a running job is taken to have
been started once by the job's current attempt (what the old code did in
every case but a step left over from an expired lease).
"""

from __future__ import annotations

from typing import Any

import peewee as pw

STATUSES = ("succeeded", "failed", "skipped")
"""Result statuses, each with its counter column on job."""


def up(migrator: Any, db: pw.Database) -> None:
    """Creates job_result from the result events, recounts the counters and
    adds job_step.attempt and job_step.attempt_starts."""

    class Base(pw.Model):
        class Meta:
            database = db
            legacy_table_names = False

    class Job(Base):
        id = pw.TextField(primary_key=True)

        class Meta:
            table_name = "job"

    class JobResult(Base):
        job = pw.ForeignKeyField(Job, on_delete="CASCADE", column_name="job_id", index=False)
        key = pw.TextField()
        status = pw.TextField()
        data = pw.TextField(null=True)
        error = pw.TextField(default="")
        attempt = pw.IntegerField()
        seq = pw.BigIntegerField()
        time = pw.BigIntegerField()

        class Meta:
            table_name = "job_result"
            primary_key = pw.CompositeKey("job", "key")
            indexes = ((("job", "seq"), True),)

    db.create_tables([JobResult])
    migrator.migrate(
        migrator.add_column("job_step", "attempt", pw.IntegerField(default=0)),
        migrator.add_column("job_step", "attempt_starts", pw.IntegerField(default=0)),
    )
    db.execute_sql(backfill_sql(db))  # type: ignore[no-untyped-call]
    recount = ", ".join(
        f'"{s}" = (SELECT COUNT(*) FROM "job_result" AS r'
        f' WHERE r."job_id" = "job"."id" AND r."status" = \'{s}\')'
        for s in STATUSES
    )
    db.execute_sql(  # type: ignore[no-untyped-call]
        f'UPDATE "job" SET {recount}'
        ' WHERE "succeeded" <> 0 OR "failed" <> 0 OR "skipped" <> 0'
        ' OR "id" IN (SELECT "job_id" FROM "job_result")'
    )
    db.execute_sql(  # type: ignore[no-untyped-call]
        'UPDATE "job_step" SET "attempt_starts" = 1, "attempt" ='
        ' (SELECT "attempt" FROM "job" WHERE "job"."id" = "job_step"."job_id")'
        ' WHERE "state" = \'running\' AND "attempts" > 0 AND "job_id" IN'
        ' (SELECT "id" FROM "job" WHERE "state" = \'running\')'
    )


def backfill_sql(db: pw.Database) -> str:
    """INSERT of the newest result event of each (job, key) into job_result.

    Window functions (SQLite 3.25+, PostgreSQL) do it in one pass over the
    events: ``run`` numbers each job's state events, so a result shares its
    run with the state event before it, whose ``attempt`` was the attempt
    running when the result was stored. Only the newest version of a key has
    its body read past the key. Only reading the JSON bodies differs between
    the backends.
    """
    if isinstance(db, pw.SqliteDatabase):

        def field(table: str, name: str) -> str:
            return f"json_extract({table}.\"body\", '$.{name}')"
    else:

        def field(table: str, name: str) -> str:
            return f"({table}.\"body\"::json ->> '{name}')"

    return f"""
        WITH ev AS (
            SELECT "job_id", "seq", "time", "kind", "body",
                SUM(CASE WHEN "kind" = 'state' THEN 1 ELSE 0 END)
                    OVER (PARTITION BY "job_id" ORDER BY "seq") AS run
            FROM "job_event" WHERE "kind" IN ('state', 'result')
        ), attempts AS (
            SELECT ev."job_id", ev.run, CAST({field("ev", "attempt")} AS INTEGER) AS attempt
            FROM ev WHERE ev."kind" = 'state'
        ), keyed AS (
            SELECT ev."job_id", ev."seq", ev."time", ev."body", ev.run,
                {field("ev", "key")} AS "key"
            FROM ev WHERE ev."kind" = 'result'
        ), ranked AS (
            SELECT keyed.*, ROW_NUMBER() OVER (
                PARTITION BY keyed."job_id", keyed."key" ORDER BY keyed."seq" DESC
            ) AS newest
            FROM keyed
        )
        INSERT INTO "job_result"
            ("job_id", "key", "status", "data", "error", "attempt", "seq", "time")
        SELECT r."job_id", r."key", {field("r", "status")}, {field("r", "data")},
            COALESCE({field("r", "error")}, ''), COALESCE(a.attempt, 0), r."seq", r."time"
        FROM ranked AS r LEFT JOIN attempts AS a ON a."job_id" = r."job_id" AND a.run = r.run
        WHERE r.newest = 1
    """
