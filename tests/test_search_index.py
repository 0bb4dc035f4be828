"""The indexes behind job search (migrations 0016 and 0017), on both
backends: the queries use them (EXPLAIN), and they follow every change of
the jobs they index (submit, an error stored, delete, SQLite's VACUUM). On
SQLite a submit only marks its jobs (search_pending) and the writer's idle
step indexes them later: a job is found before and after that step."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, TypeVar

import pytest
from helpers import store_write as write

from jobstream.server.db import JobRow, execute, is_sqlite, open_database
from jobstream.server.domain import JobFilter, NewJob, now_us
from jobstream.server.store import Store
from jobstream.server.store.reads import COMMON_TEXT_JOBS, filtered

T = TypeVar("T")


@pytest.fixture
def store(migrated_url: str) -> Iterator[Store]:
    """A store on an empty database of each backend."""
    db = open_database(migrated_url)
    yield Store(db)
    db.close()


def submit(store: Store, *specs: NewJob) -> list[str]:
    made = write(store, lambda e: store.jobs.submit(e, list(specs), now_us()))
    return [job.id for job, _ in made]


def index_pending(store: Store) -> None:
    """What the writer's idle step does (server side: test_search.py)."""
    while write(store, lambda e: store.search.index_pending()):
        pass


def pending(store: Store) -> int:
    """Jobs marked but not yet in the trigram table (SQLite)."""
    with store.db.atomic():
        (count,) = execute(store.db, 'SELECT count(*) FROM "search_pending"').fetchone()
    return int(count)


def listed(store: Store, limit: int = 50, **kw: Any) -> list[str]:
    return [j.id for j in store.reads.list_jobs(JobFilter(**kw), limit=limit, cursor=None)]


def plan(store: Store, flt: JobFilter) -> str:
    """The backend's plan of the jobs ``flt`` selects (unordered: walking
    the creation index newest first is another plan for a listing, which
    the planner picks when matches are common). PostgreSQL is told to avoid
    sequential scans, which a table this small always wins, so the plan
    shows whether an index can serve the filter at all."""
    sql, params = filtered(JobRow.select(JobRow.id), flt, store.reads.sql.dialect).sql()
    with store.db.atomic():
        if is_sqlite(store.db):
            rows = execute(store.db, f"EXPLAIN QUERY PLAN {sql}", tuple(params)).fetchall()
            return "\n".join(str(r[-1]) for r in rows)
        execute(store.db, "SET LOCAL enable_seqscan = off")
        rows = execute(store.db, f"EXPLAIN {sql}", tuple(params)).fetchall()
        return "\n".join(r[0] for r in rows)


def test_filters_use_their_indexes(store: Store) -> None:
    submit(store, NewJob(kind="idx.job", params={"region": "eu"}))
    index_pending(store)
    sqlite = is_sqlite(store.db)
    assert ("job_text" if sqlite else "job_id_trgm") in plan(store, JobFilter(text="region"))
    assert "param_key_value_job_id" in plan(store, JobFilter(params=((("region",), '"eu"'),)))
    assert "job_end_time" in plan(store, JobFilter(ended_after=1, ended_before=2))
    assert "job_create_time_id" in plan(store, JobFilter(created_after=1, created_before=2))


def test_text_index_follows_errors_deletes_and_vacuum(store: Store) -> None:
    first, second = submit(
        store,
        NewJob(kind="idx.first", labels={"note": "say hi at 100%"}),
        NewJob(kind="idx.second", labels={"note": "plain"}),
    )
    index_pending(store)  # the changes below are to indexed jobs
    # Labels are searched as their JSON text, quotes and all.
    assert listed(store, text='"NOTE":"SAY HI AT 100%') == [first]
    assert listed(store, text="T 100_") == []  # LIKE's wildcards are literal
    assert listed(store, text="hi") == [first]  # under three characters: checked on each row
    write(store, lambda e: store.jobs.cancel(e, second, "Upstream Timeout", now_us()))
    assert listed(store, text="upstream timeout") == [second]
    write(store, lambda e: store.jobs.retry(e, second, "again", 1, now_us()))
    assert listed(store, text="timeout") == []  # a rerun clears the error
    write(
        store,
        lambda e: store.deletions.delete(e, first, force=True, allow_missing=False, now=now_us()),
    )
    assert listed(store, text="say") == []
    if is_sqlite(store.db):
        # VACUUM renumbers the rowids of a table without an INTEGER PRIMARY
        # KEY; the trigram table is keyed by job_search's own numbers.
        store.db.close()
        execute(store.db, "VACUUM")
        (docs,) = execute(store.db, 'SELECT count(*) FROM "job_search"').fetchone()
        (indexed,) = execute(
            store.db, "SELECT count(*) FROM job_text WHERE job_text MATCH '\"idx\"'"
        ).fetchone()
        assert (docs, indexed) == (1, 1)
    assert listed(store, text="IDX.SECOND") == [second]


def test_common_text_pages_newest_first(store: Store) -> None:
    many = submit(
        store,
        *(NewJob(kind="idx.common", labels={"i": str(i)}) for i in range(COMMON_TEXT_JOBS + 50)),
    )
    newest = listed(store, limit=len(many))  # one batch: one time, ids break the tie
    assert listed(store, text="idx.common") == newest[:50]
    page = store.reads.list_jobs(JobFilter(text="dx.comm"), limit=50, cursor=None)
    last = page[-1]
    after = store.reads.list_jobs(
        JobFilter(text="dx.comm"), limit=50, cursor=(last.create_time, last.id)
    )
    assert [j.id for j in after] == newest[50:100]
    assert listed(store, text=many[7]) == [many[7]]


def test_found_before_and_after_indexing(store: Store) -> None:
    sqlite = is_sqlite(store.db)
    wanted: dict[str, Any] = {"text": "idx.fresh", "params": ((("region",), '"eu"'),)}
    first, second, third = submit(
        store,
        NewJob(kind="idx.fresh", params={"region": "eu"}),
        NewJob(kind="idx.fresh", params={"region": "eu"}),
        NewJob(kind="idx.fresh", params={"region": "us"}),
    )
    if sqlite:
        assert pending(store) == 3  # not in the trigram table yet
    assert sorted(listed(store, **wanted)) == sorted([first, second])
    # A marked job whose error changes is indexed with its new error.
    write(store, lambda e: store.jobs.cancel(e, second, "Quota Gone", now_us()))
    assert listed(store, text="quota gone", params=wanted["params"]) == [second]
    # A marked job deleted leaves no mark behind.
    write(
        store,
        lambda e: store.deletions.delete(e, third, force=True, allow_missing=False, now=now_us()),
    )
    if sqlite:
        assert pending(store) == 2
    index_pending(store)
    if sqlite:
        assert pending(store) == 0
        (docs,) = execute(store.db, 'SELECT count(*) FROM "job_search"').fetchone()
        assert docs == 2
    assert sorted(listed(store, **wanted)) == sorted([first, second])
    assert listed(store, text="quota gone") == [second]
    assert ("job_text" if sqlite else "job_kind_trgm") in plan(store, JobFilter(text="quota"))
    # An indexed job's error stored at its end, then its delete.
    write(store, lambda e: store.jobs.cancel(e, first, "Disk Gone", now_us()))
    assert listed(store, text="disk gone", params=wanted["params"]) == [first]
    write(
        store,
        lambda e: store.deletions.delete(e, first, force=True, allow_missing=False, now=now_us()),
    )
    assert listed(store, **wanted) == [second]
    assert listed(store, text="disk gone") == []
    # A new job with the id of a deleted one is marked and found again.
    submit(store, NewJob(job_id=first, kind="idx.fresh", params={"region": "eu"}))
    assert sorted(listed(store, **wanted)) == sorted([first, second])
    index_pending(store)
    assert sorted(listed(store, **wanted)) == sorted([first, second])
