"""RetryJob, PurgeJobs (and --retention) and GetStats, end to end: a real
server (SQLite; the store suite runs the same operations on both backends),
the real JobClient, and a raw worker holding leases."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import grpc
import pytest
from conftest import Server, ServerProcess
from helpers import RawWorker, eventually

from jobstream.client import (
    AlreadyExistsError,
    FailedPreconditionError,
    InvalidArgumentError,
    JobClient,
    JobEvent,
    JobSpec,
    JobState,
    NotFoundError,
)
from jobstream.v1 import job_service_pb2, job_service_pb2_grpc, worker_service_pb2

STREAM_DEADLINE_S = 15.0
"""Deadline of every raw stream read in these tests."""

CANCELLERS = 8
"""Threads cancelling the hundreds of jobs a purge test ends."""


@pytest.fixture(scope="module")
def client(bare_server: Server) -> Iterator[JobClient]:
    with JobClient(bare_server.target) as c:
        yield c


@pytest.fixture
def worker(bare_server: Server) -> Iterator[RawWorker]:
    w = RawWorker(bare_server.target)
    yield w
    w.close()


def unique(prefix: str) -> str:
    """A kind or label value no other test uses (the server is shared)."""
    return f"{prefix}.{uuid.uuid4().hex[:10]}"


def run_to(
    client: JobClient,
    worker: RawWorker,
    kind: str,
    outcome: worker_service_pb2.JobOutcome.ValueType,
    **submit: object,
) -> str:
    """Submits a job of ``kind``, leases it and finishes it with ``outcome``
    (non-retryable); returns its id."""
    job = client.submit(kind, **submit)  # type: ignore[arg-type]
    lease = worker.acquire(kind)
    assert lease.job.id == job.id
    worker.finish(job.id, lease.lease_id, outcome)
    return job.id


# ------------------------------------------------------------------- retry


def test_retry_failed_job_keeps_history_and_counts_attempts(
    client: JobClient, worker: RawWorker, bare_server: Server
) -> None:
    kind = unique("retry")
    job_id = run_to(client, worker, kind, worker_service_pb2.JOB_OUTCOME_FAILED, max_attempts=1)
    failed = client.get(job_id)
    assert failed.state is JobState.FAILED and failed.attempt == 1

    retried = client.retry(job_id, "flaky upstream", additional_attempts=2)
    assert retried.state is JobState.QUEUED
    assert retried.attempt == 1 and retried.max_attempts == 3
    assert retried.error is None and retried.end_time is None
    assert retried.last_seq == failed.last_seq + 1

    lease = worker.acquire(kind)
    assert lease.job.id == job_id and lease.job.attempt == 2
    worker.finish(job_id, lease.lease_id)
    done = client.get(job_id)
    assert done.state is JobState.SUCCEEDED and done.attempt == 2

    # The raw stream (no client-side resume to hide an early end) replays
    # the old FAILED event and still runs on to the new terminal one.
    stub = job_service_pb2_grpc.JobServiceStub(worker.channel)
    responses = list(
        stub.WatchJob(job_service_pb2.WatchJobRequest(job_id=job_id), timeout=STREAM_DEADLINE_S)
    )
    seqs = [e.seq for r in responses if r.HasField("events") for e in r.events.events]
    assert seqs == list(range(1, done.last_seq + 1))
    changes = [
        (e.state_change.state, e.state_change.reason)
        for e in client.watch(job_id)
        if isinstance(e, JobEvent) and e.state_change is not None
    ]
    assert [s for s, _ in changes] == [
        JobState.QUEUED,
        JobState.RUNNING,
        JobState.FAILED,
        JobState.QUEUED,
        JobState.RUNNING,
        JobState.SUCCEEDED,
    ]
    assert changes[3][1] == "retried: flaky upstream"


def test_retry_cancelled_job_defaults_to_one_more_attempt(
    client: JobClient, worker: RawWorker
) -> None:
    kind = unique("retry")
    job = client.submit(kind)
    client.cancel(job.id)
    retried = client.retry(job.id)
    assert retried.state is JobState.QUEUED
    assert retried.attempt == 0 and retried.max_attempts == 1
    assert not retried.cancel_requested
    lease = worker.acquire(kind)
    assert lease.job.id == job.id and lease.job.attempt == 1


def test_retry_refuses_live_and_succeeded_jobs(client: JobClient, worker: RawWorker) -> None:
    kind = unique("retry")
    queued = client.submit(kind)
    with pytest.raises(FailedPreconditionError) as live:
        client.retry(queued.id)
    assert live.value.field == "job_id" and "queued" in live.value.message
    client.cancel(queued.id)
    succeeded = run_to(client, worker, kind, worker_service_pb2.JOB_OUTCOME_SUCCEEDED)
    before = client.get(succeeded)
    with pytest.raises(FailedPreconditionError):
        client.retry(succeeded)
    assert client.get(succeeded) == before


@pytest.mark.both_backends
def test_retry_with_request_id_answers_a_repeat_with_the_first_answer(
    client: JobClient, worker: RawWorker
) -> None:
    kind = unique("retry-once")
    job_id = run_to(client, worker, kind, worker_service_pb2.JOB_OUTCOME_FAILED, max_attempts=1)
    first = client.retry(job_id, "once", request_id=f"{job_id}-r1")
    assert first.state is JobState.QUEUED
    # The retried attempt fails too; a repeat of the first call (its answer
    # lost, say) must not start a third attempt.
    lease = worker.acquire(kind)
    worker.finish(job_id, lease.lease_id, worker_service_pb2.JOB_OUTCOME_FAILED)
    failed = client.get(job_id)
    assert failed.state is JobState.FAILED and failed.attempt == 2

    again = client.retry(job_id, "once", request_id=f"{job_id}-r1")
    assert again == first  # the first answer, as it was
    assert client.get(job_id) == failed  # and nothing retried

    # The same key for a different request is refused, and changes nothing.
    with pytest.raises(AlreadyExistsError) as refused:
        client.retry(job_id, "another reason", request_id=f"{job_id}-r1")
    assert refused.value.field == "request_id"
    assert "different RetryJob request" in str(refused.value)
    assert client.get(job_id) == failed
    # A new key retries.
    assert client.retry(job_id, "once", request_id=f"{job_id}-r2").state is JobState.QUEUED


def test_retry_request_id_is_bounded(client: JobClient, worker: RawWorker) -> None:
    kind = unique("retry-key")
    job_id = run_to(client, worker, kind, worker_service_pb2.JOB_OUTCOME_FAILED, max_attempts=1)
    with pytest.raises(InvalidArgumentError) as refused:
        client.retry(job_id, request_id="k" * 129)
    assert refused.value.field == "request_id" and "128" in str(refused.value)
    assert client.get(job_id).state is JobState.FAILED


def test_retry_bad_input(client: JobClient) -> None:
    with pytest.raises(NotFoundError):
        client.retry("no-such-job-for-retry")
    job = client.submit(unique("retry"))
    client.cancel(job.id)
    with pytest.raises(InvalidArgumentError) as info:
        client.retry(job.id, additional_attempts=101)
    assert info.value.field == "additional_attempts" and "0..100" in info.value.message
    with pytest.raises(InvalidArgumentError) as bad_id:
        client.retry("../x")
    assert bad_id.value.field == "job_id"


# ------------------------------------------------------------------- purge


def test_purge_dry_run_then_purge_deletes_only_ended_matching_jobs(
    client: JobClient, worker: RawWorker, bare_server: Server
) -> None:
    tag = unique("purge")
    labels = {"t": tag}
    kind = unique("purge")
    ended = [client.submit(kind, labels=labels).id for _ in range(3)]
    for job_id in ended:
        client.cancel(job_id)
    succeeded = run_to(
        client, worker, kind, worker_service_pb2.JOB_OUTCOME_SUCCEEDED, labels=labels
    )
    ended.append(succeeded)
    files = bare_server.data_dir / "jobs" / succeeded
    files.mkdir(parents=True)
    (files / "out.txt").write_text("output")
    queued = client.submit(kind, labels=labels)
    running = client.submit(kind, labels=labels)
    lease = worker.acquire(kind)
    assert lease.job.id in (queued.id, running.id)
    other = client.submit(kind, labels={"t": unique("other")})
    client.cancel(other.id)

    dry = client.purge(older_than=timedelta(0), labels=labels, dry_run=True)
    assert dry.purged_count == 4 and sorted(dry.job_ids) == sorted(ended)
    assert all(client.get(j).state.terminal for j in ended)  # nothing deleted

    kept = client.purge(older_than=timedelta(hours=1), labels=labels)
    assert kept.purged_count == 0  # they ended just now

    result = client.purge(older_than=timedelta(0), labels=labels)
    assert result.purged_count == 4 and sorted(result.job_ids) == sorted(ended)
    assert f"jobs/{succeeded}" in result.removed_paths and not files.exists()
    for job_id in ended:
        with pytest.raises(NotFoundError):
            client.get(job_id)
    assert {j.id for j in client.list(labels=labels)} == {queued.id, running.id}
    assert client.get(other.id).state is JobState.CANCELLED
    worker.finish(lease.job.id, lease.lease_id)


@pytest.mark.both_backends
def test_purge_with_request_id_answers_a_repeat_with_the_first_answer(
    client: JobClient, worker: RawWorker
) -> None:
    kind = unique("purge-once")
    first_id = run_to(client, worker, kind, worker_service_pb2.JOB_OUTCOME_FAILED, max_attempts=1)
    key = f"{kind}-p1"
    first = client.purge(older_than=timedelta(0), kinds=[kind], request_id=key)
    assert (first.purged_count, first.job_ids) == (1, (first_id,))

    later_id = run_to(client, worker, kind, worker_service_pb2.JOB_OUTCOME_FAILED, max_attempts=1)
    again = client.purge(older_than=timedelta(0), kinds=[kind], request_id=key)
    assert again == first  # the first answer
    assert client.get(later_id).state is JobState.FAILED  # and nothing purged

    with pytest.raises(AlreadyExistsError) as refused:
        client.purge(older_than=timedelta(0), kinds=[kind], dry_run=True, request_id=key)
    assert refused.value.field == "request_id"
    assert client.get(later_id).state is JobState.FAILED
    gone = client.purge(older_than=timedelta(0), kinds=[kind], request_id=f"{kind}-p2")
    assert gone.job_ids == (later_id,)


def test_purge_by_state_and_in_many_batches(client: JobClient, worker: RawWorker) -> None:
    from jobstream.server.purge import PURGE_BATCH

    labels = {"t": unique("batch")}
    kind = unique("batch")
    count = PURGE_BATCH * 2 + 7
    jobs = client.submit_many([_spec(kind, labels) for _ in range(count)])
    # Side by side, so the server commits the cancels in groups.
    with ThreadPoolExecutor(CANCELLERS) as pool:
        list(pool.map(client.cancel, [job.id for job in jobs]))
    failed = run_to(client, worker, kind, worker_service_pb2.JOB_OUTCOME_FAILED, labels=labels)

    only_failed = client.purge(older_than=timedelta(0), labels=labels, states=["failed"])
    assert only_failed.purged_count == 1 and only_failed.job_ids == (failed,)
    result = client.purge(older_than=timedelta(0), labels=labels)
    assert result.purged_count == count
    assert list(client.list(labels=labels)) == []


def _spec(kind: str, labels: dict[str, str]) -> JobSpec:
    return JobSpec(kind=kind, labels=labels)


def test_purge_bad_input(client: JobClient, worker: RawWorker) -> None:
    with pytest.raises(InvalidArgumentError) as live:
        client.purge(older_than=timedelta(0), states=["running"])
    assert live.value.field == "filter.states" and "running" in live.value.message
    with pytest.raises(InvalidArgumentError) as negative:
        client.purge(older_than=timedelta(seconds=-1))
    assert negative.value.field == "older_than"
    stub = job_service_pb2_grpc.JobServiceStub(worker.channel)
    with pytest.raises(grpc.RpcError) as missing:
        stub.PurgeJobs(job_service_pb2.PurgeJobsRequest(), timeout=STREAM_DEADLINE_S)
    assert missing.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert (missing.value.details() or "").startswith("older_than:")


def test_retention_purges_old_ended_jobs_periodically(
    start_server: Callable[..., ServerProcess],
) -> None:
    server = start_server(extra_args=("--retention", "1s", "--retention-every", "0.2"))
    with JobClient(server.target) as c:
        ended = c.submit("keep.or.not")
        c.cancel(ended.id)
        queued = c.submit("keep.or.not")
        eventually(lambda: not _exists(c, ended.id))
        assert c.get(queued.id).state is JobState.QUEUED


def _exists(client: JobClient, job_id: str) -> bool:
    try:
        client.get(job_id)
    except NotFoundError:
        return False
    return True


def test_retention_flag_is_documented_with_its_environment_variable() -> None:
    from jobstream.server.config import from_args, parser

    text = " ".join(parser().format_help().split())
    assert "[env JOBSTREAM_RETENTION]" in text and "[env JOBSTREAM_RETENTION_EVERY;" in text
    config = from_args(["--retention", "30d", "--retention-every", "10m"])
    assert config.retention_s == 30 * 86400 and config.retention_every_s == 600
    with pytest.raises(SystemExit):
        from_args(["--retention", "soon"])


# ------------------------------------------------------------------- stats


def test_stats_counts_rates_and_percentiles(client: JobClient, worker: RawWorker) -> None:
    labels = {"t": unique("stats")}
    a, b = unique("stats-a"), unique("stats-b")
    for _ in range(3):
        run_to(client, worker, a, worker_service_pb2.JOB_OUTCOME_SUCCEEDED, labels=labels)
    run_to(client, worker, b, worker_service_pb2.JOB_OUTCOME_FAILED, labels=labels, max_attempts=1)
    cancelled = client.submit(b, labels=labels)
    client.cancel(cancelled.id)
    client.submit(a, labels=labels)

    stats = client.stats(labels=labels)
    assert stats.by_state == {
        JobState.QUEUED: 1,
        JobState.SUCCEEDED: 3,
        JobState.FAILED: 1,
        JobState.CANCELLED: 1,
    }
    assert stats.by_kind == {
        a: {JobState.QUEUED: 1, JobState.SUCCEEDED: 3},
        b: {JobState.FAILED: 1, JobState.CANCELLED: 1},
    }
    assert stats.window == timedelta(hours=1)
    assert stats.ended_count == 5
    assert stats.success_rate == pytest.approx(3 / 4)
    assert stats.throughput_per_minute == pytest.approx(5 / 60)
    assert timedelta(0) <= stats.duration_p50 <= stats.duration_p95

    only_a = client.stats(labels=labels, kinds=[a], window=timedelta(minutes=10))
    assert only_a.by_kind.keys() == {a} and only_a.success_rate == 1.0
    assert only_a.throughput_per_minute == pytest.approx(3 / 10)
    empty = client.stats(labels={"t": unique("none")})
    assert empty.by_state == {} and empty.ended_count == 0 and empty.success_rate == 0.0


def test_stats_bad_window(client: JobClient) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        client.stats(window=timedelta(0))
    assert info.value.field == "window" and "1s" in info.value.message
