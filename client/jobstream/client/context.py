"""JobContext: what a handler gets — the job, and the means to report on it.

Every method may be called from the handler's thread (sync handlers) or the
event loop (async handlers). What it reports goes into the attempt's
:class:`~jobstream.client.reports.ReportBuffer`, which the attempt sends in
batches; whether the handler should stop is the attempt's
:class:`Cancellation`.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

from google.protobuf import struct_pb2

from jobstream.client.convert import LOG_LEVELS, RESULT_STATUSES, STEP_STATES, fill_struct
from jobstream.client.handlers import JobCancelled, JobReleased
from jobstream.client.models import (
    Artifact,
    Job,
    JsonObject,
    LogLevel,
    Progress,
    ResultStatus,
    StepState,
)
from jobstream.client.reports import ReportBuffer
from jobstream.v1 import job_pb2

__all__ = ["MAX_CHECKPOINT_BYTES", "Cancellation", "JobContext", "StopReason", "Uploader"]

MAX_CHECKPOINT_BYTES = 65_536
"""Largest checkpoint, as compact JSON (the server's default
``--max-checkpoint-bytes``): a checkpoint is a position to resume from, not
the job's output."""

StopReason = Literal["requested", "shutdown", "lease_lost"]
"""Why a handler is asked to stop: a user's cancel, the worker stopping, or
the lease gone (the job is no longer this worker's)."""

Uploader = Callable[[Path, str, str], Awaitable[Artifact]]
"""Sends a file (path, artifact name, content type) as an artifact of the
job, over the attempt's lease."""


class Cancellation:
    """Whether, and why, an attempt's handler is asked to stop; the first
    reason sticks."""

    def __init__(self) -> None:
        self.reason: StopReason | None = None
        """Why the handler should stop; None while it may go on."""
        self.stopping = False
        """The worker is stopping: the handler may go on (until the grace
        period ends), or checkpoint and give the job back early."""

    def request(self, reason: StopReason) -> None:
        """Ask the handler to stop for ``reason`` (unless already asked)."""
        if self.reason is None:
            self.reason = reason

    @property
    def requested(self) -> bool:
        """True once the handler was asked to stop."""
        return self.reason is not None


class JobContext:
    """What a handler gets: the job, and the means to report on it.

    Updates are buffered and sent in batches; the latest progress wins, log
    lines, steps, results and files are sent in order and none is dropped
    while the lease is held.
    """

    def __init__(
        self,
        job: Job,
        reports: ReportBuffer,
        *,
        cancellation: Cancellation | None = None,
        uploader: Uploader | None = None,
        files_root: Path | None = None,
    ) -> None:
        self.job = job
        """The job as acquired (RUNNING)."""
        self.id = job.id
        """The job's id."""
        self.params: JsonObject = job.params
        """The job's params."""
        self._reports = reports
        self._cancellation = cancellation or Cancellation()
        self._uploader = uploader
        self._job_dir = files_root / job.id if files_root is not None else None
        self.checkpoint_data: JsonObject | None = job.checkpoint
        """The last checkpoint stored for the job (by this attempt, or an
        earlier one that was released, rescued or retried); None before
        any. A handler that can resume starts from it."""

    @property
    def job_dir(self) -> Path | None:
        """The job's own directory, created on first use, when the worker
        has a ``files_root`` the server shares (the in-process worker of
        ``jobstream serve --handlers`` always has); else None. Files written
        here may be recorded with ``add_file`` and go with the job."""
        if self._job_dir is not None:
            self._job_dir.mkdir(parents=True, exist_ok=True)
        return self._job_dir

    # -- cancellation

    @property
    def cancelled(self) -> bool:
        """True once the job was asked to stop (or the worker stops, or the
        lease was lost): wind down, then return or raise JobCancelled."""
        return self._cancellation.requested

    @property
    def stopping(self) -> bool:
        """True once the worker is stopping (a graceful shutdown): the job
        may run on until the grace period ends, but a handler that can
        resume should ``checkpoint`` and raise JobReleased, so the job is
        queued again at once and the shutdown need not wait."""
        return self._cancellation.stopping or self._cancellation.reason == "shutdown"

    def check_cancelled(self) -> None:
        """Raise JobCancelled if the job was asked to stop."""
        if self._cancellation.requested:
            raise JobCancelled(f"job {self.id} was cancelled")

    # -- updates

    def progress(
        self,
        done: int | None = None,
        total: int | None = None,
        *,
        fraction: float | None = None,
        message: str | None = None,
    ) -> None:
        """Set progress; arguments left out keep their value. Without
        ``fraction`` it is derived from done / total when total > 0."""

        def change(current: Progress) -> Progress:
            new_done = current.done if done is None else done
            new_total = current.total if total is None else total
            new_fraction = fraction
            if new_fraction is None:
                new_fraction = new_done / new_total if new_total > 0 else current.fraction
            return replace(
                current,
                done=new_done,
                total=new_total,
                fraction=min(1.0, max(0.0, new_fraction)),
                message=current.message if message is None else message,
            )

        self._reports.update_progress(change)

    def phase(self, name: str) -> None:
        """Set the name of the current phase (progress.phase)."""
        self._reports.update_progress(lambda current: replace(current, phase=name))

    def log(self, text: str, level: LogLevel | str = LogLevel.INFO, stream: str = "") -> None:
        """Write a log line (a trailing newline is dropped)."""
        line = job_pb2.LogLine(
            level=LOG_LEVELS.to_pb(level), text=text.rstrip("\r\n"), stream=stream
        )
        self._reports.add("logs", line)

    def step(
        self,
        name: str,
        state: StepState | str = StepState.RUNNING,
        *,
        error: str | None = None,
        data: Mapping[str, Any] | None = None,
    ) -> None:
        """Report a named step's state (the server counts attempts and times)."""
        msg = job_pb2.Step(name=name, state=STEP_STATES.to_pb(state), error=error or "")
        if data is not None:
            fill_struct(msg.data, data, what="data")
        self._reports.add("steps", msg)

    @contextmanager
    def step_scope(self, name: str, *, data: Mapping[str, Any] | None = None) -> Iterator[None]:
        """``with ctx.step_scope("fetch"):`` — the step is running inside the
        block, succeeded after it, cancelled if a cancel stops it
        (JobCancelled, or the handler's task cancelled), failed (with the
        error) if anything else is raised."""
        self.step(name, StepState.RUNNING, data=data)
        try:
            yield
        except (JobCancelled, JobReleased, asyncio.CancelledError) as exc:
            self.step(name, StepState.CANCELLED, error=str(exc) or "cancelled")
            raise
        except BaseException as exc:
            self.step(name, StepState.FAILED, error=str(exc) or type(exc).__name__)
            raise
        self.step(name, StepState.SUCCEEDED)

    def result_item(
        self,
        key: str,
        status: ResultStatus | str = ResultStatus.SUCCEEDED,
        *,
        data: Mapping[str, Any] | None = None,
        error: str | None = None,
    ) -> None:
        """Report the outcome of one item (counted in the job's counters)."""
        msg = job_pb2.ResultItem(key=key, status=RESULT_STATUSES.to_pb(status), error=error or "")
        if data is not None:
            fill_struct(msg.data, data, what="data")
        self._reports.add("results", msg)

    def add_file(self, path: str | os.PathLike[str]) -> None:
        """Record a file the job wrote, as the server sees it (absolute, or
        relative to the server's data directory); the server deletes it with
        the job. It must lie inside one of the job's own directories:
        ``ctx.job_dir``, or ``ROOT/<job id>/`` under an ``--output-root`` of
        the server; the server refuses any other path (the whole report, with
        INVALID_ARGUMENT). A worker on another host uploads its outputs with
        ``upload`` instead, or writes them under an output root it shares
        with the server."""
        self._reports.add("files", os.fspath(path))

    def upload(
        self, path: str | os.PathLike[str], name: str | None = None, *, content_type: str = ""
    ) -> Artifact:
        """Upload a file as an artifact of this job (``name`` defaults to the
        file's name; one of the same name is replaced) and return it once the
        server has stored it. Updates reported before it are sent first.
        Sync handlers only: async handlers ``await ctx.aupload(...)``.
        Raises JobstreamError when the server refuses it (e.g. a bad name)."""
        if self._reports.on_loop_thread():
            raise RuntimeError("upload() would block the event loop; use `await ctx.aupload()`")
        future = asyncio.run_coroutine_threadsafe(
            self.aupload(path, name, content_type=content_type), self._reports.loop
        )
        return future.result()

    async def aupload(
        self, path: str | os.PathLike[str], name: str | None = None, *, content_type: str = ""
    ) -> Artifact:
        """Upload a file as an artifact (async handlers); see ``upload``."""
        if self._uploader is None:
            raise RuntimeError("this JobContext is not attached to a running job")
        source = Path(path)
        return await self._uploader(source, name or source.name, content_type)

    def checkpoint(self, data: Mapping[str, Any]) -> None:
        """Store ``data`` (a JSON object of up to MAX_CHECKPOINT_BYTES) as
        the job's resumable state. It is sent with the updates reported
        before it and stored with them in one transaction, so it never
        claims work whose results are not stored. A rerun of the job gets
        it back in ``ctx.checkpoint_data``. Raises ValueError when it is
        not a JSON object or is too large."""
        msg = struct_pb2.Struct()
        fill_struct(msg, data, what="checkpoint")
        size = len(json.dumps(dict(data), separators=(",", ":"), ensure_ascii=False))
        if size > MAX_CHECKPOINT_BYTES:
            raise ValueError(
                f"checkpoint is {size} bytes as JSON; the limit is {MAX_CHECKPOINT_BYTES}"
            )
        self.checkpoint_data = dict(data)
        self._reports.add("checkpoint", msg)

    def flush(self) -> None:
        """Block until everything reported so far is acknowledged by the
        server (or the lease is lost). Sync handlers only: async handlers
        ``await ctx.aflush()``."""
        if self._reports.on_loop_thread():
            raise RuntimeError("flush() would block the event loop; use `await ctx.aflush()`")
        self._reports.wait_acknowledged()

    async def aflush(self) -> None:
        """Wait until everything reported so far is acknowledged (async handlers)."""
        await self._reports.acknowledged()
