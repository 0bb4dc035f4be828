"""All SQL of jobstream: one store over Peewee, the same code on SQLite and
PostgreSQL, split by concept:

* :mod:`.dialect` decides once what differs between the backends;
* :mod:`.sql` builds statements once; :mod:`.rows` maps rows to domain values;
* :mod:`.ledger` appends a job's events and moves its state, for
  :mod:`.lifecycle` (the state transitions), :mod:`.reports` (what running
  attempts report; with :mod:`.steps` and :mod:`.results`) and
  :mod:`.artifacts` (artifact storage);
* :mod:`.deletion` deletes jobs, one or a batch; :mod:`.changelog` is the
  job-change log; :mod:`.answers` keeps idempotent calls' first answers;
  :mod:`.secrets` holds what the servers of one database share; :mod:`.workers`
  the workers seen polling; :mod:`.search_index` fills the trigram table
  after submits; :mod:`.reads` and :mod:`.stats` only read.

Write methods take a :class:`~jobstream.server.domain.Effects` collector
and must run inside the writer's transaction (see writer.py); they record
what they did so the change log, the other servers and the broker hear of
it at the commit. Read methods run on any thread with that thread's own
connection.
"""

from __future__ import annotations

import peewee as pw

from jobstream.server.limits import Limits
from jobstream.server.store.answers import Answers
from jobstream.server.store.artifacts import NO_LEASE, ArtifactStore
from jobstream.server.store.changelog import ChangeLog
from jobstream.server.store.deletion import Deletions
from jobstream.server.store.dialect import Dialect
from jobstream.server.store.ledger import Ledger
from jobstream.server.store.lifecycle import Lifecycle, RetryPolicy
from jobstream.server.store.reads import Reads
from jobstream.server.store.reports import Reports
from jobstream.server.store.results import Results
from jobstream.server.store.search_index import SearchIndex
from jobstream.server.store.secrets import Secrets
from jobstream.server.store.sql import Statements
from jobstream.server.store.stats import Statistics
from jobstream.server.store.workers import WorkerRegistry

__all__ = ["NO_LEASE", "RetryPolicy", "Store"]


class Store:
    """Jobs, events, steps, results, artifacts and the change log, in one
    database: one part per concept, sharing the dialect and statements."""

    def __init__(
        self, db: pw.Database, policy: RetryPolicy | None = None, *, limits: Limits | None = None
    ) -> None:
        self.db = db
        self.dialect = Dialect.of(db)
        sql = Statements(db, self.dialect)
        results = Results(db, self.dialect)
        ledger = Ledger(db, self.dialect, sql)
        self.reads = Reads(db, sql, results)
        """Jobs, pages of jobs, events and results."""
        self.jobs = Lifecycle(
            db,
            dialect=self.dialect,
            sql=sql,
            ledger=ledger,
            reads=self.reads,
            policy=policy or RetryPolicy(),
        )
        """The state transitions."""
        self.reports = Reports(ledger, results, limits or Limits())
        """What running attempts report."""
        self.artifacts = ArtifactStore(db, self.dialect, ledger)
        """Artifacts, their uploads and chunks."""
        self.deletions = Deletions(db, self.dialect, ledger, self.artifacts)
        """Deleting jobs, one or a batch."""
        self.changes = ChangeLog(db, self.dialect)
        """The job-change log."""
        self.stats = Statistics(db)
        """Counts and timings."""
        self.workers = WorkerRegistry(db)
        """The workers seen polling."""
        self.answers = Answers(db)
        """First answers of RetryJob and PurgeJobs calls with a request_id."""
        self.secrets = Secrets(db)
        """The secrets the servers of the database share."""
        self.search = SearchIndex(db, self.dialect)
        """The trigram table's upkeep after submits (SQLite)."""
