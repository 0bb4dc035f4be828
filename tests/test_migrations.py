"""Migrations on databases written before them, on SQLite and PostgreSQL.

0006 (keyed results): a job that ran twice stored every item as a result
event and counted each one; after the migration it has one result per key,
the newest, and counters equal to those results.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import peewee as pw
import pytest
from playhouse.migrations import Runner

from jobstream.server.db import (
    MIGRATIONS_DIR,
    EventRow,
    JobRow,
    apply_migrations,
    dumps,
    execute,
    open_database,
)
from jobstream.server.domain import Effects, EventKind, JobFilter, NewJob
from jobstream.server.store import Store

BEFORE_KEYED_RESULTS = "0005_drop_redundant_indexes"
"""The last migration before results were keyed."""

T0 = 1_700_000_000_000_000
"""A time, in microseconds, for the rows written by hand."""


@pytest.fixture
def old_db(database_url: str) -> Iterator[pw.Database]:
    """A database of each backend migrated up to BEFORE_KEYED_RESULTS only."""
    db = open_database(database_url, migrate=False)
    with db.connection_context():
        Runner(db, str(MIGRATIONS_DIR)).up(target=BEFORE_KEYED_RESULTS)
    yield db
    db.close()


def state(state: str, attempt: int) -> tuple[str, dict[str, Any]]:
    return "state", {"state": state, "reason": "", "attempt": attempt}


def result(key: str, status: str, data: Any = None, error: str = "") -> tuple[str, dict[str, Any]]:
    return "result", {"key": key, "status": status, "data": data, "error": error}


def old_job(job_id: str, job_state: str, attempt: int, events: list[Any]) -> None:
    """A job with ``events`` and the counters the old code kept: one count
    per result event."""
    counts = {"succeeded": 0, "failed": 0, "skipped": 0}
    for kind, body in events:
        if kind == "result":
            counts[body["status"]] += 1
    JobRow.insert(
        id=job_id,
        kind="old.kind",
        queue="default",
        state=job_state,
        attempt=attempt,
        max_attempts=3,
        not_before=T0,
        create_time=T0,
        update_time=T0,
        last_seq=len(events),
        **counts,
    ).execute()
    EventRow.insert_many(
        [
            {"job": job_id, "seq": seq, "time": T0 + seq, "kind": kind, "body": dumps(body)}
            for seq, (kind, body) in enumerate(events, start=1)
        ]
    ).execute()


def old_step(db: pw.Database, job_id: str, name: str, step_state: str, attempts: int) -> None:
    """A job_step row as the old schema had it (no attempt columns)."""
    p = db.param
    execute(
        db,
        'INSERT INTO "job_step" ("job_id", "name", "position", "state", "attempts", "error")'
        f" VALUES ({p}, {p}, 0, {p}, {p}, '')",
        (job_id, name, step_state, attempts),
    )


def test_0006_keeps_the_newest_result_per_key_and_recounts(old_db: pw.Database) -> None:
    with old_db.atomic():
        # Ran twice: a and b in attempt 1, then b, c and a again in attempt 2.
        old_job(
            "twice",
            "succeeded",
            2,
            [
                state("queued", 0),
                state("running", 1),
                result("a", "succeeded", {"i": 1}),
                result("b", "failed", error="bad"),
                state("queued", 1),
                state("running", 2),
                result("b", "succeeded"),
                result("o'brien ü", "skipped", {"nested": {"q": "it's"}}),
                result("a", "succeeded", {"i": 2}),
                state("succeeded", 2),
            ],
        )
        old_job(
            "once", "failed", 1, [state("queued", 0), state("running", 1), result("x", "failed")]
        )
        old_job("none", "queued", 0, [state("queued", 0)])
        old_job("live", "running", 3, [state("queued", 0), state("running", 3)])
        old_step(old_db, "live", "fetch", "running", 2)
        old_step(old_db, "twice", "fetch", "succeeded", 2)

    # 0006 first; later migrations (artifact chunks, change owners) follow.
    assert apply_migrations(old_db)[0] == "0006_keyed_results"

    rows = {
        (job, key): [status, data, error, attempt, seq]
        for job, key, status, data, error, attempt, seq in execute(
            old_db,
            'SELECT "job_id", "key", "status", "data", "error", "attempt", "seq" FROM "job_result"',
        ).fetchall()
    }
    assert rows == {
        ("twice", "a"): ["succeeded", '{"i":2}', "", 2, 9],
        ("twice", "b"): ["succeeded", None, "", 2, 7],
        ("twice", "o'brien ü"): ["skipped", '{"nested":{"q":"it\'s"}}', "", 2, 8],
        ("once", "x"): ["failed", None, "", 1, 3],
    }
    counters = {
        r.id: (r.succeeded, r.failed, r.skipped)
        for r in JobRow.select(JobRow.id, JobRow.succeeded, JobRow.failed, JobRow.skipped)
    }
    assert counters == {
        "twice": (2, 0, 1),
        "once": (0, 1, 0),
        "none": (0, 0, 0),
        "live": (0, 0, 0),
    }
    steps = {
        (job, name): (attempt, starts)
        for job, name, attempt, starts in execute(
            old_db, 'SELECT "job_id", "name", "attempt", "attempt_starts" FROM "job_step"'
        ).fetchall()
    }
    assert steps == {("live", "fetch"): (3, 1), ("twice", "fetch"): (0, 0)}
    # What ListJobResults reads: each key once, in the order stored.
    listed = Store(old_db).reads.read_results("twice", after_seq=0, limit=10)
    assert [(e.seq, e.body) for e in listed] == [
        (7, {"key": "b", "status": "succeeded", "data": None, "error": ""}),
        (
            8,
            {
                "key": "o'brien ü",
                "status": "skipped",
                "data": {"nested": {"q": "it's"}},
                "error": "",
            },
        ),
        (9, {"key": "a", "status": "succeeded", "data": {"i": 2}, "error": ""}),
    ]


def test_0009_stores_event_kinds_under_their_wire_names(database_url: str) -> None:
    db = open_database(database_url, migrate=False)
    try:
        with db.connection_context():
            Runner(db, str(MIGRATIONS_DIR)).up(target="0008_change_owner")
        old_job(
            "renamed",
            "running",
            1,
            [
                state("queued", 0),
                state("running", 1),
                ("progress", {"fraction": 0.5, "done": 1, "total": 2, "phase": "", "message": ""}),
                ("log", {"level": "info", "text": "hello", "stream": ""}),
                result("a", "succeeded"),
                ("cancel", {"reason": "enough"}),
                (
                    "artifact",
                    {
                        "name": "a.txt",
                        "size_bytes": 1,
                        "sha256": "0" * 64,
                        "content_type": "",
                        "create_time": T0,
                        "attempt": 1,
                    },
                ),
            ],
        )
        with db.connection_context():
            applied = apply_migrations(db)
        assert applied[0] == "0009_wire_event_kinds"  # later ones follow
        kinds = [e.kind for e in Store(db).reads.read_events("renamed", after_seq=0, limit=10)]
        assert kinds == [
            EventKind.STATE_CHANGE,
            EventKind.STATE_CHANGE,
            EventKind.PROGRESS,
            EventKind.LOG,
            EventKind.RESULT_ITEM,
            EventKind.CANCEL_REQUESTED,
            EventKind.ARTIFACT_ADDED,
        ]
        with db.connection_context():
            stored = execute(db, 'SELECT DISTINCT "kind" FROM "job_event" ORDER BY 1').fetchall()
        assert {k for (k,) in stored} == {k.value for k in kinds}
    finally:
        db.close()


def test_0016_indexes_the_jobs_stored_before_it(database_url: str) -> None:
    db = open_database(database_url, migrate=False)
    try:
        with db.connection_context():
            Runner(db, str(MIGRATIONS_DIR)).up(target="0015_checkpoint")
        for i in range(3):
            JobRow.insert(
                id=f"old-{i}",
                kind="old.kind",
                queue="default",
                state="failed",
                params=dumps({"price": 1.5 + i, "cfg": {"mode": f"m{i}"}, "bad key": 1}),
                labels=dumps({"team": f"Team{i}"}),
                error=dumps({"code": "handler_error", "message": f"Upstream timeout {i}"}),
                not_before=T0,
                create_time=T0 + i,
                update_time=T0,
            ).execute()
        with db.connection_context():
            applied = apply_migrations(db)
        assert applied[0] == "0016_search_indexes"
        reads = Store(db).reads

        def found(**kw: Any) -> list[str]:
            return [j.id for j in reads.list_jobs(JobFilter(**kw), limit=10, cursor=None)]

        assert found(params=((("price",), "2.5"),)) == ["old-1"]
        assert found(params=((("cfg", "mode"), '"m2"'),)) == ["old-2"]
        assert found(params=((("cfg",), '{"mode":"m0"}'),)) == ["old-0"]
        assert found(text="TIMEOUT 1") == ["old-1"]
        assert found(text="team2") == ["old-2"]
        with db.connection_context():
            (rows,) = execute(db, 'SELECT count(*) FROM "job_param"').fetchone()
        assert rows == 9  # price, cfg, cfg.mode per job; "bad key" no filter can name
    finally:
        db.close()


def test_0017_keeps_the_jobs_indexed_before_it(database_url: str) -> None:
    db = open_database(database_url, migrate=False)
    try:
        with db.connection_context():
            Runner(db, str(MIGRATIONS_DIR)).up(target="0016_search_indexes")
        JobRow.insert(
            id="old-0",
            kind="old.kind",
            queue="default",
            state="failed",
            labels=dumps({"team": "Growth"}),
            not_before=T0,
            create_time=T0,
            update_time=T0,
        ).execute()
        with db.connection_context():
            applied = apply_migrations(db)
        assert applied[0] == "0017_search_pending"
        store = Store(db)
        with db.atomic():
            effects = Effects()
            store.jobs.submit(effects, [NewJob(kind="new.kind", labels={"team": "Growth"})], T0)

        def found(text: str) -> list[str]:
            jobs = store.reads.list_jobs(JobFilter(text=text), limit=10, cursor=None)
            return sorted(j.id for j in jobs)

        (new,) = [j for j in found("growth") if j != "old-0"]
        assert found("old.kind") == ["old-0"]
        if isinstance(db, pw.SqliteDatabase):
            with db.connection_context():
                marked = execute(db, 'SELECT "job_id" FROM "search_pending"').fetchall()
            assert marked == [(new,)]  # the old job is in the trigram table already
        with db.atomic():
            assert store.search.index_pending() is False
        JobRow.delete().where(JobRow.id == "old-0").execute()
        assert found("growth") == [new]
        assert found("old.kind") == []
    finally:
        db.close()
