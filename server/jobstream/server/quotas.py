"""Caps on open watch streams: per server, per principal, and the watch
memory budget.

Separate from gRPC's ``maximum_concurrent_rpcs``, which counts every call
(unary ones included) and would turn a flood of watchers into refused
submits; these caps refuse only the extra watches, with RESOURCE_EXHAUSTED
naming the limit.

The memory budget: every open watch reserves WATCH_RESERVE_BYTES, what one
watch whose client has stopped reading was measured to cost the server at
most (fault scenario 12), so whatever the watchers do, together they hold
no more than the budget. What a stalled watch holds is bounded piece by
piece: its queue of live events (broker.WATCH_QUEUE_BYTES), its catch-up
page (service.WATCH_PAGE_BYTES) and the message being sent
(limits.WATCH_BATCH_BYTES, held as the message, its bytes and gRPC's copy).
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterator

from jobstream.server.errors import ResourceExhausted

DEFAULT_MAX_WATCHERS = 10_000
"""Open WatchJob + WatchJobs streams per server."""

DEFAULT_MAX_WATCHERS_PER_PRINCIPAL = 1_000
"""Open watch streams per principal (all anonymous callers count as one)."""

MIB = 1024 * 1024
"""Bytes in a MiB."""

DEFAULT_WATCH_MEMORY_BUDGET = 256 * MIB
"""Memory the server lets its open watches hold together (--watch-memory-budget):
a quarter of a 1 GiB machine, room for 512 watchers at WATCH_RESERVE_BYTES
each however they read."""

WATCH_RESERVE_BYTES = 512 * 1024
"""What each open watch reserves from the budget: what one watch whose
client stopped reading was measured to cost the server (about 400 KiB of
resident memory per watcher with 1,000 of them on a job logging 1 KiB
lines; fault scenario 12), with a margin. An
idle watch costs about 36 KiB."""


class WatcherQuota:
    """Counts open watch streams; ``hold`` refuses one beyond a cap. The
    count is released in ``finally``, so a stream that ends any way at all
    (cancelled, reaped by keepalive, failed) gives its slot back."""

    def __init__(
        self,
        max_total: int,
        max_per_principal: int,
        memory_budget: int = DEFAULT_WATCH_MEMORY_BUDGET,
        reserve: int = WATCH_RESERVE_BYTES,
    ) -> None:
        self.max_total = max_total
        self.max_per_principal = max_per_principal
        self.memory_budget = memory_budget
        self.reserve = reserve
        self.max_by_memory = memory_budget // reserve
        """Watches the memory budget has room for."""
        self.total = 0
        self.released = 0
        """Watches ended since the server started (heap.py trims after some end)."""
        self.abandoned = 0
        """Of those, the ones that ended with an exception (cancelled: their
        client went away; or refused): only these leave reference cycles
        behind, which heap.py collects."""
        self._by_principal: Counter[str] = Counter()

    @contextlib.contextmanager
    def hold(self, principal: str) -> Iterator[None]:
        """Occupies one slot for ``principal`` while the block runs."""
        if self.total >= self.max_total:
            raise ResourceExhausted(
                f"{self.total} watch streams are open on this server; the limit is "
                f"{self.max_total} (--max-watchers)",
                metadata={"limit": str(self.max_total), "setting": "--max-watchers"},
            )
        if self.total >= self.max_by_memory:
            raise ResourceExhausted(
                f"{self.total} watch streams are open on this server, each reserving "
                f"{self.reserve // 1024} KiB of the watch memory budget of "
                f"{_size(self.memory_budget)} (--watch-memory-budget); try again later",
                metadata={"limit": str(self.memory_budget), "setting": "--watch-memory-budget"},
            )
        if self._by_principal[principal] >= self.max_per_principal:
            raise ResourceExhausted(
                f"{self._by_principal[principal]} watch streams are open for this principal; "
                f"the limit is {self.max_per_principal} (--max-watchers-per-principal)",
                metadata={
                    "limit": str(self.max_per_principal),
                    "setting": "--max-watchers-per-principal",
                },
            )
        self.total += 1
        self._by_principal[principal] += 1
        try:
            yield
        except BaseException:
            self.abandoned += 1
            raise
        finally:
            self.total -= 1
            self.released += 1
            self._by_principal[principal] -= 1
            if not self._by_principal[principal]:
                del self._by_principal[principal]


def _size(n: int) -> str:
    """``n`` bytes in the largest binary unit that divides it (MiB, KiB)."""
    if n % MIB == 0:
        return f"{n // MIB} MiB"
    return f"{n // 1024} KiB" if n % 1024 == 0 else f"{n} bytes"
