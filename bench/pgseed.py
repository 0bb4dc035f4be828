"""Filling a PostgreSQL schema a stopped jobstream server made with the
seeded jobs and log lines of bench/seed.py, row for row the same, by
``INSERT ... SELECT`` over ``generate_series``: the rows are made inside
PostgreSQL, as seed.py makes them inside SQLite.

The columns come from seed.py (one definition of a seeded job), with the
few SQLite-only expressions put in PostgreSQL's words; a NOT NULL column
that neither knows fails loudly, as in seed.py.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg

from bench.seed import (
    JOB_COLUMNS,
    PARAM_COLUMNS,
    SchemaMismatch,
    log_bodies,
)
from jobstream.server.domain import EventKind

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/test"
"""The local test database the PostgreSQL rows use unless told otherwise."""


@contextlib.contextmanager
def fresh_schema(url: str, prefix: str) -> Iterator[str]:
    """A URL of ``url``'s database whose search_path is a new schema named
    ``prefix`` and a random tail, dropped on exit."""
    schema = prefix + uuid.uuid4().hex[:8]
    with psycopg.connect(url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    try:
        yield f"{url}?options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect(url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


CONNECT_TIMEOUT_S = 5
"""How long reaching the database may take before the rows are left out."""

_EXPRESSIONS = {
    "printf('seed-%07d', i)": "'seed-' || lpad(i::text, 7, '0')",
    "printf('{\"i\":%d}', i)": "'{\"i\":' || i || '}'",
    "CAST(i AS TEXT)": "i::text",
}
"""seed.py's SQLite expressions over the row number ``i``, in PostgreSQL."""


def _pg(expression: str, data_type: str) -> str:
    """A seed.py column expression as PostgreSQL SQL for a column of
    ``data_type`` (named parameters become psycopg's)."""
    expression = _EXPRESSIONS.get(expression, expression)
    if data_type == "boolean" and expression in ("0", "1"):
        return "false" if expression == "0" else "true"
    for name in ("base", "per_job", "log_jobs"):
        expression = expression.replace(f":{name}", f"%({name})s")
    return expression


def _columns(conn: psycopg.Connection[Any], table: str, known: dict[str, str]) -> dict[str, str]:
    """Column -> PostgreSQL expression for every column of ``table`` in the
    connection's schema to fill (seed.py's, plus zeros for new NOT NULL
    columns without a default)."""
    info = conn.execute(
        "SELECT column_name, data_type, is_nullable, column_default"
        " FROM information_schema.columns"
        " WHERE table_schema = current_schema() AND table_name = %s",
        (table,),
    ).fetchall()
    if not info:
        raise SchemaMismatch(f"table {table} not found: start the server once first")
    missing = sorted(set(known) - {row[0] for row in info})
    if missing:
        raise SchemaMismatch(f"seeder fills {table}.{missing}, which the schema lacks")
    columns: dict[str, str] = {}
    for name, data_type, nullable, default in info:
        if name in known:
            columns[name] = _pg(known[name], data_type)
        elif nullable == "NO" and default is None:
            numeric = ("integer", "bigint", "double precision", "real", "numeric", "smallint")
            columns[name] = (
                "0" if data_type in numeric else "false" if data_type == "boolean" else "''"
            )
    return columns


def seed_postgres(url: str, *, jobs: int, log_lines: int = 0, log_jobs: int = 0) -> float:
    """Adds ``jobs`` succeeded jobs to the schema of ``url``, the first
    ``log_jobs`` of them (all when 0) with ``log_lines // log_jobs`` log
    lines each, as seed.seed does; returns the seconds it took."""
    started = time.perf_counter()
    log_jobs = log_jobs or jobs
    per_job = log_lines // log_jobs if log_jobs else 0
    params: dict[str, Any] = {
        "n": jobs,
        "base": time.time_ns() // 1000 - jobs - 1_000_000,
        "per_job": per_job,
        "log_jobs": log_jobs,
    }
    log_body, done_body = log_bodies()
    with psycopg.connect(url) as conn:
        conn.execute("SET synchronous_commit = off")
        cols = _columns(conn, "job", JOB_COLUMNS)
        series = "FROM generate_series(0, %(n)s - 1) AS i"
        conn.execute(
            f"INSERT INTO job ({', '.join(cols)}) SELECT {', '.join(cols.values())} {series}",
            params,
        )
        job_id = _EXPRESSIONS["printf('seed-%07d', i)"]
        if per_job:
            conn.execute(
                "INSERT INTO job_event (job_id, seq, time, kind, body)"
                f" SELECT {job_id.replace('i::text', '(i / %(per_job)s)::text')},"
                " mod(i, %(per_job)s) + 1, %(base)s + i / %(per_job)s, %(kind)s, %(body)s"
                " FROM generate_series(0, %(lines)s - 1) AS i",
                {
                    **params,
                    "lines": log_jobs * per_job,
                    "kind": EventKind.LOG.value,
                    "body": log_body,
                },
            )
        conn.execute(
            "INSERT INTO job_event (job_id, seq, time, kind, body)"
            f" SELECT {job_id}, CASE WHEN i < %(log_jobs)s THEN %(per_job)s + 1 ELSE 1 END,"
            f" %(base)s + i, %(kind)s, %(body)s {series}",
            {**params, "kind": EventKind.STATE_CHANGE.value, "body": done_body},
        )
        pcols = _columns(conn, "job_param", PARAM_COLUMNS)
        conn.execute(
            f"INSERT INTO job_param ({', '.join(pcols)})"
            f" SELECT {', '.join(pcols.values())} {series}",
            params,
        )
        conn.commit()
        # What autovacuum would do soon after a bulk load: statistics (the
        # planner needs them to pick the indexes at all) and the GIN indexes'
        # pending lists merged (every trigram search reads them through).
        conn.autocommit = True
        conn.execute("VACUUM ANALYZE")
    return time.perf_counter() - started
