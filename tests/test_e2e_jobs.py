"""Submit, work, watch, cancel and delete through a real server and the real
client, as a user's service would."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from conftest import Server
from helpers import RawWorker, eventually, job_in

from jobstream.client import (
    AlreadyExistsError,
    FailedPreconditionError,
    InvalidArgumentError,
    Job,
    JobClient,
    JobEvent,
    JobState,
    NotFoundError,
)
from jobstream.client.models import EventKind
from jobstream.server.limits import DEFAULT_MAX_LOG_LINE_BYTES, WATCH_BATCH_BYTES
from jobstream.v1 import job_pb2, job_service_pb2, job_service_pb2_grpc, worker_service_pb2

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def client(server: Server) -> Iterator[JobClient]:
    """A client of the module's server. Its in-process worker runs only the
    demo kinds: tests that act as the worker use kinds of their own."""
    with JobClient(server.target) as c:
        yield c


def split(items: list[Job | JobEvent]) -> tuple[Job, list[JobEvent]]:
    snapshot, *events = items
    assert isinstance(snapshot, Job)
    assert all(isinstance(e, JobEvent) for e in events)
    return snapshot, [e for e in events if isinstance(e, JobEvent)]


@pytest.mark.both_backends
def test_submit_work_watch_sees_every_kind_of_event_gap_free(client: JobClient) -> None:
    job = client.submit("demo.count", {"n": 20, "delay": 0.005}, labels={"t": "e2e-1"})
    snapshot, events = split(list(client.watch(job.id)))
    assert snapshot.id == job.id
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    kinds = {e.kind for e in events}
    assert {
        EventKind.STATE_CHANGE,
        EventKind.PROGRESS,
        EventKind.LOG,
        EventKind.STEP,
        EventKind.RESULT_ITEM,
    } <= kinds
    last = events[-1]
    assert last.state_change is not None and last.state_change.state is JobState.SUCCEEDED
    final = client.get(job.id)
    assert final.state is JobState.SUCCEEDED and final.last_seq == last.seq
    assert final.counters.succeeded == 20
    assert final.result == {"total": 20}
    assert final.steps and all(s.end_time is not None for s in final.steps)
    assert len(list(client.logs(job.id))) >= 20
    assert len(list(client.results(job.id))) == 20


def test_watch_after_seq_gets_exactly_the_rest(client: JobClient) -> None:
    job = client.wait(client.submit("demo.count", {"n": 10, "delay": 0}).id, timeout=30)
    n = job.last_seq
    for k in (0, 1, n // 2, n - 1):
        _, events = split(list(client.watch(job.id, after_seq=k)))
        assert [e.seq for e in events] == list(range(k + 1, n + 1))
    snapshot, events = split(list(client.watch(job.id, after_seq=n)))
    assert events == [] and snapshot.state is JobState.SUCCEEDED


@pytest.mark.both_backends
def test_watcher_disconnected_midjob_and_resumed_sees_every_event_once(
    client: JobClient,
) -> None:
    job = client.submit("demo.count", {"n": 60, "delay": 0.02})
    seen: list[int] = []
    for item in client.watch(job.id):
        if isinstance(item, JobEvent):
            seen.append(item.seq)
            if len(seen) == 15:
                break  # the client hangs up mid-job
    for item in client.watch(job.id, after_seq=seen[-1]):
        if isinstance(item, JobEvent):
            seen.append(item.seq)
    assert seen == list(range(1, client.get(job.id).last_seq + 1))


def test_many_watchers_all_see_the_same_events(client: JobClient) -> None:
    job = client.submit("demo.count", {"n": 30, "delay": 0.01})
    results: list[list[int]] = []

    def watch() -> None:
        with JobClient(client.target) as own:
            results.append([e.seq for e in own.watch(job.id) if isinstance(e, JobEvent)])

    threads = [threading.Thread(target=watch) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    expected = list(range(1, client.get(job.id).last_seq + 1))
    assert results == [expected] * 8


def test_idempotent_submit(client: JobClient) -> None:
    first = client.submit("demo.sleep", {"seconds": 0}, request_id="idem-1")
    again = client.submit("demo.sleep", {"seconds": 0}, request_id="idem-1")
    assert again.id == first.id
    with pytest.raises(AlreadyExistsError) as info:
        client.submit("demo.sleep", {"seconds": 5}, request_id="idem-1")
    assert "request_id" in str(info.value)


def test_client_chosen_id(client: JobClient) -> None:
    job = client.submit("demo.sleep", {"seconds": 0}, job_id="nightly-report.1")
    assert client.get("nightly-report.1").id == job.id
    with pytest.raises(AlreadyExistsError):
        client.submit("demo.sleep", {"seconds": 0}, job_id="nightly-report.1")


def test_cancel_queued_job_is_immediate(client: JobClient) -> None:
    job = client.submit("nobody.runs.this")
    cancelled = client.cancel(job.id, reason="not needed")
    assert cancelled.state is JobState.CANCELLED
    assert client.wait(job.id, timeout=10).state is JobState.CANCELLED


def test_cancel_running_job_ends_cancelled(client: JobClient) -> None:
    job = client.submit("demo.sleep", {"seconds": 30})
    eventually(lambda: client.get(job.id).state is JobState.RUNNING)
    asked = client.cancel(job.id)
    assert asked.state is JobState.RUNNING and asked.cancel_requested
    final = client.wait(job.id, timeout=20)
    assert final.state is JobState.CANCELLED


def test_cancel_finished_job_is_failed_precondition(client: JobClient) -> None:
    job = client.wait(client.submit("demo.sleep", {"seconds": 0}).id, timeout=20)
    with pytest.raises(FailedPreconditionError):
        client.cancel(job.id)


def test_stale_lease_is_refused_and_changes_nothing(server: Server, client: JobClient) -> None:
    job = client.submit("stale.lease")
    worker = RawWorker(server.target)
    try:
        lease = worker.acquire("stale.lease")
        assert lease.job.id == job.id
        before = client.get(job.id)
        with pytest.raises(grpc.RpcError) as info:
            worker.log(job.id, "f" * 32, ["from a zombie"])
        assert info.value.code() is grpc.StatusCode.FAILED_PRECONDITION
        assert "lease_id" in (info.value.details() or "")
        assert client.get(job.id) == before
        worker.finish(job.id, lease.lease_id)
        with pytest.raises(grpc.RpcError) as again:
            worker.log(job.id, lease.lease_id, ["after finishing"])
        assert again.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    finally:
        worker.close()


def test_expired_lease_goes_back_to_queue_then_interrupted(
    server: Server, client: JobClient
) -> None:
    job = client.submit("expire.me", max_attempts=2)
    worker = RawWorker(server.target)
    try:
        worker.acquire("expire.me", lease_s=1)  # and never report
        eventually(lambda: client.get(job.id).state is JobState.QUEUED)
        worker.acquire("expire.me", lease_s=1)
        final = eventually(lambda: job_in(client, job.id))
        assert final.state is JobState.INTERRUPTED
        reasons = [
            e.state_change.reason
            for e in client.watch(job.id)
            if isinstance(e, JobEvent) and e.state_change
        ]
        assert sum("lease expired" in r for r in reasons) == 2
    finally:
        worker.close()


def test_delete_removes_the_jobs_own_files_and_never_touches_outside(
    server: Server, client: JobClient, tmp_path: Path
) -> None:
    job = client.submit("with.files")
    data = server.data_dir.absolute()
    job_dir = data / "jobs" / job.id
    job_dir.mkdir(parents=True)
    (job_dir / "log.txt").write_text("log")
    inside = job_dir / "out" / "result.csv"
    inside.parent.mkdir()
    inside.write_text("a,b")
    outside = tmp_path / "outside.txt"
    outside.write_text("precious")
    link = job_dir / "link"
    link.symlink_to(outside)
    worker = RawWorker(server.target)
    try:
        lease = worker.acquire("with.files")
        # Paths the job does not own refuse the whole report.
        for i, bad in enumerate(
            [str(outside), f"jobs/{job.id}/../../../{outside.name}", f"jobs/{job.id}/link/x"]
        ):
            with pytest.raises(grpc.RpcError) as refused:
                worker.log(job.id, lease.lease_id, ["x"], files=[str(inside)] * i + [bad])
            assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
            assert str(refused.value.details()).startswith(f"server_paths[{i}]: {bad!r} is outside")
        worker.log(
            job.id,
            lease.lease_id,
            ["wrote files"],
            files=[str(inside), f"jobs/{job.id}/link"],
        )
        with pytest.raises(FailedPreconditionError):
            client.delete(job.id)  # running: needs force
        worker.finish(job.id, lease.lease_id)
    finally:
        worker.close()
    result = client.delete(job.id)
    assert result.deleted
    assert f"jobs/{job.id}" in result.removed_paths and result.refused_paths == ()
    assert not job_dir.exists() and not link.is_symlink()
    assert outside.read_text() == "precious"
    with pytest.raises(NotFoundError):
        client.get(job.id)
    with pytest.raises(NotFoundError):
        client.delete(job.id)
    assert client.delete(job.id, allow_missing=True).deleted is False


def test_delete_running_with_force(client: JobClient) -> None:
    job = client.submit("demo.sleep", {"seconds": 30})
    eventually(lambda: client.get(job.id).state is JobState.RUNNING)
    assert client.delete(job.id, force=True).deleted
    with pytest.raises(NotFoundError):
        client.get(job.id)


def test_watch_sends_every_event_in_size_bounded_batches(server: Server, client: JobClient) -> None:
    job = client.submit("batch.watch")
    worker = RawWorker(server.target)
    try:
        lease = worker.acquire("batch.watch")
        worker.log(job.id, lease.lease_id, [f"short {i}" for i in range(300)])
        # 40 lines of 30 KB: more than a batch holds, so it must be cut.
        worker.log(job.id, lease.lease_id, [f"{i:02d}" + "y" * 30_000 for i in range(40)])
        worker.finish(job.id, lease.lease_id)
    finally:
        worker.close()
    with grpc.insecure_channel(server.target) as channel:
        stub = job_service_pb2_grpc.JobServiceStub(channel)
        request = job_service_pb2.WatchJobRequest(job_id=job.id)
        responses = list(stub.WatchJob(request, timeout=30))
    batches = [m.events for m in responses[1:]]
    assert [m.WhichOneof("item") for m in responses] == ["snapshot"] + ["events"] * len(batches)
    seqs = [e.seq for b in batches for e in b.events]
    assert seqs == list(range(1, client.get(job.id).last_seq + 1))
    # Far fewer messages than events, yet the 30 KB lines do not fit in one:
    # each message holds about WATCH_BATCH_BYTES (a catch-up read's page,
    # bounded in bytes too, may end a message early).
    total = sum(e.ByteSize() for b in batches for e in b.events)
    assert total // (WATCH_BATCH_BYTES + DEFAULT_MAX_LOG_LINE_BYTES + 1024) <= len(batches)
    assert len(batches) < len(seqs) // 5, [len(b.events) for b in batches]
    for b in batches:
        # cut after the event that reaches the size, so at most one line over
        assert b.ByteSize() < WATCH_BATCH_BYTES + DEFAULT_MAX_LOG_LINE_BYTES + 1024


def test_one_report_is_stored_as_progress_logs_steps_results_and_ignores_output_only_fields(
    server: Server, client: JobClient
) -> None:
    """The order the protos state for one report's events, whatever order
    the request's fields were set in; and the fields marked OUTPUT_ONLY in
    the messages a worker sends (Step.attempts, start_time, end_time;
    LogLine.truncated; ResultItem.replaced_status) are the server's, not
    the worker's."""
    job = client.submit("report.order")
    worker = RawWorker(server.target)
    try:
        lease = worker.acquire("report.order")
        report = worker_service_pb2.ReportJobRequest(job_id=job.id, lease_id=lease.lease_id)
        report.results.add(
            key="k",
            status=job_pb2.RESULT_STATUS_SUCCEEDED,
            replaced_status=job_pb2.RESULT_STATUS_FAILED,
        )
        step = report.steps.add(name="s", state=job_pb2.STEP_STATE_SUCCEEDED, attempts=99)
        step.start_time.FromSeconds(1)
        step.end_time.FromSeconds(2)
        report.logs.add(text="one", truncated=True)
        report.logs.add(text="two")
        report.progress.done = 1
        worker.stub.ReportJob(report, timeout=30)
    finally:
        worker.close()
    with grpc.insecure_channel(server.target) as channel:
        stub = job_service_pb2_grpc.JobServiceStub(channel)
        watch = stub.WatchJob(job_service_pb2.WatchJobRequest(job_id=job.id), timeout=30)
        events: list[job_pb2.JobEvent] = []
        for response in watch:
            events.extend(response.events.events)
            if len(events) >= 7:
                watch.cancel()
                break
    kinds = [e.WhichOneof("payload") for e in events]
    assert kinds == ["state_change"] * 2 + ["progress", "log", "log", "step", "result_item"]
    _, _, _, one, _, stored_step, item = events
    assert one.log.text == "one" and not one.log.truncated
    assert stored_step.step.attempts == 0  # counted by the server: it never ran RUNNING
    assert stored_step.step.start_time.seconds > 2 and stored_step.step.end_time.seconds > 2
    assert item.result_item.replaced_status == job_pb2.RESULT_STATUS_UNSPECIFIED


def test_list_filters_and_pages(client: JobClient) -> None:
    ids = [
        client.submit("demo.sleep", {"seconds": 0}, labels={"suite": "list-1"}).id for _ in range(7)
    ]
    listed = [j.id for j in client.list(labels={"suite": "list-1"}, page_size=3)]
    assert listed == list(reversed(ids))
    assert all(j.kind == "demo.sleep" for j in client.list(kinds=["demo.sleep"], page_size=5))
    assert list(client.list(labels={"suite": "no-such"})) == []


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda c: c.get("../etc/passwd"), "job_id"),
        (lambda c: c.get("bad\x00id"), "job_id"),
        (lambda c: c.submit("Bad Kind!"), "kind"),
        (lambda c: c.submit("demo.sleep", labels={"k": "v\x00"}), "labels"),
        (lambda c: c.submit("demo.sleep", max_attempts=1000), "max_attempts"),
        (lambda c: list(c.list(page_size=-1)), "page_size"),
        (lambda c: list(c.watch("some-job", after_seq=-5)), "after_seq"),
    ],
)
def test_bad_input_is_invalid_argument_naming_the_field(
    client: JobClient, call: object, field: str
) -> None:
    before = [j.id for j in client.list()]
    with pytest.raises(InvalidArgumentError) as info:
        call(client)  # type: ignore[operator]
    assert field in str(info.value)
    assert [j.id for j in client.list()] == before


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda c: c.submit("demo.sleep", {"blob": "x" * 300_000}), "params"),
        (lambda c: c.submit("demo.sleep", _nested(33)), "params"),
        (lambda c: c.submit("demo.sleep", labels={f"k{i}": "v" for i in range(40)}), "labels"),
        (lambda c: c.submit("demo.sleep", labels={"k": "v" * 300}), "labels"),
    ],
)
def test_input_over_a_per_request_limit_is_invalid_argument_naming_field_and_limit(
    client: JobClient, call: object, field: str
) -> None:
    # A bound on one request (size, depth, count) can never be met by
    # sending it again: INVALID_ARGUMENT. RESOURCE_EXHAUSTED is kept for
    # accumulated state (log lines and artifacts per job, watchers).
    before = [j.id for j in client.list()]
    with pytest.raises(InvalidArgumentError) as info:
        call(client)  # type: ignore[operator]
    assert field in str(info.value) and "limit" in str(info.value)
    assert [j.id for j in client.list()] == before


def _nested(depth: int) -> dict[str, object]:
    value: dict[str, object] = {}
    for _ in range(depth):
        value = {"a": value}
    return value


def test_unknown_job_is_not_found_everywhere(client: JobClient) -> None:
    for call in (
        lambda: client.get("no-such-job"),
        lambda: client.cancel("no-such-job"),
        lambda: client.delete("no-such-job"),
        lambda: list(client.logs("no-such-job")),
        lambda: list(client.results("no-such-job")),
        lambda: list(client.watch("no-such-job")),
    ):
        with pytest.raises(NotFoundError):
            call()


@pytest.mark.both_backends
def test_nul_is_refused_in_text_and_kept_in_params_on_every_backend(
    server: Server, client: JobClient
) -> None:
    # PostgreSQL cannot store NUL in text: free-text fields refuse it with the
    # field named, and JSON values keep it escaped, the same on both backends.
    job = client.submit("nul.test", {"s": "a\x00b", "k\x00": 1})
    assert client.get(job.id).params == {"s": "a\x00b", "k\x00": 1}
    worker = RawWorker(server.target)
    try:
        lease = worker.acquire("nul.test")
        with pytest.raises(grpc.RpcError) as info:
            worker.log(job.id, lease.lease_id, ["fine", "not\x00fine"])
        assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert "logs[1].text" in (info.value.details() or "")
        assert client.get(job.id).last_seq == 2  # nothing of the batch was stored
        worker.finish(job.id, lease.lease_id)
    finally:
        worker.close()
