"""The job handlers the benchmarks run through the real Worker, and the
probe through which the benchmark gates them and reads their timings.

The Worker runs in the benchmark's own event loop, so the handlers are
``async def`` and share asyncio events with the measuring code; times are
``time.perf_counter()`` because both ends of every interval are read in this
one process.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from bench.harness import LOG_LINE_BYTES
from jobstream.client import Handlers, JobContext

LOG_KIND = "bench.log"
"""Logs ``params.lines`` lines as fast as the Worker API takes them."""

LATENCY_KIND = "bench.latency"
"""Notes when it started and returns at once."""

WORKER_QUEUE = "bench"
"""The queue the benchmark worker takes from; submit floods use another."""

YIELD_EVERY = 1_000
"""Lines a handler logs between yields to the event loop: one ReportJob's
worth, so the flusher sends full batches while the handler keeps producing."""

LINE_NUMBER_DIGITS = 8
"""Each line starts with its 0-based number, zero-padded, so watchers can
check that every line came exactly once and in order."""


def log_line(i: int) -> str:
    """Line ``i`` of a benchmark job: its number, padded to LOG_LINE_BYTES."""
    head = f"{i:0{LINE_NUMBER_DIGITS}d} "
    return head + "x" * (LOG_LINE_BYTES - len(head))


def line_number(text: str) -> int:
    """The number :func:`log_line` put in ``text``."""
    return int(text[:LINE_NUMBER_DIGITS])


@dataclass
class Probe:
    """What the benchmark and its handlers share: a gate per job (the
    handler waits on it before logging), and when each handler started and
    had every line acknowledged."""

    gates: dict[str, asyncio.Event] = field(default_factory=dict)
    started: dict[str, float] = field(default_factory=dict)
    started_event: dict[str, asyncio.Event] = field(default_factory=dict)
    acknowledged: dict[str, float] = field(default_factory=dict)
    acknowledged_event: dict[str, asyncio.Event] = field(default_factory=dict)

    def expect(self, job_id: str, *, gated: bool) -> None:
        """Prepares for ``job_id`` before it is submitted."""
        self.started_event[job_id] = asyncio.Event()
        self.acknowledged_event[job_id] = asyncio.Event()
        if gated:
            self.gates[job_id] = asyncio.Event()

    async def wait_started(self, job_id: str) -> float:
        """Waits until the handler of ``job_id`` runs; returns when it began."""
        await self.started_event[job_id].wait()
        return self.started[job_id]

    async def wait_acknowledged(self, job_id: str) -> float:
        """Waits until every line of ``job_id`` was acknowledged by the server
        (so stored); returns when that was."""
        await self.acknowledged_event[job_id].wait()
        return self.acknowledged[job_id]

    def forget(self, job_id: str) -> None:
        """Drops what is kept for a finished job."""
        for table in (
            self.gates,
            self.started,
            self.started_event,
            self.acknowledged,
            self.acknowledged_event,
        ):
            table.pop(job_id, None)

    def _start(self, job_id: str) -> None:
        self.started[job_id] = time.perf_counter()
        event = self.started_event.get(job_id)
        if event is not None:
            event.set()

    def handlers(self) -> Handlers:
        """The benchmark's handler registry, bound to this probe."""
        registry = Handlers()

        @registry.handler(LOG_KIND)
        async def log_lines(ctx: JobContext) -> dict[str, Any]:
            self._start(ctx.id)
            gate = self.gates.get(ctx.id)
            if gate is not None:
                await gate.wait()
            lines = int(ctx.params.get("lines", 0))
            for i in range(lines):
                ctx.log(log_line(i))
                if i % YIELD_EVERY == YIELD_EVERY - 1:
                    await asyncio.sleep(0)
            await ctx.aflush()
            self.acknowledged[ctx.id] = time.perf_counter()
            event = self.acknowledged_event.get(ctx.id)
            if event is not None:
                event.set()
            return {"lines": lines}

        @registry.handler(LATENCY_KIND)
        async def note_start(ctx: JobContext) -> None:
            self._start(ctx.id)

        return registry
