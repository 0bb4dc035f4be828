"""A worker's finishes, sent together: the attempts that end in the same
turn of the event loop go out in one FinishJobs call (one transaction and
one commit on the server), which also leases one next job per attempt that
asked for one.

A lone finish is not held back for company: it goes out as its own
FinishJob in the next turn of the event loop, so batching costs a job no
more than that turn; and not even that when the attempt is the worker's
only one running (nothing could join it). Attempts started together from
one AcquireJob answer (a worker asks for a job per free slot) and running
jobs of equal length end together, and their next jobs come back in one
answer, so they stay together.

Each attempt gets its own answer: the job and its next lease, or its own
refusal (the lease is gone), or ``Alone.ALONE`` / ``Alone.ALONE_NO_NEXT``
when it came alone or the batch as a whole failed, and the attempt sends its
finish by itself (the FinishJob path with its retries).
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

__all__ = ["Alone", "FinishBatcher"]

log = logging.getLogger(__name__)

CALL_TIMEOUT = 10.0
"""Deadline, in seconds, of a FinishJobs call."""

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


Answer = worker_service_pb2.FinishJobResponse | Alone
"""A finish's answer: the job and its next lease (``next`` set when the
finish asked for one), or how to send the finish instead."""


@dataclass(slots=True)
class _Pending:
    request: worker_service_pb2.FinishJobRequest
    future: asyncio.Future[Answer] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class FinishBatcher:
    """Gathers the finishes of one worker's attempts that end in the same
    turn of the event loop and sends them in one FinishJobs call."""

    def __init__(
        self,
        stub: worker_service_pb2_grpc.WorkerServiceAsyncStub,
        acquire: Callable[[], worker_service_pb2.AcquireJobRequest | None],
        running: Callable[[], int],
    ) -> None:
        self.stub = stub
        self.acquire = acquire
        """What a batch leases next, per finish that asks (None: stopping)."""
        self.running = running
        """How many of the worker's attempts are running, the finishing one
        included: with no other, no finish can join this one."""
        self.enabled = True
        """False once the server answered FinishJobs UNIMPLEMENTED (an older
        server): every finish then goes by itself."""
        self._pending: list[_Pending] = []
        self._calls: set[asyncio.Task[None]] = set()

    async def finish(self, request: worker_service_pb2.FinishJobRequest) -> Answer:
        """The answer to ``request`` (its ``acquire_next`` set when it wants
        a next job); Alone.ALONE when it is the only one of its turn."""
        if not self.enabled or (not self._pending and self.running() <= 1):
            return Alone.ALONE
        pending = _Pending(request)
        if not self._pending:
            asyncio.get_running_loop().call_soon(self._flush)
        self._pending.append(pending)
        return await pending.future

    def _flush(self) -> None:
        batch, self._pending = self._pending, []
        if len(batch) == 1:
            batch[0].future.set_result(Alone.ALONE)
            return
        task = asyncio.create_task(self._send(batch), name="jobstream-finishes")
        self._calls.add(task)
        task.add_done_callback(self._calls.discard)

    async def _send(self, batch: list[_Pending]) -> None:
        request = worker_service_pb2.FinishJobsRequest()
        wanted = 0
        for pending in batch:
            one = request.finishes.add()
            one.CopyFrom(pending.request)
            if one.HasField("acquire_next"):
                wanted += 1
                one.ClearField("acquire_next")
        following = self.acquire() if wanted else None
        if following is not None:
            request.acquire_next.CopyFrom(following)
            request.acquire_next.max_jobs = wanted
        try:
            response = await self.stub.FinishJobs(request, timeout=CALL_TIMEOUT)
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
        leases = _leases(response.next) if following is not None else []
        for pending, result in zip(batch, response.results, strict=False):
            if pending.future.done():
                continue
            if result.error_code:
                pending.future.set_exception(_refusal(result))
                continue
            answer = worker_service_pb2.FinishJobResponse(job=result.job)
            if pending.request.HasField("acquire_next"):
                answer.next.SetInParent()
                if leases:
                    lease = leases.pop(0)
                    answer.next.job.CopyFrom(lease.job)
                    answer.next.lease_id = lease.lease_id
                    answer.next.lease_expire_time.CopyFrom(lease.lease_expire_time)
            pending.future.set_result(answer)
        for pending in batch[len(response.results) :]:
            if not pending.future.done():
                pending.future.set_result(Alone.ALONE_NO_NEXT)  # a server breaking the contract
        for lease in leases:
            # Only a server breaking the contract leases more than asked; the
            # lease expires and the job runs again.
            log.error("job %s: leased beyond the finishes that asked", lease.job.id)


def _leases(
    next_: worker_service_pb2.AcquireJobResponse,
) -> list[worker_service_pb2.LeasedJob]:
    """Every lease of an AcquireJobResponse, first one first."""
    if not next_.HasField("job"):
        return []
    first = worker_service_pb2.LeasedJob(
        job=next_.job, lease_id=next_.lease_id, lease_expire_time=next_.lease_expire_time
    )
    return [first, *next_.more_jobs]


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
