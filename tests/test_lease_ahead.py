"""A worker leases short jobs ahead of its free slots, and only short ones.

Against a real server on both backends: a worker running quick jobs asks
for more jobs than it has free slots and sends fewer finish calls than it
runs jobs; a worker running jobs longer than the horizon asks for one job
per free slot; a job in hand that waits too long for its slot, or that the
worker holds when it stops, goes back to the queue at once (its attempt not
counted) and runs later exactly once.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import timedelta

import pytest
from conftest import Server
from helpers import stored_events
from test_batch_leases import Methods, Observed
from test_worker_e2e import running_worker

from jobstream.client import Handlers, JobClient, JobContext, JobState
from jobstream.client.worker import HOLD

pytestmark = pytest.mark.both_backends

T = 30.0
"""Deadline of every wait."""

SLOW_S = 1.6
"""How long the slow job holds the worker's one slot: longer than HOLD."""


@pytest.fixture
def client(bare_server: Server) -> Iterator[JobClient]:
    with JobClient(bare_server.target, timeout=10) as c:
        yield c


def _handlers(kind: str, slept: threading.Event | None = None) -> Handlers:
    """``kind`` returns at once, unless its params ask it to sleep (then it
    sets ``slept`` first)."""
    handlers = Handlers()

    @handlers.handler(kind)
    def run(ctx: JobContext) -> None:
        sleep = float(ctx.params.get("sleep", 0))
        if sleep and slept is not None:
            slept.set()
        time.sleep(sleep)

    return handlers


def _releases(client: JobClient, job_id: str) -> list[float]:
    """When the job was given back before it finished, in seconds since the epoch."""
    return [
        e.event_time.timestamp()
        for e in stored_events(client, job_id)
        if e.event_time is not None
        and e.state_change is not None
        and e.state_change.reason.startswith("released by worker")
    ]


def _one_final_success(client: JobClient, job_id: str) -> None:
    job = client.wait(job_id, timeout=T)
    assert job.state is JobState.SUCCEEDED, job
    finals = [
        e
        for e in stored_events(client, job_id)
        if e.state_change is not None and e.state_change.state.terminal
    ]
    assert len(finals) == 1, finals
    # A run given back before it started is not an attempt.
    assert job.attempt == 1, job


def test_quick_jobs_are_leased_ahead_and_finished_in_fewer_calls(
    bare_server: Server, client: JobClient
) -> None:
    seen = Methods()
    ids = [client.submit("ahead-quick", {}, job_id=f"ahead-quick-{i}").id for i in range(80)]
    with running_worker(
        bare_server.target, _handlers("ahead-quick"), concurrency=1, security=Observed(seen=seen)
    ):
        for job_id in ids:
            assert client.wait(job_id, timeout=T).state is JobState.SUCCEEDED
    assert max(seen.next_jobs) > 1, seen.next_jobs  # more than its one slot
    assert set(seen.max_jobs) == {1}, seen.max_jobs  # a long-poll: one per free slot
    finishes = seen.names.count("FinishJob") + seen.names.count("FinishJobs")
    assert finishes < len(ids) / 2, seen.names
    for job_id in ids[:10]:
        _one_final_success(client, job_id)


def test_long_jobs_are_not_leased_ahead(bare_server: Server, client: JobClient) -> None:
    seen = Methods()
    # 0.1 s a job: one slot starts one job each 0.1 s, outside the 50 ms horizon.
    ids = [
        client.submit("ahead-long", {"sleep": 0.1}, job_id=f"ahead-long-{i}").id for i in range(5)
    ]
    with running_worker(
        bare_server.target, _handlers("ahead-long"), concurrency=1, security=Observed(seen=seen)
    ):
        for job_id in ids:
            assert client.wait(job_id, timeout=T).state is JobState.SUCCEEDED
    assert seen.max_jobs and set(seen.max_jobs) == {1}, seen.max_jobs
    assert seen.next_jobs and set(seen.next_jobs) == {1}, seen.next_jobs
    for job_id in ids:
        assert not _releases(client, job_id)
        _one_final_success(client, job_id)


def _queue_behind_a_slow_job(client: JobClient, kind: str) -> tuple[str, list[str]]:
    """Quick jobs, a slow one, and quick jobs behind it: the worker leases
    some of those ahead while the slow one holds its one slot."""
    for i in range(20):
        client.submit(kind, {}, job_id=f"{kind}-before-{i}")
    slow = client.submit(kind, {"sleep": SLOW_S}, job_id=f"{kind}-slow").id
    behind = [client.submit(kind, {}, job_id=f"{kind}-after-{i}").id for i in range(6)]
    return slow, behind


def test_a_job_held_too_long_for_a_slot_is_given_back(
    bare_server: Server, client: JobClient
) -> None:
    kind = "ahead-held"
    slow, behind = _queue_behind_a_slow_job(client, kind)
    with running_worker(bare_server.target, _handlers(kind), concurrency=1, prefetch=3):
        for job_id in behind:
            _one_final_success(client, job_id)
    ran = client.get(slow)
    assert ran.start_time is not None and ran.end_time is not None
    released = [t for job_id in behind for t in _releases(client, job_id)]
    assert released, "no job was held while the slow one ran"
    for at in released:
        # Given back while the slow job still held the slot, after HOLD.
        assert ran.start_time.timestamp() + HOLD - 0.2 <= at < ran.end_time.timestamp()


def test_a_stopping_worker_gives_back_the_jobs_in_hand(
    bare_server: Server, client: JobClient
) -> None:
    kind = "ahead-stop"
    slow, behind = _queue_behind_a_slow_job(client, kind)
    started = threading.Event()
    with running_worker(bare_server.target, _handlers(kind, started), concurrency=1, prefetch=3):
        # Started, not only RUNNING: a job leased ahead is RUNNING while held.
        assert started.wait(T)
        stopped = time.time()
        # Leaving the block stops the worker (gracefully: the slow job ends).
    ran = client.get(slow)
    assert ran.state is JobState.SUCCEEDED
    assert ran.start_time is not None and ran.end_time is not None
    assert ran.end_time - ran.start_time >= timedelta(seconds=SLOW_S)
    released = [t for job_id in behind for t in _releases(client, job_id)]
    assert released, "no job was in hand when the worker stopped"
    for at in released:
        assert at < stopped + 0.75 * HOLD  # at the stop, not when HOLD ran out
    for job_id in behind:
        assert client.get(job_id).state is JobState.QUEUED
        assert client.get(job_id).attempt in (0, 1)
