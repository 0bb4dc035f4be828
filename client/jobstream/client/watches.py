"""Watches that pick up again after the server became unreachable, written
once as programs: WatchJob (one job's snapshot and events) and WatchJobs (a
job list's changes).

A :class:`Resumable` says what to request (from where) and which responses
to pass on; :func:`follow` runs it, deciding whether and when to try again.
A stream is only resumed once it was established (something was
received): a server that is down when the watch starts fails fast, as
unary calls do.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Generic, TypeVar

import grpc
from google.protobuf.message import Message

from jobstream.client.calls import Outage, call_timeout
from jobstream.client.convert import change_from_pb, event_from_pb, job_from_pb
from jobstream.client.errors import JobstreamError, UnavailableError, from_rpc_error
from jobstream.client.models import EventKind, Job, JobChange, JobEvent
from jobstream.client.program import Emit, Items, open_stream, receive, sleep
from jobstream.v1 import job_pb2, job_service_pb2, job_service_pb2_grpc

__all__ = ["JobWatch", "JobsWatch", "Resumable", "follow"]

log = logging.getLogger(__name__)

T = TypeVar("T")
Req = TypeVar("Req", bound=Message)
Resp = TypeVar("Resp", bound=Message)


class Resumable(Generic[Req, Resp, T]):
    """A stream that picks up again after the server became unreachable.

    Subclasses say which method to call, what to request (from where) and
    which responses to pass on; this class decides whether and when to try
    again.
    """

    def __init__(
        self,
        *,
        what: str,
        resume: bool,
        resume_timeout: float,
        deadline: float | None,
        established: bool = False,
    ) -> None:
        self.what = what
        self.resume = resume
        self.deadline = deadline
        self.done = False
        self._established = established
        """Whether a drop is resumed: once something was received, or from
        the start for a caller whose client reached the server before (a
        read it replaces would have been sent again, see calls.py)."""
        self._outage = Outage(resume_timeout, deadline)

    def rpc(
        self, stub: job_service_pb2_grpc.JobServiceStub
    ) -> grpc.UnaryStreamMultiCallable[Req, Resp]:
        """The streaming method to call."""
        raise NotImplementedError

    def request(self) -> Req:
        """The request that starts (or resumes) the stream."""
        raise NotImplementedError

    def accept(self, response: Resp) -> list[T]:
        """The items to pass on for a response (none: drop it)."""
        raise NotImplementedError

    def timeout(self) -> float | None:
        """The stream's deadline: none, unless the caller set an overall one."""
        return call_timeout(None, self.deadline, self.what)

    def received(self) -> None:
        """Note that the stream is up (a response arrived)."""
        self._established = True
        if self._outage.since is not None:
            log.info("%s: resumed", self.what)
        self._outage.over()

    def failed(self, exc: grpc.RpcError) -> float:
        """Seconds to wait before resuming after ``exc``; raises the typed
        error when the stream cannot or should not be resumed."""
        error = from_rpc_error(exc)
        if not (self.resume and self._established and isinstance(error, UnavailableError)):
            raise error from exc
        return self._retry_delay(error)

    def ended(self) -> float | None:
        """The stream ended cleanly: None when the watch is over, else the
        seconds to wait before resuming (a server going down may close
        streams cleanly before the job is terminal)."""
        if self.done or not self.resume:
            return None
        message = f"{self.what}: the stream ended early"
        return self._retry_delay(UnavailableError(grpc.StatusCode.UNAVAILABLE, message))

    def _retry_delay(self, error: JobstreamError) -> float:
        if self._outage.since is None:
            log.info("%s: %s; resuming", self.what, error.message or error.code.name)
        return self._outage.delay(error)


def follow(watch: Resumable[Req, Resp, T]) -> Items[T]:
    """Run ``watch``: open its stream, pass its items on, and open it again
    (after a backoff) when it drops, until the watch is done."""
    while True:
        stream = yield from open_stream(watch.rpc, watch.request(), watch.timeout())
        try:
            while (response := (yield from receive(stream))) is not None:
                for item in watch.accept(response):
                    yield Emit(item)
                if watch.done:
                    return
            delay = watch.ended()
            if delay is None:
                return
        except grpc.RpcError as exc:
            delay = watch.failed(exc)
        finally:
            stream.cancel()
        yield from sleep(delay)


class JobWatch(
    Resumable[job_service_pb2.WatchJobRequest, job_service_pb2.WatchJobResponse, Job | JobEvent]
):
    """WatchJob: the snapshot once, then each event once, in seq order;
    done after the event that makes the job terminal.

    With ``skip_history`` the events start after the snapshot's (those it
    accounts for are not sent, or dropped here when an older server sends
    them); with ``final_snapshot``, :attr:`final` is the job as it ended
    once the watch is done, from the server's last message or a snapshot
    of the job already ended (None from a server that sends none)."""

    def __init__(
        self,
        job_id: str,
        after_seq: int,
        *,
        resume: bool,
        resume_timeout: float,
        deadline: float | None = None,
        skip_history: bool = False,
        final_snapshot: bool = False,
        established: bool = False,
    ) -> None:
        super().__init__(
            what=f"watch {job_id}",
            resume=resume,
            resume_timeout=resume_timeout,
            deadline=deadline,
            established=established,
        )
        self.job_id = job_id
        self.last_seq = after_seq
        self.skip_history = skip_history
        self.final_snapshot = final_snapshot
        self.final: Job | None = None
        """The job as it ended (see the class docstring)."""
        self._snapshot_seen = False
        self._snapshot_last_seq = 0

    def rpc(
        self, stub: job_service_pb2_grpc.JobServiceStub
    ) -> grpc.UnaryStreamMultiCallable[
        job_service_pb2.WatchJobRequest, job_service_pb2.WatchJobResponse
    ]:
        return stub.WatchJob

    def request(self) -> job_service_pb2.WatchJobRequest:
        return job_service_pb2.WatchJobRequest(
            job_id=self.job_id,
            after_seq=self.last_seq,
            # A resumed watch goes on from its last event: what happened
            # while it was away is not history to skip.
            skip_history=self.skip_history and not self._snapshot_seen,
            final_snapshot=self.final_snapshot,
        )

    def accept(self, response: job_service_pb2.WatchJobResponse) -> list[Job | JobEvent]:
        self.received()
        kind = response.WhichOneof("item")
        if kind == "snapshot":
            job = job_from_pb(response.snapshot)
            self._snapshot_last_seq = job.last_seq
            if self.skip_history and not self._snapshot_seen:
                self.last_seq = max(self.last_seq, job.last_seq)
            if job.state.terminal and job.last_seq <= self.last_seq:
                self.done = True
                self.final = job
            if self._snapshot_seen:
                return []
            self._snapshot_seen = True
            return [job]
        messages: Sequence[job_pb2.JobEvent] = response.events.events
        events: list[Job | JobEvent] = []
        for message in messages:
            if self.done:
                break
            if message.seq > self.last_seq:
                events.append(self._event(event_from_pb(message)))
        if self.done and response.HasField("final_snapshot"):
            self.final = job_from_pb(response.final_snapshot)
        return events

    def _event(self, event: JobEvent) -> JobEvent:
        self.last_seq = event.seq
        # The job's history may hold an earlier terminal state (before a
        # retry): only the newest event can end the watch.
        if (
            event.kind is EventKind.STATE_CHANGE
            and event.state_change is not None
            and event.state_change.state.terminal
            and event.seq >= self._snapshot_last_seq
        ):
            self.done = True
        return event


class JobsWatch(
    Resumable[job_service_pb2.WatchJobsRequest, job_service_pb2.WatchJobsResponse, JobChange]
):
    """WatchJobs: each change once, resuming from the last position.

    The initial listing (after_position 0) carries one position for every
    job, and a listing token on each message: a disconnect during it
    resumes the listing after the last job received (the server then lists
    the rest and replays the changes since the listing began). Once caught
    up, positions increase and a resume asks for the changes after the last
    one seen.
    """

    def __init__(
        self,
        flt: job_pb2.JobFilter,
        after_position: int,
        *,
        listing_token: str = "",
        resume: bool,
        resume_timeout: float,
    ) -> None:
        super().__init__(
            what="watch jobs", resume=resume, resume_timeout=resume_timeout, deadline=None
        )
        self.filter = flt
        self.position = after_position
        self._listing = after_position == 0
        self._listing_token = listing_token
        """Where the listing resumes: the token of the last job it sent."""
        self._caught_up_sent = False

    def rpc(
        self, stub: job_service_pb2_grpc.JobServiceStub
    ) -> grpc.UnaryStreamMultiCallable[
        job_service_pb2.WatchJobsRequest, job_service_pb2.WatchJobsResponse
    ]:
        return stub.WatchJobs

    def request(self) -> job_service_pb2.WatchJobsRequest:
        if self._listing:
            return job_service_pb2.WatchJobsRequest(
                filter=self.filter, listing_token=self._listing_token
            )
        return job_service_pb2.WatchJobsRequest(filter=self.filter, after_position=self.position)

    def accept(self, response: job_service_pb2.WatchJobsResponse) -> list[JobChange]:
        self.received()
        change = change_from_pb(response)
        if change.caught_up:
            self._listing = False
            self.position = max(self.position, change.position)
            if self._caught_up_sent:
                return []
            self._caught_up_sent = True
            return [change]
        if self._listing:
            self._listing_token = response.listing_token or self._listing_token
            return [change]
        if change.position <= self.position:
            return []
        self.position = change.position
        return [change]
