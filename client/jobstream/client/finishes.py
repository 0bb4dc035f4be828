"""A worker's finishes, sent together: the finishes that come while one
FinishJobs call is on its way go out together in the next (one call, one
transaction and one commit on the server), which also leases the worker's
next jobs; so a worker ending jobs faster than a round trip sends fewer,
larger calls, as a database commits a group.

A lone finish is not held back for company: with no call on its way it goes
out in the next turn of the event loop (a FinishJobs of one, or of those
that ended in the same turn), so batching costs a job no more than that
turn; and when the attempt is the worker's only one running (nothing could
join it), at once as its own FinishJob.

Each attempt gets its own answer: the job, or its own refusal (the lease is
gone), or ``Alone.ALONE`` / ``Alone.ALONE_NO_NEXT`` when it came alone or
the batch as a whole failed, and the attempt sends its finish by itself (the
FinishJob path with its retries). The next jobs a batch leased go to the
worker, not to the attempts that finished.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum

import grpc
import grpc.aio

from jobstream.client.errors import JobstreamError, error_class, from_rpc_error
from jobstream.v1 import errors_pb2, worker_service_pb2, worker_service_pb2_grpc

__all__ = ["Alone", "FinishBatcher", "NextJobs"]

log = logging.getLogger(__name__)

CALL_TIMEOUT = 10.0
"""Deadline, in seconds, of a FinishJobs call."""

MAX_BATCH = 256
"""Most finishes in one FinishJobs (the server's limit)."""

_NOTHING_STORED = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    }
)
"""FinishJobs refusals that stored nothing: each finish is then sent by
itself, with its acquire_next, and meets its own fate (a result over the
size limit fails only its own job)."""


class Alone(Enum):
    """How an attempt sends its finish when the batch did not answer it."""

    ALONE = "alone"
    """By itself, as asked (nothing of the batch was stored)."""
    ALONE_NO_NEXT = "alone_no_next"
    """By itself, without leasing a next job: the batch may have been stored
    (its answer was lost), and its leases are then released by the server
    or expire, as a lost AcquireJob answer's would."""


NextJobs = Callable[
    [worker_service_pb2.AcquireJobRequest, worker_service_pb2.AcquireJobResponse | None], None
]
"""Takes the next jobs a finish leased for what it asked (None: the call
failed or its answer was lost, so nothing came)."""


Answer = worker_service_pb2.FinishJobResponse | Alone
"""A finish's answer: the job, or how to send the finish instead."""


@dataclass(slots=True)
class _Pending:
    request: worker_service_pb2.FinishJobRequest
    future: asyncio.Future[Answer] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class FinishBatcher:
    """Gathers the finishes of one worker's attempts and sends them in
    FinishJobs calls, one call on its way at a time."""

    def __init__(
        self,
        stub: worker_service_pb2_grpc.WorkerServiceAsyncStub,
        acquire: Callable[[], worker_service_pb2.AcquireJobRequest | None],
        on_next: NextJobs,
        running: Callable[[], int],
    ) -> None:
        self.stub = stub
        self.acquire = acquire
        """What a batch leases next (None: nothing wanted, or stopping)."""
        self.on_next = on_next
        """Takes the answer to what ``acquire`` asked for."""
        self.running = running
        """How many of the worker's attempts are running, the finishing one
        included: with no other, no finish can join this one."""
        self.enabled = True
        """False once the server answered FinishJobs UNIMPLEMENTED (an older
        server): every finish then goes by itself."""
        self._pending: list[_Pending] = []
        self._call: asyncio.Task[None] | None = None
        """The FinishJobs call on its way, if any."""

    async def finish(self, request: worker_service_pb2.FinishJobRequest) -> Answer:
        """The answer to ``request``; Alone.ALONE when it has no company."""
        if not self.enabled or (not self._pending and self._call is None and self.running() <= 1):
            return Alone.ALONE
        pending = _Pending(request)
        if not self._pending and self._call is None:
            asyncio.get_running_loop().call_soon(self._flush)
        self._pending.append(pending)
        return await pending.future

    def _flush(self) -> None:
        if self._call is not None or not self._pending:
            return  # the call on its way flushes these when it returns
        # At most what one FinishJobs may carry; the rest go in the next.
        batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
        self._call = asyncio.create_task(self._send(batch), name="jobstream-finishes")
        self._call.add_done_callback(self._sent)

    def _sent(self, _: asyncio.Task[None]) -> None:
        self._call = None
        self._flush()

    async def _send(self, batch: list[_Pending]) -> None:
        request = worker_service_pb2.FinishJobsRequest()
        for pending in batch:
            request.finishes.add().CopyFrom(pending.request)
        following = self.acquire()
        if following is not None:
            request.acquire_next.CopyFrom(following)
        answered: worker_service_pb2.AcquireJobResponse | None = None
        try:
            response = await self.stub.FinishJobs(request, timeout=CALL_TIMEOUT)
            answered = response.next
        except grpc.RpcError as exc:
            error = from_rpc_error(exc)
            if error.code is grpc.StatusCode.UNIMPLEMENTED:
                self.enabled = False
            how = Alone.ALONE if error.code in _NOTHING_STORED else Alone.ALONE_NO_NEXT
            log.debug("FinishJobs of %d failed (%s); finishing each alone", len(batch), error)
            for pending in batch:
                if not pending.future.done():
                    pending.future.set_result(how)
            return
        except BaseException:
            for pending in batch:
                if not pending.future.done():
                    pending.future.set_result(Alone.ALONE_NO_NEXT)
            raise
        finally:
            if following is not None:
                try:
                    self.on_next(following, answered)
                except Exception:
                    # The batch's own answers must still reach its attempts.
                    log.exception("cannot take the next jobs a FinishJobs leased")
        for pending, result in zip(batch, response.results, strict=False):
            if pending.future.done():
                continue
            if result.error_code:
                pending.future.set_exception(_refusal(result))
            else:
                pending.future.set_result(worker_service_pb2.FinishJobResponse(job=result.job))
        for pending in batch[len(response.results) :]:
            if not pending.future.done():
                pending.future.set_result(Alone.ALONE_NO_NEXT)  # a server breaking the contract


def _refusal(result: worker_service_pb2.FinishJobResult) -> JobstreamError:
    """A refused finish as the exception its own FinishJob would have raised."""
    code = next(
        (c for c in grpc.StatusCode if c.value[0] == result.error_code),
        grpc.StatusCode.UNKNOWN,
    )
    reason = (
        errors_pb2.ErrorReason.Name(result.error_reason)
        if result.error_reason in errors_pb2.ErrorReason.values()
        else None
    )
    return error_class(code)(code, result.error_message, reason=reason)
