"""The Worker against a real server: batching, cancel, retries, async
handlers, flush, prompt stop, and surviving a server restart."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import grpc
import pytest
from conftest import Server, ServerProcess
from helpers import RawWorker, eventually

from jobstream.client import (
    EventKind,
    FatalJobError,
    Handlers,
    Job,
    JobClient,
    JobContext,
    JobEvent,
    JobState,
    StepState,
    Worker,
)
from jobstream.client.security import Security
from jobstream.v1 import job_pb2, worker_service_pb2

WAIT_S = 30.0
"""Deadline of every wait for a job in these tests."""

OUTAGE_S = 0.5
"""How long the restart test's server stays down."""

CANCEL_BOUND = timedelta(seconds=10)
"""Longest a handler that watches ``ctx.cancelled`` may take to stop: a few
flush intervals (the cancel reaches the worker with a report's answer)."""


@contextmanager
def running_worker(target: str, handlers: Handlers, **kwargs: Any) -> Iterator[Worker]:
    """A Worker running in a thread of its own (its own event loop), stopped
    gracefully, with a deadline, on exit."""
    worker = Worker(target, handlers, **kwargs)
    ready = threading.Event()
    loop_box: list[asyncio.AbstractEventLoop] = []
    stop_box: list[asyncio.Event] = []
    failure: list[BaseException] = []

    async def main() -> None:
        loop_box.append(asyncio.get_running_loop())
        stop_box.append(asyncio.Event())
        ready.set()
        run = asyncio.create_task(worker.run_async())
        stop = asyncio.create_task(stop_box[0].wait())
        await asyncio.wait([run, stop], return_when=asyncio.FIRST_COMPLETED)
        await worker.stop(grace=10)
        stop.cancel()
        await run

    def thread_main() -> None:
        try:
            asyncio.run(main())
        except BaseException as exc:
            failure.append(exc)

    thread = threading.Thread(target=thread_main, name="test-worker", daemon=True)
    thread.start()
    assert ready.wait(10)
    try:
        yield worker
    finally:
        loop_box[0].call_soon_threadsafe(stop_box[0].set)
        thread.join(30)
    assert not thread.is_alive(), "the worker did not stop"
    assert not failure, failure


@pytest.fixture
def client(bare_server: Server) -> Iterator[JobClient]:
    with JobClient(bare_server.target, timeout=10) as c:
        yield c


def events_of(client: JobClient, job_id: str) -> list[JobEvent]:
    """Every event of a (terminal) job, from a watch from the start."""
    return [item for item in client.watch(job_id) if isinstance(item, JobEvent)]


def test_many_log_lines_go_in_few_reports(bare_server: Server, client: JobClient) -> None:
    handlers = Handlers()
    lines = 2_000

    @handlers.handler("e2e.batch")
    def chatty(ctx: JobContext) -> dict[str, Any]:
        for i in range(lines):
            ctx.log(f"line {i}")
            ctx.progress(i + 1, lines)
        return {"lines": lines}

    with running_worker(bare_server.target, handlers):
        job = client.submit("e2e.batch")
        final = client.wait(job.id, timeout=WAIT_S)
    assert final.state is JobState.SUCCEEDED
    assert final.result == {"lines": lines}
    assert [e.log.text for e in client.logs(job.id) if e.log] == [f"line {i}" for i in range(lines)]
    events = events_of(client, job.id)
    assert [e.seq for e in events] == list(range(1, final.last_seq + 1))
    # Progress is coalesced to one per ReportJob, and every report here
    # carried some: the progress events count the reports.
    reports = sum(1 for e in events if e.kind is EventKind.PROGRESS)
    assert 1 <= reports <= 20, reports
    assert final.progress.done == lines and final.progress.fraction == 1.0


def test_cancel_stops_a_running_sync_handler(bare_server: Server, client: JobClient) -> None:
    handlers = Handlers()
    started = threading.Event()

    @handlers.handler("e2e.loop")
    def loop_until_cancelled(ctx: JobContext) -> None:
        started.set()
        while not ctx.cancelled:
            time.sleep(0.01)

    with running_worker(bare_server.target, handlers):
        job = client.submit("e2e.loop")
        assert started.wait(WAIT_S)
        asked = client.cancel(job.id, reason="test")
        assert asked.state is JobState.RUNNING and asked.cancel_requested
        final = client.wait(job.id, timeout=WAIT_S)
    assert final.state is JobState.CANCELLED
    assert final.attempt == 1
    # From the request to the end, by the server's clock.
    events = events_of(client, job.id)
    [requested] = [e.event_time for e in events if e.kind is EventKind.CANCEL_REQUESTED]
    ended = events[-1].event_time
    assert requested is not None and ended is not None
    assert ended - requested < CANCEL_BOUND, ended - requested


def test_check_cancelled_in_a_sync_handler(bare_server: Server, client: JobClient) -> None:
    handlers = Handlers()

    @handlers.handler("e2e.check")
    def work(ctx: JobContext) -> None:
        while True:
            ctx.check_cancelled()
            time.sleep(0.01)

    with running_worker(bare_server.target, handlers):
        job = client.submit("e2e.check")
        eventually(lambda: client.get(job.id).state is JobState.RUNNING)
        client.cancel(job.id)
        final = client.wait(job.id, timeout=WAIT_S)
    assert final.state is JobState.CANCELLED
    assert final.error is not None


def test_a_step_left_by_a_cancel_is_stored_cancelled(
    bare_server: Server, client: JobClient
) -> None:
    handlers = Handlers()

    @handlers.handler("e2e.cancel_steps")
    def work(ctx: JobContext) -> None:
        with ctx.step_scope("fetch"):
            pass
        ctx.step("watch")  # running; the handler never ends it
        with ctx.step_scope("loop"):
            while True:
                ctx.check_cancelled()
                time.sleep(0.01)

    with running_worker(bare_server.target, handlers):
        job = client.submit("e2e.cancel_steps")
        eventually(lambda: len(client.get(job.id).steps) == 3)
        client.cancel(job.id)
        final = client.wait(job.id, timeout=WAIT_S)
    assert final.state is JobState.CANCELLED
    assert [(s.name, s.state) for s in final.steps] == [
        ("fetch", StepState.SUCCEEDED),
        ("watch", StepState.CANCELLED),
        ("loop", StepState.CANCELLED),
    ]
    assert all(s.end_time is not None for s in final.steps)


def test_an_exception_is_retried_then_fails(bare_server: Server, client: JobClient) -> None:
    handlers = Handlers()
    calls: list[int] = []

    @handlers.handler("e2e.boom")
    def boom(ctx: JobContext) -> None:
        calls.append(ctx.job.attempt)
        raise ValueError(f"bad attempt {ctx.job.attempt}")

    with running_worker(bare_server.target, handlers):
        job = client.submit("e2e.boom", max_attempts=2)
        final = client.wait(job.id, timeout=WAIT_S)
    assert final.state is JobState.FAILED
    assert calls == [1, 2]
    assert final.attempt == 2
    assert final.error is not None
    assert final.error.code == "ValueError"
    assert final.error.message == "bad attempt 2"
    assert "Traceback" in final.error.details["traceback"]


def test_a_fatal_error_is_not_retried(bare_server: Server, client: JobClient) -> None:
    handlers = Handlers()

    @handlers.handler("e2e.fatal")
    def fatal(ctx: JobContext) -> None:
        raise FatalJobError("bad input", code="bad_input", details={"row": 7})

    with running_worker(bare_server.target, handlers):
        job = client.submit("e2e.fatal", max_attempts=3)
        final = client.wait(job.id, timeout=WAIT_S)
    assert final.state is JobState.FAILED
    assert final.attempt == 1
    assert final.error is not None
    assert (final.error.code, final.error.message, final.error.details) == (
        "bad_input",
        "bad input",
        {"row": 7},
    )


def test_an_async_handler(bare_server: Server, client: JobClient) -> None:
    handlers = Handlers()

    @handlers.handler("e2e.async")
    async def work(ctx: JobContext) -> dict[str, Any]:
        ctx.phase("work")
        with ctx.step_scope("sleep"):
            for i in range(5):
                await asyncio.sleep(0.01)
                ctx.log(f"tick {i}")
                ctx.result_item(f"tick-{i}", data={"i": i})
                ctx.progress(i + 1, 5)
        await ctx.aflush()
        return {"n": ctx.params["n"]}

    with running_worker(bare_server.target, handlers):
        job = client.submit("e2e.async", {"n": 5})
        final = client.wait(job.id, timeout=WAIT_S)
    assert final.state is JobState.SUCCEEDED
    assert final.result == {"n": 5}
    assert final.progress.phase == "work" and final.progress.done == 5
    assert final.counters.succeeded == 5
    assert [(s.name, s.state.value) for s in final.steps] == [("sleep", "succeeded")]
    assert [e.log.text for e in client.logs(job.id) if e.log] == [f"tick {i}" for i in range(5)]
    assert len(list(client.results(job.id))) == 5


def test_flush_makes_updates_visible(bare_server: Server, client: JobClient) -> None:
    handlers = Handlers()

    @handlers.handler("e2e.flush")
    def work(ctx: JobContext) -> dict[str, Any]:
        ctx.log("before flush")
        ctx.flush()
        with JobClient(bare_server.target, timeout=10) as reader:
            seen = [e.log.text for e in reader.logs(ctx.id) if e.log]
        return {"seen": seen}

    # A long flush interval: only flush() can have sent the line in time.
    with running_worker(bare_server.target, handlers, flush_interval=30):
        job = client.submit("e2e.flush")
        final = client.wait(job.id, timeout=WAIT_S)
    assert final.result == {"seen": ["before flush"]}


class AcquireCalls(grpc.aio.UnaryUnaryClientInterceptor):
    """Sees the worker's AcquireJob calls go out, and how each ended."""

    def __init__(self) -> None:
        self.calls: list[grpc.aio.Call] = []

    async def intercept_unary_unary(
        self, continuation: Any, details: grpc.aio.ClientCallDetails, request: Any
    ) -> Any:
        call = await continuation(details, request)
        method = details.method
        if (method.decode() if isinstance(method, bytes) else method).endswith("/AcquireJob"):
            self.calls.append(call)
        return call


@dataclass(frozen=True, kw_only=True, slots=True)
class Observed(Security):
    """Plaintext, with ``acquires`` watching the worker's calls."""

    acquires: AcquireCalls

    def aio_channel(self, target: str, options: Sequence[tuple[str, Any]]) -> grpc.aio.Channel:
        """The worker's channel, through the interceptor."""
        return grpc.aio.insecure_channel(
            target, options=list(options), interceptors=[self.acquires]
        )


def test_stop_cancels_the_long_poll(bare_server: Server) -> None:
    handlers = Handlers()
    handlers.register("e2e.idle", lambda ctx: None)
    acquires = AcquireCalls()

    async def main() -> grpc.aio.Call:
        worker = Worker(
            bare_server.target, handlers, poll_wait=30, security=Observed(acquires=acquires)
        )
        task = asyncio.create_task(worker.run_async())
        deadline = time.monotonic() + WAIT_S
        while not acquires.calls:
            assert time.monotonic() < deadline, "the worker never called AcquireJob"
            await asyncio.sleep(0.01)
        [poll] = acquires.calls
        assert not poll.done()  # nothing to hand out: the server holds it for 30 s
        await asyncio.wait_for(worker.stop(), WAIT_S)
        await asyncio.wait_for(task, WAIT_S)
        return poll

    poll = asyncio.run(main())
    # Cancelled by the worker, not answered by the server after its wait.
    assert poll.cancelled()


def test_stop_with_grace_interrupts_running_jobs(bare_server: Server, client: JobClient) -> None:
    handlers = Handlers()
    started = asyncio.Event()

    @handlers.handler("e2e.long")
    async def long(ctx: JobContext) -> None:
        started.set()
        await asyncio.sleep(60)

    async def main() -> str:
        worker = Worker(bare_server.target, handlers)
        task = asyncio.create_task(worker.run_async())
        job = await asyncio.to_thread(client.submit, "e2e.long", max_attempts=1)
        # Stop once the handler runs: stopping while the lease is still on its
        # way to the worker is a different case (the server releases it).
        await asyncio.wait_for(started.wait(), 15)
        await worker.stop(grace=0.2)
        await asyncio.wait_for(task, 10)
        return job.id

    job_id = asyncio.run(main())
    final = client.get(job_id)
    # Not the user's cancel: the job is released back to the queue and the
    # interrupted attempt does not count (max_attempts=1 still allows a run).
    assert final.state is JobState.QUEUED and final.attempt == 0
    assert final.error is None


def test_worker_and_watch_survive_a_server_restart(
    start_server: Callable[..., ServerProcess],
) -> None:
    server = start_server()
    handlers = Handlers()
    lines = 60

    @handlers.handler("e2e.slow")
    def slow(ctx: JobContext) -> dict[str, Any]:
        for i in range(lines):
            ctx.log(f"line {i}")
            ctx.progress(i + 1, lines)
            time.sleep(0.05)
        return {"lines": lines}

    with running_worker(server.target, handlers), JobClient(server.target, timeout=10) as client:
        job = client.submit("e2e.slow")
        seen: list[Job | JobEvent] = []

        def restart_mid_job() -> None:
            # Killed once the watch has seen part of the job, down for a
            # moment, then back.
            eventually(lambda: len(seen) > lines // 4, timeout=WAIT_S)
            server.kill()
            time.sleep(OUTAGE_S)
            server.restart()

        restarter = threading.Thread(target=restart_mid_job)
        restarter.start()
        for item in client.watch(job.id):
            seen.append(item)
        restarter.join(30)
        final = client.wait(job.id, timeout=WAIT_S)
    assert final.state is JobState.SUCCEEDED
    assert isinstance(seen[0], Job)
    assert not any(isinstance(item, Job) for item in seen[1:])
    seqs = [item.seq for item in seen[1:] if isinstance(item, JobEvent)]
    assert seqs == list(range(1, final.last_seq + 1))


def _next_of(kind: str, worker_id: str = "raw-worker") -> worker_service_pb2.AcquireJobRequest:
    return worker_service_pb2.AcquireJobRequest(worker_id=worker_id, kinds=[kind])


def test_finish_leases_the_next_job_in_the_same_call(
    bare_server: Server, client: JobClient
) -> None:
    """FinishJob with acquire_next ends the attempt and answers the next
    runnable job, leased; with none left, ``next`` is there without a job."""
    first = client.submit("chain", {}, job_id="chain-1")
    client.submit("chain", {}, job_id="chain-2")
    raw = RawWorker(bare_server.target)
    try:
        lease = raw.acquire("chain")
        assert lease.job.id == first.id
        done = raw.finish(first.id, lease.lease_id, acquire_next=_next_of("chain"))
        assert done.job.state == job_pb2.JOB_STATE_SUCCEEDED
        assert done.next.job.id == "chain-2"
        assert done.next.job.state == job_pb2.JOB_STATE_RUNNING
        assert done.next.lease_id
        assert client.get("chain-2").state is JobState.RUNNING
        last = raw.finish("chain-2", done.next.lease_id, acquire_next=_next_of("chain"))
        assert last.job.state == job_pb2.JOB_STATE_SUCCEEDED
        assert last.HasField("next") and not last.next.HasField("job")
        plain = client.submit("chain", {}, job_id="chain-3")
        lease = raw.acquire("chain")
        assert not raw.finish(plain.id, lease.lease_id).HasField("next")
    finally:
        raw.close()
    for job_id in ("chain-1", "chain-2", "chain-3"):
        seqs = [e.seq for e in events_of(client, job_id)]
        assert seqs == list(range(1, len(seqs) + 1)), seqs


def test_a_refused_finish_leases_nothing(bare_server: Server, client: JobClient) -> None:
    """A bad acquire_next (named in the error) or a stale lease refuses the
    whole call: the attempt is not ended and the next job stays queued."""
    client.submit("refused", {}, job_id="refused-1")
    client.submit("refused", {}, job_id="refused-2")
    raw = RawWorker(bare_server.target)
    try:
        lease = raw.acquire("refused")
        with pytest.raises(grpc.RpcError) as bad:
            raw.finish("refused-1", lease.lease_id, acquire_next=_next_of("refused", ""))
        assert bad.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert (bad.value.details() or "").startswith("acquire_next.worker_id: ")
        with pytest.raises(grpc.RpcError) as stale:
            raw.finish("refused-1", "0" * 32, acquire_next=_next_of("refused"))
        assert stale.value.code() is grpc.StatusCode.FAILED_PRECONDITION
        assert client.get("refused-1").state is JobState.RUNNING
        assert client.get("refused-2").state is JobState.QUEUED
        assert raw.finish("refused-1", lease.lease_id).job.state == job_pb2.JOB_STATE_SUCCEEDED
    finally:
        raw.close()


def test_a_worker_runs_a_queue_of_jobs_one_slot_after_another(
    bare_server: Server, client: JobClient
) -> None:
    """With one slot, each job's FinishJob leases the next: all run, in
    order, each exactly once."""
    ran: list[str] = []
    handlers = Handlers()

    @handlers.handler("queue-of-jobs")
    def record(ctx: JobContext) -> None:
        ran.append(ctx.id)

    ids = [f"queued-{i}" for i in range(12)]
    for job_id in ids:
        client.submit("queue-of-jobs", {}, job_id=job_id)
    acquires = AcquireCalls()
    with running_worker(
        bare_server.target, handlers, concurrency=1, security=Observed(acquires=acquires)
    ):
        for job_id in ids:
            assert client.wait(job_id, timeout=WAIT_S).state is JobState.SUCCEEDED
    assert ran == ids
    # The first job came from AcquireJob, the others with FinishJob answers;
    # the last AcquireJob is the long poll left waiting (or a restart's retry).
    assert len(acquires.calls) <= 3, len(acquires.calls)


def test_an_update_is_sent_without_waiting_for_the_flush_interval(
    bare_server: Server, client: JobClient
) -> None:
    """Nothing in flight: a log line and a progress update go out at once,
    not at the next flush interval (30 s here), and without flush()."""
    handlers = Handlers()

    @handlers.handler("e2e.prompt")
    def work(ctx: JobContext) -> dict[str, Any]:
        ctx.log("sent at once")
        ctx.progress(1, 2, message="half")
        with JobClient(bare_server.target, timeout=10) as reader:
            seen = eventually(lambda: [e.log.text for e in reader.logs(ctx.id) if e.log] or None)
            message = eventually(lambda: reader.get(ctx.id).progress.message or None)
        return {"seen": seen, "progress": message}

    with running_worker(bare_server.target, handlers, flush_interval=30):
        job = client.submit("e2e.prompt")
        final = client.wait(job.id, timeout=WAIT_S)
    # One attempt: a retry would find the first attempt's line stored.
    assert final.attempt == 1, final.error
    assert final.result == {"seen": ["sent at once"], "progress": "half"}
