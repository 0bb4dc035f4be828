"""RetryJob and PurgeJobs take a request_id (AIP-155) like SubmitJob: a
repeat returns the first answer. SubmitJob finds its first answer in the job
it made; these two keep theirs in request_answer, one row per principal,
method and request_id."""

from __future__ import annotations

from typing import Any

import peewee as pw


def up(migrator: Any, db: pw.Database) -> None:
    """Creates request_answer."""

    class RequestAnswer(pw.Model):
        owner = pw.TextField()
        method = pw.TextField()
        request_id = pw.TextField()
        fingerprint = pw.TextField()
        answer = pw.BlobField()
        create_time = pw.BigIntegerField()

        class Meta:
            database = db
            table_name = "request_answer"
            primary_key = pw.CompositeKey("owner", "method", "request_id")

    db.create_tables([RequestAnswer])
