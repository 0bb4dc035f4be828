"""The writer's idle step (writer.py): it runs between groups until it says
its work is done, and one that fails costs the writes nothing."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from jobstream.server.db import execute, open_database
from jobstream.server.domain import Effects
from jobstream.server.writer import Writer

WAIT_S = 30.0
"""Deadline for what the test waits on the writer thread to do."""


def test_idle_step_runs_until_its_work_is_done(tmp_path: Path) -> None:
    db = open_database(str(tmp_path / "jobs.db"))
    execute(db, 'CREATE TABLE "chore" ("n" INTEGER)')
    left = [3]
    done = threading.Event()

    def chore() -> bool:
        if not left[0]:  # called again later to look for new work: none
            return False
        # Writes in the idle step's own transaction, as the search index does.
        execute(db, 'INSERT INTO "chore" ("n") VALUES (?)', (left[0],))
        left[0] -= 1
        if not left[0]:
            done.set()
        return left[0] > 0

    async def main() -> int:
        writer = Writer(db, asyncio.get_running_loop(), idle=chore)
        writer.start()
        try:
            await writer.run(lambda e: execute(db, 'INSERT INTO "chore" ("n") VALUES (0)'))
            assert await asyncio.to_thread(done.wait, WAIT_S)
        finally:
            writer.stop()
        return left[0]

    assert asyncio.run(main()) == 0
    rows = execute(db, 'SELECT "n" FROM "chore" ORDER BY "n"').fetchall()
    assert rows == [(0,), (1,), (2,), (3,)]  # each step committed
    db.close()


def test_failing_idle_step_leaves_writes_working(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = open_database(str(tmp_path / "jobs.db"))
    failed = threading.Event()

    def broken() -> bool:
        execute(db, 'CREATE TABLE "half_done" ("n" INTEGER)')
        failed.set()
        raise RuntimeError("index unreadable")

    def write(effects: Effects) -> int:
        execute(db, 'CREATE TABLE IF NOT EXISTS "kept" ("n" INTEGER)')
        execute(db, 'INSERT INTO "kept" ("n") VALUES (1)')
        return 1

    async def main() -> list[int]:
        writer = Writer(db, asyncio.get_running_loop(), idle=broken)
        writer.start()
        try:
            assert await asyncio.to_thread(failed.wait, WAIT_S)
            return [await writer.run(write) for _ in range(3)]
        finally:
            writer.stop()

    assert asyncio.run(main()) == [1, 1, 1]
    assert execute(db, 'SELECT count(*) FROM "kept"').fetchone() == (3,)
    # The failed step's transaction rolled back.
    tables = execute(db, "SELECT name FROM sqlite_master WHERE name = 'half_done'").fetchall()
    assert tables == []
    assert "idle step failed; next try in 10 s" in caplog.text
    db.close()
