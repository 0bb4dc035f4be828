"""The store against a real database file: every state transition, its
events and its refusals. (End-to-end behaviour over gRPC is in test_e2e_*.)"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import peewee as pw
import pytest
from helpers import insert_old_job
from playhouse.migrations import Runner

from jobstream.server.db import (
    MIGRATIONS_DIR,
    EventRow,
    JobRow,
    LabelRow,
    ResultRow,
    execute,
    open_database,
)
from jobstream.server.domain import (
    Effects,
    ErrorInfo,
    EventKind,
    Finish,
    JobFilter,
    JobState,
    LogLevel,
    LogLine,
    LogSearch,
    NewJob,
    Outcome,
    Progress,
    Report,
    ResultItem,
    ResultStatus,
    Step,
    StepState,
    WorkerSeen,
    now_us,
)
from jobstream.server.errors import AlreadyExists, FailedPrecondition, NotFound
from jobstream.server.store import RetryPolicy, Store

T = TypeVar("T")
SECOND = 1_000_000


@pytest.fixture
def store(migrated_url: str) -> Iterator[Store]:
    """A store on an empty database of each backend."""
    db = open_database(migrated_url)
    yield Store(db, RetryPolicy(default_max_attempts=2, backoff_base_us=SECOND))
    db.close()


def write(store: Store, fn: Callable[[Effects], T]) -> tuple[T, Effects]:
    """Runs one write in its own transaction, as the writer does."""
    effects = Effects()
    with store.db.atomic():
        result = fn(effects)
        store.changes.record(effects, now_us())
    return result, effects


def submit(store: Store, **kw: Any) -> str:
    spec = NewJob(kind=kw.pop("kind", "demo.count"), **kw)
    [(job, _)], _ = write(store, lambda c: store.jobs.submit(c, [spec], now_us()))
    return job.id


def acquire(
    store: Store,
    kinds: tuple[str, ...] = ("demo.count",),
    now: int | None = None,
    lease_us: int = 30 * SECOND,
) -> Any:
    lease, _ = write(
        store,
        lambda c: store.jobs.acquire(
            c,
            worker_id="w1",
            kinds=kinds,
            queues=["default"],
            lease_us=lease_us,
            now=now or now_us(),
        ),
    )
    return lease


def seqs(store: Store, job_id: str) -> list[int]:
    return [e.seq for e in store.reads.read_events(job_id, after_seq=0, limit=10_000)]


def test_submit_stores_job_and_first_event(store: Store) -> None:
    job_id = submit(store, labels={"team": "growth"}, params={"n": 3})
    job = store.reads.get_job(job_id)
    assert job.state is JobState.QUEUED
    assert job.params == {"n": 3} and job.labels == {"team": "growth"}
    assert job.max_attempts == 2 and job.last_seq == 1
    [event] = store.reads.read_events(job_id, after_seq=0, limit=10)
    assert (event.seq, event.kind, event.body["state"]) == (1, EventKind.STATE_CHANGE, "queued")


def test_idempotent_submit_same_payload_returns_same_job(store: Store) -> None:
    first = submit(store, request_id="r-1", params={"a": 1})
    again, _ = write(
        store,
        lambda c: store.jobs.submit(
            c, [NewJob(kind="demo.count", request_id="r-1", params={"a": 1})], now_us()
        ),
    )
    assert [(job.id, created) for job, created in again] == [(first, False)]
    with pytest.raises(AlreadyExists) as info:
        submit(store, request_id="r-1", params={"a": 2})
    assert info.value.field == "request_id"
    assert JobRow.select().count() == 1


def test_client_chosen_id_collision_is_already_exists(store: Store) -> None:
    submit(store, job_id="nightly-1")
    with pytest.raises(AlreadyExists):
        submit(store, job_id="nightly-1")


def test_batch_submit_is_all_or_nothing(store: Store) -> None:
    specs = [NewJob(kind="demo.count", job_id="a1"), NewJob(kind="demo.count", job_id="a1")]
    with pytest.raises(AlreadyExists):
        write(store, lambda c: store.jobs.submit(c, specs, now_us()))
    assert JobRow.select().count() == 0 and EventRow.select().count() == 0


def test_acquire_takes_priority_then_age_and_respects_not_before(store: Store) -> None:
    low = submit(store, priority=0)
    high = submit(store, priority=5)
    later = submit(store, priority=9, not_before=now_us() + 60 * SECOND)
    assert acquire(store).job.id == high
    assert acquire(store).job.id == low
    assert acquire(store) is None
    assert store.reads.get_job(later).state is JobState.QUEUED
    assert acquire(store, kinds=("other.kind",)) is None


def test_report_appends_gap_free_events_and_updates_job(store: Store) -> None:
    job_id = submit(store)
    lease = acquire(store)
    report = Report(
        progress=Progress(fraction=0.5, done=1, total=2, phase="count"),
        logs=tuple(LogLine(level=LogLevel.INFO, text=f"line {i}") for i in range(3)),
        steps=(Step(name="fetch", state=StepState.RUNNING),),
        results=(
            ResultItem(key="a", status=ResultStatus.SUCCEEDED),
            ResultItem(key="b", status=ResultStatus.FAILED),
        ),
        files=("out/a.txt",),
    )
    ack, effects = write(
        store, lambda c: store.reports.report(c, job_id, lease.lease_id, report, now=now_us())
    )
    assert ack.last_seq == 2 + 1 + 3 + 1 + 2
    assert seqs(store, job_id) == list(range(1, ack.last_seq + 1))
    assert [e.seq for e in effects.events] == list(range(3, ack.last_seq + 1))
    job = store.reads.get_job(job_id)
    assert (job.progress.done, job.progress.phase) == (1, "count")
    assert (job.counters.succeeded, job.counters.failed) == (1, 1)
    assert [(s.name, s.state, s.attempts) for s in job.steps] == [("fetch", "running", 1)]
    logs = store.reads.read_events(job_id, after_seq=0, limit=100, kind=EventKind.LOG)
    assert [e.body["text"] for e in logs] == ["line 0", "line 1", "line 2"]


def test_stale_lease_is_refused_and_changes_nothing(store: Store) -> None:
    job_id = submit(store)
    lease = acquire(store)
    before = store.reads.get_job(job_id)
    with pytest.raises(FailedPrecondition) as info:
        write(
            store,
            lambda c: store.reports.report(
                c,
                job_id,
                "0" * 32,
                Report(logs=(LogLine(level=LogLevel.INFO, text="x"),)),
                now=now_us(),
            ),
        )
    assert info.value.field == "lease_id"
    expired_now = now_us() + 60 * SECOND
    with pytest.raises(FailedPrecondition):
        write(
            store,
            lambda c: store.jobs.finish(
                c, job_id, lease.lease_id, Finish(outcome=Outcome.SUCCEEDED), expired_now
            ),
        )
    assert store.reads.get_job(job_id) == before


def test_failed_attempt_retries_with_backoff_then_fails(store: Store) -> None:
    job_id = submit(store)
    lease = acquire(store)
    t0 = now_us()
    job, _ = write(
        store,
        lambda c: store.jobs.finish(
            c, job_id, lease.lease_id, Finish(outcome=Outcome.FAILED, retryable=True), t0
        ),
    )
    assert job.state is JobState.QUEUED and job.not_before == t0 + SECOND
    assert acquire(store) is None  # backing off
    lease = acquire(store, now=t0 + 2 * SECOND)
    assert lease.job.attempt == 2
    job, _ = write(
        store,
        lambda c: store.jobs.finish(
            c,
            job_id,
            lease.lease_id,
            Finish(outcome=Outcome.FAILED, retryable=True),
            t0 + 3 * SECOND,
        ),
    )
    assert job.state is JobState.FAILED and job.end_time is not None


def test_cancel_queued_running_and_terminal(store: Store) -> None:
    queued = submit(store)
    job, _ = write(store, lambda c: store.jobs.cancel(c, queued, "", now_us()))
    assert job.state is JobState.CANCELLED
    again, _ = write(store, lambda c: store.jobs.cancel(c, queued, "", now_us()))
    assert again.last_seq == job.last_seq  # idempotent: no new event
    running = submit(store)
    lease = acquire(store)
    job, _ = write(store, lambda c: store.jobs.cancel(c, running, "stop", now_us()))
    assert job.state is JobState.RUNNING and job.cancel_requested
    ack, _ = write(
        store, lambda c: store.reports.report(c, running, lease.lease_id, Report(), now=now_us())
    )
    assert ack.cancel_requested
    job, _ = write(
        store,
        lambda c: store.jobs.finish(
            c, running, lease.lease_id, Finish(outcome=Outcome.CANCELLED), now_us()
        ),
    )
    assert job.state is JobState.CANCELLED
    done = submit(store)
    lease = acquire(store)
    write(
        store,
        lambda c: store.jobs.finish(
            c, done, lease.lease_id, Finish(outcome=Outcome.SUCCEEDED), now_us()
        ),
    )
    with pytest.raises(FailedPrecondition):
        write(store, lambda c: store.jobs.cancel(c, done, "", now_us()))


def test_expired_lease_requeues_then_interrupts(store: Store) -> None:
    job_id = submit(store)
    acquire(store, lease_us=SECOND)
    later = now_us() + 5 * SECOND
    rescues, _ = write(store, lambda c: store.jobs.expire_leases(c, later, limit=10))
    job = store.reads.get_job(job_id)
    assert job.state is JobState.QUEUED
    assert [(r.job_id, r.state) for r in rescues] == [(job_id, JobState.QUEUED)]
    last = store.reads.read_events(job_id, after_seq=job.last_seq - 1, limit=1)[0]
    assert "lease expired" in last.body["reason"]
    acquire(store, now=later + 10 * SECOND, lease_us=SECOND)
    rescues, _ = write(store, lambda c: store.jobs.expire_leases(c, later + 20 * SECOND, limit=10))
    assert [r.state for r in rescues] == [JobState.INTERRUPTED]
    job = store.reads.get_job(job_id)
    assert job.state is JobState.INTERRUPTED and job.error is not None
    assert job.error.code == "lease_expired"


def test_expired_lease_after_cancel_request_ends_cancelled(store: Store) -> None:
    job_id = submit(store)
    acquire(store, lease_us=SECOND)
    write(store, lambda c: store.jobs.cancel(c, job_id, "", now_us()))
    write(store, lambda c: store.jobs.expire_leases(c, now_us() + 5 * SECOND, limit=10))
    assert store.reads.get_job(job_id).state is JobState.CANCELLED


def test_delete_cascades_and_respects_running_and_allow_missing(store: Store) -> None:
    job_id = submit(store, labels={"a": "b"})
    lease = acquire(store)
    write(
        store,
        lambda c: store.reports.report(
            c, job_id, lease.lease_id, Report(files=("x.txt",)), now=now_us()
        ),
    )
    with pytest.raises(FailedPrecondition):
        write(
            store,
            lambda c: store.deletions.delete(
                c, job_id, force=False, allow_missing=False, now=now_us()
            ),
        )
    deletion, effects = write(
        store,
        lambda c: store.deletions.delete(c, job_id, force=True, allow_missing=False, now=now_us()),
    )
    assert deletion is not None and deletion.files == ("x.txt",)
    assert effects.deleted_jobs == {job_id: ""}
    assert EventRow.select().count() == 0 and LabelRow.select().count() == 0
    with pytest.raises(NotFound):
        write(
            store,
            lambda c: store.deletions.delete(
                c, job_id, force=False, allow_missing=False, now=now_us()
            ),
        )
    gone, _ = write(
        store,
        lambda c: store.deletions.delete(c, job_id, force=False, allow_missing=True, now=now_us()),
    )
    assert gone is None
    [*_, last] = store.changes.read(after_position=0, limit=100)
    assert (last.job_id, last.deleted) == (job_id, True)


def test_list_pages_newest_first_with_filters(store: Store) -> None:
    ids = [submit(store, labels={"batch": "x" if i % 2 else "y"}) for i in range(7)]
    seen: list[str] = []
    cursor: tuple[int, str] | None = None
    while True:
        page = store.reads.list_jobs(JobFilter(), limit=3, cursor=cursor)
        seen += [j.id for j in page]
        if len(page) < 3:
            break
        cursor = (page[-1].create_time, page[-1].id)
    assert seen == list(reversed(ids))
    odd = store.reads.list_jobs(JobFilter(labels=(("batch", "x"),)), limit=50, cursor=None)
    assert [j.id for j in odd] == [i for n, i in enumerate(reversed(ids)) if (6 - n) % 2]
    queued = store.reads.list_jobs(JobFilter(states=(JobState.RUNNING,)), limit=50, cursor=None)
    assert queued == []


def test_change_log_positions_increase(store: Store) -> None:
    a = submit(store)
    b = submit(store)
    changes = store.changes.read(after_position=0, limit=10)
    assert [c.job_id for c in changes] == [a, b]
    assert store.changes.head_position() == changes[-1].position
    assert store.changes.read(after_position=changes[0].position, limit=10)[0].job_id == b


def test_database_refuses_second_event_with_same_seq(store: Store) -> None:
    job_id = submit(store)
    with pytest.raises(pw.IntegrityError), store.db.atomic():
        EventRow.insert(job=job_id, seq=1, time=0, kind="log", body="{}").execute()


def test_repeated_report_seq_is_stored_once(store: Store) -> None:
    job_id = submit(store)
    lease = acquire(store)
    batch = Report(logs=(LogLine(level=LogLevel.INFO, text="once"),), report_seq=1)
    first, _ = write(
        store, lambda c: store.reports.report(c, job_id, lease.lease_id, batch, now=now_us())
    )
    retry, effects = write(
        store, lambda c: store.reports.report(c, job_id, lease.lease_id, batch, now=now_us())
    )
    assert retry.last_seq == first.last_seq and effects.events == []
    texts = [
        e.body["text"]
        for e in store.reads.read_events(job_id, after_seq=0, limit=100, kind=EventKind.LOG)
    ]
    assert texts == ["once"]
    later = Report(logs=(LogLine(level=LogLevel.INFO, text="twice"),), report_seq=2)
    ack, _ = write(
        store, lambda c: store.reports.report(c, job_id, lease.lease_id, later, now=now_us())
    )
    assert ack.last_seq == first.last_seq + 1


def report(store: Store, job_id: str, lease_id: str, **kw: Any) -> Any:
    ack, _ = write(
        store, lambda c: store.reports.report(c, job_id, lease_id, Report(**kw), now=now_us())
    )
    return ack


def finish(store: Store, job_id: str, lease_id: str, outcome: Outcome, **kw: Any) -> Any:
    job, _ = write(
        store,
        lambda c: store.jobs.finish(c, job_id, lease_id, Finish(outcome=outcome, **kw), now_us()),
    )
    return job


def test_results_are_keyed_and_counters_follow_within_and_across_reports(store: Store) -> None:
    job_id = submit(store)
    lease = acquire(store)
    report(
        store,
        job_id,
        lease.lease_id,
        results=(
            ResultItem(key="a", status=ResultStatus.SUCCEEDED, data={"v": 1}),
            ResultItem(key="b", status=ResultStatus.FAILED, error="bad"),
            ResultItem(key="a", status=ResultStatus.FAILED, error="worse"),
        ),
    )
    job = store.reads.get_job(job_id)
    assert (job.counters.succeeded, job.counters.failed) == (0, 2)
    report(
        store, job_id, lease.lease_id, results=(ResultItem(key="a", status=ResultStatus.SKIPPED),)
    )
    job = store.reads.get_job(job_id)
    assert (job.counters.succeeded, job.counters.failed, job.counters.skipped) == (0, 1, 1)
    listed = store.reads.read_results(job_id, after_seq=0, limit=10)
    assert [(e.body["key"], e.body["status"], e.body["data"]) for e in listed] == [
        ("b", "failed", None),
        ("a", "skipped", None),
    ]
    events = store.reads.read_events(job_id, after_seq=0, limit=100, kind=EventKind.RESULT_ITEM)
    assert [e.body.get("replaced") for e in events] == [None, None, "succeeded", "failed"]
    # Each listed result is the event that stored its version.
    assert [e.seq for e in listed] == [events[1].seq, events[3].seq]
    assert store.reads.read_results(job_id, after_seq=listed[0].seq, limit=10) == listed[1:]
    finish(store, job_id, lease.lease_id, Outcome.SUCCEEDED)
    write(
        store,
        lambda c: store.deletions.delete(c, job_id, force=False, allow_missing=False, now=now_us()),
    )
    assert ResultRow.select().count() == 0


@pytest.mark.parametrize(
    ("outcome", "state", "step_state"),
    [
        (Finish(outcome=Outcome.SUCCEEDED), JobState.SUCCEEDED, "succeeded"),
        (
            Finish(outcome=Outcome.FAILED, error=ErrorInfo(code="x", message="boom")),
            JobState.FAILED,
            "failed",
        ),
        (Finish(outcome=Outcome.CANCELLED), JobState.CANCELLED, "cancelled"),
    ],
    ids=["succeeded", "failed", "cancelled"],
)
def test_attempt_end_ends_running_steps_with_the_job(
    store: Store, outcome: Finish, state: JobState, step_state: str
) -> None:
    job_id = submit(store, max_attempts=1)
    lease = acquire(store)
    report(store, job_id, lease.lease_id, steps=(Step(name="s", state=StepState.RUNNING),))
    job, effects = write(
        store, lambda c: store.jobs.finish(c, job_id, lease.lease_id, outcome, now_us())
    )
    assert job.state is state
    [step] = job.steps
    assert (step.state, step.attempts) == (step_state, 1) and step.end_time is not None
    assert step.error == (job.error.message if job.error else "")
    # The step's event comes before the terminal one, in the same commit.
    assert [e.kind for e in effects.events] == [EventKind.STEP, EventKind.STATE_CHANGE]


def test_a_released_attempt_takes_back_only_its_own_step_starts(store: Store) -> None:
    job_id = submit(store)
    lease = acquire(store)
    report(store, job_id, lease.lease_id, steps=(Step(name="s", state=StepState.RUNNING),))
    finish(store, job_id, lease.lease_id, Outcome.FAILED, retryable=True)
    lease = acquire(store, now=now_us() + 10 * SECOND)
    assert lease.job.attempt == 2
    running = Step(name="s", state=StepState.RUNNING)
    done = Step(name="s", state=StepState.SUCCEEDED)
    report(store, job_id, lease.lease_id, steps=(running, done, running))
    assert [s.attempts for s in store.reads.get_job(job_id).steps] == [3]
    job = finish(store, job_id, lease.lease_id, Outcome.RELEASED)
    assert (job.state, job.attempt) == (JobState.QUEUED, 1)
    [step] = job.steps
    # Attempt 1's start stays; both of attempt 2's are taken back.
    assert (step.state, step.attempts, step.end_time) == ("pending", 1, None)
    assert step.start_time is not None
    # Released again without starting the step: nothing more is taken.
    lease = acquire(store, now=now_us() + 10 * SECOND)
    assert lease.job.attempt == 2
    job = finish(store, job_id, lease.lease_id, Outcome.RELEASED)
    assert [(s.state, s.attempts) for s in job.steps] == [("pending", 1)]


def test_a_lease_released_before_it_reached_its_worker_leaves_steps_alone(store: Store) -> None:
    job_id = submit(store)
    lease = acquire(store)
    report(store, job_id, lease.lease_id, steps=(Step(name="s", state=StepState.RUNNING),))
    finish(store, job_id, lease.lease_id, Outcome.FAILED, retryable=True)
    lease = acquire(store, now=now_us() + 10 * SECOND)
    write(store, lambda c: store.jobs.release(c, job_id, lease.lease_id, now_us()))
    job = store.reads.get_job(job_id)
    assert (job.state, job.attempt) == (JobState.QUEUED, 1)
    assert [(s.state, s.attempts) for s in job.steps] == [("failed", 1)]


def test_batch_with_one_request_id_twice(store: Store) -> None:
    same = NewJob(kind="demo.count", request_id="twice", owner="alice")
    answers, _ = write(store, lambda c: store.jobs.submit(c, [same, same], now_us(), batch=True))
    [(first, created_first), (second, created_second)] = answers
    assert first.id == second.id and (created_first, created_second) == (True, False)
    assert JobRow.select().count() == 1
    other = NewJob(kind="demo.other", request_id="again", owner="alice")
    clash = NewJob(kind="demo.clash", request_id="again", owner="alice")
    with pytest.raises(AlreadyExists) as info, store.db.atomic():
        store.jobs.submit(Effects(), [other, clash], now_us(), batch=True)
    assert info.value.field == "requests[1].request_id"
    assert JobRow.select().count() == 1
    # The same key of another principal is another job, in one batch too.
    theirs = NewJob(kind="demo.count", request_id="twice", owner="bob")
    answers, _ = write(store, lambda c: store.jobs.submit(c, [same, theirs], now_us(), batch=True))
    assert [created for _, created in answers] == [False, True]


def test_writes_restricted_to_an_owner_find_another_owners_job_missing(store: Store) -> None:
    job_id = submit(store, owner="alice")
    lease = acquire(store)
    before = store.reads.get_job(job_id)
    with pytest.raises(NotFound) as info:
        write(store, lambda c: store.jobs.cancel(c, job_id, "", now_us(), owner="bob"))
    assert (info.value.field, info.value.message) == ("job_id", f"no job {job_id!r}")
    with pytest.raises(NotFound):
        store.reads.get_job(job_id, owner="bob")
    stopped, effects = write(
        store, lambda c: store.jobs.cancel_running(c, job_id, "x", now_us(), owner="bob")
    )
    assert not stopped and not effects.events
    gone, effects = write(
        store,
        lambda c: store.deletions.delete(
            c, job_id, force=True, allow_missing=True, now=now_us(), owner="bob"
        ),
    )
    assert gone is None and not effects.deleted_jobs
    with pytest.raises(NotFound):
        write(
            store,
            lambda c: store.deletions.delete(
                c, job_id, force=True, allow_missing=False, now=now_us(), owner="bob"
            ),
        )
    assert store.reads.get_job(job_id) == before
    assert store.reads.get_job(job_id, owner="alice") == before
    job, _ = write(store, lambda c: store.jobs.cancel(c, job_id, "", now_us(), owner="alice"))
    assert job.cancel_requested
    finish(store, job_id, lease.lease_id, Outcome.CANCELLED)
    with pytest.raises(NotFound):
        write(store, lambda c: store.jobs.retry(c, job_id, "", 1, now_us(), owner="bob"))
    assert store.reads.get_job(job_id).state is JobState.CANCELLED


def test_change_log_keeps_the_owner_of_changed_and_deleted_jobs(store: Store) -> None:
    kept = submit(store, owner="alice")
    deleted = submit(store, owner="bob")
    purged = submit(store, owner="carol")
    write(
        store,
        lambda c: store.deletions.delete(
            c, deleted, force=False, allow_missing=False, now=now_us()
        ),
    )
    write(store, lambda c: store.jobs.cancel(c, purged, "done", now_us()))
    write(
        store,
        lambda c: store.deletions.purge_batch(
            c, JobFilter(), ended_before=now_us() + SECOND, limit=10, now=now_us()
        ),
    )
    rows = [(c.job_id, c.deleted, c.owner) for c in store.changes.read(after_position=0, limit=10)]
    assert rows == [
        (kept, False, "alice"),
        (deleted, False, "bob"),
        (purged, False, "carol"),
        (deleted, True, "bob"),
        (purged, False, "carol"),
        (purged, True, "carol"),
    ]


def test_migration_0008_fills_the_change_log_owners(database_url: str) -> None:
    db = open_database(database_url, migrate=False)
    try:
        Runner(db, str(MIGRATIONS_DIR)).up(target="0005_drop_redundant_indexes")
        store = Store(db)
        insert_old_job(db, "kept", owner="alice")
        p = db.param
        insert = f'INSERT INTO "job_change" ("job_id", "deleted", "time") VALUES ({p}, {p}, 0)'
        for job_id, deleted in (("kept", False), ("gone-1", False), ("gone-1", True)):
            execute(db, insert, (job_id, deleted))
        Runner(db, str(MIGRATIONS_DIR)).up()
        rows = [
            (c.job_id, c.deleted, c.owner) for c in store.changes.read(after_position=0, limit=9)
        ]
        assert rows == [("kept", False, "alice"), ("gone-1", False, ""), ("gone-1", True, "")]
    finally:
        db.close()


def test_checkpoint_rides_with_its_report_and_outlives_a_rescue(store: Store) -> None:
    job_id = submit(store)
    lease = acquire(store, lease_us=SECOND)
    assert lease.job.checkpoint is None
    report = Report(
        logs=(LogLine(level=LogLevel.INFO, text="item 7"),),
        checkpoint={"done": 7},
        report_seq=1,
    )
    write(store, lambda c: store.reports.report(c, job_id, lease.lease_id, report, now=now_us()))
    # A report without a checkpoint leaves the stored one alone.
    write(
        store,
        lambda c: store.reports.report(
            c, job_id, lease.lease_id, Report(report_seq=2), now=now_us()
        ),
    )
    assert store.reads.get_job(job_id).checkpoint == {"done": 7}
    later = now_us() + 5 * SECOND
    write(store, lambda c: store.jobs.expire_leases(c, later, limit=10))
    again = acquire(store, now=later + 10 * SECOND)
    assert again.job.attempt == 2 and again.job.checkpoint == {"done": 7}


def test_workers_are_upserted_listed_with_their_leases_and_forgotten(store: Store) -> None:
    now = now_us()

    def seen(worker_id: str, at: int, kinds: tuple[str, ...]) -> WorkerSeen:
        return WorkerSeen(
            id=worker_id,
            host="h1",
            kinds=kinds,
            queues=("default",),
            concurrency=4,
            last_seen=at,
        )

    write(
        store,
        lambda c: store.workers.record([seen("w1", now - 60 * SECOND, ("a",))], forget_before=0),
    )
    write(
        store,
        lambda c: store.workers.record([seen("w1", now, ("a", "demo.count"))], forget_before=0),
    )
    write(
        store,
        lambda c: store.workers.record([seen("w2", now - 600 * SECOND, ("b",))], forget_before=0),
    )
    submit(store)
    acquire(store, lease_us=60 * SECOND)  # leased to "w1" by the helper
    listed = store.workers.list(now=now, live_after=now - 15 * SECOND, seen_after=0)
    assert [(w.id, w.live, w.running) for w in listed] == [("w1", True, 1), ("w2", False, 0)]
    w1 = listed[0]
    assert w1.kinds == ("a", "demo.count") and w1.first_seen == now - 60 * SECOND
    assert w1.serves("demo.count", "default") and not w1.serves("demo.count", "other")
    write(store, lambda c: store.workers.record([], forget_before=now - 300 * SECOND))
    assert [w.id for w in store.workers.list(now=now, live_after=now, seen_after=0)] == ["w1"]


def test_log_search_by_level_text_time_and_tail(store: Store) -> None:
    job_id = submit(store)
    lease = acquire(store, lease_us=600 * SECOND)
    lines = [
        LogLine(level=LogLevel.INFO, text="starting 100% of it"),
        LogLine(level=LogLevel.WARNING, text="Slow DNS lookup"),
        LogLine(level=LogLevel.ERROR, text="timeout talking to db_1"),
        LogLine(level=LogLevel.INFO, text="timeout retried"),
    ]
    t0 = now_us()
    write(
        store,
        lambda c: store.reports.report(
            c, job_id, lease.lease_id, Report(logs=tuple(lines)), now=t0
        ),
    )
    later = LogLine(level=LogLevel.WARNING, text="late warning")
    write(
        store,
        lambda c: store.reports.report(
            c, job_id, lease.lease_id, Report(logs=(later,)), now=t0 + 60 * SECOND
        ),
    )

    def texts(**kw: Any) -> list[str]:
        found = store.reads.search_logs(job_id, LogSearch(**kw), after_seq=0, limit=100)
        return [e.body["text"] for e in found]

    warn_up = (LogLevel.WARNING, LogLevel.ERROR)
    assert texts(levels=warn_up) == ["Slow DNS lookup", "timeout talking to db_1", "late warning"]
    assert texts(text="TIMEOUT") == ["timeout talking to db_1", "timeout retried"]
    # LIKE's wildcards are plain characters in a search.
    assert texts(text="100%") == ["starting 100% of it"]
    assert texts(text="db_") == ["timeout talking to db_1"]
    assert texts(text="%") == ["starting 100% of it"]
    assert texts(since=t0 + SECOND) == ["late warning"]
    assert texts(tail=2) == ["timeout retried", "late warning"]
    assert texts(levels=warn_up, text="timeout", tail=5) == ["timeout talking to db_1"]


def test_job_filter_by_time_text_and_params(store: Store) -> None:
    eu = submit(
        store, params={"region": "eu", "n": 3, "opts": {"fast": True}}, labels={"team": "Growth"}
    )
    us = submit(store, params={"region": "us", "n": 30})
    created = store.reads.get_job(us).create_time

    def listed(**kw: Any) -> set[str]:
        flt = JobFilter(**kw)
        jobs = store.reads.list_jobs(flt, limit=10, cursor=None)
        # The live filter (job-list watches) agrees with the query.
        assert {j.id for j in jobs} == {
            j.id for j in store.reads.get_jobs([eu, us]).values() if flt.matches(j)
        }
        return {j.id for j in jobs}

    assert listed(params=((("region",), '"eu"'),)) == {eu}
    assert listed(params=((("n",), "30"),)) == {us}
    assert listed(params=((("opts", "fast"), "true"),)) == {eu}
    assert listed(params=((("region",), '"asia"'),)) == set()
    assert listed(text="growth") == {eu}
    assert listed(text=us[-6:].upper()) == {us}
    assert listed(created_after=created) == {us}
    assert listed(created_before=created) == {eu}
    assert listed(ended_after=0) == set()
    write(store, lambda c: store.jobs.cancel(c, eu, "timeout upstream", now_us()))
    assert listed(ended_after=0) == {eu}
    assert listed(text="TIMEOUT UP") == {eu}
