"""The store's retry, purge, stats and artifact queries on each backend
(SQLite and PostgreSQL), with explicit times so cutoffs and percentiles are
exact; on PostgreSQL also the orders in which two servers' transactions can
meet when a job is deleted while an upload to it goes on. (The same features
end to end are in test_purge_stats_retry.py and test_artifacts.py.)"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar, cast

import pytest
from helpers import eventually
from helpers import store_write as write

from jobstream.server.artifacts import DISCARD_CHUNKS
from jobstream.server.db import ArtifactRow, ChunkRow, UploadRow, execute, open_database
from jobstream.server.domain import (
    Effects,
    Finish,
    JobFilter,
    JobState,
    NewJob,
    Outcome,
    now_us,
)
from jobstream.server.errors import FailedPrecondition, NotFound, ResourceExhausted
from jobstream.server.store import NO_LEASE, RetryPolicy, Store

T = TypeVar("T")
SECOND = 1_000_000
LONG_LEASE_US = 10_000 * SECOND
"""Long enough that no lease in these tests expires at the times they use."""

JOIN_DEADLINE_S = 15.0
"""How long a test waits for a transaction on another thread to end once
nothing should hold it up."""

HOLD_DEADLINE_S = 60.0
"""Longest a held transaction stays open if its test fails before letting
it go; longer than JOIN_DEADLINE_S, so a write that wrongly waits for it
is caught still waiting."""


@pytest.fixture
def store(migrated_url: str) -> Iterator[Store]:
    """A store on an empty database of each backend."""
    db = open_database(migrated_url)
    yield Store(db, RetryPolicy(default_max_attempts=1, backoff_base_us=SECOND))
    db.close()


@pytest.fixture
def pg_store(migrated_postgres_url: str) -> Iterator[Store]:
    """A store on an empty PostgreSQL schema."""
    db = open_database(migrated_postgres_url)
    yield Store(db, RetryPolicy(default_max_attempts=1, backoff_base_us=SECOND))
    db.close()


def run_job(
    store: Store, *, kind: str, start: int, end: int, outcome: Outcome = Outcome.SUCCEEDED
) -> str:
    """A job submitted and acquired at ``start`` and finished at ``end``."""
    spec = NewJob(kind=kind)
    [(job, _)] = write(store, lambda c: store.jobs.submit(c, [spec], start))
    lease: Any = write(
        store,
        lambda c: store.jobs.acquire(
            c, worker_id="w", kinds=[kind], queues=["default"], lease_us=LONG_LEASE_US, now=start
        ),
    )
    assert lease.job.id == job.id
    write(
        store, lambda c: store.jobs.finish(c, job.id, lease.lease_id, Finish(outcome=outcome), end)
    )
    return job.id


def test_stats_percentiles_window_and_rates(store: Store) -> None:
    t0 = now_us()
    for i in range(1, 21):
        run_job(store, kind="timed", start=t0, end=t0 + i * SECOND)
    run_job(store, kind="other", start=t0, end=t0 + 30 * SECOND, outcome=Outcome.FAILED)
    write(store, lambda c: store.jobs.submit(c, [NewJob(kind="other")], t0))

    stats = store.stats.summary(
        JobFilter(kinds=("timed",)), window_us=100 * SECOND, now=t0 + 50 * SECOND
    )
    assert stats.by_state == ((JobState.SUCCEEDED, 20),)
    assert stats.ended == 20 and stats.success_rate == 1.0
    assert stats.duration_p50_us == 10 * SECOND  # nearest rank: the 10th of 20
    assert stats.duration_p95_us == 19 * SECOND  # the 19th of 20

    recent = store.stats.summary(JobFilter(), window_us=36 * SECOND, now=t0 + 50 * SECOND)
    # Since t0 + 14 s: timed jobs 14..20 (7) and the failed one.
    assert recent.ended == 8 and recent.success_rate == pytest.approx(7 / 8)
    assert recent.duration_p50_us == 17 * SECOND  # 4th of 14..20, 30
    assert dict((s, n) for s, n in recent.by_state) == {
        JobState.QUEUED: 1,
        JobState.SUCCEEDED: 20,
        JobState.FAILED: 1,
    }
    assert ("other", JobState.QUEUED, 1) in recent.by_kind


def test_purge_batches_oldest_first_up_to_the_cutoff(store: Store) -> None:
    t0 = now_us()
    ended = [run_job(store, kind="p", start=t0, end=t0 + i * SECOND) for i in range(1, 6)]
    write(store, lambda c: store.jobs.submit(c, [NewJob(kind="p")], t0))
    cutoff = t0 + 3 * SECOND
    assert store.deletions.purge_preview(JobFilter(), ended_before=cutoff, list_limit=2) == (
        3,
        ended[:2],
    )

    first = write(
        store,
        lambda c: store.deletions.purge_batch(c, JobFilter(), ended_before=cutoff, limit=2, now=t0),
    )
    assert [d.job_id for d in first] == ended[:2]
    second = write(
        store,
        lambda c: store.deletions.purge_batch(c, JobFilter(), ended_before=cutoff, limit=2, now=t0),
    )
    assert [d.job_id for d in second] == ended[2:3]
    assert (
        write(
            store,
            lambda c: store.deletions.purge_batch(
                c, JobFilter(), ended_before=cutoff, limit=2, now=t0
            ),
        )
        == []
    )
    for job_id in ended[:3]:
        assert not store.reads.job_exists(job_id)
    assert all(store.reads.job_exists(j) for j in ended[3:])
    only_failed = JobFilter(states=(JobState.FAILED,))
    assert store.deletions.purge_preview(
        only_failed, ended_before=t0 + 99 * SECOND, list_limit=9
    ) == (0, [])


def test_retry_continues_the_sequence_and_refuses_other_states(store: Store) -> None:
    t0 = now_us()
    job_id = run_job(store, kind="r", start=t0, end=t0 + SECOND, outcome=Outcome.FAILED)
    before = store.reads.get_job(job_id)
    job = write(store, lambda c: store.jobs.retry(c, job_id, "again", 2, t0 + 2 * SECOND))
    assert job.state is JobState.QUEUED and job.last_seq == before.last_seq + 1
    assert (job.attempt, job.max_attempts, job.not_before) == (1, 3, t0 + 2 * SECOND)
    with pytest.raises(FailedPrecondition):
        write(store, lambda c: store.jobs.retry(c, job_id, "", 1, t0 + 3 * SECOND))
    with pytest.raises(NotFound):
        write(store, lambda c: store.jobs.retry(c, "missing", "", 1, t0))


def test_artifacts_replace_by_name_respect_the_limit_and_go_with_the_job(store: Store) -> None:
    t0 = now_us()
    [(job, _)] = write(store, lambda c: store.jobs.submit(c, [NewJob(kind="a")], t0))
    lease: Any = write(
        store,
        lambda c: store.jobs.acquire(
            c, worker_id="w", kinds=["a"], queues=["default"], lease_us=LONG_LEASE_US, now=t0
        ),
    )

    def add(name: str, size: int) -> int:
        """An upload of two chunks: one staged, the last with completion."""
        upload_id = f"up-{name}-{size}"
        write(
            store,
            lambda c: store.artifacts.stage_chunk(
                c, job.id, lease.lease_id, upload_id, index=0, data=b"x" * size, now=t0
            ),
        )
        _, seq = write(
            store,
            lambda c: store.artifacts.complete_upload(
                c,
                job.id,
                lease.lease_id,
                upload_id,
                staged=1,
                last=b"y",
                name=name,
                size_bytes=size + 1,
                sha256="0" * 64,
                content_type="",
                max_per_job=2,
                now=t0,
            ),
        )
        return int(seq)

    def chunks() -> list[tuple[str, int]]:
        query = ChunkRow.select(ChunkRow.upload_id, ChunkRow.chunk_index).where(
            ChunkRow.job_id == job.id
        )
        return sorted((r.upload_id, r.chunk_index) for r in query)

    first = add("a.txt", 1)
    assert add("b.txt", 2) == first + 1
    assert add("a.txt", 3) == first + 2  # a replacement is within the limit
    # The replaced upload's chunks are marked for the sweep, which removes
    # them a few per operation.
    assert store.artifacts.dead_uploads(t0, limit=10, every=False) == [(job.id, "up-a.txt-1")]
    done = [
        write(store, lambda c: store.artifacts.discard_upload(c, job.id, "up-a.txt-1", limit=1))
    ]
    while not done[-1]:
        done.append(
            write(store, lambda c: store.artifacts.discard_upload(c, job.id, "up-a.txt-1", limit=1))
        )
    assert done == [False, False, True]  # a chunk per operation, then the row
    assert store.artifacts.dead_uploads(t0, limit=10, every=True) == []
    assert chunks() == [("up-a.txt-3", 0), ("up-a.txt-3", 1), ("up-b.txt-2", 0), ("up-b.txt-2", 1)]
    with pytest.raises(ResourceExhausted):
        add("c.txt", 4)
    assert [(a.name, a.size_bytes) for a in store.artifacts.list_artifacts(job.id)] == [
        ("a.txt", 4),
        ("b.txt", 3),
    ]
    artifact, upload_id = store.artifacts.get_artifact(job.id, "a.txt")
    assert (artifact.size_bytes, upload_id) == (4, "up-a.txt-3")
    assert store.artifacts.read_chunk(job.id, "up-a.txt-3", 0) == b"xxx"
    assert store.artifacts.read_chunk(job.id, "up-a.txt-3", 1) == b"y"
    assert store.artifacts.read_chunk(job.id, "up-a.txt-3", 2) is None
    with pytest.raises(NotFound):
        store.artifacts.get_artifact(job.id, "c.txt")
    # The refused c.txt left its staged chunk: the worker's server discards
    # it, or a sweep does once the lease has ended.
    assert store.artifacts.dead_uploads(t0, limit=10, every=False) == []
    assert store.artifacts.dead_uploads(t0, limit=10, every=True) == [(job.id, "up-c.txt-4")]
    deletion = write(
        store, lambda c: store.deletions.delete(c, job.id, force=True, allow_missing=False, now=t0)
    )
    # The artifacts go with the job; their bytes, and the refused upload's,
    # are left to the sweep.
    assert deletion is not None and deletion.garbage == 3
    assert ArtifactRow.select().where(ArtifactRow.job == job.id).count() == 0
    assert len(chunks()) == 5
    assert sweep(store, t0) == 3
    assert chunks() == []
    assert UploadRow.select().where(UploadRow.job_id == job.id).count() == 0


def test_uploads_under_an_ended_lease_are_dead_and_refused(store: Store) -> None:
    t0 = now_us()
    [(job, _)] = write(store, lambda c: store.jobs.submit(c, [NewJob(kind="d")], t0))
    lease: Any = write(
        store,
        lambda c: store.jobs.acquire(
            c, worker_id="w", kinds=["d"], queues=["default"], lease_us=SECOND, now=t0
        ),
    )

    def stage(index: int, now: int) -> None:
        write(
            store,
            lambda c: store.artifacts.stage_chunk(
                c, job.id, lease.lease_id, "u1", index=index, data=b"z", now=now
            ),
        )

    stage(0, t0)
    assert store.artifacts.dead_uploads(t0, limit=10, every=False) == []
    # Past the lease's expiry nothing renews it, so the upload is dead even
    # before a sweep moves the job on.
    assert store.artifacts.dead_uploads(t0 + 2 * SECOND, limit=10, every=False) == [(job.id, "u1")]
    assert write(store, lambda c: store.artifacts.discard_upload(c, job.id, "u1", limit=4))
    assert ChunkRow.select().where(ChunkRow.job_id == job.id).count() == 0
    with pytest.raises(FailedPrecondition) as discarded:
        stage(1, t0)  # the lease is live, but the upload is gone
    assert discarded.value.field == "lease_id"
    with pytest.raises(FailedPrecondition):
        stage(0, t0 + 2 * SECOND)  # an expired lease stages nothing
    assert store.artifacts.dead_uploads(t0, limit=10, every=True) == []


def test_a_discard_marks_the_upload_and_spares_a_completed_one(store: Store) -> None:
    t0 = now_us()
    [(job, _)] = write(store, lambda c: store.jobs.submit(c, [NewJob(kind="m")], t0))
    lease: Any = write(
        store,
        lambda c: store.jobs.acquire(
            c, worker_id="w", kinds=["m"], queues=["default"], lease_us=LONG_LEASE_US, now=t0
        ),
    )

    def stage(upload_id: str, index: int) -> None:
        write(
            store,
            lambda c: store.artifacts.stage_chunk(
                c, job.id, lease.lease_id, upload_id, index=index, data=b"q", now=t0
            ),
        )

    def complete(upload_id: str, name: str) -> None:
        write(
            store,
            lambda c: store.artifacts.complete_upload(
                c,
                job.id,
                lease.lease_id,
                upload_id,
                staged=1,
                last=b"r",
                name=name,
                size_bytes=2,
                sha256="0" * 64,
                content_type="",
                max_per_job=10,
                now=t0,
            ),
        )

    def discard(upload_id: str, limit: int) -> bool:
        return write(
            store, lambda c: store.artifacts.discard_upload(c, job.id, upload_id, limit=limit)
        )

    # A discard under way (another server's sweep, whose clock says the
    # lease ended) stops the upload: no more chunks, no completion.
    stage("u2", 0)
    assert not discard("u2", 0)  # marked, nothing removed yet
    assert store.artifacts.dead_uploads(t0, limit=10, every=False) == [(job.id, "u2")]
    with pytest.raises(FailedPrecondition):
        stage("u2", 1)
    with pytest.raises(FailedPrecondition):
        complete("u2", "late.bin")
    assert discard("u2", 4)
    assert store.artifacts.list_artifacts(job.id) == []

    # An upload that completed after all (its caller went away while the
    # completion committed, then discarded): its chunks are the artifact's.
    stage("u3", 0)
    complete("u3", "kept.bin")
    assert discard("u3", 4)
    _, upload_id = store.artifacts.get_artifact(job.id, "kept.bin")
    assert [store.artifacts.read_chunk(job.id, "u3", i) for i in (0, 1)] == [b"q", b"r"]
    assert upload_id == "u3"


# ------------------------------------------------- deletes and artifact bytes


def leased(store: Store, kind: str, now: int, job_id: str | None = None) -> tuple[str, str]:
    """A new job of ``kind``, leased (for LONG_LEASE_US); its id and lease."""
    [(job, _)] = write(
        store, lambda c: store.jobs.submit(c, [NewJob(kind=kind, job_id=job_id)], now)
    )
    lease = write(
        store,
        lambda c: store.jobs.acquire(
            c, worker_id="w", kinds=[kind], queues=["default"], lease_us=LONG_LEASE_US, now=now
        ),
    )
    assert lease is not None and lease.job.id == job.id
    return job.id, lease.lease_id


def stage_op(
    store: Store, job_id: str, lease_id: str, upload_id: str, *, index: int, now: int
) -> Callable[[Effects], None]:
    """The write that stores chunk ``index`` (b"c") of an upload."""
    return lambda c: store.artifacts.stage_chunk(
        c, job_id, lease_id, upload_id, index=index, data=b"c", now=now
    )


def complete_op(
    store: Store,
    job_id: str,
    lease_id: str,
    upload_id: str,
    *,
    name: str,
    staged: int,
    last: bytes | None,
    now: int,
) -> Callable[[Effects], Any]:
    """The write that makes an upload (``staged`` chunks of b"c", then
    ``last``) artifact ``name``."""
    return lambda c: store.artifacts.complete_upload(
        c,
        job_id,
        lease_id,
        upload_id,
        staged=staged,
        last=last,
        name=name,
        size_bytes=staged + len(last or b""),
        sha256="0" * 64,
        content_type="",
        max_per_job=10,
        now=now,
    )


def delete_op(store: Store, job_id: str, now: int) -> Callable[[Effects], Any]:
    """The write DeleteJob with force makes."""
    return lambda c: store.deletions.delete(c, job_id, force=True, allow_missing=False, now=now)


def sweep(store: Store, now: int) -> int:
    """Discards the dead uploads as the server's sweep does, DISCARD_CHUNKS
    per write; returns how many there were."""
    dead = store.artifacts.dead_uploads(now, limit=1000, every=False)
    for job_id, upload_id in dead:
        discard = functools.partial(
            store.artifacts.discard_upload, job_id=job_id, upload_id=upload_id, limit=DISCARD_CHUNKS
        )
        while not write(store, discard):
            pass
    return len(dead)


def chunk_count(job_id: str) -> int:
    """Chunk rows stored under the job's id, whichever upload they are of."""
    return int(ChunkRow.select().where(ChunkRow.job_id == job_id).count())


def upload_rows(job_id: str) -> set[tuple[str, str]]:
    """``(upload_id, lease_id)`` of the job's job_artifact_upload rows."""
    query = UploadRow.select(UploadRow.upload_id, UploadRow.lease_id)
    return {(r.upload_id, r.lease_id) for r in query.where(UploadRow.job_id == job_id)}


@pytest.mark.parametrize("how", ["delete", "purge"])
def test_deleted_jobs_leave_their_chunks_as_garbage_the_sweep_removes(
    store: Store, how: str
) -> None:
    t0 = now_us()
    job_id, lease_id = leased(store, "garbage", t0)
    # A four-chunk artifact, an empty one (no chunks), an upload in progress.
    for index in range(3):
        write(store, stage_op(store, job_id, lease_id, "big", index=index, now=t0))
    write(
        store,
        complete_op(store, job_id, lease_id, "big", name="big.bin", staged=3, last=b"l", now=t0),
    )
    write(
        store,
        complete_op(store, job_id, lease_id, "empty", name="e.bin", staged=0, last=None, now=t0),
    )
    for index in range(2):
        write(store, stage_op(store, job_id, lease_id, "open", index=index, now=t0))
    kept_id, kept_lease = leased(store, "kept", t0)
    write(store, stage_op(store, kept_id, kept_lease, "kept", index=0, now=t0))
    write(
        store,
        complete_op(store, kept_id, kept_lease, "kept", name="k.bin", staged=1, last=None, now=t0),
    )

    if how == "delete":
        deletions = [write(store, delete_op(store, job_id, t0))]
    else:
        finished = Finish(outcome=Outcome.SUCCEEDED)
        write(store, lambda c: store.jobs.finish(c, job_id, lease_id, finished, t0))
        deletions = write(
            store,
            lambda c: store.deletions.purge_batch(
                c, JobFilter(kinds=("garbage",)), ended_before=t0, limit=10, now=t0
            ),
        )
    assert [(d.job_id, d.garbage) for d in deletions if d] == [(job_id, 2)]
    assert not store.reads.job_exists(job_id)
    assert ArtifactRow.select().where(ArtifactRow.job == job_id).count() == 0
    # The bytes are still stored, but nothing leads to them any more: they
    # are marked as garbage, each upload dead at once.
    assert chunk_count(job_id) == 6
    assert upload_rows(job_id) == {("big", NO_LEASE), ("open", NO_LEASE)}
    assert sorted(store.artifacts.dead_uploads(t0, limit=10, every=False)) == [
        (job_id, "big"),
        (job_id, "open"),
    ]
    assert sweep(store, t0) == 2
    assert chunk_count(job_id) == 0 and upload_rows(job_id) == set()
    # Only the deleted job's bytes went.
    _, kept_upload = store.artifacts.get_artifact(kept_id, "k.bin")
    assert kept_upload == "kept" and store.artifacts.read_chunk(kept_id, "kept", 0) == b"c"
    assert store.artifacts.dead_uploads(t0, limit=10, every=True) == []


def test_an_upload_meeting_a_delete_leaves_no_artifact_and_no_chunks(store: Store) -> None:
    t0 = now_us()
    job_id, lease_id = leased(store, "race", t0, job_id="reused-id")
    for index in range(2):
        write(store, stage_op(store, job_id, lease_id, "cut", index=index, now=t0))
    deletion = write(store, delete_op(store, job_id, t0))
    assert deletion is not None and deletion.garbage == 1
    # The upload's next operations find no job, and store nothing.
    with pytest.raises(NotFound):
        write(store, stage_op(store, job_id, lease_id, "cut", index=2, now=t0))
    with pytest.raises(NotFound):
        write(
            store,
            complete_op(store, job_id, lease_id, "cut", name="a", staged=2, last=b"l", now=t0),
        )
    with pytest.raises(NotFound):
        write(
            store,
            complete_op(store, job_id, lease_id, "one", name="b", staged=0, last=b"x", now=t0),
        )
    assert chunk_count(job_id) == 2 and upload_rows(job_id) == {("cut", NO_LEASE)}

    # A client may submit a job under the deleted one's id before the sweep
    # ran: the sweep removes the old job's bytes and nothing of the new one.
    new_id, new_lease = leased(store, "race.again", t0, job_id=job_id)
    write(store, stage_op(store, new_id, new_lease, "fresh", index=0, now=t0))
    write(
        store, complete_op(store, new_id, new_lease, "fresh", name="f", staged=1, last=b"f", now=t0)
    )
    assert sweep(store, t0) == 1
    assert upload_rows(job_id) == set()
    assert [(a.name, a.size_bytes) for a in store.artifacts.list_artifacts(new_id)] == [("f", 2)]
    assert [store.artifacts.read_chunk(new_id, "fresh", i) for i in (0, 1)] == [b"c", b"f"]
    assert chunk_count(job_id) == 2


class Held(Generic[T]):
    """A store write on a thread (so a connection) of its own, as another
    server would make it: its transaction stays open after the write ran
    until ``finish``, unless made with ``hold=False``."""

    def __init__(self, store: Store, fn: Callable[[Effects], T], *, hold: bool = True) -> None:
        self.store = store
        self.fn = fn
        self.ran = threading.Event()
        self.go = threading.Event()
        if not hold:
            self.go.set()
        self.pid: int | None = None
        self.result: T | None = None
        self.error: Exception | None = None
        self.thread = threading.Thread(target=self._run, name="held-transaction")
        self.thread.start()

    def _run(self) -> None:
        db = self.store.db
        try:
            (self.pid,) = execute(db, "SELECT pg_backend_pid()").fetchone()
            with db.atomic():
                try:
                    self.result = self.fn(Effects())
                finally:
                    self.ran.set()
                    self.go.wait(HOLD_DEADLINE_S)
        except Exception as exc:
            self.error = exc
        finally:
            self.ran.set()
            db.close()

    def wait_ran(self) -> None:
        """Returns once the write ran; its transaction is still open."""
        assert self.ran.wait(JOIN_DEADLINE_S), "the write did not run"

    def waiting_for_lock(self) -> bool:
        """Whether the write is waiting for a lock another transaction holds."""
        if self.pid is None:
            return False
        row = execute(
            self.store.db,
            "SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s",
            (self.pid,),
        ).fetchone()
        return row is not None and row[0] == "Lock"

    def finish(self) -> T:
        """Lets the transaction commit (or roll back, when the write
        raised); its result, or its error raised."""
        self.go.set()
        self.thread.join(JOIN_DEADLINE_S)
        assert not self.thread.is_alive(), "the transaction did not end"
        if self.error is not None:
            raise self.error
        return cast(T, self.result)


def test_postgres_a_delete_waits_for_a_completion_and_marks_its_chunks(pg_store: Store) -> None:
    store, t0 = pg_store, now_us()
    job_id, lease_id = leased(store, "pg.complete.first", t0)
    completing = Held(
        store, complete_op(store, job_id, lease_id, "one", name="one", staged=0, last=b"b", now=t0)
    )
    try:
        completing.wait_ran()
        # Another server deletes the job while the completion is not
        # committed: the delete waits for the job's row, then finds the
        # artifact (had it not waited, the artifact row would have gone by
        # cascade and its chunk with nothing to find it).
        deleting = Held(store, delete_op(store, job_id, t0), hold=False)
        eventually(deleting.waiting_for_lock, timeout=JOIN_DEADLINE_S)
    finally:
        completing.finish()
    deletion = deleting.finish()
    assert deletion is not None and deletion.garbage == 1
    assert ArtifactRow.select().where(ArtifactRow.job == job_id).count() == 0
    assert chunk_count(job_id) == 1 and upload_rows(job_id) == {("one", NO_LEASE)}
    assert sweep(store, t0) == 1
    assert chunk_count(job_id) == 0 and upload_rows(job_id) == set()


def test_postgres_a_completion_after_an_uncommitted_delete_is_refused(pg_store: Store) -> None:
    store, t0 = pg_store, now_us()
    job_id, lease_id = leased(store, "pg.delete.first", t0)
    write(
        store, complete_op(store, job_id, lease_id, "v1", name="out", staged=0, last=b"1", now=t0)
    )
    deleting = Held(store, delete_op(store, job_id, t0))
    try:
        deleting.wait_ran()
        # A replacement completing on another server meanwhile waits for the
        # job's row, then finds no job: no artifact, and its chunk is rolled
        # back with it.
        completing = Held(
            store,
            complete_op(store, job_id, lease_id, "v2", name="out", staged=0, last=b"2", now=t0),
            hold=False,
        )
        eventually(completing.waiting_for_lock, timeout=JOIN_DEADLINE_S)
    finally:
        deletion = deleting.finish()
    with pytest.raises(NotFound):
        completing.finish()
    assert deletion is not None and deletion.garbage == 1
    assert ArtifactRow.select().where(ArtifactRow.job == job_id).count() == 0
    assert upload_rows(job_id) == {("v1", NO_LEASE)}
    assert ChunkRow.select(ChunkRow.upload_id).where(ChunkRow.job_id == job_id).scalar() == "v1"
    assert sweep(store, t0) == 1
    assert chunk_count(job_id) == 0 and upload_rows(job_id) == set()


def test_postgres_a_delete_does_not_wait_for_a_chunk_being_staged(pg_store: Store) -> None:
    store, t0 = pg_store, now_us()
    job_id, lease_id = leased(store, "pg.staging", t0)
    write(store, stage_op(store, job_id, lease_id, "u", index=0, now=t0))
    staging = Held(store, stage_op(store, job_id, lease_id, "u", index=1, now=t0))
    try:
        staging.wait_ran()
        # The staging holds the upload's row; the delete skips it rather
        # than wait for another server's operation.
        deletion = Held(store, delete_op(store, job_id, t0), hold=False).finish()
    finally:
        staging.finish()
    assert deletion is not None and deletion.garbage == 0
    # Left under its lease, which ended with the job: dead all the same.
    assert upload_rows(job_id) == {("u", lease_id)} and chunk_count(job_id) == 2
    assert store.artifacts.dead_uploads(t0, limit=10, every=False) == [(job_id, "u")]
    assert sweep(store, t0) == 1
    assert chunk_count(job_id) == 0 and upload_rows(job_id) == set()
