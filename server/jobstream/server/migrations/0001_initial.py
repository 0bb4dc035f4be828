"""The initial schema: jobs, labels, events, steps and the change log."""

from __future__ import annotations

from typing import Any

import peewee as pw


def up(migrator: Any, db: pw.Database) -> None:
    """Creates the tables and indexes as of version 1."""

    class Base(pw.Model):
        class Meta:
            database = db
            legacy_table_names = False

    class Job(Base):
        id = pw.TextField(primary_key=True)
        kind = pw.TextField()
        queue = pw.TextField()
        priority = pw.IntegerField(default=0)
        params = pw.TextField(default="{}")
        labels = pw.TextField(default="{}")
        state = pw.TextField()
        cancel_requested = pw.BooleanField(default=False)
        fraction = pw.FloatField(default=0.0)
        done = pw.BigIntegerField(default=0)
        total = pw.BigIntegerField(default=0)
        phase = pw.TextField(default="")
        message = pw.TextField(default="")
        succeeded = pw.BigIntegerField(default=0)
        failed = pw.BigIntegerField(default=0)
        skipped = pw.BigIntegerField(default=0)
        result = pw.TextField(null=True)
        error = pw.TextField(null=True)
        attempt = pw.IntegerField(default=0)
        max_attempts = pw.IntegerField(default=1)
        not_before = pw.BigIntegerField()
        owner = pw.TextField(default="")
        request_id = pw.TextField(null=True)
        request_hash = pw.TextField(null=True)
        create_time = pw.BigIntegerField()
        start_time = pw.BigIntegerField(null=True)
        end_time = pw.BigIntegerField(null=True)
        update_time = pw.BigIntegerField()
        last_seq = pw.BigIntegerField(default=0)
        step_count = pw.IntegerField(default=0)
        worker_id = pw.TextField(default="")
        lease_id = pw.TextField(null=True)
        lease_expire = pw.BigIntegerField(null=True)
        lease_us = pw.BigIntegerField(default=0)
        files = pw.TextField(default="[]")

        class Meta:
            table_name = "job"

    Job.add_index(Job.index(Job.state, Job.queue, Job.priority.desc(), Job.create_time))
    Job.add_index(Job.index(Job.state, Job.lease_expire))
    Job.add_index(Job.index(Job.create_time, Job.id))
    Job.add_index(Job.index(Job.owner, Job.request_id, unique=True))

    class JobLabel(Base):
        job = pw.ForeignKeyField(Job, on_delete="CASCADE", column_name="job_id")
        key = pw.TextField()
        value = pw.TextField()

        class Meta:
            table_name = "job_label"
            primary_key = pw.CompositeKey("job", "key")
            indexes = ((("key", "value"), False),)

    class JobEvent(Base):
        job = pw.ForeignKeyField(Job, on_delete="CASCADE", column_name="job_id")
        seq = pw.BigIntegerField()
        time = pw.BigIntegerField()
        kind = pw.TextField()
        body = pw.TextField()

        class Meta:
            table_name = "job_event"
            primary_key = pw.CompositeKey("job", "seq")

    class JobStep(Base):
        job = pw.ForeignKeyField(Job, on_delete="CASCADE", column_name="job_id")
        name = pw.TextField()
        position = pw.IntegerField()
        state = pw.TextField()
        attempts = pw.IntegerField(default=0)
        error = pw.TextField(default="")
        data = pw.TextField(null=True)
        start_time = pw.BigIntegerField(null=True)
        end_time = pw.BigIntegerField(null=True)

        class Meta:
            table_name = "job_step"
            primary_key = pw.CompositeKey("job", "name")

    class JobChange(Base):
        position = pw.BigAutoField()
        job_id = pw.TextField()
        deleted = pw.BooleanField(default=False)
        time = pw.BigIntegerField()

        class Meta:
            table_name = "job_change"

    db.create_tables([Job, JobLabel, JobEvent, JobStep, JobChange])
