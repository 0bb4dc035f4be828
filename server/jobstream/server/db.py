"""Peewee models and the database connection.

Models bind to ``database`` (a proxy) at run time, so nothing connects at
import; the binding is per thread, so several servers (each binding its own
threads to its own database) run in one process. Times are BigInteger
microseconds since the epoch (see domain.py); JSON values are stored as text
so both backends read them the same way.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import peewee as pw
from playhouse.db_url import connect as connect_url
from playhouse.migrations import Runner

from jobstream.server.domain import compact_json

log = logging.getLogger(__name__)


class ThreadBoundProxy(pw.DatabaseProxy):
    """A database proxy whose target is chosen per thread: a thread bound
    with :meth:`bind_thread` reaches its own database; any other thread
    reaches the one opened last (:meth:`initialize`), which is all a process
    with one database needs."""

    __slots__ = ("_default", "_local")

    def __init__(self) -> None:
        object.__setattr__(self, "_local", threading.local())
        object.__setattr__(self, "_default", None)
        super().__init__()

    def __setattr__(self, name: str, value: Any) -> None:
        # peewee's Proxy refuses attributes outside its own __slots__.
        object.__setattr__(self, name, value)

    @property
    def obj(self) -> Any:
        """The database of the calling thread."""
        bound = getattr(self._local, "db", None)
        return bound if bound is not None else self._default

    @obj.setter
    def obj(self, value: Any) -> None:
        object.__setattr__(self, "_default", value)

    def bind_thread(self, db: pw.Database | None) -> None:
        """Makes the calling thread's models use ``db`` (None: the default)."""
        self._local.db = db


database = ThreadBoundProxy()
"""The database every model uses: the calling thread's (see
:func:`bind_thread`), else the one :func:`open_database` opened last."""


def bind_thread(db: pw.Database) -> None:
    """Binds the calling thread's models to ``db``: each server calls it on
    every thread it runs store code on (its event loop, writer and readers)."""
    database.bind_thread(db)


def unbind_thread() -> None:
    """The calling thread's models use the default database again."""
    database.bind_thread(None)


SQLITE_BUSY_TIMEOUT_MS = 10_000
"""How long an SQLite connection waits for another's lock before failing."""

SQLITE_READER_CACHE_KIB = 2_000
"""Page cache of each SQLite connection (SQLite's own default). Every
reader thread holds one, and the OS page cache already keeps the file
warm, so a large one only grows the server without bound by load (a
64 MB setting let a log-heavy job grow the server by 127 MiB)."""

SQLITE_WRITER_CACHE_KIB = 8_000
"""Page cache of the one writer connection: index maintenance on big
tables touches more pages than any single read."""

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
"""Numbered migration scripts (playhouse.migrations)."""

MIGRATION_LOCK = 0x6A6F6273
"""PostgreSQL advisory lock key held while migrating, so servers starting
together on an empty database do not race to create the schema."""


dumps = compact_json
"""Compact JSON, as every JSON column stores it (domain.compact_json)."""


class BaseModel(pw.Model):
    """Binds models to the proxy and names tables after the class."""

    class Meta:
        database = database
        legacy_table_names = False


class JobRow(BaseModel):
    """One job: its spec, state, progress, lease and outcome."""

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
    report_seq = pw.BigIntegerField(default=0)
    files = pw.TextField(default="[]")
    checkpoint = pw.TextField(null=True)

    class Meta:
        table_name = "job"


# Acquire walks queued jobs of one queue in (priority desc, age) order.
JobRow.add_index(
    JobRow.index(
        JobRow.state,
        JobRow.queue,
        JobRow.priority.desc(),
        JobRow.create_time,
        JobRow.id,
        name="job_acquire",
    )
)
# The lease sweeper finds expired leases without a scan.
JobRow.add_index(JobRow.index(JobRow.state, JobRow.lease_expire))
# Listing is newest first; ids break ties between jobs made in the same µs.
JobRow.add_index(JobRow.index(JobRow.create_time, JobRow.id))
# Idempotent submit: one job per (owner, request_id); NULL ids never collide.
JobRow.add_index(JobRow.index(JobRow.owner, JobRow.request_id, unique=True))


class LabelRow(BaseModel):
    """A job's label, one row each, so label filters can use an index."""

    job = pw.ForeignKeyField(JobRow, on_delete="CASCADE", column_name="job_id", index=False)
    key = pw.TextField()
    value = pw.TextField()

    class Meta:
        table_name = "job_label"
        primary_key = pw.CompositeKey("job", "key")
        indexes = ((("key", "value"), False),)


class ParamRow(BaseModel):
    """One member of a job's params that a filter can name (migration 0016):
    its dotted path and its value as canonical JSON (a long one as its
    digest, see store/params.py), so a params filter is an index seek, the
    same on both backends."""

    job = pw.ForeignKeyField(JobRow, on_delete="CASCADE", column_name="job_id", index=False)
    key = pw.TextField()
    value = pw.TextField()

    class Meta:
        table_name = "job_param"
        primary_key = pw.CompositeKey("job", "key")
        indexes = ((("key", "value", "job"), False),)


class EventRow(BaseModel):
    """One event of a job; ``seq`` is gap-free per job, assigned in the
    transaction that stores the event."""

    job = pw.ForeignKeyField(JobRow, on_delete="CASCADE", column_name="job_id", index=False)
    seq = pw.BigIntegerField()
    time = pw.BigIntegerField()
    kind = pw.TextField()
    body = pw.TextField()

    class Meta:
        table_name = "job_event"
        primary_key = pw.CompositeKey("job", "seq")


class StepRow(BaseModel):
    """The latest state of one named step of a job.

    ``attempt`` is the job attempt that last started the step and
    ``attempt_starts`` how often that attempt started it, so that releasing
    the attempt (which does not count) can take exactly those starts back;
    both are 0 once nothing counted started it since (migration 0006).
    """

    job = pw.ForeignKeyField(JobRow, on_delete="CASCADE", column_name="job_id", index=False)
    name = pw.TextField()
    position = pw.IntegerField()
    state = pw.TextField()
    attempts = pw.IntegerField(default=0)
    error = pw.TextField(default="")
    data = pw.TextField(null=True)
    start_time = pw.BigIntegerField(null=True)
    end_time = pw.BigIntegerField(null=True)
    attempt = pw.IntegerField(default=0)
    attempt_starts = pw.IntegerField(default=0)

    class Meta:
        table_name = "job_step"
        primary_key = pw.CompositeKey("job", "name")


class ChangeRow(BaseModel):
    """The job-change log WatchJobs follows: one row per job changed (or
    deleted) by a commit. Not a foreign key: a deleted job's row stays so a
    resumed watcher learns of the delete, and so does its owner (migration
    0008), so that only its owner's watchers (and admins') learn of it."""

    position = pw.BigAutoField()
    job_id = pw.TextField()
    deleted = pw.BooleanField(default=False)
    time = pw.BigIntegerField()
    owner = pw.TextField(default="")

    class Meta:
        table_name = "job_change"


# Purge and stats find jobs by when they ended (migration 0003).
JobRow.add_index(JobRow.index(JobRow.state, JobRow.end_time))
# Listing by an end-time window, whatever the state (migration 0016).
JobRow.add_index(
    JobRow.index(JobRow.end_time, name="job_end_time", where=JobRow.end_time.is_null(False))
)


class WorkerRow(BaseModel):
    """A worker some server has seen polling (migration 0012)."""

    id = pw.TextField(primary_key=True)
    host = pw.TextField(default="")
    kinds = pw.TextField(default="[]")
    queues = pw.TextField(default="[]")
    concurrency = pw.IntegerField(default=0)
    first_seen = pw.BigIntegerField()
    last_seen = pw.BigIntegerField(index=True)

    class Meta:
        table_name = "worker"


class ArtifactRow(BaseModel):
    """One named output file of a job; its bytes are the chunks
    (ChunkRow) of upload ``upload_id``."""

    job = pw.ForeignKeyField(JobRow, on_delete="CASCADE", column_name="job_id", index=False)
    name = pw.TextField()
    size_bytes = pw.BigIntegerField()
    sha256 = pw.TextField()
    content_type = pw.TextField(default="")
    create_time = pw.BigIntegerField()
    attempt = pw.IntegerField(default=0)
    upload_id = pw.TextField(null=True)
    """NULL only for an artifact an earlier version stored as a file and
    not yet imported (see legacy_artifacts.py)."""

    class Meta:
        table_name = "job_artifact"
        primary_key = pw.CompositeKey("job", "name")


class ResultRow(BaseModel):
    """The latest version of one keyed per-item result of a job (migration
    0006): a later item of the same key replaces the row, so the rows are
    the job's work, not the sum of its attempts. ``seq`` and ``time`` are
    those of the result event that stored this version."""

    job = pw.ForeignKeyField(JobRow, on_delete="CASCADE", column_name="job_id", index=False)
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
        # ListJobResults pages through a job's results in seq order.
        indexes = ((("job", "seq"), True),)


# Start-up finds the artifacts still to import without a scan (migration
# 0007): the index holds only those rows, so it is empty once they are in.
ArtifactRow.add_index(
    ArtifactRow.index(
        ArtifactRow.job,
        ArtifactRow.name,
        name="job_artifact_legacy",
        where=ArtifactRow.upload_id.is_null(),
    )
)


class UploadRow(BaseModel):
    """Chunks that are no artifact's bytes: an upload in progress (its
    chunks are stored as they arrive; completing it deletes this row), or
    the upload of a replaced artifact or of a deleted job, to remove. A row
    whose lease has ended (server killed, client gone, replaced, job
    deleted) marks chunks to remove.

    ``job_id`` is no foreign key, here and in ChunkRow: deleting a job
    must not cascade to its chunks (freeing large blobs in the delete's
    transaction would hold up every other write); the delete marks its
    uploads instead, and the sweep removes the chunks a few at a time."""

    upload_id = pw.TextField(primary_key=True)
    job_id = pw.TextField(index=True)
    """Indexed: a delete marks the uploads of the jobs it removes."""
    lease_id = pw.TextField()
    chunks = pw.IntegerField(default=0)
    create_time = pw.BigIntegerField()

    class Meta:
        table_name = "job_artifact_upload"


class ChunkRow(BaseModel):
    """A piece of an upload's bytes: chunk ``chunk_index`` of upload
    ``upload_id`` (artifacts.CHUNK_BYTES each, the last one shorter).
    Outlives its job's row until the sweep removes it (see UploadRow)."""

    job_id = pw.TextField()
    upload_id = pw.TextField()
    chunk_index = pw.IntegerField()
    data = pw.BlobField()

    class Meta:
        table_name = "job_artifact_chunk"
        primary_key = pw.CompositeKey("job_id", "upload_id", "chunk_index")


class AnswerRow(BaseModel):
    """The first answer to a RetryJob or PurgeJobs call that carried a
    request_id (migration 0011), as the serialized response message: a
    repeat of the call is answered with it. Not tied to a job: a purge's
    answer names many, and a retried job may be deleted later."""

    owner = pw.TextField()
    method = pw.TextField()
    request_id = pw.TextField()
    fingerprint = pw.TextField()
    answer = pw.BlobField()
    create_time = pw.BigIntegerField()

    class Meta:
        table_name = "request_answer"
        primary_key = pw.CompositeKey("owner", "method", "request_id")


class SecretRow(BaseModel):
    """A secret the servers of one database share (migration 0014): the
    key that authenticates page tokens, made by the first server to start,
    so any server of the database accepts the tokens of any other."""

    name = pw.TextField(primary_key=True)
    value = pw.TextField()

    class Meta:
        table_name = "server_secret"


MODELS: tuple[type[BaseModel], ...] = (
    JobRow,
    LabelRow,
    ParamRow,
    EventRow,
    StepRow,
    ChangeRow,
    ArtifactRow,
    ResultRow,
    UploadRow,
    ChunkRow,
    AnswerRow,
    SecretRow,
)


def open_database(url: str, *, synchronous: str = "full", migrate: bool = True) -> pw.Database:
    """Opens the database at ``url`` (a peewee db_url, or a plain SQLite
    path), binds the models to it and applies pending migrations.

    SQLite gets WAL (readers never block the writer), a busy timeout and
    foreign keys (cascading deletes depend on them).
    """
    db: pw.Database
    if "://" not in url:
        Path(url).parent.mkdir(parents=True, exist_ok=True)
        url = f"sqlite:///{url}"
    if url.startswith("sqlite"):
        db = connect_url(
            url,
            pragmas={
                "journal_mode": "wal",
                "synchronous": synchronous,
                "foreign_keys": 1,
                "busy_timeout": SQLITE_BUSY_TIMEOUT_MS,
                "cache_size": -SQLITE_READER_CACHE_KIB,
            },
        )
    else:
        db = connect_url(url)
    database.initialize(db)
    if migrate:
        applied = apply_migrations(db)
        if applied:
            log.info("applied migrations: %s", ", ".join(applied))
    log.info("database ready: %s", _redact(url))
    return db


def prepare_writer_connection(db: pw.Database) -> None:
    """Tunes the calling thread's connection for being the single writer."""
    if is_sqlite(db):
        execute(db, f"PRAGMA cache_size = -{SQLITE_WRITER_CACHE_KIB}")


@dataclass(frozen=True, kw_only=True, slots=True)
class SchemaStatus:
    """Which migrations a database has and lacks."""

    applied: tuple[str, ...]
    pending: tuple[str, ...]


def apply_migrations(db: pw.Database) -> list[str]:
    """Applies pending migrations in order; returns their names."""
    with db.connection_context():
        if is_sqlite(db):
            return list(Runner(db, str(MIGRATIONS_DIR)).up())
        execute(db, "SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK,))
        try:
            return list(Runner(db, str(MIGRATIONS_DIR)).up())
        finally:
            execute(db, "SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK,))


def schema_status(db: pw.Database) -> SchemaStatus:
    """The applied and pending migrations."""
    with db.connection_context():
        status = Runner(db, str(MIGRATIONS_DIR)).status()
    return SchemaStatus(
        applied=tuple(m.name for m in status if m.applied),
        pending=tuple(m.name for m in status if not m.applied),
    )


def execute(db: pw.Database, query: str, params: tuple[Any, ...] = ()) -> Any:
    """Runs raw SQL (for what peewee has no words: advisory locks, NOTIFY)."""
    return db.execute_sql(query, params)  # type: ignore[no-untyped-call]


def is_sqlite(db: pw.Database) -> bool:
    """Whether ``db`` is SQLite (one server per file)."""
    return isinstance(db, pw.SqliteDatabase)


def _redact(url: str) -> str:
    """The URL without a password, for logs."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        return f"{scheme}://{creds.split(':', 1)[0]}:***@{host}"
    return url
