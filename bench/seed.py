"""Filling a stopped jobstream server's SQLite file with many jobs and log
lines, fast, by writing rows directly with ``sqlite3``.

Going through the API would take many minutes for 10^6 rows; the point of
T8 and T11 is how the server behaves *with* them, not how it stores them.
The server creates the schema first (it is started once and stopped); rows
are then written to match it, and any NOT NULL column this module does not
know about fails loudly instead of seeding a database the server cannot
read.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections.abc import Mapping
from pathlib import Path

from jobstream.server.domain import EventKind
from jobstream.server.store.search_index import INDEX_UP_TO

log = logging.getLogger(__name__)

SEED_KIND = "bench.seed"
"""Kind of every seeded job; no benchmark worker handles it."""

SEED_QUEUE = "seed"
"""Queue of every seeded job, apart from the queues workers take from."""

LOG_TEXT_BYTES = 100
"""Length of a seeded log line's text."""


class SchemaMismatch(RuntimeError):
    """The server's schema lacks a table or column the seeder fills."""


def seed_id(i: int) -> str:
    """The id of seeded job ``i`` (a client-style id; sorts like creation)."""
    return f"seed-{i:07d}"


def _zero(declared_type: str) -> str:
    """SQL for the zero value of a column type (peewee's defaults live in
    Python, not in the schema, so a new NOT NULL column has none there)."""
    numeric = ("INT", "REAL", "FLOA", "DOUB", "NUM", "BOOL", "DEC")
    return "0" if any(t in declared_type.upper() for t in numeric) else "''"


def _columns(conn: sqlite3.Connection, table: str, known: dict[str, str]) -> dict[str, str]:
    """Column -> SQL expression for every column of ``table`` to fill:
    the known ones, plus any NOT NULL column added since this module was
    written, filled with its type's zero (and logged: it may deserve a real
    value here)."""
    info = list(conn.execute(f"PRAGMA table_info({table})"))
    if not info:
        raise SchemaMismatch(f"table {table} not found: start the server once first")
    names = {row[1] for row in info}
    missing = sorted(set(known) - names)
    if missing:
        raise SchemaMismatch(f"seeder fills {table}.{missing}, which the schema lacks")
    columns: dict[str, str] = {}
    for _, name, declared, notnull, default, pk in info:
        if name in known:
            columns[name] = known[name]
        elif notnull and default is None and not pk:
            log.info("seeding %s.%s (new to bench/seed.py) with its zero", table, name)
            columns[name] = _zero(declared)
    return columns


JOB_COLUMNS: dict[str, str] = {
    "id": "printf('seed-%07d', i)",
    "kind": f"'{SEED_KIND}'",
    "queue": f"'{SEED_QUEUE}'",
    "priority": "0",
    "params": "printf('{\"i\":%d}', i)",
    "labels": "'{}'",
    "state": "'succeeded'",
    "cancel_requested": "0",
    "fraction": "1.0",
    "done": "0",
    "total": "0",
    "phase": "''",
    "message": "''",
    "succeeded": "0",
    "failed": "0",
    "skipped": "0",
    "result": "'{\"ok\":true}'",
    "error": "NULL",
    "attempt": "1",
    "max_attempts": "3",
    "not_before": ":base + i",
    "owner": "''",
    "request_id": "NULL",
    "request_hash": "NULL",
    "create_time": ":base + i",
    "start_time": ":base + i",
    "end_time": ":base + i",
    "update_time": ":base + i",
    "last_seq": "CASE WHEN i < :log_jobs THEN :per_job + 1 ELSE 1 END",
    "step_count": "0",
    "worker_id": "'bench-seed'",
    "lease_id": "NULL",
    "lease_expire": "NULL",
    "lease_us": "0",
    "files": "'[]'",
}
"""A succeeded job as the server stores one, as SQL over the row number ``i``
(times are microseconds; ``:base`` is the first job's creation time)."""

EVENT_COLUMNS: dict[str, str] = dict.fromkeys(("job_id", "seq", "time", "kind", "body"), "?")
"""The event columns the seeder fills (values are bound per statement)."""

PARAM_COLUMNS: dict[str, str] = {
    "job_id": "printf('seed-%07d', i)",
    "key": "'i'",
    "value": "CAST(i AS TEXT)",
}
"""The params index row of a seeded job's one member, ``i`` (store/params.py)."""


def _seed_params(conn: sqlite3.Connection, params: Mapping[str, object]) -> None:
    """The params index rows of the jobs just seeded, and their trigram
    rows: the server indexes marked jobs when idle (store/search_index.py),
    and a seeded server starts with that work already done, as one that has
    been running would have it."""
    cols = _columns(conn, "job_param", PARAM_COLUMNS)
    conn.execute(
        f"{_COUNT}INSERT INTO job_param ({', '.join(cols)}) "
        f"SELECT {', '.join(cols.values())} FROM c",
        params,
    )
    (last,) = conn.execute('SELECT max("job_id") FROM "search_pending"').fetchone()
    if last is not None:
        for statement in INDEX_UP_TO:
            conn.execute(statement, (last,))


# Row numbers come from a recursive CTE so that rows are made inside SQLite:
# building 10^6 Python tuples would take most of a minute on a small box.
_COUNT = "WITH RECURSIVE c(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM c WHERE i + 1 < :n) "


def log_bodies() -> tuple[str, str]:
    """The event bodies of a seeded log line and of a seeded job's end."""
    log_body = json.dumps(
        {"level": "info", "text": "x" * LOG_TEXT_BYTES, "stream": ""}, separators=(",", ":")
    )
    done_body = json.dumps(
        {"state": "succeeded", "reason": "seeded by bench", "attempt": 1}, separators=(",", ":")
    )
    return log_body, done_body


def seed(db_path: Path, *, jobs: int, log_lines: int = 0, log_jobs: int = 0) -> float:
    """Adds ``jobs`` succeeded jobs, the first ``log_jobs`` of them (all
    when 0) with ``log_lines // log_jobs`` log lines each; returns the
    seconds it took.

    Each job's events are its log lines (seq 1…n) and then the state event
    that made it succeeded (seq n+1 = last_seq), as the server would have
    stored them. The WAL is checkpointed at the end so the next server
    start reads a plain database file, as it would after a clean shutdown.
    """
    started = time.perf_counter()
    log_jobs = log_jobs or jobs
    per_job = log_lines // log_jobs if log_jobs else 0
    params = {
        "n": jobs,
        "base": time.time_ns() // 1000 - jobs - 1_000_000,
        "per_job": per_job,
        "log_jobs": log_jobs,
    }
    log_body, done_body = log_bodies()
    conn = sqlite3.connect(db_path, isolation_level=None)
    try:
        # A scratch database made by a stopped server: durability is not
        # needed while seeding; the checkpoint at the end writes it out.
        conn.execute("PRAGMA synchronous=OFF")
        conn.execute("PRAGMA journal_mode=WAL")
        cols = _columns(conn, "job", JOB_COLUMNS)
        if set(_columns(conn, "job_event", EVENT_COLUMNS)) != set(EVENT_COLUMNS):
            raise SchemaMismatch("job_event has required columns the seeder does not fill")
        conn.execute("BEGIN")
        conn.execute(
            f"{_COUNT}INSERT INTO job ({', '.join(cols)}) SELECT {', '.join(cols.values())} FROM c",
            params,
        )
        if per_job:
            conn.execute(
                _COUNT.replace(":n", ":lines")
                + "INSERT INTO job_event (job_id, seq, time, kind, body) "
                "SELECT printf('seed-%07d', i / :per_job), i % :per_job + 1, "
                ":base + i / :per_job, :kind, :body FROM c",
                {
                    **params,
                    "lines": log_jobs * per_job,
                    "kind": EventKind.LOG.value,
                    "body": log_body,
                },
            )
        conn.execute(
            f"{_COUNT}INSERT INTO job_event (job_id, seq, time, kind, body) "
            "SELECT printf('seed-%07d', i), CASE WHEN i < :log_jobs THEN :per_job + 1 ELSE 1 END,"
            " :base + i, :kind, :body FROM c",
            {**params, "kind": EventKind.STATE_CHANGE.value, "body": done_body},
        )
        _seed_params(conn, params)
        conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    return time.perf_counter() - started


QUEUED_OVERRIDES: dict[str, str] = {
    "state": "'queued'",
    "fraction": "0.0",
    "result": "NULL",
    "attempt": "0",
    "start_time": "NULL",
    "end_time": "NULL",
    "last_seq": "1",
    "worker_id": "''",
}
"""What makes a seeded job a queued one, as a submit leaves it."""


def seed_queued(db_path: Path, *, jobs: int, kind: str, queue: str) -> float:
    """Adds ``jobs`` queued jobs of ``kind`` in ``queue`` (a backlog, T15),
    each with its queued event; returns the seconds it took."""
    started = time.perf_counter()
    params = {
        "n": jobs,
        "base": time.time_ns() // 1000 - jobs - 1_000_000,
        "kind": EventKind.STATE_CHANGE.value,
        "body": json.dumps(
            {"state": "queued", "reason": "submitted", "attempt": 0}, separators=(",", ":")
        ),
    }
    known = {**JOB_COLUMNS, **QUEUED_OVERRIDES, "kind": f"'{kind}'", "queue": f"'{queue}'"}
    conn = sqlite3.connect(db_path, isolation_level=None)
    try:
        conn.execute("PRAGMA synchronous=OFF")
        conn.execute("PRAGMA journal_mode=WAL")
        cols = _columns(conn, "job", known)
        conn.execute("BEGIN")
        conn.execute(
            f"{_COUNT}INSERT INTO job ({', '.join(cols)}) SELECT {', '.join(cols.values())} FROM c",
            params,
        )
        conn.execute(
            f"{_COUNT}INSERT INTO job_event (job_id, seq, time, kind, body) "
            "SELECT printf('seed-%07d', i), 1, :base + i, :kind, :body FROM c",
            params,
        )
        _seed_params(conn, params)
        conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    return time.perf_counter() - started
