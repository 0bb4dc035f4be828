"""Caps on open watch streams, per server and per principal.

Separate from gRPC's ``maximum_concurrent_rpcs``, which counts every call
(unary ones included) and would turn a flood of watchers into refused
submits; this cap refuses only the extra watches, with RESOURCE_EXHAUSTED
naming the limit.
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


class WatcherQuota:
    """Counts open watch streams; ``hold`` refuses one beyond a cap. The
    count is released in ``finally``, so a stream that ends any way at all
    (cancelled, reaped by keepalive, failed) gives its slot back."""

    def __init__(self, max_total: int, max_per_principal: int) -> None:
        self.max_total = max_total
        self.max_per_principal = max_per_principal
        self.total = 0
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
        finally:
            self.total -= 1
            self._by_principal[principal] -= 1
            if not self._by_principal[principal]:
                del self._by_principal[principal]
