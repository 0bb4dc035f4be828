"""Artifacts (one row per named output file of a job) and an index that lets
purge and stats find jobs by when they ended without a scan."""

from __future__ import annotations

from typing import Any

import peewee as pw


def up(migrator: Any, db: pw.Database) -> None:
    """Creates job_artifact and the (state, end_time) index on job."""

    class Base(pw.Model):
        class Meta:
            database = db
            legacy_table_names = False

    class Job(Base):
        id = pw.TextField(primary_key=True)

        class Meta:
            table_name = "job"

    class JobArtifact(Base):
        job = pw.ForeignKeyField(Job, on_delete="CASCADE", column_name="job_id")
        name = pw.TextField()
        size_bytes = pw.BigIntegerField()
        sha256 = pw.TextField()
        content_type = pw.TextField(default="")
        create_time = pw.BigIntegerField()
        attempt = pw.IntegerField(default=0)

        class Meta:
            table_name = "job_artifact"
            primary_key = pw.CompositeKey("job", "name")

    db.create_tables([JobArtifact])
    migrator.migrate(migrator.add_index("job", ("state", "end_time"), False))
