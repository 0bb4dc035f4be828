"""The writer's group commit on a real database, each backend in turn: the
operations queued together share one transaction, and one that fails rolls
back alone (its own writes undone, its caller told, the others stored)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from jobstream.server.db import bind_thread, open_database, unbind_thread
from jobstream.server.domain import Effects, NewJob, now_us
from jobstream.server.errors import NotFound, ServiceError
from jobstream.server.store import Store
from jobstream.server.writer import Writer


def spec(job_id: str) -> NewJob:
    """A job to submit under ``job_id``."""
    return NewJob(kind="writer.test", job_id=job_id, params={}, labels={})


class Refused(ServiceError):
    """What the failing operation raises after it wrote."""


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
        # Queued before the writer thread starts: one group.
        calls: list[asyncio.Future[str]] = [
            asyncio.ensure_future(writer.run(submit("w-a"))),
            asyncio.ensure_future(writer.run(submit("w-b", then_fail=True))),
            asyncio.ensure_future(writer.run(submit("w-c"))),
            asyncio.ensure_future(writer.run(submit("w-d", then_fail=True))),
        ]
        await asyncio.sleep(0)
        writer.start()
        try:
            return list(await asyncio.gather(*calls, return_exceptions=True))
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
