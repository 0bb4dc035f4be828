"""Workers: lease jobs from the server, run their handlers, report what the
handlers say, and finish each attempt.

A handler is a function of one ``JobContext`` registered for a job kind::

    handlers = Handlers()

    @handlers.handler("enrich.companies")
    def enrich(ctx: JobContext) -> dict[str, Any]:
        for i, row in enumerate(rows):
            ctx.check_cancelled()
            ctx.log(f"row {i}")
            ctx.progress(i + 1, len(rows))
        return {"rows": len(rows)}

The worker runs on ``grpc.aio``. An ``async def`` handler runs as a task on
the worker's event loop; a plain function runs in a thread of its own, and
every JobContext method is safe to call from it. What a handler reports is
buffered and sent in batches by one flusher per job.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import logging
import os
import re
import signal
import socket
import threading
import traceback
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import grpc
import grpc.aio
from google.protobuf import duration_pb2
from google.protobuf.message import Message

from jobstream.client.artifacts import file_digest, read_chunks
from jobstream.client.connection import CHANNEL_OPTIONS, DEFAULT_TARGET, Backoff
from jobstream.client.convert import (
    JOB_OUTCOMES,
    LOG_LEVELS,
    RESULT_STATUSES,
    STEP_STATES,
    artifact_from_pb,
    fill_struct,
    job_error_to_pb,
    job_from_pb,
    progress_to_pb,
    time_from_pb,
)
from jobstream.client.errors import JobstreamError, from_rpc_error
from jobstream.client.models import (
    Artifact,
    Job,
    JobError,
    JobOutcome,
    JsonObject,
    LogLevel,
    Progress,
    ResultStatus,
    StepState,
)
from jobstream.client.security import PLAINTEXT, Security
from jobstream.v1 import job_pb2, worker_service_pb2, worker_service_pb2_grpc

__all__ = [
    "FatalJobError",
    "Handler",
    "Handlers",
    "JobCancelled",
    "JobContext",
    "Worker",
]

log = logging.getLogger(__name__)

DEFAULT_CONCURRENCY = 4
"""Jobs a worker runs at once."""

DEFAULT_LEASE_DURATION = 30.0
"""Seconds a lease lasts unless renewed; a dead worker's job is rescued after this."""

DEFAULT_FLUSH_INTERVAL = 0.2
"""Seconds between batches of buffered updates."""

DEFAULT_POLL_WAIT = 20.0
"""Seconds one AcquireJob long-poll waits for a job (the server allows 0..60)."""

ACQUIRE_MARGIN = 5.0
"""Extra seconds on AcquireJob's deadline beyond its wait: the server answers
at the end of the wait, plus the time to commit a lease and send it."""

CALL_TIMEOUT = 10.0
"""Deadline, in seconds, of each ReportJob and FinishJob call."""

CANCEL_POLL_INTERVAL = 2.0
"""A quiet job still reports at least this often (and at least every third
of its lease): the answer is how a worker learns of a cancel request."""

MAX_BATCH_ITEMS = 1000
"""Most log lines, steps, results and files in one ReportJob."""

MAX_BATCH_BYTES = 1 << 20
"""Rough size limit of one ReportJob, in bytes (gRPC's default limit is 4 MiB)."""

MAX_PENDING_ITEMS = 10_000
"""Buffered items at which a sync handler's log()/step()/result_item() blocks
until the flusher catches up, so a fast handler cannot exhaust memory."""

FORCE_GRACE = 5.0
"""Seconds handlers get to stop after a forced stop before their jobs are
abandoned (their leases then expire on the server)."""

MAX_ERROR_MESSAGE_CHARS = 4_000
"""Longest error message sent with a failed job."""

MAX_TRACEBACK_CHARS = 16_000
"""Longest traceback sent with a failed job (its tail is kept)."""

_FATAL_ACQUIRE_CODES = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNIMPLEMENTED,
    }
)
"""AcquireJob errors that retrying cannot fix: the worker stops with them."""

_LEASE_LOST_CODES = frozenset({grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.NOT_FOUND})
"""ReportJob/FinishJob answers meaning the lease is gone (expired, moved on,
or the job was deleted)."""

_TRANSIENT_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.INTERNAL,
    }
)
"""ReportJob/FinishJob errors retried (while the lease may still be alive)."""

_KIND = re.compile(r"[a-z0-9][a-z0-9._-]{0,127}")
"""A valid job kind (as the server checks it)."""


# ------------------------------------------------------------ handler API


class JobCancelled(Exception):
    """Raised by ``JobContext.check_cancelled`` (or by a handler) to stop a
    job that was asked to stop; the attempt ends CANCELLED."""


class FatalJobError(Exception):
    """Raise from a handler to fail the job without retrying it.

    ``code`` defaults to the exception's class name; ``details`` is a JSON
    object stored with the error.
    """

    def __init__(
        self, message: str = "", *, code: str | None = None, details: JsonObject | None = None
    ) -> None:
        super().__init__(message)
        self.code = code or type(self).__name__
        self.details = dict(details or {})


HandlerResult = JsonObject | None
"""What a handler returns: the job's result, or None."""

Handler = Callable[["JobContext"], HandlerResult | Awaitable[HandlerResult]]
"""A job handler: ``def f(ctx) -> dict | None`` or ``async def f(ctx) -> dict | None``."""

H = TypeVar("H", bound=Handler)


class Handlers:
    """A registry of handlers by job kind.

    A handlers module exposes one as a module-level ``handlers`` for
    ``jobstream worker --handlers`` and ``jobstream serve --handlers``.
    """

    def __init__(self) -> None:
        self._by_kind: dict[str, Handler] = {}

    def handler(self, kind: str) -> Callable[[H], H]:
        """Decorator: register the function as the handler of ``kind``."""

        def register(fn: H) -> H:
            self.register(kind, fn)
            return fn

        return register

    def register(self, kind: str, fn: Handler) -> None:
        """Register ``fn`` for ``kind``; a kind has one handler."""
        if not _KIND.fullmatch(kind):
            raise ValueError(
                f"kind {kind!r} is not a valid job kind ([a-z0-9][a-z0-9._-]{{0,127}})"
            )
        existing = self._by_kind.get(kind)
        if existing is not None and existing is not fn:
            raise ValueError(f"kind {kind!r} already has a handler: {existing!r}")
        self._by_kind[kind] = fn

    def update(self, other: Handlers) -> None:
        """Add every handler of ``other`` (a kind already here must be the same handler)."""
        for kind, fn in other._by_kind.items():
            self.register(kind, fn)

    def get(self, kind: str) -> Handler | None:
        """The handler for ``kind``, or None."""
        return self._by_kind.get(kind)

    @property
    def kinds(self) -> tuple[str, ...]:
        """The registered kinds, sorted."""
        return tuple(sorted(self._by_kind))

    def __contains__(self, kind: object) -> bool:
        return kind in self._by_kind

    def __len__(self) -> int:
        return len(self._by_kind)

    def __repr__(self) -> str:
        return f"Handlers({', '.join(self.kinds)})"


# ------------------------------------------------------------- JobContext


@dataclass(slots=True)
class _Batch:
    """One ReportJob's worth of buffered updates."""

    progress: job_pb2.Progress | None = None
    logs: list[job_pb2.LogLine] = field(default_factory=list)
    steps: list[job_pb2.Step] = field(default_factory=list)
    results: list[job_pb2.ResultItem] = field(default_factory=list)
    files: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class _Item:
    """A buffered update: its mutation number, where it goes, its size."""

    number: int
    target: str
    payload: Message | str
    size: int


class JobContext:
    """What a handler gets: the job, and the means to report on it.

    Every method may be called from the handler's thread (sync handlers) or
    the event loop (async handlers). Updates are buffered and sent in
    batches; the latest progress wins, log lines, steps, results and files
    are sent in order and none is dropped while the lease is held.
    """

    def __init__(
        self, job: Job, loop: asyncio.AbstractEventLoop, *, files_root: Path | None = None
    ) -> None:
        self.job = job
        """The job as acquired (RUNNING)."""
        self.id = job.id
        """The job's id."""
        self.params: JsonObject = job.params
        """The job's params."""
        self._job_dir = files_root / job.id if files_root is not None else None
        self._loop = loop
        self._loop_thread = threading.get_ident()
        self._cond = threading.Condition()
        self._items: deque[_Item] = deque()
        self._bytes = 0
        self._progress = job.progress
        self._progress_number = 0  # mutation number of the oldest unsent progress; 0: none
        self._number = 0  # mutations so far
        self._acked = 0  # every mutation up to this number was acknowledged
        self._wake_sent = False
        self._closed = False
        self._cancel_reason: str | None = None
        self._wake = asyncio.Event()
        self._acked_event = asyncio.Event()
        # Set by the job's run: sends a file over the worker's channel.
        self._uploader: Callable[[Path, str, str], Awaitable[Artifact]] | None = None

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
        return self._cancel_reason is not None

    def check_cancelled(self) -> None:
        """Raise JobCancelled if the job was asked to stop."""
        if self._cancel_reason is not None:
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
        with self._cond:
            current = self._progress
            new_done = current.done if done is None else done
            new_total = current.total if total is None else total
            if fraction is None:
                fraction = new_done / new_total if new_total > 0 else current.fraction
            self._set_progress_locked(
                replace(
                    current,
                    done=new_done,
                    total=new_total,
                    fraction=min(1.0, max(0.0, fraction)),
                    message=current.message if message is None else message,
                )
            )

    def phase(self, name: str) -> None:
        """Set the name of the current phase (progress.phase)."""
        with self._cond:
            self._set_progress_locked(replace(self._progress, phase=name))

    def log(self, text: str, level: LogLevel | str = LogLevel.INFO, stream: str = "") -> None:
        """Write a log line (a trailing newline is dropped)."""
        line = job_pb2.LogLine(
            level=LOG_LEVELS.to_pb(level), text=text.rstrip("\r\n"), stream=stream
        )
        self._enqueue("logs", line)

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
        self._enqueue("steps", msg)

    @contextmanager
    def step_scope(self, name: str, *, data: Mapping[str, Any] | None = None) -> Iterator[None]:
        """``with ctx.step_scope("fetch"):`` — the step is running inside the
        block, succeeded after it, cancelled if a cancel stops it
        (JobCancelled, or the handler's task cancelled), failed (with the
        error) if anything else is raised."""
        self.step(name, StepState.RUNNING, data=data)
        try:
            yield
        except (JobCancelled, asyncio.CancelledError) as exc:
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
        self._enqueue("results", msg)

    def add_file(self, path: str | os.PathLike[str]) -> None:
        """Record a file the job wrote, as the server sees it (absolute, or
        relative to the server's data directory); the server deletes it with
        the job. It must lie inside one of the job's own directories:
        ``ctx.job_dir``, or ``ROOT/<job id>/`` under an ``--output-root`` of
        the server; the server refuses any other path (the whole report, with
        INVALID_ARGUMENT). A worker on another host uploads its outputs with
        ``upload`` instead, or writes them under an output root it shares
        with the server."""
        self._enqueue("files", os.fspath(path))

    def upload(
        self, path: str | os.PathLike[str], name: str | None = None, *, content_type: str = ""
    ) -> Artifact:
        """Upload a file as an artifact of this job (``name`` defaults to the
        file's name; one of the same name is replaced) and return it once the
        server has stored it. Updates reported before it are sent first.
        Sync handlers only: async handlers ``await ctx.aupload(...)``.
        Raises JobstreamError when the server refuses it (e.g. a bad name)."""
        if self._on_loop_thread():
            raise RuntimeError("upload() would block the event loop; use `await ctx.aupload()`")
        future = asyncio.run_coroutine_threadsafe(
            self.aupload(path, name, content_type=content_type), self._loop
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

    def flush(self) -> None:
        """Block until everything reported so far is acknowledged by the
        server (or the lease is lost). Sync handlers only: async handlers
        ``await ctx.aflush()``."""
        if self._on_loop_thread():
            raise RuntimeError("flush() would block the event loop; use `await ctx.aflush()`")
        with self._cond:
            target = self._number
            self._wake_sent = True
        self._wake_flusher()
        with self._cond:
            while self._acked < target and not self._closed:
                self._cond.wait()

    async def aflush(self) -> None:
        """Wait until everything reported so far is acknowledged (async handlers)."""
        with self._cond:
            target = self._number
            self._wake_sent = True
        self._wake.set()
        while True:
            with self._cond:
                if self._acked >= target or self._closed:
                    return
            self._acked_event.clear()
            await self._acked_event.wait()

    # -- internals used by the handler side

    def _on_loop_thread(self) -> bool:
        return threading.get_ident() == self._loop_thread

    def _wake_flusher(self) -> None:
        if self._on_loop_thread():
            self._wake.set()
            return
        # A closed loop means the worker is gone, and this job's lease with it.
        with suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._wake.set)

    def _set_progress_locked(self, value: Progress) -> None:
        if self._closed:
            return
        self._number += 1
        self._progress = value
        if not self._progress_number:
            self._progress_number = self._number

    def _enqueue(self, target: str, payload: Message | str) -> None:
        size = payload.ByteSize() if isinstance(payload, Message) else len(payload.encode())
        with self._cond:
            # Only a handler thread may wait: blocking the loop thread would
            # stop the very flusher that makes room.
            if not self._on_loop_thread():
                while len(self._items) >= MAX_PENDING_ITEMS and not self._closed:
                    self._cond.wait()
            if self._closed:
                return
            self._number += 1
            self._items.append(_Item(self._number, target, payload, size))
            self._bytes += size
            full = len(self._items) >= MAX_BATCH_ITEMS or self._bytes >= MAX_BATCH_BYTES
            wake = full and not self._wake_sent
            if wake:
                self._wake_sent = True
        if wake:
            self._wake_flusher()

    # -- internals used by the flusher (event loop thread)

    def _cancel(self, reason: str) -> None:
        if self._cancel_reason is None:
            self._cancel_reason = reason

    def _rearm(self) -> None:
        with self._cond:
            self._wake_sent = False
            self._wake.clear()

    def _take_batch(self) -> _Batch | None:
        with self._cond:
            if self._closed or (not self._items and not self._progress_number):
                return None
            batch = _Batch()
            if self._progress_number:
                batch.progress = progress_to_pb(self._progress)
                self._progress_number = 0
            count = size = 0
            while self._items and count < MAX_BATCH_ITEMS:
                item = self._items[0]
                if count and size + item.size > MAX_BATCH_BYTES:
                    break
                self._items.popleft()
                count += 1
                size += item.size
                getattr(batch, item.target).append(item.payload)
            self._bytes -= size
            self._cond.notify_all()  # room for a handler blocked in _enqueue
            return batch

    def _acknowledge(self) -> None:
        with self._cond:
            unsent = [n for n in (self._progress_number,) if n]
            if self._items:
                unsent.append(self._items[0].number)
            self._acked = min(unsent) - 1 if unsent else self._number
            self._cond.notify_all()
        self._acked_event.set()

    def _close(self) -> None:
        with self._cond:
            self._closed = True
            self._items.clear()
            self._bytes = 0
            self._progress_number = 0
            self._cond.notify_all()
        self._acked_event.set()


# --------------------------------------------------------------- one job


@dataclass(frozen=True, slots=True)
class _Outcome:
    """How an attempt ends."""

    outcome: JobOutcome
    result: JsonObject | None = None
    error: JobError | None = None
    retryable: bool = False


def _failure(
    code: str, message: str, *, retryable: bool, details: JsonObject | None = None
) -> _Outcome:
    return _Outcome(
        JobOutcome.FAILED,
        error=JobError(
            code=code, message=message[:MAX_ERROR_MESSAGE_CHARS], details=dict(details or {})
        ),
        retryable=retryable,
    )


def _run_in_thread(fn: Handler, ctx: JobContext, name: str) -> asyncio.Future[Any]:
    """Run a sync handler in a daemon thread of its own.

    Not ``asyncio.to_thread``: the default executor is shared with whatever
    else runs on the loop (the server's own blocking calls, when the worker
    is embedded) and a long handler must not starve it; and a daemon thread
    that ignores a forced stop does not keep the process alive.
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[Any] = loop.create_future()
    context = contextvars.copy_context()

    def settle(result: Any, error: BaseException | None) -> None:
        if future.done():
            return  # abandoned: nobody waits for it any more
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)

    def target() -> None:
        result: Any = None
        error: BaseException | None = None
        try:
            result = context.run(fn, ctx)
        except Exception as exc:
            error = exc
        except BaseException as exc:
            # SystemExit/KeyboardInterrupt set on a task would stop the
            # whole event loop (the server's too, when embedded).
            error = RuntimeError(f"handler raised {type(exc).__name__}: {exc}")
            error.__cause__ = exc
        with suppress(RuntimeError):  # the loop is closed: nobody is waiting
            loop.call_soon_threadsafe(settle, result, error)

    threading.Thread(target=target, name=name, daemon=True).start()
    return future


class _JobRun:
    """One leased job: runs its handler, flushes its updates, finishes it."""

    def __init__(
        self,
        *,
        stub: Any,
        job: Job,
        lease_id: str,
        lease_seconds: float,
        handler: Handler | None,
        flush_interval: float,
        files_root: Path | None = None,
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.stub = stub
        self.job = job
        self.lease_id = lease_id
        self.lease_seconds = lease_seconds
        self.handler = handler
        self.flush_interval = flush_interval
        self.report_every = min(lease_seconds / 3, CANCEL_POLL_INTERVAL)
        self.ctx = JobContext(job, self.loop, files_root=files_root)
        self.lease_lost = False
        self._closing = False
        self.handler_task: asyncio.Task[Any] | None = None
        self.handler_done = False
        self._lease_deadline = self.loop.time() + lease_seconds
        self._last_report = self.loop.time()
        # Numbers this lease's reports so the server can tell a retry (after
        # a lost answer) from a new batch and store it once.
        self._report_seq = 0
        if job.cancel_requested:
            self.ctx._cancel("requested")
        self.ctx._uploader = self._upload

    def interrupt(self) -> None:
        """The worker is stopping: ask the handler to stop now."""
        self.ctx._cancel("shutdown")
        if self.handler_task is not None:
            self.handler_task.cancel()

    async def run(self) -> None:
        """Run the attempt to its end (or until the lease is lost)."""
        flusher = asyncio.create_task(self._flush_loop(), name=f"jobstream-flush-{self.job.id}")
        try:
            outcome = await self._call_handler()
            self.handler_done = True
            await self._drain_flusher(flusher)
            if self.lease_lost:
                log.warning("job %s: lease lost; not finishing it", self.job.id)
                return
            await self._finish(outcome)
        finally:
            flusher.cancel()
            self.ctx._close()

    # -- the handler

    async def _call_handler(self) -> _Outcome:
        fn = self.handler
        if fn is None:
            return _failure(
                "no_handler", f"this worker has no handler for {self.job.kind!r}", retryable=False
            )
        try:
            if inspect.iscoroutinefunction(fn):
                self.handler_task = asyncio.ensure_future(fn(self.ctx))
                result = await self.handler_task
            else:
                result = await _run_in_thread(fn, self.ctx, f"jobstream-job-{self.job.id}")
                if inspect.isawaitable(result):
                    result = await result
        except JobCancelled as exc:
            return self._cancelled(str(exc))
        except FatalJobError as exc:
            return _failure(exc.code, str(exc), retryable=False, details=exc.details)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # this run itself is being abandoned
            return self._cancelled("")  # interrupt() cancelled the handler's task
        except Exception as exc:
            trace = "".join(traceback.format_exception(exc))[-MAX_TRACEBACK_CHARS:]
            log.info("job %s: handler raised %s: %s", self.job.id, type(exc).__name__, exc)
            return _failure(
                type(exc).__name__, str(exc), retryable=True, details={"traceback": trace}
            )
        if self.ctx.cancelled:
            return self._cancelled("")
        if result is not None and not isinstance(result, Mapping):
            return _failure(
                "invalid_result",
                f"the handler returned a {type(result).__name__}, not a dict or None",
                retryable=False,
            )
        return _Outcome(JobOutcome.SUCCEEDED, result=dict(result) if result is not None else None)

    def _cancelled(self, message: str) -> _Outcome:
        if self.ctx._cancel_reason == "shutdown":
            # Not the user's cancel: the job goes back to the queue to run
            # again elsewhere, and this attempt does not count.
            return _Outcome(JobOutcome.RELEASED)
        return _Outcome(
            JobOutcome.CANCELLED,
            error=JobError(code="cancelled", message=message or "cancelled while running"),
        )

    # -- reporting

    async def _flush_loop(self) -> None:
        while not self.lease_lost:
            with suppress(TimeoutError):
                await asyncio.wait_for(self.ctx._wake.wait(), self.flush_interval)
            closing = self._closing
            self.ctx._rearm()
            due = self.loop.time() - self._last_report >= self.report_every
            if not await self._send_pending(renew=due) or closing:
                return

    async def _drain_flusher(self, flusher: asyncio.Task[None]) -> None:
        """Let the flusher send what is left, then end.

        Not flusher.cancel(): a batch is taken from the buffer just before it
        is sent, so cancelling a send in flight would lose it.
        """
        self._closing = True
        self.ctx._wake.set()
        await flusher

    async def _send_pending(self, *, renew: bool) -> bool:
        """Send everything buffered (or an empty renewal when ``renew``);
        False once the lease is lost."""
        sent = False
        while True:
            batch = self.ctx._take_batch()
            if batch is None:
                if sent or not renew:
                    return not self.lease_lost
                batch = _Batch()
            if not await self._report(batch):
                return False
            sent = True

    async def _report(self, batch: _Batch) -> bool:
        self._report_seq += 1
        request = worker_service_pb2.ReportJobRequest(
            job_id=self.job.id,
            lease_id=self.lease_id,
            report_seq=self._report_seq,
            logs=batch.logs,
            steps=batch.steps,
            results=batch.results,
            files=batch.files,
        )
        if batch.progress is not None:
            request.progress.CopyFrom(batch.progress)
        try:
            response = await self._call("ReportJob", request)
        except JobstreamError as exc:
            # Retrying a refused batch would refuse it forever; the rest of
            # the job's updates still go through.
            items = len(batch.logs) + len(batch.steps) + len(batch.results) + len(batch.files)
            log.error("job %s: ReportJob refused (%s); dropped %d updates", self.job.id, exc, items)
            self.ctx._acknowledge()
            return True
        if response is None:
            return False
        self._last_report = self.loop.time()
        if response.cancel_requested:
            self.ctx._cancel("requested")
        self.ctx._acknowledge()
        return True

    async def _finish(self, outcome: _Outcome) -> None:
        request = worker_service_pb2.FinishJobRequest(
            job_id=self.job.id,
            lease_id=self.lease_id,
            outcome=JOB_OUTCOMES.to_pb(outcome.outcome),
            retryable=outcome.retryable,
        )
        if outcome.result is not None:
            try:
                fill_struct(request.result, outcome.result, what="result")
            except ValueError as exc:
                outcome = _failure("invalid_result", str(exc), retryable=False)
                return await self._finish(outcome)
        if outcome.error is not None:
            request.error.CopyFrom(job_error_to_pb(outcome.error))
        try:
            response = await self._call("FinishJob", request)
        except JobstreamError as exc:
            if outcome.outcome is JobOutcome.SUCCEEDED:
                # Typically a result over the server's size limit: the job
                # still has to end, and the reason belongs on it.
                log.error("job %s: result refused (%s)", self.job.id, exc)
                await self._finish(_failure("result_refused", exc.message, retryable=False))
            else:
                log.error("job %s: FinishJob refused: %s", self.job.id, exc)
            return
        if response is not None:
            log.info("job %s (%s): %s", self.job.id, self.job.kind, outcome.outcome.value)

    async def _upload(self, path: Path, name: str, content_type: str) -> Artifact:
        """UploadArtifact: hash the file, then stream it in chunks. Not
        retried: a half-sent stream cannot be resumed, and the handler
        decides whether to try again."""
        # What was reported before the upload is stored before its event.
        await self.ctx.aflush()
        size, digest = await asyncio.to_thread(file_digest, path)
        header = worker_service_pb2.ArtifactHeader(
            job_id=self.job.id,
            lease_id=self.lease_id,
            name=name,
            content_type=content_type,
            size_bytes=size,
            sha256=digest,
        )

        async def requests() -> AsyncIterator[worker_service_pb2.UploadArtifactRequest]:
            yield worker_service_pb2.UploadArtifactRequest(header=header)
            chunks = read_chunks(path)
            try:
                while chunk := await asyncio.to_thread(next, chunks, b""):
                    yield worker_service_pb2.UploadArtifactRequest(chunk=chunk)
            finally:
                chunks.close()  # closes the file when the call ends early

        try:
            response = await self.stub.UploadArtifact(requests())
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from exc
        # The server renewed the lease when it stored the artifact.
        self._lease_deadline = self.loop.time() + self.lease_seconds
        return artifact_from_pb(response.artifact)

    async def _call(self, method: str, request: Message) -> Any:
        """A lease-bound call: transient failures are retried while the
        lease may still be alive. None when the lease is lost; raises
        JobstreamError when the server refuses the request itself."""
        backoff = Backoff()
        while True:
            try:
                response = await getattr(self.stub, method)(request, timeout=CALL_TIMEOUT)
            except grpc.RpcError as exc:
                error = from_rpc_error(exc)
                if error.code in _LEASE_LOST_CODES:
                    self._lose_lease(error)
                    return None
                if error.code not in _TRANSIENT_CODES:
                    raise error from exc
                if self.loop.time() >= self._lease_deadline:
                    self._lose_lease(error)
                    return None
                delay = backoff.next()
                log.debug(
                    "job %s: %s failed (%s); retrying in %.1fs", self.job.id, method, error, delay
                )
                await asyncio.sleep(delay)
                continue
            self._lease_deadline = self.loop.time() + self.lease_seconds
            return response

    def _lose_lease(self, error: JobstreamError) -> None:
        if not self.lease_lost:
            log.warning("job %s: lease lost (%s): %s", self.job.id, error.code.name, error.message)
        self.lease_lost = True
        self.ctx._cancel("lease_lost")
        self.ctx._close()


# ---------------------------------------------------------------- Worker


def default_worker_id() -> str:
    """``host:pid``, restricted to the characters a worker id may hold."""
    host = re.sub(r"[^A-Za-z0-9._@-]", "-", socket.gethostname())[:100] or "worker"
    return f"{host}:{os.getpid()}"


def _duration(seconds: float) -> duration_pb2.Duration:
    value = duration_pb2.Duration()
    value.FromTimedelta(timedelta(seconds=seconds))
    return value


class Worker:
    """Leases jobs of the kinds its handlers know and runs them.

    ``concurrency`` jobs run at once (a job is only acquired when a slot is
    free); ``lease_duration`` is asked of the server for each lease;
    updates are sent every ``flush_interval`` seconds; each AcquireJob
    waits up to ``poll_wait`` seconds for a job. A worker survives server
    restarts: it backs off and tries again.

    ``files_root`` is a directory the server shares at the same path (its
    data directory's ``jobs`` folder, or one of its output roots):
    each job's ``ctx.job_dir`` is ``files_root/<job id>``. Without it
    ``ctx.job_dir`` is None.

    ``run()`` blocks and handles SIGINT/SIGTERM; ``await run_async()`` runs
    inside an existing event loop (installing no signal handlers) until
    ``await stop()``, or until its task is cancelled. A worker runs once.
    """

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        handlers: Handlers | None = None,
        *,
        worker_id: str | None = None,
        queues: tuple[str, ...] = ("default",),
        concurrency: int = DEFAULT_CONCURRENCY,
        lease_duration: float = DEFAULT_LEASE_DURATION,
        flush_interval: float = DEFAULT_FLUSH_INTERVAL,
        poll_wait: float = DEFAULT_POLL_WAIT,
        security: Security = PLAINTEXT,
        files_root: str | os.PathLike[str] | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, not {concurrency}")
        if lease_duration <= 0 or flush_interval <= 0:
            raise ValueError("lease_duration and flush_interval must be positive")
        if not 0 <= poll_wait <= 60:
            raise ValueError(f"poll_wait must be within 0..60 seconds, not {poll_wait}")
        self.target = target
        self.handlers = handlers if handlers is not None else Handlers()
        self.worker_id = worker_id or default_worker_id()
        self.queues = tuple(queues)
        self.concurrency = concurrency
        self.lease_duration = lease_duration
        self.flush_interval = flush_interval
        self.poll_wait = poll_wait
        self.security = security
        self.files_root = Path(files_root).absolute() if files_root is not None else None
        self._running = False
        self._stopping = False
        self._stopped = asyncio.Event()
        self._acquirer: asyncio.Task[None] | None = None
        self._jobs: dict[str, tuple[_JobRun, asyncio.Task[None]]] = {}

    def handler(self, kind: str) -> Callable[[H], H]:
        """Decorator: register a handler for ``kind`` on this worker's Handlers."""
        return self.handlers.handler(kind)

    @property
    def running_jobs(self) -> tuple[str, ...]:
        """Ids of the jobs running now."""
        return tuple(self._jobs)

    # -- lifecycle

    def run(self) -> None:
        """Run until SIGINT/SIGTERM. The first signal stops acquiring and
        lets running jobs finish; a second one stops them."""
        asyncio.run(self._run_with_signals())

    async def _run_with_signals(self) -> None:
        loop = asyncio.get_running_loop()
        received = 0

        def on_signal(sig: signal.Signals) -> None:
            nonlocal received
            received += 1
            if received == 1:
                log.warning(
                    "%s: finishing %d running job(s); send it again to stop them now",
                    sig.name,
                    len(self._jobs),
                )
                self._request_stop()
            else:
                log.warning("%s: stopping running jobs", sig.name)
                self._force_stop()

        installed: list[signal.Signals] = []
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, on_signal, sig)
                installed.append(sig)
            except (NotImplementedError, RuntimeError, ValueError):
                pass  # not the main thread, or no loop signal support (Windows)
        try:
            await self.run_async()
        finally:
            for sig in installed:
                loop.remove_signal_handler(sig)

    async def run_async(self) -> None:
        """Acquire and run jobs until stopped; then wait for running jobs.

        Cancelling the task that runs this stops everything at once: handlers
        are asked to stop, given FORCE_GRACE seconds, then abandoned.
        """
        kinds = self.handlers.kinds
        if not kinds:
            raise ValueError("the worker has no handlers")
        if self._running:
            raise RuntimeError("the worker is already running")
        if self._stopping:
            return  # stop() came first
        self._running = True
        channel = self.security.aio_channel(self.target, CHANNEL_OPTIONS)
        stub = worker_service_pb2_grpc.WorkerServiceStub(channel)
        log.info(
            "worker %s: running %s from queue(s) %s at %s (concurrency %d)",
            self.worker_id,
            ", ".join(kinds),
            ", ".join(self.queues),
            self.target,
            self.concurrency,
        )
        acquirer = asyncio.create_task(self._acquire_loop(stub, kinds), name="jobstream-acquire")
        self._acquirer = acquirer
        try:
            # asyncio.wait, not await: stop() cancels the acquirer, and that
            # must not look like this task being cancelled.
            await asyncio.wait([acquirer])
            await self._drain()
            error = None if acquirer.cancelled() else acquirer.exception()
            if error is not None:
                raise error
        except asyncio.CancelledError:
            self._stopping = True
            acquirer.cancel()
            await self._shutdown_now()
            raise
        finally:
            self._running = False
            await channel.close(None)
            self._stopped.set()
            log.info("worker %s: stopped", self.worker_id)

    async def stop(self, *, grace: float | None = None) -> None:
        """Stop acquiring (at once, cancelling the long-poll) and wait for the
        running jobs; after ``grace`` seconds (None: no limit) stop them too.
        Returns when the worker has stopped."""
        self._request_stop()
        if not self._running:
            return
        try:
            await asyncio.wait_for(self._stopped.wait(), grace)
        except TimeoutError:
            self._force_stop()
            await self._stopped.wait()

    def _request_stop(self) -> None:
        if not self._stopping:
            self._stopping = True
            log.info("worker %s: stopping", self.worker_id)
        if self._acquirer is not None:
            self._acquirer.cancel()

    def _force_stop(self) -> None:
        self._request_stop()
        for run, _ in self._jobs.values():
            run.interrupt()
        if self._jobs:
            asyncio.get_running_loop().call_later(FORCE_GRACE, self._abandon)

    def _abandon(self) -> None:
        for run, task in list(self._jobs.values()):
            # A job whose handler has returned is only reporting and
            # finishing, bounded by its lease: let it end properly.
            if not run.handler_done:
                log.warning("job %s: handler did not stop; abandoning it", run.job.id)
                task.cancel()

    async def _drain(self) -> None:
        while True:
            tasks = [task for _, task in self._jobs.values() if not task.done()]
            if not tasks:
                return
            await asyncio.wait(tasks)

    async def _shutdown_now(self) -> None:
        for run, _ in self._jobs.values():
            run.interrupt()
        tasks = [task for _, task in self._jobs.values()]
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=FORCE_GRACE)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)

    # -- acquiring

    async def _acquire_loop(self, stub: Any, kinds: tuple[str, ...]) -> None:
        slots = asyncio.Semaphore(self.concurrency)
        backoff = Backoff()
        outage = False
        request = worker_service_pb2.AcquireJobRequest(
            worker_id=self.worker_id,
            kinds=kinds,
            queues=self.queues,
            wait=_duration(self.poll_wait),
            lease_duration=_duration(self.lease_duration),
        )
        while not self._stopping:
            await slots.acquire()
            started = False
            try:
                try:
                    response = await stub.AcquireJob(
                        request, timeout=self.poll_wait + ACQUIRE_MARGIN
                    )
                except grpc.RpcError as exc:
                    error = from_rpc_error(exc)
                    if error.code in _FATAL_ACQUIRE_CODES:
                        log.error("worker %s: AcquireJob refused: %s", self.worker_id, error)
                        raise error from exc
                    delay = backoff.next()
                    if not outage:
                        log.warning(
                            "worker %s: cannot acquire (%s: %s); retrying",
                            self.worker_id,
                            error.code.name,
                            error.message,
                        )
                    outage = True
                    await asyncio.sleep(delay)
                    continue
                if outage:
                    log.info("worker %s: connected again", self.worker_id)
                outage = False
                backoff.reset()
                if response.HasField("job"):
                    try:
                        self._start(stub, response, slots)
                        started = True
                    except Exception:
                        # Only a server breaking the contract gets here; the
                        # lease will expire and the job be retried.
                        log.exception("worker %s: cannot start a leased job", self.worker_id)
            finally:
                if not started:
                    slots.release()

    def _start(self, stub: Any, response: Any, slots: asyncio.Semaphore) -> None:
        job = job_from_pb(response.job)
        lease_seconds = self.lease_duration
        expire = time_from_pb(response, "lease_expire_time")
        if expire is not None and job.start_time is not None:
            # Both times are the server's clock, so skew does not matter;
            # the server may grant less than was asked.
            granted = (expire - job.start_time).total_seconds()
            if 0 < granted < lease_seconds:
                lease_seconds = granted
        run = _JobRun(
            stub=stub,
            job=job,
            lease_id=response.lease_id,
            lease_seconds=lease_seconds,
            handler=self.handlers.get(job.kind),
            flush_interval=self.flush_interval,
            files_root=self.files_root,
        )
        log.debug("job %s (%s): acquired, attempt %d", job.id, job.kind, job.attempt)
        task = asyncio.create_task(run.run(), name=f"jobstream-job-{job.id}")
        self._jobs[job.id] = (run, task)

        def done(task: asyncio.Task[None]) -> None:
            self._jobs.pop(job.id, None)
            slots.release()
            if not task.cancelled() and task.exception() is not None:
                log.error("job %s: worker error", job.id, exc_info=task.exception())

        task.add_done_callback(done)
