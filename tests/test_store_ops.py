"""The store's retry, purge, stats and artifact queries on each backend
(SQLite and PostgreSQL), with explicit times so cutoffs and percentiles are
exact. (The same features end to end are in test_purge_stats_retry.py and
test_artifacts.py.)"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pytest

from jobstream.server.db import ArtifactRow, ChunkRow, UploadRow, open_database
from jobstream.server.domain import (
    Changes,
    Finish,
    JobFilter,
    JobState,
    NewJob,
    Outcome,
    now_us,
)
from jobstream.server.errors import FailedPrecondition, NotFound, ResourceExhausted
from jobstream.server.store import RetryPolicy, Store

T = TypeVar("T")
SECOND = 1_000_000
LONG_LEASE_US = 10_000 * SECOND
"""Long enough that no lease in these tests expires at the times they use."""


@pytest.fixture
def store(database_url: str) -> Iterator[Store]:
    """A store on a fresh database of each backend."""
    db = open_database(database_url)
    yield Store(db, RetryPolicy(default_max_attempts=1, backoff_base_us=SECOND))
    db.close()


def write(store: Store, fn: Callable[[Changes], T]) -> T:
    """Runs one write in its own transaction, as the writer does."""
    changes = Changes()
    with store.db.atomic():
        result = fn(changes)
        store.record_changes(changes, now_us())
    return result


def run_job(
    store: Store, *, kind: str, start: int, end: int, outcome: Outcome = Outcome.SUCCEEDED
) -> str:
    """A job submitted and acquired at ``start`` and finished at ``end``."""
    spec = NewJob(kind=kind)
    [(job, _)] = write(store, lambda c: store.submit(c, [spec], start))
    lease: Any = write(
        store,
        lambda c: store.acquire(
            c, worker_id="w", kinds=[kind], queues=["default"], lease_us=LONG_LEASE_US, now=start
        ),
    )
    assert lease.job.id == job.id
    write(store, lambda c: store.finish(c, job.id, lease.lease_id, Finish(outcome=outcome), end))
    return job.id


def test_stats_percentiles_window_and_rates(store: Store) -> None:
    t0 = now_us()
    for i in range(1, 21):
        run_job(store, kind="timed", start=t0, end=t0 + i * SECOND)
    run_job(store, kind="other", start=t0, end=t0 + 30 * SECOND, outcome=Outcome.FAILED)
    write(store, lambda c: store.submit(c, [NewJob(kind="other")], t0))

    stats = store.stats(JobFilter(kinds=("timed",)), window_us=100 * SECOND, now=t0 + 50 * SECOND)
    assert stats.by_state == ((JobState.SUCCEEDED, 20),)
    assert stats.ended == 20 and stats.success_rate == 1.0
    assert stats.duration_p50_us == 10 * SECOND  # nearest rank: the 10th of 20
    assert stats.duration_p95_us == 19 * SECOND  # the 19th of 20

    recent = store.stats(JobFilter(), window_us=36 * SECOND, now=t0 + 50 * SECOND)
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
    write(store, lambda c: store.submit(c, [NewJob(kind="p")], t0))
    cutoff = t0 + 3 * SECOND
    assert store.purge_preview(JobFilter(), ended_before=cutoff, list_limit=2) == (3, ended[:2])

    first = write(store, lambda c: store.purge_batch(c, JobFilter(), ended_before=cutoff, limit=2))
    assert [d.job_id for d in first] == ended[:2]
    second = write(store, lambda c: store.purge_batch(c, JobFilter(), ended_before=cutoff, limit=2))
    assert [d.job_id for d in second] == ended[2:3]
    assert (
        write(store, lambda c: store.purge_batch(c, JobFilter(), ended_before=cutoff, limit=2))
        == []
    )
    for job_id in ended[:3]:
        assert not store.job_exists(job_id)
    assert all(store.job_exists(j) for j in ended[3:])
    only_failed = JobFilter(states=(JobState.FAILED,))
    assert store.purge_preview(only_failed, ended_before=t0 + 99 * SECOND, list_limit=9) == (0, [])


def test_retry_continues_the_sequence_and_refuses_other_states(store: Store) -> None:
    t0 = now_us()
    job_id = run_job(store, kind="r", start=t0, end=t0 + SECOND, outcome=Outcome.FAILED)
    before = store.get_job(job_id)
    job = write(store, lambda c: store.retry(c, job_id, "again", 2, t0 + 2 * SECOND))
    assert job.state is JobState.QUEUED and job.last_seq == before.last_seq + 1
    assert (job.attempt, job.max_attempts, job.not_before) == (1, 3, t0 + 2 * SECOND)
    with pytest.raises(FailedPrecondition):
        write(store, lambda c: store.retry(c, job_id, "", 1, t0 + 3 * SECOND))
    with pytest.raises(NotFound):
        write(store, lambda c: store.retry(c, "missing", "", 1, t0))


def test_artifacts_replace_by_name_respect_the_limit_and_cascade(store: Store) -> None:
    t0 = now_us()
    [(job, _)] = write(store, lambda c: store.submit(c, [NewJob(kind="a")], t0))
    lease: Any = write(
        store,
        lambda c: store.acquire(
            c, worker_id="w", kinds=["a"], queues=["default"], lease_us=LONG_LEASE_US, now=t0
        ),
    )

    def add(name: str, size: int) -> int:
        """An upload of two chunks: one staged, the last with completion."""
        upload_id = f"up-{name}-{size}"
        write(
            store,
            lambda c: store.stage_chunk(
                c, job.id, lease.lease_id, upload_id, index=0, data=b"x" * size, now=t0
            ),
        )
        _, seq = write(
            store,
            lambda c: store.complete_upload(
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
            ChunkRow.job == job.id
        )
        return sorted((r.upload_id, r.chunk_index) for r in query)

    first = add("a.txt", 1)
    assert add("b.txt", 2) == first + 1
    assert add("a.txt", 3) == first + 2  # a replacement is within the limit
    # The replaced upload's chunks are marked for the sweep, which removes
    # them a few per operation.
    assert store.dead_uploads(t0, limit=10, every=False) == [(job.id, "up-a.txt-1")]
    done = [write(store, lambda c: store.discard_upload(c, job.id, "up-a.txt-1", limit=1))]
    while not done[-1]:
        done.append(write(store, lambda c: store.discard_upload(c, job.id, "up-a.txt-1", limit=1)))
    assert done == [False, False, True]  # a chunk per operation, then the row
    assert store.dead_uploads(t0, limit=10, every=True) == []
    assert chunks() == [("up-a.txt-3", 0), ("up-a.txt-3", 1), ("up-b.txt-2", 0), ("up-b.txt-2", 1)]
    with pytest.raises(ResourceExhausted):
        add("c.txt", 4)
    assert [(a.name, a.size_bytes) for a in store.list_artifacts(job.id)] == [
        ("a.txt", 4),
        ("b.txt", 3),
    ]
    artifact, upload_id = store.get_artifact(job.id, "a.txt")
    assert (artifact.size_bytes, upload_id) == (4, "up-a.txt-3")
    assert store.read_chunk(job.id, "up-a.txt-3", 0) == b"xxx"
    assert store.read_chunk(job.id, "up-a.txt-3", 1) == b"y"
    assert store.read_chunk(job.id, "up-a.txt-3", 2) is None
    with pytest.raises(NotFound):
        store.get_artifact(job.id, "c.txt")
    # The refused c.txt left its staged chunk: the worker's server discards
    # it, or a sweep does once the lease has ended.
    assert store.dead_uploads(t0, limit=10, every=False) == []
    assert store.dead_uploads(t0, limit=10, every=True) == [(job.id, "up-c.txt-4")]
    write(store, lambda c: store.delete(c, job.id, force=True, allow_missing=False))
    assert ArtifactRow.select().where(ArtifactRow.job == job.id).count() == 0
    assert chunks() == []
    assert UploadRow.select().where(UploadRow.job == job.id).count() == 0


def test_uploads_under_an_ended_lease_are_dead_and_refused(store: Store) -> None:
    t0 = now_us()
    [(job, _)] = write(store, lambda c: store.submit(c, [NewJob(kind="d")], t0))
    lease: Any = write(
        store,
        lambda c: store.acquire(
            c, worker_id="w", kinds=["d"], queues=["default"], lease_us=SECOND, now=t0
        ),
    )

    def stage(index: int, now: int) -> None:
        write(
            store,
            lambda c: store.stage_chunk(
                c, job.id, lease.lease_id, "u1", index=index, data=b"z", now=now
            ),
        )

    stage(0, t0)
    assert store.dead_uploads(t0, limit=10, every=False) == []
    # Past the lease's expiry nothing renews it, so the upload is dead even
    # before a sweep moves the job on.
    assert store.dead_uploads(t0 + 2 * SECOND, limit=10, every=False) == [(job.id, "u1")]
    assert write(store, lambda c: store.discard_upload(c, job.id, "u1", limit=4))
    assert ChunkRow.select().where(ChunkRow.job == job.id).count() == 0
    with pytest.raises(FailedPrecondition) as discarded:
        stage(1, t0)  # the lease is live, but the upload is gone
    assert discarded.value.field == "lease_id"
    with pytest.raises(FailedPrecondition):
        stage(0, t0 + 2 * SECOND)  # an expired lease stages nothing
    assert store.dead_uploads(t0, limit=10, every=True) == []


def test_a_discard_marks_the_upload_and_spares_a_completed_one(store: Store) -> None:
    t0 = now_us()
    [(job, _)] = write(store, lambda c: store.submit(c, [NewJob(kind="m")], t0))
    lease: Any = write(
        store,
        lambda c: store.acquire(
            c, worker_id="w", kinds=["m"], queues=["default"], lease_us=LONG_LEASE_US, now=t0
        ),
    )

    def stage(upload_id: str, index: int) -> None:
        write(
            store,
            lambda c: store.stage_chunk(
                c, job.id, lease.lease_id, upload_id, index=index, data=b"q", now=t0
            ),
        )

    def complete(upload_id: str, name: str) -> None:
        write(
            store,
            lambda c: store.complete_upload(
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
        return write(store, lambda c: store.discard_upload(c, job.id, upload_id, limit=limit))

    # A discard under way (another server's sweep, whose clock says the
    # lease ended) stops the upload: no more chunks, no completion.
    stage("u2", 0)
    assert not discard("u2", 0)  # marked, nothing removed yet
    assert store.dead_uploads(t0, limit=10, every=False) == [(job.id, "u2")]
    with pytest.raises(FailedPrecondition):
        stage("u2", 1)
    with pytest.raises(FailedPrecondition):
        complete("u2", "late.bin")
    assert discard("u2", 4)
    assert store.list_artifacts(job.id) == []

    # An upload that completed after all (its caller went away while the
    # completion committed, then discarded): its chunks are the artifact's.
    stage("u3", 0)
    complete("u3", "kept.bin")
    assert discard("u3", 4)
    _, upload_id = store.get_artifact(job.id, "kept.bin")
    assert [store.read_chunk(job.id, "u3", i) for i in (0, 1)] == [b"q", b"r"]
    assert upload_id == "u3"
