"""The trigram table's upkeep on SQLite (migration 0017): a submit only
marks its jobs in search_pending; this moves marked jobs into job_search
and job_text in batches when the writer has time, so what the trigram
table costs is paid once per batch rather than inside each submit.

Nothing waits for it: a search reads the marked jobs besides the trigram
table's candidates (reads.py), and a batch moves jobs from one to the other
in one transaction, so every committed job is in one of the two for every
reader. PostgreSQL's GIN indexes defer their own work; there, this does
nothing.
"""

from __future__ import annotations

import peewee as pw

from jobstream.server.db import execute
from jobstream.server.store.dialect import Dialect

INDEX_BATCH = 500
"""Marked jobs indexed per transaction: about 5 to 6 ms of writer CPU
(measured 9 to 12 us a job in batches of 2,000, against 43 us a job
written row by row in each submit). An operation that arrives meanwhile
waits for the batch, so it is kept well under a submit's own latency
budget; the idle step runs again at once while marks remain."""

LAST_OF_BATCH = (
    'SELECT max("job_id"), count(*) FROM'
    ' (SELECT "job_id" FROM "search_pending" ORDER BY "job_id" LIMIT ?)'
)
"""The last id and the size of the next batch; parameter: the batch size."""

INDEX_UP_TO = (
    'INSERT INTO "job_search" ("job_id") SELECT "job_id" FROM "search_pending" WHERE "job_id" <= ?',
    "INSERT INTO job_text (rowid, id, kind, labels, error)"
    ' SELECT s."doc", j."id", j."kind", j."labels", j."error" FROM "search_pending" p'
    ' JOIN "job_search" s ON s."job_id" = p."job_id" JOIN "job" j ON j."id" = p."job_id"'
    ' WHERE p."job_id" <= ?',
    'DELETE FROM "search_pending" WHERE "job_id" <= ?',
)
"""Indexes the marked jobs up to an id (the parameter of each) with the
values they have now, and drops their marks. A marked job always exists:
the delete trigger drops its mark with it."""


class SearchIndex:
    """Fills the trigram table from the marks submits leave."""

    def __init__(self, db: pw.Database, dialect: Dialect) -> None:
        self.db = db
        self.deferred = dialect.sqlite
        """Whether submits leave marks to index later (SQLite)."""

    def index_pending(self, limit: int = INDEX_BATCH) -> bool:
        """Indexes up to ``limit`` marked jobs, in the caller's transaction
        (the writer's); returns whether marks may remain."""
        if not self.deferred:
            return False
        last, count = execute(self.db, LAST_OF_BATCH, (limit,)).fetchone()
        if count:
            for statement in INDEX_UP_TO:
                execute(self.db, statement, (last,))
        return bool(count >= limit)
