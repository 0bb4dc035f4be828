"""One attempt at a leased job: run its handler, send what the handler
reports while the lease is held, and finish the attempt with its outcome.

The handler reports into a :class:`~jobstream.client.reports.ReportBuffer`;
this module's flusher takes batches from it, sends each as a ReportJob
(which renews the lease and answers whether a cancel was requested), and
acknowledges it. A ReportJob or FinishJob answered FAILED_PRECONDITION or
NOT_FOUND means the lease is gone: the handler is asked to stop and nothing
more is sent for the job.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import logging
import threading
import traceback
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc
import grpc.aio
from google.protobuf.message import Message

from jobstream.client.artifacts import file_digest, read_chunks
from jobstream.client.connection import Backoff
from jobstream.client.context import Cancellation, JobContext
from jobstream.client.convert import (
    JOB_OUTCOMES,
    artifact_from_pb,
    fill_struct,
    job_error_to_pb,
)
from jobstream.client.errors import JobstreamError, from_rpc_error
from jobstream.client.finishes import Alone, FinishBatcher, NextJobs
from jobstream.client.handlers import FatalJobError, Handler, JobCancelled, JobReleased
from jobstream.client.models import Artifact, Job, JobError, JobOutcome, JsonObject
from jobstream.client.reports import ReportBatch, ReportBuffer
from jobstream.v1 import worker_service_pb2, worker_service_pb2_grpc

__all__ = ["TRANSIENT_CODES", "Attempt"]

log = logging.getLogger(__name__)

CALL_TIMEOUT = 10.0
"""Deadline, in seconds, of each ReportJob and FinishJob call."""

CANCEL_POLL_INTERVAL = 2.0
"""A quiet job still reports at least this often (and at least every third
of its lease): the answer is how a worker learns of a cancel request."""

MAX_ERROR_MESSAGE_CHARS = 4_000
"""Longest error message sent with a failed job."""

MAX_TRACEBACK_CHARS = 16_000
"""Longest traceback sent with a failed job (its tail is kept)."""

_LEASE_LOST_CODES = frozenset({grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.NOT_FOUND})
"""ReportJob/FinishJob answers meaning the lease is gone (expired, moved on,
or the job was deleted)."""

TRANSIENT_CODES = frozenset(
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

Req = TypeVar("Req", bound=Message)
Resp = TypeVar("Resp", bound=Message)


@dataclass(frozen=True, slots=True)
class _Outcome:
    """How an attempt ends."""

    outcome: JobOutcome
    result: JsonObject | None = None
    error: JobError | None = None
    retryable: bool = False
    cause: str = ""
    """For the worker's log: the failure as its traceback's last line says
    it, and where it was raised."""


def _failure(
    code: str,
    message: str,
    *,
    retryable: bool,
    details: JsonObject | None = None,
    cause: str = "",
) -> _Outcome:
    return _Outcome(
        JobOutcome.FAILED,
        error=JobError(
            code=code, message=message[:MAX_ERROR_MESSAGE_CHARS], details=dict(details or {})
        ),
        retryable=retryable,
        cause=cause or f"{code}: {message}",
    )


def _cause(exc: BaseException) -> str:
    """``KeyError: 'rows' (at handlers.py:12 in enrich)``: the last line of
    the exception's traceback and the frame that raised it, on one line."""
    last_line = traceback.format_exception_only(exc)[-1].strip()
    frames = traceback.extract_tb(exc.__traceback__)
    if frames:
        frame = frames[-1]
        where = f"{Path(frame.filename).name}:{frame.lineno} in {frame.name}"
        last_line = f"{last_line} (at {where})"
    return " ".join(last_line.split())  # one line, whatever the message held


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


class Attempt:
    """One leased job: runs its handler, flushes its updates, finishes it."""

    def __init__(
        self,
        *,
        stub: worker_service_pb2_grpc.WorkerServiceAsyncStub,
        job: Job,
        lease_id: str,
        lease_seconds: float,
        handler: Handler | None,
        flush_interval: float,
        files_root: Path | None = None,
        acquire_next: Callable[[], worker_service_pb2.AcquireJobRequest | None] | None = None,
        on_next: NextJobs | None = None,
        on_handler_done: Callable[[float], None] | None = None,
        finishes: FinishBatcher | None = None,
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.finishes = finishes
        """Sends this finish with those of the worker's other attempts that
        end in the same turn (None: always by itself)."""
        self.acquire_next = acquire_next
        """What to lease next in a FinishJob sent alone (None: nothing)."""
        self.on_next = on_next
        """Takes the answer to what ``acquire_next`` asked for."""
        self.on_handler_done = on_handler_done
        """Told how long the handler ran, as soon as it returns: the slot
        is free for the next job while this one reports and finishes."""
        self.stub = stub
        self.job = job
        self.lease_id = lease_id
        self.lease_seconds = lease_seconds
        self.handler = handler
        self.flush_interval = flush_interval
        self.report_every = min(lease_seconds / 3, CANCEL_POLL_INTERVAL)
        self.reports = ReportBuffer(self.loop, job.progress)
        self.cancellation = Cancellation()
        if job.cancel_requested:
            self.cancellation.request("requested")
        self.ctx = JobContext(
            job,
            self.reports,
            cancellation=self.cancellation,
            uploader=self._upload,
            files_root=files_root,
        )
        self.lease_lost = False
        self._closing = False
        self._flusher_parked = True
        """Whether the flusher is waiting to be woken (or has not started):
        it then holds no batch taken from the buffer."""
        self.handler_task: asyncio.Task[Any] | None = None
        self.handler_done = False
        self._lease_deadline = self.loop.time() + lease_seconds
        self._last_report = self.loop.time()
        # Numbers this lease's reports so the server can tell a retry (after
        # a lost answer) from a new batch and store it once.
        self._report_seq = 0

    def ask_to_stop(self) -> None:
        """The worker is stopping: tell the handler (``ctx.stopping``),
        which may give the job back early or run on."""
        self.cancellation.stopping = True

    def interrupt(self) -> None:
        """The worker is stopping: ask the handler to stop now."""
        self.cancellation.request("shutdown")
        if self.handler_task is not None:
            self.handler_task.cancel()

    async def run(self) -> None:
        """Run the attempt to its end (or until the lease is lost)."""
        flusher = asyncio.create_task(self._flush_loop(), name=f"jobstream-flush-{self.job.id}")
        try:
            began = self.loop.time()
            outcome = await self._call_handler()
            self.handler_done = True
            if self.on_handler_done is not None:
                self.on_handler_done(self.loop.time() - began)
            self._log_failure(outcome)
            if self._flusher_parked and self.reports.settled:
                # Nothing buffered, nothing in flight: the flusher has
                # nothing to send, and the finish ends the lease it renews.
                flusher.cancel()
            else:
                await self._drain_flusher(flusher)
            if self.lease_lost:
                log.warning("job %s: lease lost; not finishing it", self.job.id)
                return
            await self._finish(outcome)
        finally:
            flusher.cancel()
            self.reports.close()

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
        except JobReleased:
            return _Outcome(JobOutcome.RELEASED)
        except FatalJobError as exc:
            return _failure(
                exc.code, str(exc), retryable=False, details=exc.details, cause=_cause(exc)
            )
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # this run itself is being abandoned
            return self._cancelled("")  # interrupt() cancelled the handler's task
        except Exception as exc:
            trace = "".join(traceback.format_exception(exc))[-MAX_TRACEBACK_CHARS:]
            return _failure(
                type(exc).__name__,
                str(exc),
                retryable=True,
                details={"traceback": trace},
                cause=_cause(exc),
            )
        if self.cancellation.requested:
            return self._cancelled("")
        if result is not None and not isinstance(result, Mapping):
            return _failure(
                "invalid_result",
                f"the handler returned a {type(result).__name__}, not a dict or None",
                retryable=False,
            )
        return _Outcome(JobOutcome.SUCCEEDED, result=dict(result) if result is not None else None)

    def _log_failure(self, outcome: _Outcome) -> None:
        """One WARNING per failed attempt, so a worker's log says what went
        wrong without anyone opening the job."""
        if outcome.outcome is not JobOutcome.FAILED:
            return
        job = self.job
        of = f" of {job.max_attempts}" if job.max_attempts else ""
        if not outcome.retryable:
            then = "not retried"
        elif job.max_attempts and job.attempt >= job.max_attempts:
            then = "no attempts left"
        else:
            then = "to be retried"
        log.warning(
            "job %s (%s): attempt %d%s failed, %s: %s",
            job.id,
            job.kind,
            job.attempt,
            of,
            then,
            outcome.cause,
        )

    def _cancelled(self, message: str) -> _Outcome:
        if self.cancellation.reason == "shutdown":
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
            self._flusher_parked = True
            with suppress(TimeoutError):
                await asyncio.wait_for(self.reports.woken(), self.flush_interval)
            self._flusher_parked = False
            closing = self._closing
            self.reports.rearm()
            due = self.loop.time() - self._last_report >= self.report_every
            if not await self._send_pending(renew=due) or closing:
                return

    async def _drain_flusher(self, flusher: asyncio.Task[None]) -> None:
        """Let the flusher send what is left, then end.

        Not flusher.cancel(): a batch is taken from the buffer just before it
        is sent, so cancelling a send in flight would lose it.
        """
        self._closing = True
        self.reports.wake()
        await flusher

    async def _send_pending(self, *, renew: bool) -> bool:
        """Send everything buffered (or an empty renewal when ``renew``);
        False once the lease is lost."""
        sent = False
        while True:
            batch = self.reports.take_batch()
            if batch is None:
                if sent or not renew:
                    return not self.lease_lost
                batch = ReportBatch()
            if not await self._report(batch):
                return False
            sent = True

    async def _report(self, batch: ReportBatch) -> bool:
        self._report_seq += 1
        request = worker_service_pb2.ReportJobRequest(
            job_id=self.job.id,
            lease_id=self.lease_id,
            report_seq=self._report_seq,
            logs=batch.logs,
            steps=batch.steps,
            results=batch.results,
            server_paths=batch.files,
        )
        if batch.progress is not None:
            request.progress.CopyFrom(batch.progress)
        if batch.checkpoint is not None:
            request.checkpoint.CopyFrom(batch.checkpoint)
        try:
            response = await self._call(self.stub.ReportJob, request)
        except JobstreamError as exc:
            # Retrying a refused batch would refuse it forever; the rest of
            # the job's updates still go through.
            log.error(
                "job %s: ReportJob refused (%s); dropped %d updates", self.job.id, exc, batch.items
            )
            self.reports.acknowledge()
            return True
        if response is None:
            return False
        self._last_report = self.loop.time()
        if response.cancel_requested:
            self.cancellation.request("requested")
        self.reports.acknowledge()
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
                self._log_failure(outcome)
                return await self._finish(outcome)
        if outcome.error is not None:
            request.error.CopyFrom(job_error_to_pb(outcome.error))
        try:
            response = await self._send_finish(request)
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
            # A failure was logged at WARNING with its cause already.
            level = logging.DEBUG if outcome.outcome is JobOutcome.FAILED else logging.INFO
            log.log(level, "job %s (%s): %s", self.job.id, self.job.kind, outcome.outcome.value)

    async def _send_finish(
        self, request: worker_service_pb2.FinishJobRequest
    ) -> worker_service_pb2.FinishJobResponse | None:
        """The FinishJob answer, through the worker's batch when it has one;
        None when the lease is lost. A finish the batch did not answer goes
        by itself with the usual retries."""
        if self.finishes is not None:
            try:
                answer = await self.finishes.finish(request)
            except JobstreamError as error:
                if error.code in _LEASE_LOST_CODES:
                    self._lose_lease(error)
                    return None
                raise
            if isinstance(answer, worker_service_pb2.FinishJobResponse):
                self._lease_deadline = self.loop.time() + self.lease_seconds
                return answer
            if answer is Alone.ALONE_NO_NEXT:
                return await self._call(self.stub.FinishJob, request)
        return await self._finish_alone(request)

    async def _finish_alone(
        self, request: worker_service_pb2.FinishJobRequest
    ) -> worker_service_pb2.FinishJobResponse | None:
        """FinishJob by itself, leasing the worker's next jobs in the same
        call (not for a job given back: the worker is stopping)."""
        released = request.outcome == JOB_OUTCOMES.to_pb(JobOutcome.RELEASED)
        following = None
        if self.acquire_next is not None and not released:
            following = self.acquire_next()
        if following is None:
            return await self._call(self.stub.FinishJob, request)
        first = worker_service_pb2.FinishJobRequest()
        first.CopyFrom(request)
        first.acquire_next.CopyFrom(following)
        response = None
        try:
            # A retry (after an answer was lost) only finishes: the first
            # call's leases, if taken, are released by the server when the
            # call is cut, or expire like an AcquireJob's lost answer.
            response = await self._call(self.stub.FinishJob, first, retry=request)
        finally:
            if self.on_next is not None:
                self.on_next(following, response.next if response is not None else None)
        return response

    async def _upload(self, path: Path, name: str, content_type: str) -> Artifact:
        """UploadArtifact: hash the file, then stream it in chunks. Not
        retried: a half-sent stream cannot be resumed, and the handler
        decides whether to try again."""
        # What was reported before the upload is stored before its event.
        await self.reports.acknowledged()
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

    async def _call(
        self,
        rpc: grpc.aio.UnaryUnaryMultiCallable[Req, Resp],
        request: Req,
        *,
        retry: Req | None = None,
    ) -> Resp | None:
        """A lease-bound call: transient failures are retried (with
        ``retry`` instead of ``request``, when given) while the lease may
        still be alive. None when the lease is lost; raises JobstreamError
        when the server refuses the request itself."""
        method = type(request).__name__.removesuffix("Request")
        backoff = Backoff()
        while True:
            try:
                response = await rpc(request, timeout=CALL_TIMEOUT)
            except grpc.RpcError as exc:
                error = from_rpc_error(exc)
                if error.code in _LEASE_LOST_CODES:
                    self._lose_lease(error)
                    return None
                if error.code not in TRANSIENT_CODES:
                    raise error from exc
                if self.loop.time() >= self._lease_deadline:
                    self._lose_lease(error)
                    return None
                delay = backoff.next()
                log.debug(
                    "job %s: %s failed (%s); retrying in %.1fs", self.job.id, method, error, delay
                )
                await asyncio.sleep(delay)
                request = retry or request
                continue
            self._lease_deadline = self.loop.time() + self.lease_seconds
            return response

    def _lose_lease(self, error: JobstreamError) -> None:
        if not self.lease_lost:
            log.warning("job %s: lease lost (%s): %s", self.job.id, error.code.name, error.message)
        self.lease_lost = True
        self.cancellation.request("lease_lost")
        self.reports.close()
