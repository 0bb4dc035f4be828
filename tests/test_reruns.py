"""A job that runs again (released by a stopping server, retried, rescued
after a lost lease) replaces its results by key instead of adding to them:
the listed results are its work, the counters count exactly those, and
its steps end with each attempt. A released attempt counts neither for the
job nor for its steps. Over gRPC; the runs that a server's start or its
sweeper end (which differ between a sole SQLite server and PostgreSQL) on
both backends, the rest on SQLite (the store suite covers both)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import grpc
import pytest
from conftest import Server, ServerProcess
from helpers import RawWorker, eventually, job_in

from jobstream.client import (
    Counters,
    Job,
    JobClient,
    JobEvent,
    JobState,
    ResultStatus,
    StepState,
)
from jobstream.v1 import job_pb2, worker_service_pb2

pytestmark = pytest.mark.timeout(120)

SUCCEEDED = job_pb2.RESULT_STATUS_SUCCEEDED
FAILED = job_pb2.RESULT_STATUS_FAILED
RUNNING_STEP = job_pb2.STEP_STATE_RUNNING
ENDED_STEP = job_pb2.STEP_STATE_SUCCEEDED

COUNT_ITEMS = 20
"""Items of the demo.count job stopped mid-run: 2 s at COUNT_DELAY_S."""

COUNT_DELAY_S = 0.1
"""Pause per demo.count item."""

STOP_AFTER_ITEMS = 3
"""Items the first run has stored when the server is stopped."""

GRACE_S = 0.5
"""The stopped server's --grace-seconds: it lets its worker's jobs run this
long before releasing them, so what is left of the run after the stop
(about 1.7 s) must take longer, or the job simply ends."""


@pytest.fixture
def client(bare_server: Server) -> Iterator[JobClient]:
    with JobClient(bare_server.target, timeout=10) as c:
        yield c


@pytest.fixture
def raw(bare_server: Server) -> Iterator[RawWorker]:
    worker = RawWorker(bare_server.target)
    yield worker
    worker.close()


def events_of(client: JobClient, job_id: str) -> list[JobEvent]:
    """Every event of a terminal job, from a watch from the start."""
    return [item for item in client.watch(job_id) if isinstance(item, JobEvent)]


def listed(client: JobClient, job_id: str) -> list[tuple[str, ResultStatus]]:
    """What ListJobResults lists, in its order."""
    return [
        (e.result_item.key, e.result_item.status)
        for e in client.results(job_id)
        if e.result_item is not None
    ]


def steps_of(job: Job) -> list[tuple[str, StepState, int]]:
    return [(s.name, s.state, s.attempts) for s in job.steps]


@pytest.mark.both_backends
def test_a_run_released_by_a_graceful_stop_reruns_without_duplicates(
    start_server: Callable[..., ServerProcess], module_db_args: tuple[str, ...]
) -> None:
    server = start_server(
        handlers=("jobstream.client.demo",),
        extra_args=(*module_db_args, "--grace-seconds", str(GRACE_S)),
    )
    n = COUNT_ITEMS
    with JobClient(server.target, timeout=10) as client:
        job = client.submit("demo.count", {"n": n, "delay": COUNT_DELAY_S})
        eventually(lambda: client.get(job.id).counters.succeeded >= STOP_AFTER_ITEMS)
    # SIGTERM: the in-process worker releases the job it is running.
    assert server.stop() == 0
    server.restart()
    with JobClient(server.target, timeout=10) as client:
        final = client.wait(job.id, timeout=60)
        results = listed(client, job.id)
        events = events_of(client, job.id)
    assert final.state is JobState.SUCCEEDED
    reasons = [e.state_change.reason for e in events if e.state_change is not None]
    assert any(r.startswith("released by worker") for r in reasons), reasons
    # The first run's items were stored with a checkpoint; the rerun
    # resumed after it, so no item was reported twice.
    reported = [e.result_item.key for e in events if e.result_item is not None]
    assert sorted(reported) == sorted(f"item-{i}" for i in range(1, n + 1))
    logs = [e.log.text for e in events if e.log is not None]
    assert any(t.startswith("resuming after item") for t in logs), logs[-5:]
    assert results == [(f"item-{i}", ResultStatus.SUCCEEDED) for i in range(1, n + 1)]
    assert final.counters == Counters(succeeded=n)
    assert final.attempt == 1
    assert steps_of(final) == [
        ("count", StepState.SUCCEEDED, 1),
        ("summarise", StepState.SUCCEEDED, 1),
    ]


def test_a_retry_replaces_items_by_key(client: JobClient, raw: RawWorker) -> None:
    kind = "reruns.retry"
    job = client.submit(kind, max_attempts=2)
    first = raw.acquire(kind)
    raw.report(job.id, first.lease_id, results=[("a", SUCCEEDED), ("b", FAILED)])
    assert client.get(job.id).counters == Counters(succeeded=1, failed=1)
    raw.finish(job.id, first.lease_id, worker_service_pb2.JOB_OUTCOME_FAILED, retryable=True)
    second = raw.acquire(kind, wait=10)
    assert second.job.id == job.id and second.job.attempt == 2
    raw.report(job.id, second.lease_id, results=[("b", SUCCEEDED), ("c", SUCCEEDED)])
    raw.finish(job.id, second.lease_id)
    final = client.get(job.id)
    assert listed(client, job.id) == [
        ("a", ResultStatus.SUCCEEDED),
        ("b", ResultStatus.SUCCEEDED),
        ("c", ResultStatus.SUCCEEDED),
    ]
    assert final.counters == Counters(succeeded=3)
    # The stream keeps every version; the newer one names what it replaced.
    items = [e.result_item for e in events_of(client, job.id) if e.result_item is not None]
    assert [(i.key, i.status, i.replaced_status) for i in items] == [
        ("a", ResultStatus.SUCCEEDED, None),
        ("b", ResultStatus.FAILED, None),
        ("b", ResultStatus.SUCCEEDED, ResultStatus.FAILED),
        ("c", ResultStatus.SUCCEEDED, None),
    ]


@pytest.mark.both_backends
def test_a_rescued_run_replaces_items_and_its_running_step_ends_interrupted(
    client: JobClient, raw: RawWorker
) -> None:
    kind = "reruns.rescue"
    job = client.submit(kind, max_attempts=2)
    first = raw.acquire(kind, lease_s=1)  # the shortest lease: it is to be lost
    raw.report(
        job.id,
        first.lease_id,
        results=[("a", SUCCEEDED), ("b", FAILED)],
        steps=[("fetch", RUNNING_STEP)],
    )
    # The worker goes silent: the sweeper takes the job back after its lease.
    second = raw.acquire(kind, wait=15)
    assert second.job.id == job.id and second.job.attempt == 2
    [fetch] = client.get(job.id).steps
    assert (fetch.state, fetch.attempts) == (StepState.INTERRUPTED, 1)
    assert fetch.end_time is not None and "lease expired" in fetch.error
    raw.report(
        job.id,
        second.lease_id,
        results=[("b", SUCCEEDED), ("c", SUCCEEDED)],
        steps=[("fetch", RUNNING_STEP), ("fetch", ENDED_STEP)],
    )
    raw.finish(job.id, second.lease_id)
    final = client.get(job.id)
    assert [key for key, _ in listed(client, job.id)] == ["a", "b", "c"]
    assert dict(listed(client, job.id))["b"] is ResultStatus.SUCCEEDED
    assert final.counters == Counters(succeeded=3)
    assert steps_of(final) == [("fetch", StepState.SUCCEEDED, 2)]


def test_an_interrupted_jobs_running_step_ends_before_the_job_does(
    client: JobClient, raw: RawWorker
) -> None:
    kind = "reruns.interrupted"
    job = client.submit(kind, max_attempts=1)
    lease = raw.acquire(kind, lease_s=1)  # the shortest lease: it is to be lost
    raw.report(job.id, lease.lease_id, steps=[("load", ENDED_STEP), ("fetch", RUNNING_STEP)])
    final = eventually(lambda: job_in(client, job.id, JobState.INTERRUPTED))
    assert steps_of(final) == [
        ("load", StepState.SUCCEEDED, 0),
        ("fetch", StepState.INTERRUPTED, 1),
    ]
    # A watch ends at the terminal event: the step's end comes before it.
    events = events_of(client, job.id)
    assert events[-1].state_change is not None
    assert events[-2].step is not None
    assert (events[-2].step.name, events[-2].step.state) == ("fetch", StepState.INTERRUPTED)


def test_a_step_running_when_the_job_is_cancelled_ends_cancelled(
    client: JobClient, raw: RawWorker
) -> None:
    kind = "reruns.cancel"
    job = client.submit(kind)
    lease = raw.acquire(kind)
    raw.report(job.id, lease.lease_id, steps=[("poll", RUNNING_STEP)])
    assert raw.report(job.id, lease.lease_id).cancel_requested is False
    client.cancel(job.id, reason="enough")
    assert raw.report(job.id, lease.lease_id).cancel_requested is True
    raw.finish(job.id, lease.lease_id, worker_service_pb2.JOB_OUTCOME_CANCELLED)
    final = client.get(job.id)
    assert final.state is JobState.CANCELLED
    assert steps_of(final) == [("poll", StepState.CANCELLED, 1)]


def test_a_released_attempt_gives_its_step_starts_back(client: JobClient, raw: RawWorker) -> None:
    kind = "reruns.release"
    job = client.submit(kind)
    first = raw.acquire(kind)
    raw.report(
        job.id,
        first.lease_id,
        steps=[("fetch", RUNNING_STEP), ("fetch", ENDED_STEP), ("parse", RUNNING_STEP)],
        results=[("a", SUCCEEDED)],
    )
    raw.finish(job.id, first.lease_id, worker_service_pb2.JOB_OUTCOME_RELEASED)
    released = client.get(job.id)
    assert (released.state, released.attempt) == (JobState.QUEUED, 0)
    assert steps_of(released) == [("fetch", StepState.PENDING, 0), ("parse", StepState.PENDING, 0)]
    assert all(s.start_time is None and s.end_time is None for s in released.steps)
    second = raw.acquire(kind)
    assert second.job.attempt == 1
    raw.report(job.id, second.lease_id, steps=[("fetch", RUNNING_STEP)], results=[("a", SUCCEEDED)])
    raw.finish(job.id, second.lease_id)
    final = client.get(job.id)
    assert final.attempt == 1
    # fetch was still running when the handler succeeded: it ends with it.
    assert steps_of(final) == [("fetch", StepState.SUCCEEDED, 1), ("parse", StepState.PENDING, 0)]
    assert final.counters == Counters(succeeded=1)


@pytest.mark.parametrize(
    ("key", "message"),
    [("", "results[0].key: is required"), ("k" * 1025, "results[0].key: is 1025 bytes")],
)
def test_a_result_needs_a_key_within_the_limit(
    client: JobClient, raw: RawWorker, key: str, message: str
) -> None:
    kind = "reruns.badkey"
    job = client.submit(kind)
    lease = raw.acquire(kind)
    before = client.get(job.id)
    with pytest.raises(grpc.RpcError) as info:
        raw.report(job.id, lease.lease_id, results=[(key, SUCCEEDED)])
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert message in str(info.value.details())
    after = client.get(job.id)
    assert (after.last_seq, after.counters) == (before.last_seq, before.counters)
    raw.finish(job.id, lease.lease_id)
