"""Workers known to the servers: one row per worker id, written by the
server the worker polls (at most every few seconds per worker, batched),
read by ListWorkers on any server of the database. The jobs a worker holds
are not stored here: they are the RUNNING jobs leased to its id."""

from __future__ import annotations

from typing import Any

import peewee as pw


def up(migrator: Any, db: pw.Database) -> None:
    """Creates worker."""

    class Worker(pw.Model):
        id = pw.TextField(primary_key=True)
        host = pw.TextField(default="")
        kinds = pw.TextField(default="[]")
        queues = pw.TextField(default="[]")
        concurrency = pw.IntegerField(default=0)
        first_seen = pw.BigIntegerField()
        last_seen = pw.BigIntegerField(index=True)

        class Meta:
            database = db
            table_name = "worker"

    db.create_tables([Worker])
