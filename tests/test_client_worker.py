"""The worker's pieces without a server: the Handlers registry, and what a
JobContext reports into its ReportBuffer (coalesced progress, ordered
updates, batch limits, acknowledgement, back-pressure)."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import eventually

from jobstream.client import FatalJobError, Handlers, JobCancelled, JobContext, Worker, demo
from jobstream.client.context import Cancellation
from jobstream.client.models import Job, JobState, Progress
from jobstream.client.reports import (
    MAX_BATCH_BYTES,
    MAX_BATCH_ITEMS,
    MAX_PENDING_ITEMS,
    ReportBuffer,
)
from jobstream.client.worker import default_worker_id
from jobstream.v1 import job_pb2

WAIT_S = 5.0
"""Deadline of every wait for a thread or a task in these tests."""


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.fixture
def reports(loop: asyncio.AbstractEventLoop) -> ReportBuffer:
    """The buffer the context below reports into, as an attempt holds it."""
    return ReportBuffer(loop, Progress())


@pytest.fixture
def cancellation() -> Cancellation:
    """The context's stop flag, as an attempt holds it."""
    return Cancellation()


@pytest.fixture
def ctx(reports: ReportBuffer, cancellation: Cancellation) -> JobContext:
    job = Job(id="j", kind="k", state=JobState.RUNNING, params={"n": 2})
    return JobContext(job, reports, cancellation=cancellation)


def in_thread(fn: Any) -> threading.Thread:
    thread = threading.Thread(target=fn, daemon=True)
    thread.start()
    return thread


# -- Handlers


def test_handlers_register_and_look_up() -> None:
    handlers = Handlers()

    @handlers.handler("a.sync")
    def sync(ctx: JobContext) -> dict[str, Any]:
        return {}

    @handlers.handler("a.async")
    async def asynchronous(ctx: JobContext) -> None:
        return None

    assert handlers.kinds == ("a.async", "a.sync")
    assert handlers.get("a.sync") is sync and "a.async" in handlers and len(handlers) == 2
    assert handlers.get("missing") is None
    handlers.register("a.sync", sync)  # the same function again is fine
    with pytest.raises(ValueError, match="already has a handler"):
        handlers.register("a.sync", asynchronous)
    with pytest.raises(ValueError, match="not a valid job kind"):
        handlers.register("Bad Kind", sync)


def test_handlers_update_merges() -> None:
    merged = Handlers()
    merged.update(demo.handlers)
    assert merged.kinds == ("demo.count", "demo.fail", "demo.fatal", "demo.report", "demo.sleep")
    merged.update(demo.handlers)  # idempotent


def test_worker_registers_on_its_handlers() -> None:
    worker = Worker("127.0.0.1:1")

    @worker.handler("w.k")
    def fn(ctx: JobContext) -> None:
        return None

    assert worker.handlers.get("w.k") is fn
    assert worker.worker_id == default_worker_id()
    with pytest.raises(ValueError, match="poll_wait"):
        Worker(poll_wait=61)
    with pytest.raises(ValueError, match="concurrency"):
        Worker(concurrency=0)


def test_run_async_needs_handlers() -> None:
    with pytest.raises(ValueError, match="no handlers"):
        asyncio.run(Worker("127.0.0.1:1").run_async())


def test_stop_before_run_makes_run_return() -> None:
    async def main() -> None:
        worker = Worker("127.0.0.1:1", demo.handlers)
        await worker.stop()
        await asyncio.wait_for(worker.run_async(), 5)

    asyncio.run(main())


def test_stop_ends_a_worker_that_cannot_reach_its_server(caplog: pytest.LogCaptureFixture) -> None:
    # Nothing listens on port 1: the worker fails to acquire and backs off.
    # The long-poll of a reachable server is test_worker_e2e's.
    async def main() -> None:
        worker = Worker("127.0.0.1:1", demo.handlers, poll_wait=20)
        task = asyncio.create_task(worker.run_async())
        deadline = time.monotonic() + WAIT_S
        while not any("cannot acquire" in r.getMessage() for r in caplog.records):
            assert time.monotonic() < deadline, "the worker never tried to acquire"
            await asyncio.sleep(0.01)
        await asyncio.wait_for(worker.stop(), WAIT_S)
        await asyncio.wait_for(task, WAIT_S)

    with caplog.at_level(logging.WARNING, logger="jobstream.client.worker"):
        asyncio.run(main())


def test_fatal_job_error_code() -> None:
    assert FatalJobError("x").code == "FatalJobError"
    assert FatalJobError("x", code="bad_input", details={"row": 3}).details == {"row": 3}


# -- JobContext


def test_params_and_id(ctx: JobContext) -> None:
    assert ctx.id == "j" and ctx.params == {"n": 2} and ctx.job.kind == "k"


def test_progress_is_coalesced_and_derived(ctx: JobContext, reports: ReportBuffer) -> None:
    for i in range(1, 101):
        ctx.progress(i, 200, message=f"item {i}")
    ctx.phase("enrich")
    batch = reports.take_batch()
    assert batch is not None and batch.progress is not None
    assert batch.progress == job_pb2.Progress(
        fraction=0.5, done=100, total=200, phase="enrich", message="item 100"
    )
    assert reports.take_batch() is None  # nothing left
    ctx.progress(fraction=0.75)
    batch = reports.take_batch()
    assert batch is not None and batch.progress is not None
    assert (batch.progress.fraction, batch.progress.done, batch.progress.phase) == (
        0.75,
        100,
        "enrich",
    )


def test_updates_keep_their_order(ctx: JobContext, reports: ReportBuffer) -> None:
    ctx.log("one")
    ctx.step("fetch")
    ctx.log("two\n", level="warning", stream="stderr")
    ctx.result_item("row-1", data={"x": 1})
    ctx.result_item("row-2", "failed", error="bad")
    ctx.add_file("/data/out.csv")
    batch = reports.take_batch()
    assert batch is not None and batch.progress is None
    assert [line.text for line in batch.logs] == ["one", "two"]
    assert batch.logs[1].level == job_pb2.LOG_LEVEL_WARNING and batch.logs[1].stream == "stderr"
    assert [s.name for s in batch.steps] == ["fetch"]
    assert batch.steps[0].state == job_pb2.STEP_STATE_RUNNING
    assert [(r.key, r.status) for r in batch.results] == [
        ("row-1", job_pb2.RESULT_STATUS_SUCCEEDED),
        ("row-2", job_pb2.RESULT_STATUS_FAILED),
    ]
    assert batch.files == ["/data/out.csv"]


def test_job_dir_is_made_on_first_use_under_the_files_root(
    ctx: JobContext, reports: ReportBuffer, tmp_path: Path
) -> None:
    assert ctx.job_dir is None  # no files root: nothing the server would accept
    job = Job(id="job-1", kind="k", state=JobState.RUNNING)
    rooted = JobContext(job, reports, files_root=tmp_path / "jobs")
    assert not (tmp_path / "jobs").exists()
    made = rooted.job_dir
    assert made == tmp_path / "jobs" / "job-1" and made.is_dir()


def test_bad_values_fail_at_the_call(ctx: JobContext) -> None:
    with pytest.raises(ValueError, match="not a LogLevel"):
        ctx.log("x", level="loud")
    with pytest.raises(ValueError, match="data: not JSON-serialisable"):
        ctx.result_item("k", data={"x": object()})


def test_step_scope(ctx: JobContext, reports: ReportBuffer) -> None:
    with ctx.step_scope("fetch"):
        pass
    with pytest.raises(KeyError), ctx.step_scope("parse"):
        raise KeyError("col")
    batch = reports.take_batch()
    assert batch is not None
    assert [(s.name, s.state, s.error) for s in batch.steps] == [
        ("fetch", job_pb2.STEP_STATE_RUNNING, ""),
        ("fetch", job_pb2.STEP_STATE_SUCCEEDED, ""),
        ("parse", job_pb2.STEP_STATE_RUNNING, ""),
        ("parse", job_pb2.STEP_STATE_FAILED, "'col'"),
    ]


def test_step_scope_left_by_a_cancel_is_cancelled(ctx: JobContext, reports: ReportBuffer) -> None:
    with pytest.raises(JobCancelled), ctx.step_scope("fetch"):
        raise JobCancelled("cancelled at 3 of 10")
    with pytest.raises(asyncio.CancelledError), ctx.step_scope("poll"):
        raise asyncio.CancelledError
    batch = reports.take_batch()
    assert batch is not None
    assert [(s.name, s.state, s.error) for s in batch.steps] == [
        ("fetch", job_pb2.STEP_STATE_RUNNING, ""),
        ("fetch", job_pb2.STEP_STATE_CANCELLED, "cancelled at 3 of 10"),
        ("poll", job_pb2.STEP_STATE_RUNNING, ""),
        ("poll", job_pb2.STEP_STATE_CANCELLED, "cancelled"),
    ]


def test_batches_respect_the_item_limit(ctx: JobContext, reports: ReportBuffer) -> None:
    for i in range(2 * MAX_BATCH_ITEMS + 5):
        ctx.log(f"line {i}")
    sizes = []
    texts: list[str] = []
    while (batch := reports.take_batch()) is not None:
        sizes.append(len(batch.logs))
        texts += [line.text for line in batch.logs]
    assert sizes == [MAX_BATCH_ITEMS, MAX_BATCH_ITEMS, 5]
    assert texts == [f"line {i}" for i in range(2 * MAX_BATCH_ITEMS + 5)]


def test_batches_respect_the_byte_limit(ctx: JobContext, reports: ReportBuffer) -> None:
    line = "x" * 100_000
    for _ in range(25):
        ctx.log(line)
    counts = []
    while (batch := reports.take_batch()) is not None:
        assert sum(m.ByteSize() for m in batch.logs) <= MAX_BATCH_BYTES
        counts.append(len(batch.logs))
    assert sum(counts) == 25 and len(counts) == 3


def test_acknowledge_tracks_what_was_sent(ctx: JobContext, reports: ReportBuffer) -> None:
    ctx.log("a")
    ctx.progress(1, 2)
    ctx.log("b")
    assert reports.take_batch() is not None
    ctx.log("c")  # after the take: not covered by the acknowledgement
    reports.acknowledge()
    assert reports.acknowledged_number == 3
    assert reports.take_batch() is not None
    reports.acknowledge()
    assert reports.acknowledged_number == 4


def test_flush_blocks_a_handler_thread_until_acknowledged(
    ctx: JobContext, reports: ReportBuffer
) -> None:
    ctx.log("a")
    flushed = threading.Event()

    def handler() -> None:
        ctx.flush()
        flushed.set()

    thread = in_thread(handler)
    assert not flushed.wait(0.2)
    assert reports.take_batch() is not None
    reports.acknowledge()
    assert flushed.wait(5)
    thread.join(5)


def test_flush_on_the_loop_thread_is_refused(ctx: JobContext) -> None:
    with pytest.raises(RuntimeError, match="aflush"):
        ctx.flush()


def test_a_full_buffer_blocks_a_handler_thread(ctx: JobContext, reports: ReportBuffer) -> None:
    done = threading.Event()

    def handler() -> None:
        for i in range(MAX_PENDING_ITEMS + 10):
            ctx.log(f"line {i}")
        done.set()

    thread = in_thread(handler)
    assert not done.wait(1.0)
    assert reports.pending == MAX_PENDING_ITEMS
    taken = 0
    while not done.is_set() or reports.pending:
        batch = reports.take_batch()
        taken += len(batch.logs) if batch else 0
        time.sleep(0.001)
    thread.join(5)
    assert taken == MAX_PENDING_ITEMS + 10


def test_closing_releases_and_drops(
    ctx: JobContext, reports: ReportBuffer, cancellation: Cancellation
) -> None:
    done = threading.Event()

    def handler() -> None:
        for _ in range(MAX_PENDING_ITEMS + 1):
            ctx.log("x")
        ctx.flush()
        done.set()

    in_thread(handler)
    # The handler is blocked: the buffer is full and it has one more line.
    eventually(lambda: reports.pending >= MAX_PENDING_ITEMS, timeout=WAIT_S)
    assert not done.is_set()
    cancellation.request("lease_lost")
    reports.close()
    assert done.wait(5)
    assert ctx.cancelled
    ctx.log("after")
    assert reports.take_batch() is None


def test_check_cancelled(ctx: JobContext, cancellation: Cancellation) -> None:
    ctx.check_cancelled()
    cancellation.request("requested")
    cancellation.request("shutdown")  # the first reason sticks
    assert cancellation.reason == "requested"
    with pytest.raises(Exception, match="cancelled") as raised:
        ctx.check_cancelled()
    assert type(raised.value).__name__ == "JobCancelled"


def test_progress_model_default() -> None:
    assert Progress() == Progress(fraction=0.0, done=0, total=0, phase="", message="")
