"""Demo handlers, for trying jobstream out and for tests::

    jobstream worker --handlers jobstream.client.demo
    jobstream submit demo.count -p n=20

``demo.sleep`` (async) sleeps ``seconds`` (default 1) and honours cancel;
``demo.count`` counts to ``n`` (default 100) with ``delay`` seconds (default
0.01) per item, reporting progress, phases, steps, a log line and a result
per item, with a checkpoint after each: a rerun (after its worker stopped,
or died) resumes after the last item stored, and a stopping worker's
``demo.count`` gives its job back at once; ``demo.fail`` raises (and is
retried); ``demo.fatal`` fails for good; ``demo.report`` writes a CSV of
``n`` rows (default 1000) and uploads it as the artifact ``report.csv``, to
try ``jobstream artifacts`` and ``jobstream download``.
"""

from __future__ import annotations

import asyncio
import csv
import tempfile
import time
from pathlib import Path
from typing import Any

from jobstream.client.worker import (
    FatalJobError,
    Handlers,
    JobCancelled,
    JobContext,
    JobReleased,
)

__all__ = ["handlers"]

handlers = Handlers()
"""The demo handlers, by kind."""

_SLEEP_SLICE = 0.05
"""demo.sleep checks for cancellation this often, in seconds."""


def _number(ctx: JobContext, name: str, default: float) -> float:
    value = ctx.params.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise FatalJobError(
            f"params.{name} must be a number >= 0, not {value!r}", code="bad_params"
        )
    return float(value)


@handlers.handler("demo.sleep")
async def sleep(ctx: JobContext) -> dict[str, Any]:
    """Sleep ``params.seconds`` (default 1), stopping early when cancelled."""
    seconds = _number(ctx, "seconds", 1.0)
    ctx.progress(0, 0, message=f"sleeping {seconds:g}s")
    loop = asyncio.get_running_loop()
    start = loop.time()
    while (elapsed := loop.time() - start) < seconds:
        ctx.check_cancelled()
        ctx.progress(fraction=elapsed / seconds)
        await asyncio.sleep(min(_SLEEP_SLICE, seconds - elapsed))
    return {"slept": seconds}


@handlers.handler("demo.count")
def count(ctx: JobContext) -> dict[str, Any]:
    """Count to ``params.n`` (default 100), ``params.delay`` seconds apart."""
    n = int(_number(ctx, "n", 100))
    delay = _number(ctx, "delay", 0.01)
    done = int((ctx.checkpoint_data or {}).get("done", 0))
    ctx.phase("count")
    if done:
        ctx.log(f"resuming after item {done} of {n}")
    with ctx.step_scope("count"):
        for i in range(done + 1, n + 1):
            if ctx.stopping:
                ctx.log(f"worker stopping after item {i - 1} of {n}; a rerun resumes there")
                raise JobReleased()
            if ctx.cancelled:
                raise JobCancelled(f"cancelled at {i - 1} of {n}")
            ctx.log(f"item {i} of {n}")
            ctx.result_item(f"item-{i}", data={"i": i, "square": i * i})
            ctx.progress(i, n, message=f"item {i}")
            ctx.checkpoint({"done": i})
            if delay:
                time.sleep(delay)
    ctx.phase("summarise")
    with ctx.step_scope("summarise"):
        ctx.log(f"counted {n} items")
    return {"total": n}


@handlers.handler("demo.fail")
def fail(ctx: JobContext) -> None:
    """Always fails with a retryable error."""
    ctx.log("about to fail", level="error")
    raise RuntimeError(str(ctx.params.get("message", "demo.fail always fails")))


@handlers.handler("demo.fatal")
def fatal(ctx: JobContext) -> None:
    """Always fails, and is not retried."""
    raise FatalJobError(str(ctx.params.get("message", "demo.fatal fails for good")), code="fatal")


REPORT_NAME = "report.csv"
"""The artifact demo.report uploads."""

_REPORT_PROGRESS_EVERY = 1_000
"""demo.report reports progress every this many rows."""


@handlers.handler("demo.report")
def report(ctx: JobContext) -> dict[str, Any]:
    """Write a CSV of ``params.n`` rows (default 1000) and upload it as the
    artifact ``report.csv``."""
    n = int(_number(ctx, "n", 1000))
    ctx.phase("write")
    # A directory of its own, not ctx.job_dir: a worker on another host has
    # none, and the upload copies the bytes to the server anyway.
    with tempfile.TemporaryDirectory(prefix="jobstream-demo-") as tmp:
        path = Path(tmp) / REPORT_NAME
        with path.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["row", "square", "label"])
            for i in range(1, n + 1):
                ctx.check_cancelled()
                writer.writerow([i, i * i, f"row {i}"])
                if i % _REPORT_PROGRESS_EVERY == 0:
                    ctx.progress(i, n, message=f"row {i}")
        ctx.progress(n, n)
        ctx.phase("upload")
        artifact = ctx.upload(path, content_type="text/csv")
    ctx.log(f"uploaded {artifact.name}: {artifact.size_bytes} bytes, sha256 {artifact.sha256}")
    return {"rows": n, "artifact": artifact.name, "bytes": artifact.size_bytes}
