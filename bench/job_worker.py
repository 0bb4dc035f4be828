"""``python -m bench.job_worker TARGET SLOTS``: a standalone jobstream Worker
in a process of its own, as a user runs one, with the handlers of the
job-running benchmarks (T12-T16).

The peers' consumers run in processes of their own too (bench/peers.py), so
every system pays for its worker's CPU on the same two cores.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time

from jobstream.client import Handlers, JobContext, Worker

NOOP_KIND = "bench.noop"
"""Does nothing: what T12-T15 run, so the figure is the system's own cost."""

STAMP_KIND = "bench.stamp"
"""Writes ``params.count`` log lines or progress updates (``params.what``),
one every ``params.interval_s`` seconds (0: as fast as it can), each carrying
the wall-clock time it was written in nanoseconds (T16); it starts after
``params.start_after_s``, so the watcher is following it live by then."""

JOBS_QUEUE = "bench-jobs"
"""The queue of the job-running benchmarks."""

STAMP_YIELD_EVERY = 1_000
"""At full rate, updates written between yields to the event loop."""


def handlers() -> Handlers:
    """The handlers of the benchmark worker process."""
    registry = Handlers()

    @registry.handler(NOOP_KIND)
    async def noop(ctx: JobContext) -> None:
        return None

    @registry.handler(STAMP_KIND)
    async def stamp(ctx: JobContext) -> None:
        count = int(ctx.params["count"])
        interval = float(ctx.params.get("interval_s", 0.0))
        progress = ctx.params.get("what") == "progress"
        await asyncio.sleep(float(ctx.params.get("start_after_s", 0.0)))
        for i in range(count):
            if interval:
                await asyncio.sleep(interval)
            elif i % STAMP_YIELD_EVERY == STAMP_YIELD_EVERY - 1:
                await asyncio.sleep(0)
            written = time.time_ns()
            if progress:
                ctx.progress(i + 1, count, message=str(written))
            else:
                ctx.log(f"{i:08d} {written}")
        await ctx.aflush()

    return registry


def main() -> None:
    """Runs the worker until SIGTERM."""
    target, slots = sys.argv[1], int(sys.argv[2])
    Worker(
        target,
        handlers(),
        worker_id=f"bench-jobs:{os.getpid()}",
        queues=(JOBS_QUEUE,),
        concurrency=slots,
        poll_wait=5.0,
    ).run()


if __name__ == "__main__":
    main()
