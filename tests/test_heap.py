"""After watches end the server trims the heap, and runs a full collection
on its event loop only when some watch ended by an exception (a cancelled
watch leaves reference cycles; one that ended with its job leaves none).
Counted with the interpreter's own collection statistics, automatic
collection off for the test."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Iterator

import pytest

from jobstream.server.heap import trim_loop
from jobstream.server.quotas import WatcherQuota

TICK_S = 0.01
"""The loop's interval here."""

SETTLE_S = 0.2
"""Long enough for several of its ticks."""


@pytest.fixture
def no_automatic_gc() -> Iterator[None]:
    """Only explicit collections run while the test does."""
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def full_collections() -> int:
    """Full (generation 2) collections so far."""
    return int(gc.get_stats()[2]["collections"])


def test_quota_counts_watches_ended_by_an_exception() -> None:
    quota = WatcherQuota(10, 10)
    with quota.hold("p"):
        pass
    with pytest.raises(asyncio.CancelledError), quota.hold("p"):
        raise asyncio.CancelledError
    assert (quota.released, quota.abandoned, quota.total) == (2, 1, 0)


def test_collects_only_after_a_watch_was_abandoned(no_automatic_gc: None) -> None:
    quota = WatcherQuota(10, 10)

    async def main() -> tuple[int, int]:
        loop = asyncio.create_task(
            trim_loop(lambda: quota.released, lambda: quota.abandoned, every_s=TICK_S)
        )
        try:
            await asyncio.sleep(SETTLE_S)
            before = full_collections()
            for _ in range(3):  # watches that ended with their job
                with quota.hold("p"):
                    pass
                await asyncio.sleep(SETTLE_S / 3)
            quiet = full_collections() - before
            with pytest.raises(asyncio.CancelledError), quota.hold("p"):
                raise asyncio.CancelledError
            await asyncio.sleep(SETTLE_S)
            return quiet, full_collections() - before
        finally:
            loop.cancel()

    quiet, after_abandoned = asyncio.run(main())
    assert quiet == 0
    assert after_abandoned == 1
