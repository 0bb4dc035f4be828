"""The writer's group commit on a real database, each backend in turn: the
operations queued together share one transaction, and one that fails rolls
back alone (its own writes undone, its caller told, the others stored).
Submits next to each other in a group are stored as one call; when that
call fails, each runs again alone and only the one at fault is refused."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from jobstream.server.db import bind_thread, open_database, unbind_thread
from jobstream.server.domain import Effects, NewJob, Submitted, now_us
from jobstream.server.errors import AlreadyExists, NotFound, ServiceError, Unavailable
from jobstream.server.store import Store
from jobstream.server.writer import Merge, Writer


def spec(job_id: str) -> NewJob:
    """A job to submit under ``job_id``."""
    return NewJob(kind="writer.test", job_id=job_id, params={}, labels={})


class Refused(ServiceError):
    """What the failing operation raises after it wrote."""


async def _one_group(writer: Writer, calls: Sequence[Awaitable[Any]]) -> list[Any]:
    """Queues ``calls`` before the writer thread starts, so they are one
    group; starts it and returns each call's outcome (its error as a value)."""
    futures = [asyncio.ensure_future(call) for call in calls]
    await asyncio.sleep(0)
    writer.start()
    return list(await asyncio.gather(*futures, return_exceptions=True))


def test_a_failed_operation_rolls_back_alone(migrated_url: str) -> None:
    db = open_database(migrated_url)
    bind_thread(db)
    store = Store(db)
    effects_seen: list[Effects] = []

    def submit(job_id: str, *, then_fail: bool = False) -> Callable[[Effects], str]:
        def op(effects: Effects) -> str:
            store.jobs.submit(effects, [spec(job_id)], now_us())
            if then_fail:
                raise Refused(f"{job_id} refused after its insert")
            return job_id

        return op

    async def main() -> list[str | BaseException]:
        writer = Writer(db, asyncio.get_running_loop(), on_commit=[effects_seen.append])
        calls = [
            writer.run(submit("w-a")),
            writer.run(submit("w-b", then_fail=True)),
            writer.run(submit("w-c")),
            writer.run(submit("w-d", then_fail=True)),
        ]
        try:
            return await _one_group(writer, calls)
        finally:
            await asyncio.to_thread(writer.stop)
            assert (writer.groups, writer.ops) == (1, 4)

    try:
        results = asyncio.run(main())
        assert results[0] == "w-a" and results[2] == "w-c"
        assert isinstance(results[1], Refused) and isinstance(results[3], Refused)
        assert store.reads.get_job("w-a").id == "w-a"
        assert store.reads.get_job("w-c").id == "w-c"
        for refused in ("w-b", "w-d"):
            with pytest.raises(NotFound):
                store.reads.get_job(refused)
        # Only what the stored operations did is published.
        [committed] = effects_seen
        assert {e.job_id for e in committed.events} == {"w-a", "w-c"}
    finally:
        db.close()
        unbind_thread()


Call = tuple[Sequence[NewJob], bool]
"""One submit call's input to the submit Merge: its specs, and whether it
was a SubmitJobs."""


def _run_merged(
    migrated_url: str,
    calls: list[Call],
    stored_first: Sequence[NewJob] = (),
    *,
    plain: bool = True,
) -> tuple[list[Submitted | BaseException], list[int], Store, list[Effects]]:
    """Queues ``calls`` (with a plain operation after them, unless not
    ``plain``) before the writer starts, so all are one group, on a store
    already holding ``stored_first``. Returns each call's outcome, the
    number of calls each run of the Merge was given, the store (its thread
    still bound) and the committed effects."""
    db = open_database(migrated_url)
    bind_thread(db)
    store = Store(db)
    store.jobs.submit(Effects(), list(stored_first), now_us())
    runs: list[int] = []
    published: list[Effects] = []

    def submit_calls(effects: Effects, given: Sequence[Call]) -> list[Submitted]:
        runs.append(len(given))
        return store.jobs.submit_calls(effects, given, now_us())

    merge = Merge(submit_calls)

    async def main() -> list[Submitted | BaseException]:
        writer = Writer(db, asyncio.get_running_loop(), on_commit=[published.append])
        ops: list[Awaitable[Any]] = [writer.run_merged(merge, call) for call in calls]
        if plain:
            ops.append(writer.run(lambda c: store.jobs.submit(c, [spec("m-plain")], now_us())))
        try:
            return (await _one_group(writer, ops))[: len(calls)]
        finally:
            await asyncio.to_thread(writer.stop)
            assert (writer.groups, writer.ops) == (1, len(ops))

    return asyncio.run(main()), runs, store, published


def test_submits_in_one_group_are_stored_as_one_call(migrated_url: str) -> None:
    twin = NewJob(kind="writer.test", params={"n": 1}, labels={}, request_id="twin")
    calls: list[Call] = [
        ([spec("m-a")], False),
        ([twin], False),
        ([spec("m-b"), spec("m-c")], True),
        ([twin], False),
    ]
    try:
        results, runs, store, published = _run_merged(migrated_url, calls)
        assert runs == [4]
        answers = [r for r in results if isinstance(r, Submitted)]
        assert len(answers) == 4
        assert [job.id for job, _ in answers[0]] == ["m-a"]
        assert [job.id for job, _ in answers[2]] == ["m-b", "m-c"]
        # The same request_id and payload in two calls: one job, made by the first.
        [(first, made)], [(second, again)] = answers[1], answers[3]
        assert (made, again) == (True, False)
        assert first.id == second.id
        for answer in answers:
            for job, _ in answer:
                assert store.reads.get_job(job.id).create_time == job.create_time
        [committed] = published
        assert {e.job_id for e in committed.events} == {"m-a", "m-b", "m-c", first.id, "m-plain"}
    finally:
        store.db.close()
        unbind_thread()


@pytest.mark.parametrize("plain", [True, False], ids=["beside-another", "alone-in-its-group"])
def test_a_merged_call_that_fails_runs_again_call_by_call(migrated_url: str, plain: bool) -> None:
    """Beside another operation the merged run has a savepoint; as the
    group's only run it has none, and its failure rolls back the whole
    transaction before each call runs again."""
    calls: list[Call] = [
        ([spec("m-d")], False),
        ([spec("m-taken")], False),
        ([spec("m-e"), spec("m-e")], True),
        ([spec("m-f")], False),
    ]
    try:
        results, runs, store, published = _run_merged(
            migrated_url, calls, stored_first=[spec("m-taken")], plain=plain
        )
        # One try together, then each alone.
        assert runs == [4, 1, 1, 1, 1]
        assert isinstance(results[0], Submitted) and isinstance(results[3], Submitted)
        assert [job.id for job, _ in results[0]] == ["m-d"]
        assert [job.id for job, _ in results[3]] == ["m-f"]
        taken, twice = results[1], results[2]
        assert isinstance(taken, AlreadyExists) and taken.field == "job_id"
        # A batch's error names its field by index, as it does alone.
        assert isinstance(twice, AlreadyExists) and twice.field == "requests[1].job_id"
        with pytest.raises(NotFound):
            store.reads.get_job("m-e")
        [committed] = published
        assert {e.job_id for e in committed.events} == {"m-d", "m-f"} | (
            {"m-plain"} if plain else set()
        )
    finally:
        store.db.close()
        unbind_thread()


def test_the_only_operation_of_a_group_that_fails_leaves_nothing(migrated_url: str) -> None:
    """Alone in its group an operation runs without a savepoint: its failure
    rolls back the group's transaction, and the next group starts clean."""
    db = open_database(migrated_url)
    bind_thread(db)
    store = Store(db)
    published: list[Effects] = []

    def submit_then_fail(effects: Effects) -> None:
        store.jobs.submit(effects, [spec("s-half")], now_us())
        raise Refused("refused after its insert")

    async def main() -> tuple[BaseException | None, str]:
        writer = Writer(db, asyncio.get_running_loop(), on_commit=[published.append])
        writer.start()
        try:
            failed: BaseException | None = None
            try:
                await writer.run(submit_then_fail)
            except Refused as exc:
                failed = exc
            made = await writer.run(lambda c: store.jobs.submit(c, [spec("s-next")], now_us()))
            return failed, made[0][0].id
        finally:
            await asyncio.to_thread(writer.stop)
            assert writer.groups == 2

    try:
        failed, made = asyncio.run(main())
        assert isinstance(failed, Refused)
        assert made == "s-next"
        with pytest.raises(NotFound):
            store.reads.get_job("s-half")
        assert [{e.job_id for e in effects.events} for effects in published] == [set(), {"s-next"}]
    finally:
        db.close()
        unbind_thread()


def test_submits_stored_together_keep_their_order(migrated_url: str) -> None:
    """Server-made ids of submits merged into one call count up in the
    order the calls came: equal priorities then run in that order."""
    calls: list[Call] = [
        ([NewJob(kind="writer.test", params={"n": i}, labels={})], False) for i in range(6)
    ]
    try:
        results, runs, store, _ = _run_merged(migrated_url, calls, plain=False)
        assert runs == [6]
        ids = [job.id for answer in results if isinstance(answer, Submitted) for job, _ in answer]
        assert len(ids) == 6 and ids == sorted(ids)
        assert len({store.reads.get_job(job_id).create_time for job_id in ids}) == 1
    finally:
        store.db.close()
        unbind_thread()


def _calls_that_write_then_fail(
    store: Store, names: Sequence[str], bad: str, *, end_transaction: bool = False
) -> Merge[str, str]:
    """A Merge whose call stores a job per name, then fails if ``bad`` is
    among them (after its writes); with ``end_transaction``, it first ends
    the transaction itself, as SQLite does on its own after some errors
    (disk full, I/O error)."""

    def run(effects: Effects, given: Sequence[str]) -> list[str]:
        store.jobs.submit(effects, [spec(name) for name in given], now_us())
        if bad in given:
            if end_transaction:
                store.db.execute_sql("ROLLBACK")  # type: ignore[no-untyped-call]
            raise Refused(f"{bad} refused after its insert")
        return list(given)

    return Merge(run)


@pytest.mark.parametrize("plain", [True, False], ids=["beside-another", "alone-in-its-group"])
def test_a_merged_run_that_wrote_before_failing_leaves_nothing_of_its_own(
    migrated_url: str, plain: bool
) -> None:
    """The merged call stores every job before it fails: its savepoint, or
    the rollback of the whole transaction when it is the group's only run,
    must undo all of them before each call runs again alone."""
    db = open_database(migrated_url)
    bind_thread(db)
    store = Store(db)
    names = ["x-a", "x-bad", "x-c"]
    merge = _calls_that_write_then_fail(store, names, "x-bad")

    def another(effects: Effects) -> str:
        store.jobs.submit(effects, [spec("x-plain")], now_us())
        return "x-plain"

    async def main() -> list[str | BaseException]:
        writer = Writer(db, asyncio.get_running_loop())
        ops: list[Awaitable[str]] = [writer.run_merged(merge, name) for name in names]
        if plain:
            ops.append(writer.run(another))
        try:
            return (await _one_group(writer, ops))[: len(names)]
        finally:
            await asyncio.to_thread(writer.stop)

    try:
        results = asyncio.run(main())
        assert results[0] == "x-a" and results[2] == "x-c"
        assert isinstance(results[1], Refused)
        assert store.reads.get_job("x-a").id == "x-a"
        assert store.reads.get_job("x-c").id == "x-c"
        with pytest.raises(NotFound):
            store.reads.get_job("x-bad")
    finally:
        db.close()
        unbind_thread()


def test_an_undo_that_fails_fails_the_whole_group(
    tmp_path: Path, _migrated_sqlite_file: Path
) -> None:
    """SQLite may end a transaction on its own (disk full, I/O error); the
    rollback of a failed operation then fails too. Nothing of the group may
    be stored, nor any of it answered as stored: every caller hears
    UNAVAILABLE. (SQLite only: PostgreSQL's driver ignores a rollback with
    no transaction open.)"""
    path = tmp_path / "jobs.db"
    shutil.copyfile(_migrated_sqlite_file, path)
    db = open_database(str(path))
    bind_thread(db)
    store = Store(db)
    names = ["y-a", "y-bad", "y-c"]
    merge = _calls_that_write_then_fail(store, names, "y-bad", end_transaction=True)

    async def main() -> list[str | BaseException]:
        writer = Writer(db, asyncio.get_running_loop())
        try:
            outcomes = await _one_group(writer, [writer.run_merged(merge, n) for n in names])
            # The writer goes on with the next group.
            made = await writer.run(lambda c: store.jobs.submit(c, [spec("y-next")], now_us()))
            assert made[0][0].id == "y-next"
            return outcomes
        finally:
            await asyncio.to_thread(writer.stop)

    try:
        results = asyncio.run(main())
        assert all(isinstance(r, Unavailable) for r in results), results
        for name in names:
            with pytest.raises(NotFound):
                store.reads.get_job(name)
        assert store.reads.get_job("y-next").id == "y-next"
    finally:
        db.close()
        unbind_thread()
