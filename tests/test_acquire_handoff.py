"""A waiting AcquireJob is leased its job in the submit's own commit, on a
real database of each backend: one commit for the submit and the lease (not
two), the job's events gap-free, a waiter whose filters do not match left
waiting, and a waiter whose call went away as its lease committed leaving
no job RUNNING. The writer's parking (park / unpark) underneath it: a
parked operation runs at most once, only in a group that calls for it."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from jobstream.server.broker import Broker
from jobstream.server.db import bind_thread, open_database, unbind_thread
from jobstream.server.domain import Effects, EventKind, JobState, Lease, NewJob, now_us
from jobstream.server.files import FileRoots
from jobstream.server.readers import Readers
from jobstream.server.service import JobService
from jobstream.server.store import Store
from jobstream.server.writer import Writer

WAIT_S = 10.0
"""How long a test's AcquireJob waits for a job (the tests end far sooner)."""

SETTLE_S = 0.2
"""How long a test lets a waiter react to a commit that must not wake it."""

LEASE_US = 30_000_000
"""The lease the tests' service hands out."""

CommitHook = Callable[[Effects], None]


def run_service(
    url: str,
    data_dir: Path,
    body: Callable[[JobService], Awaitable[None]],
    hook: CommitHook | None = None,
) -> None:
    """Runs ``body`` with a job service on ``url`` and its real writer,
    broker and readers; ``hook`` is a commit listener run after the
    broker's."""

    async def main() -> None:
        db = open_database(url)
        bind_thread(db)
        store = Store(db)
        broker = Broker()
        writer = Writer(
            db,
            asyncio.get_running_loop(),
            at_commit=[lambda effects: store.changes.record(effects, now_us())],
            on_commit=[broker.publish, *([hook] if hook else [])],
        )
        writer.start()
        readers = Readers(db, count=1)
        try:
            await body(
                JobService(
                    store=store,
                    writer=writer,
                    readers=readers,
                    broker=broker,
                    roots=FileRoots(data_dir=data_dir),
                    sweep_wanted=asyncio.Event(),
                    lease_us=LEASE_US,
                    max_lease_us=LEASE_US,
                )
            )
        finally:
            broker.close()
            await asyncio.to_thread(writer.stop)
            await asyncio.to_thread(readers.close)
            db.close()
            unbind_thread()

    asyncio.run(main())


async def parked_acquire(service: JobService, kind: str) -> asyncio.Task[list[Lease]]:
    """An AcquireJob for ``kind`` that has looked, found nothing and parked."""
    parked = service.writer.parked
    task = asyncio.create_task(
        service.acquire(
            worker_id="w-handoff", kinds=[kind], queues=["default"], wait_s=WAIT_S, lease_us=None
        )
    )
    while service.writer.parked == parked:
        assert not task.done(), task
        await asyncio.sleep(0.005)
    return task


async def submit(service: JobService, kind: str) -> str:
    submitted = await service.submit([NewJob(kind=kind)])
    [(job, created)] = submitted
    assert created
    return job.id


def test_a_waiting_acquire_takes_the_job_in_the_submits_commit(
    migrated_url: str, tmp_path: Path
) -> None:
    async def body(service: JobService) -> None:
        acquiring = await parked_acquire(service, "handoff.one")
        groups = service.writer.groups
        job_id = await submit(service, "handoff.one")
        [lease] = await asyncio.wait_for(acquiring, WAIT_S)
        # One commit stored the job and leased it: no second group.
        assert service.writer.groups - groups == 1
        assert service.writer.parked == 0
        assert lease.job.id == job_id and lease.job.state is JobState.RUNNING
        job = await service.get(job_id)
        assert (job.state, job.attempt, job.worker_id) == (JobState.RUNNING, 1, "w-handoff")
        assert job.start_time is not None and job.start_time >= job.create_time
        events = await service.events_page(job_id, EventKind.STATE_CHANGE, 0, 100)
        assert [e.seq for e in events] == list(range(1, len(events) + 1))
        assert [e.body["state"] for e in events] == ["queued", "running"]

    run_service(migrated_url, tmp_path, body)


def test_a_waiting_acquire_for_other_kinds_keeps_waiting(migrated_url: str, tmp_path: Path) -> None:
    async def body(service: JobService) -> None:
        acquiring = await parked_acquire(service, "handoff.wanted")
        other = await submit(service, "handoff.other")
        await asyncio.sleep(SETTLE_S)
        assert not acquiring.done() and service.writer.parked == 1
        assert (await service.get(other)).state is JobState.QUEUED
        wanted = await submit(service, "handoff.wanted")
        [lease] = await asyncio.wait_for(acquiring, WAIT_S)
        assert lease.job.id == wanted
        assert (await service.get(other)).state is JobState.QUEUED

    run_service(migrated_url, tmp_path, body)


def test_an_acquire_cancelled_as_its_lease_commits_leaves_the_job_queued(
    migrated_url: str, tmp_path: Path
) -> None:
    acquiring: list[asyncio.Task[list[Lease]]] = []

    def cancel_the_waiter(effects: Effects) -> None:
        # Runs on commit before any caller is answered: the waiter's call
        # goes away after its lease was written, before it could return it.
        if effects.acquirable and acquiring:
            acquiring.pop().cancel()

    async def body(service: JobService) -> None:
        task = await parked_acquire(service, "handoff.gone")
        acquiring.append(task)
        groups = service.writer.groups
        job_id = await submit(service, "handoff.gone")
        with pytest.raises(asyncio.CancelledError):
            await task
        # The submit's commit leased it (one group), the cancelled call
        # gave it back (one more) before it ended.
        assert service.writer.groups - groups == 2
        job = await service.get(job_id)
        assert (job.state, job.attempt) == (JobState.QUEUED, 0)
        events = await service.events_page(job_id, EventKind.STATE_CHANGE, 0, 100)
        assert [e.body["state"] for e in events] == ["queued", "running", "queued"]
        assert "went away" in events[-1].body["reason"]
        again = await service.acquire(
            worker_id="w-next",
            kinds=["handoff.gone"],
            queues=["default"],
            wait_s=0,
            lease_us=None,
        )
        assert [lease.job.id for lease in again] == [job_id]

    run_service(migrated_url, tmp_path, body, cancel_the_waiter)


def test_a_draining_server_leases_nothing_to_waiting_acquires(
    migrated_url: str, tmp_path: Path
) -> None:
    async def body(service: JobService) -> None:
        acquiring = await parked_acquire(service, "handoff.drain")
        service.broker.drain()
        assert await asyncio.wait_for(acquiring, WAIT_S) == []
        assert service.writer.parked == 0
        job_id = await submit(service, "handoff.drain")
        assert (await service.get(job_id)).state is JobState.QUEUED

    run_service(migrated_url, tmp_path, body)


def test_a_parked_operation_runs_once_and_only_when_called_for(tmp_path: Path) -> None:
    db = open_database(str(tmp_path / "jobs.db"))
    bind_thread(db)
    store = Store(db)
    ran: list[str] = []

    def lease_like(name: str) -> Callable[[Effects], str]:
        def op(effects: Effects) -> str:
            ran.append(name)
            return name

        return op

    def wants(kind: str) -> Callable[[Effects], bool]:
        return lambda effects: any(k == kind for _, k in effects.acquirable)

    def submit_op(kind: str) -> Callable[[Effects], object]:
        return lambda c: store.jobs.submit(c, [NewJob(kind=kind)], now_us())

    async def main() -> None:
        writer = Writer(db, asyncio.get_running_loop())
        writer.start()
        try:
            taken = writer.park(wants("p.a"), lease_like("a"))
            kept = writer.park(wants("p.b"), lease_like("b"))
            withdrawn = writer.park(wants("p.a"), lease_like("c"))
            assert writer.unpark(withdrawn)  # never ran, never will
            await writer.run(submit_op("p.a"))
            # Answered with the group that took it, which is gone from the park.
            assert await asyncio.wait_for(taken, WAIT_S) == "a"
            assert not writer.unpark(taken)
            await writer.run(submit_op("p.a"))
            assert ran == ["a"] and not kept.done() and writer.parked == 1
            assert writer.unpark(kept) and writer.parked == 0
            await writer.run(submit_op("p.b"))
            assert ran == ["a"]
        finally:
            await asyncio.to_thread(writer.stop)

    try:
        asyncio.run(main())
    finally:
        db.close()
        unbind_thread()


def test_a_failing_parked_operation_rolls_back_alone(tmp_path: Path) -> None:
    db = open_database(str(tmp_path / "jobs.db"))
    bind_thread(db)
    store = Store(db)

    class Refused(Exception):
        pass

    def fail_after_writing(effects: Effects) -> None:
        store.jobs.submit(effects, [NewJob(kind="p.side", job_id="p-side")], now_us())
        raise Refused

    async def main() -> str:
        writer = Writer(db, asyncio.get_running_loop())
        writer.start()
        try:
            failing = writer.park(lambda effects: bool(effects.acquirable), fail_after_writing)
            submitted = await writer.run(
                lambda c: store.jobs.submit(c, [NewJob(kind="p.main")], now_us())
            )
            with pytest.raises(Refused):
                await asyncio.wait_for(failing, WAIT_S)
            [(job, _)] = submitted
            return job.id
        finally:
            await asyncio.to_thread(writer.stop)

    try:
        job_id = asyncio.run(main())
        assert store.reads.get_job(job_id).state is JobState.QUEUED
        assert not store.reads.job_exists("p-side")
    finally:
        db.close()
        unbind_thread()
