"""JobClient (blocking) and AsyncJobClient (asyncio) for the JobService.

Both are built from the same parts: an *operation* says which RPC to call,
with which request, and how to turn the response into models; a *watch*
says how to start, filter and resume a stream. Only the call layer — a
blocking call or an awaited one — is written twice.
"""

from __future__ import annotations

import asyncio
import builtins
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any, Generic, Self, TypeVar

import grpc
import grpc.aio
from google.protobuf.message import Message

from jobstream.client.artifacts import DownloadSink, ProgressCallback
from jobstream.client.connection import CHANNEL_OPTIONS, DEFAULT_TARGET, Backoff
from jobstream.client.convert import (
    artifact_from_pb,
    change_from_pb,
    delete_result_from_pb,
    event_from_pb,
    filter_to_pb,
    job_from_pb,
    purge_result_from_pb,
    spec_to_pb,
    stats_from_pb,
)
from jobstream.client.errors import (
    DeadlineExceededError,
    JobstreamError,
    UnavailableError,
    from_rpc_error,
)
from jobstream.client.models import (
    Artifact,
    DeleteResult,
    EventKind,
    Job,
    JobChange,
    JobEvent,
    JobSpec,
    JobState,
    PurgeResult,
    Stats,
)
from jobstream.client.security import PLAINTEXT, Security
from jobstream.v1 import job_pb2, job_service_pb2, job_service_pb2_grpc

__all__ = ["DEFAULT_RESUME_TIMEOUT", "DEFAULT_TIMEOUT", "AsyncJobClient", "JobClient"]

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 30.0
"""Deadline, in seconds, of every unary call (streams have none)."""

DEFAULT_RESUME_TIMEOUT = 60.0
"""How long, in seconds, a watch keeps trying to resume after the server
became unreachable before it gives up with UnavailableError."""

DEFAULT_PAGE_SIZE = 50
"""Jobs per ListJobs page."""

DEFAULT_EVENT_PAGE_SIZE = 500
"""Events per GetJobLogs / ListJobResults page."""

READ_METHODS = frozenset(
    {"GetJob", "ListJobs", "GetJobLogs", "ListJobResults", "GetStats", "ListArtifacts"}
)
"""Unary calls that change nothing, so sending one again is always safe."""

READ_RETRY_S = 5.0
"""How long a read keeps trying while the server it reached before restarts."""

T = TypeVar("T")


# ------------------------------------------------------------------ operations


@dataclass(frozen=True, slots=True)
class _Unary(Generic[T]):
    """One unary call: the JobService method, its request, the response converter."""

    method: str
    request: Message
    convert: Callable[[Any], T]


@dataclass(frozen=True, slots=True)
class _Paged(Generic[T]):
    """A paged listing: one _Unary per page token, each giving items and the next token."""

    method: str
    request: Callable[[str], Message]
    items: Callable[[Any], builtins.list[T]]

    def page(self, token: str) -> _Unary[tuple[builtins.list[T], str]]:
        """The call for the page after ``token`` ("" for the first)."""
        return _Unary(
            self.method, self.request(token), lambda r: (self.items(r), r.next_page_token)
        )


def _submit_op(spec: JobSpec) -> _Unary[Job]:
    return _Unary("SubmitJob", spec_to_pb(spec), lambda r: job_from_pb(r.job))


def _submit_many_op(specs: Sequence[JobSpec]) -> _Unary[builtins.list[Job]]:
    request = job_service_pb2.SubmitJobsRequest(requests=[spec_to_pb(s) for s in specs])
    return _Unary("SubmitJobs", request, lambda r: [job_from_pb(x.job) for x in r.responses])


def _get_op(job_id: str) -> _Unary[Job]:
    return _Unary(
        "GetJob", job_service_pb2.GetJobRequest(job_id=job_id), lambda r: job_from_pb(r.job)
    )


def _cancel_op(job_id: str, reason: str) -> _Unary[Job]:
    request = job_service_pb2.CancelJobRequest(job_id=job_id, reason=reason)
    return _Unary("CancelJob", request, lambda r: job_from_pb(r.job))


def _delete_op(job_id: str, force: bool, allow_missing: bool) -> _Unary[DeleteResult]:
    request = job_service_pb2.DeleteJobRequest(
        job_id=job_id, force=force, allow_missing=allow_missing
    )
    return _Unary("DeleteJob", request, delete_result_from_pb)


def _list_op(flt: job_pb2.JobFilter, page_size: int) -> _Paged[Job]:
    return _Paged(
        "ListJobs",
        lambda token: job_service_pb2.ListJobsRequest(
            filter=flt, page_size=page_size, page_token=token
        ),
        lambda r: [job_from_pb(j) for j in r.jobs],
    )


def _logs_op(job_id: str, page_size: int) -> _Paged[JobEvent]:
    return _Paged(
        "GetJobLogs",
        lambda token: job_service_pb2.GetJobLogsRequest(
            job_id=job_id, page_size=page_size, page_token=token
        ),
        lambda r: [event_from_pb(e) for e in r.events],
    )


def _results_op(job_id: str, page_size: int) -> _Paged[JobEvent]:
    return _Paged(
        "ListJobResults",
        lambda token: job_service_pb2.ListJobResultsRequest(
            job_id=job_id, page_size=page_size, page_token=token
        ),
        lambda r: [event_from_pb(e) for e in r.events],
    )


def _retry_op(job_id: str, reason: str, additional_attempts: int) -> _Unary[Job]:
    request = job_service_pb2.RetryJobRequest(
        job_id=job_id, reason=reason, additional_attempts=additional_attempts
    )
    return _Unary("RetryJob", request, lambda r: job_from_pb(r.job))


def _purge_op(flt: job_pb2.JobFilter, older_than: timedelta, dry_run: bool) -> _Unary[PurgeResult]:
    request = job_service_pb2.PurgeJobsRequest(filter=flt, dry_run=dry_run)
    request.older_than.FromTimedelta(older_than)
    return _Unary("PurgeJobs", request, purge_result_from_pb)


def _stats_op(flt: job_pb2.JobFilter, window: timedelta | None) -> _Unary[Stats]:
    request = job_service_pb2.GetStatsRequest(filter=flt)
    if window is not None:
        request.window.FromTimedelta(window)
    return _Unary("GetStats", request, stats_from_pb)


def _artifacts_op(job_id: str) -> _Unary[builtins.list[Artifact]]:
    request = job_service_pb2.ListArtifactsRequest(job_id=job_id)
    return _Unary("ListArtifacts", request, lambda r: [artifact_from_pb(a) for a in r.artifacts])


def _download_request(
    job_id: str, name: str, offset: int
) -> job_service_pb2.DownloadArtifactRequest:
    return job_service_pb2.DownloadArtifactRequest(job_id=job_id, name=name, offset=offset)


def _download_item(sink: DownloadSink, response: job_service_pb2.DownloadArtifactResponse) -> None:
    """Feeds one DownloadArtifact message to ``sink``."""
    if response.HasField("artifact"):
        sink.start(artifact_from_pb(response.artifact))
    else:
        sink.write(response.chunk)


def _filter(
    states: Iterable[JobState | str],
    kinds: Iterable[str],
    labels: Mapping[str, str] | None,
    queues: Iterable[str],
) -> job_pb2.JobFilter:
    return filter_to_pb(states=states, kinds=kinds, labels=labels, queues=queues)


def _deadline(timeout: float | None) -> float | None:
    """A monotonic deadline ``timeout`` seconds from now (None: none)."""
    return None if timeout is None else time.monotonic() + timeout


def _call_timeout(default: float | None, deadline: float | None, what: str) -> float | None:
    """The timeout of one call: the client's, shortened to an overall deadline."""
    if deadline is None:
        return default
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise DeadlineExceededError(grpc.StatusCode.DEADLINE_EXCEEDED, f"{what}: timed out")
    return remaining if default is None else min(default, remaining)


class _Outage:
    """A spell of the server being unreachable: when it began, and how long
    to wait before trying again (backoff from 0.1 s to 2 s, never past
    ``deadline``). ``delay`` raises the error once ``budget`` seconds have
    gone by."""

    def __init__(self, budget: float, deadline: float | None) -> None:
        self.budget = budget
        self.deadline = deadline
        self.since: float | None = None
        self._backoff = Backoff()

    def delay(self, error: JobstreamError) -> float:
        """Seconds to wait before the next try after ``error``."""
        now = time.monotonic()
        if self.since is None:
            self.since = now
        elif now - self.since >= self.budget:
            raise error
        delay = self._backoff.next()
        if self.deadline is not None:
            delay = max(0.0, min(delay, self.deadline - now))
        return delay

    def over(self) -> None:
        """The server answered: the next outage starts afresh."""
        self.since = None
        self._backoff.reset()


def _read_retry_delay(method: str, exc: grpc.RpcError, *, reached: bool, outage: _Outage) -> float:
    """Seconds to wait before sending ``method`` again after ``exc``; raises
    the typed error when it is not to be sent again.

    Right after a restart a channel can fail calls fast for a moment (its
    reconnect backoff is still running though the server is back), so a
    client that has reached the server once retries reads for READ_RETRY_S.
    One that never reached it fails at once, as a watch does: a CLI pointed
    at nothing says so without waiting. Writes are never sent twice here.
    """
    error = from_rpc_error(exc)
    if not (reached and method in READ_METHODS and isinstance(error, UnavailableError)):
        raise error from exc
    if outage.since is None:
        log.info("%s: %s; retrying", method, error.message or error.code.name)
    delay = outage.delay(error)
    if outage.deadline is not None and time.monotonic() + delay >= outage.deadline:
        raise error from exc  # the caller's deadline comes first: say why now
    return delay


# --------------------------------------------------------------------- watches


class _Resumable(Generic[T]):
    """A stream that picks up again after the server became unreachable.

    Subclasses say what to request (from where) and which responses to pass
    on; this class decides whether and when to try again. A stream is only
    resumed once it was established (something was received): a server that
    is down when the watch starts fails fast, as unary calls do.
    """

    method: str

    def __init__(
        self, *, what: str, resume: bool, resume_timeout: float, deadline: float | None
    ) -> None:
        self.what = what
        self.resume = resume
        self.resume_timeout = resume_timeout
        self.deadline = deadline
        self.done = False
        self._established = False
        self._outage = _Outage(resume_timeout, deadline)

    def request(self) -> Message:
        """The request that starts (or resumes) the stream."""
        raise NotImplementedError

    def accept(self, response: Any) -> list[T]:
        """The items to yield for a response (none: drop it)."""
        raise NotImplementedError

    def timeout(self) -> float | None:
        """The stream's deadline: none, unless the caller set an overall one."""
        return _call_timeout(None, self.deadline, self.what)

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


class _JobWatch(_Resumable[Job | JobEvent]):
    """WatchJob: the snapshot once, then each event once, in seq order."""

    method = "WatchJob"

    def __init__(self, job_id: str, after_seq: int, **kwargs: Any) -> None:
        super().__init__(what=f"watch {job_id}", **kwargs)
        self.job_id = job_id
        self.last_seq = after_seq
        self._snapshot_seen = False
        self._snapshot_last_seq = 0

    def request(self) -> Message:
        return job_service_pb2.WatchJobRequest(
            job_id=self.job_id, after_seq=self.last_seq, batch_events=True
        )

    def accept(self, response: Any) -> list[Job | JobEvent]:
        msg: job_service_pb2.WatchJobResponse = response
        self.received()
        kind = msg.WhichOneof("item")
        if kind == "snapshot":
            job = job_from_pb(msg.snapshot)
            self._snapshot_last_seq = job.last_seq
            if job.state.terminal and job.last_seq <= self.last_seq:
                self.done = True
            if self._snapshot_seen:
                return []
            self._snapshot_seen = True
            return [job]
        messages: Sequence[job_pb2.JobEvent]
        if kind == "events":
            messages = msg.events.events
        elif kind == "event":
            messages = [msg.event]
        else:
            return []
        events: list[Job | JobEvent] = []
        for message in messages:
            if self.done:
                break
            if message.seq > self.last_seq:
                events.append(self._event(event_from_pb(message)))
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


class _JobsWatch(_Resumable[JobChange]):
    """WatchJobs: each change once, resuming from the last position.

    The initial listing (after_position 0) carries one position for every
    job, so it cannot be resumed part-way: a disconnect during it restarts
    the listing. Once caught up, positions increase and a resume asks for
    the changes after the last one seen.
    """

    method = "WatchJobs"

    def __init__(self, flt: job_pb2.JobFilter, after_position: int, **kwargs: Any) -> None:
        super().__init__(what="watch jobs", **kwargs)
        self.filter = flt
        self.position = after_position
        self._listing = after_position == 0
        self._caught_up_sent = False

    def request(self) -> Message:
        return job_service_pb2.WatchJobsRequest(
            filter=self.filter, after_position=0 if self._listing else self.position
        )

    def accept(self, response: Any) -> list[JobChange]:
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
            return [change]
        if change.position <= self.position:
            return []
        self.position = change.position
        return [change]


# --------------------------------------------------------------- sync client


class JobClient:
    """Blocking client for the JobService.

    ``timeout`` is the deadline of every unary call (None: none);
    ``resume_timeout`` bounds how long a watch tries to resume after the
    server became unreachable. Pass ``channel`` to use your own (TLS,
    credentials, interceptors); it is then not closed by ``close()``.
    Errors are raised as ``jobstream.client.errors.JobstreamError`` subclasses.
    """

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        timeout: float | None = DEFAULT_TIMEOUT,
        channel: grpc.Channel | None = None,
        resume_timeout: float = DEFAULT_RESUME_TIMEOUT,
        security: Security = PLAINTEXT,
    ) -> None:
        self.target = target
        self.timeout = timeout
        self.resume_timeout = resume_timeout
        self._owns_channel = channel is None
        if channel is None:
            channel = security.channel(target, CHANNEL_OPTIONS)
        self._channel = channel
        self._stub = job_service_pb2_grpc.JobServiceStub(self._channel)
        self._reached = False
        """Whether a call has been answered: only then are reads retried."""

    def close(self) -> None:
        """Close the channel (only one this client made)."""
        if self._owns_channel:
            self._channel.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- call layer

    def _unary(self, op: _Unary[T], deadline: float | None = None) -> T:
        rpc = getattr(self._stub, op.method)
        outage = _Outage(READ_RETRY_S, deadline)
        while True:
            try:
                response = rpc(op.request, timeout=_call_timeout(self.timeout, deadline, op.method))
            except grpc.RpcError as exc:
                time.sleep(_read_retry_delay(op.method, exc, reached=self._reached, outage=outage))
                continue
            self._reached = True
            return op.convert(response)

    def _paged(self, op: _Paged[T]) -> Iterator[T]:
        token = ""
        while True:
            items, token = self._unary(op.page(token))
            yield from items
            if not token:
                return

    def _stream(self, watch: _Resumable[T]) -> Iterator[T]:
        rpc = getattr(self._stub, watch.method)
        while True:
            call = rpc(watch.request(), timeout=watch.timeout())
            try:
                for response in call:
                    yield from watch.accept(response)
                    if watch.done:
                        return
                delay = watch.ended()
                if delay is None:
                    return
            except grpc.RpcError as exc:
                delay = watch.failed(exc)
            finally:
                call.cancel()
            time.sleep(delay)

    # -- API

    def submit(
        self,
        kind: str,
        params: Mapping[str, Any] | None = None,
        *,
        job_id: str | None = None,
        queue: str = "",
        priority: int = 0,
        labels: Mapping[str, str] | None = None,
        max_attempts: int = 0,
        not_before: datetime | None = None,
        request_id: str | None = None,
    ) -> Job:
        """Submit one job and return it as stored.

        ``queue`` "" means "default", ``max_attempts`` 0 the server's
        default; ``not_before`` must be timezone-aware. A repeat with the
        same ``request_id`` returns the first job.
        """
        spec = JobSpec(
            kind=kind,
            params=params,
            job_id=job_id,
            queue=queue,
            priority=priority,
            labels=labels,
            max_attempts=max_attempts,
            not_before=not_before,
            request_id=request_id,
        )
        return self._unary(_submit_op(spec))

    def submit_many(self, specs: Sequence[JobSpec]) -> builtins.list[Job]:
        """Submit many jobs in one call: all are stored, or none is."""
        return self._unary(_submit_many_op(specs))

    def get(self, job_id: str) -> Job:
        """One job, with its steps."""
        return self._unary(_get_op(job_id))

    def list(
        self,
        *,
        states: Iterable[JobState | str] = (),
        kinds: Iterable[str] = (),
        labels: Mapping[str, str] | None = None,
        queues: Iterable[str] = (),
        page_size: int = DEFAULT_PAGE_SIZE,
    ) -> Iterator[Job]:
        """Jobs matching every given criterion, newest first; fetches pages lazily."""
        return self._paged(_list_op(_filter(states, kinds, labels, queues), page_size))

    def watch(
        self, job_id: str, *, after_seq: int = 0, resume: bool = True
    ) -> Iterator[Job | JobEvent]:
        """Follow a job: the snapshot Job first, then each JobEvent after
        ``after_seq`` in seq order; ends after the event that makes the job
        terminal.

        With ``resume``, a dropped stream (server restart, network) is
        resumed from the last seen seq without repeating the snapshot or any
        event, for up to ``resume_timeout`` seconds.
        """
        return self._stream(
            _JobWatch(
                job_id,
                after_seq,
                resume=resume,
                resume_timeout=self.resume_timeout,
                deadline=None,
            )
        )

    def wait(self, job_id: str, *, timeout: float | None = None) -> Job:
        """Block until the job is terminal and return it (with steps).

        Raises DeadlineExceededError after ``timeout`` seconds.
        """
        deadline = _deadline(timeout)
        job = self._unary(_get_op(job_id), deadline)
        if job.state.terminal:
            return job
        watch = _JobWatch(
            job_id,
            job.last_seq,
            resume=True,
            resume_timeout=self.resume_timeout,
            deadline=deadline,
        )
        for _ in self._stream(watch):
            pass
        return self._unary(_get_op(job_id), deadline)

    def cancel(self, job_id: str, reason: str = "") -> Job:
        """Cancel a job: a queued one at once; a running one is asked to stop
        (the returned job is RUNNING with cancel_requested)."""
        return self._unary(_cancel_op(job_id, reason))

    def delete(
        self, job_id: str, *, force: bool = False, allow_missing: bool = False
    ) -> DeleteResult:
        """Delete a job with its events, results and files. A running job
        needs ``force`` (it is cancelled first: its watchers see it end
        CANCELLED); ``allow_missing`` makes a repeat delete succeed."""
        return self._unary(_delete_op(job_id, force, allow_missing))

    def logs(self, job_id: str, *, page_size: int = DEFAULT_EVENT_PAGE_SIZE) -> Iterator[JobEvent]:
        """The job's log-line events, oldest first; fetches pages lazily."""
        return self._paged(_logs_op(job_id, page_size))

    def results(
        self, job_id: str, *, page_size: int = DEFAULT_EVENT_PAGE_SIZE
    ) -> Iterator[JobEvent]:
        """The job's per-item results, each key once at its latest version,
        in the order those versions were stored; fetches pages lazily."""
        return self._paged(_results_op(job_id, page_size))

    def retry(self, job_id: str, reason: str = "", *, additional_attempts: int = 0) -> Job:
        """Queue a failed, interrupted or cancelled job again as a new attempt.

        Its history stays (events continue, the attempt counter keeps
        counting); it gets ``additional_attempts`` more attempts (0: one).
        """
        return self._unary(_retry_op(job_id, reason, additional_attempts))

    def purge(
        self,
        *,
        older_than: timedelta,
        states: Iterable[JobState | str] = (),
        kinds: Iterable[str] = (),
        labels: Mapping[str, str] | None = None,
        queues: Iterable[str] = (),
        dry_run: bool = False,
    ) -> PurgeResult:
        """Delete ended jobs (with their files) that ended at least
        ``older_than`` ago; ``dry_run`` only reports what would go.
        ``states`` may name terminal states only (default: all four)."""
        flt = _filter(states, kinds, labels, queues)
        return self._unary(_purge_op(flt, older_than, dry_run))

    def stats(
        self,
        *,
        window: timedelta | None = None,
        states: Iterable[JobState | str] = (),
        kinds: Iterable[str] = (),
        labels: Mapping[str, str] | None = None,
        queues: Iterable[str] = (),
    ) -> Stats:
        """Counts by state and kind, and success rate, run-time percentiles
        and throughput over the last ``window`` (default: one hour)."""
        return self._unary(_stats_op(_filter(states, kinds, labels, queues), window))

    def artifacts(self, job_id: str) -> builtins.list[Artifact]:
        """The job's artifacts, by name."""
        return self._unary(_artifacts_op(job_id))

    def download(
        self,
        job_id: str,
        name: str,
        path: str | Path,
        *,
        resume: bool = False,
        on_progress: ProgressCallback | None = None,
    ) -> Artifact:
        """Download an artifact to ``path`` and check its sha256.

        With ``resume`` an existing partial file is continued from its size.
        Raises DataLossError when the file does not match the artifact.
        """
        sink = DownloadSink(Path(path), resume=resume, on_progress=on_progress)
        # No deadline: a large file may take long; a dead server ends the
        # stream with UNAVAILABLE, and the partial file can be resumed.
        call: Any = self._stub.DownloadArtifact(_download_request(job_id, name, sink.offset))
        try:
            for response in call:
                _download_item(sink, response)
        except grpc.RpcError as exc:
            sink.close()
            raise from_rpc_error(exc) from exc
        except BaseException:
            sink.close()
            raise
        finally:
            call.cancel()
        return sink.finish()

    def watch_jobs(
        self,
        *,
        states: Iterable[JobState | str] = (),
        kinds: Iterable[str] = (),
        labels: Mapping[str, str] | None = None,
        queues: Iterable[str] = (),
        after_position: int = 0,
        resume: bool = True,
    ) -> Iterator[JobChange]:
        """Follow a job list: from position 0, every matching job as it is
        now, a ``caught_up`` marker, then live changes; never ends.

        Resumes like ``watch`` from the last position seen.
        """
        watch = _JobsWatch(
            _filter(states, kinds, labels, queues),
            after_position,
            resume=resume,
            resume_timeout=self.resume_timeout,
            deadline=None,
        )
        return self._stream(watch)


# -------------------------------------------------------------- async client


class AsyncJobClient:
    """asyncio client for the JobService: JobClient's API with ``async def``
    methods and async iterators.

    The channel is made on first use, inside the running event loop (a
    grpc.aio channel belongs to one loop). Use ``async with`` or ``await
    close()``.
    """

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        timeout: float | None = DEFAULT_TIMEOUT,
        channel: grpc.aio.Channel | None = None,
        resume_timeout: float = DEFAULT_RESUME_TIMEOUT,
        security: Security = PLAINTEXT,
    ) -> None:
        self.target = target
        self.timeout = timeout
        self.resume_timeout = resume_timeout
        self.security = security
        self._owns_channel = channel is None
        self._channel = channel
        self._stub_cache: Any = None
        self._reached = False
        """Whether a call has been answered: only then are reads retried."""

    @property
    def _stub(self) -> Any:
        if self._stub_cache is None:
            if self._channel is None:
                self._channel = self.security.aio_channel(self.target, CHANNEL_OPTIONS)
            self._stub_cache = job_service_pb2_grpc.JobServiceStub(self._channel)
        return self._stub_cache

    async def close(self) -> None:
        """Close the channel (only one this client made)."""
        if self._owns_channel and self._channel is not None:
            await self._channel.close(None)
            self._channel = None
            self._stub_cache = None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- call layer

    async def _unary(self, op: _Unary[T], deadline: float | None = None) -> T:
        rpc = getattr(self._stub, op.method)
        outage = _Outage(READ_RETRY_S, deadline)
        while True:
            try:
                response = await rpc(
                    op.request, timeout=_call_timeout(self.timeout, deadline, op.method)
                )
            except grpc.RpcError as exc:
                await asyncio.sleep(
                    _read_retry_delay(op.method, exc, reached=self._reached, outage=outage)
                )
                continue
            self._reached = True
            return op.convert(response)

    async def _paged(self, op: _Paged[T]) -> AsyncIterator[T]:
        token = ""
        while True:
            items, token = await self._unary(op.page(token))
            for item in items:
                yield item
            if not token:
                return

    async def _stream(self, watch: _Resumable[T]) -> AsyncIterator[T]:
        rpc = getattr(self._stub, watch.method)
        while True:
            call = rpc(watch.request(), timeout=watch.timeout())
            try:
                async for response in call:
                    for item in watch.accept(response):
                        yield item
                    if watch.done:
                        return
                delay = watch.ended()
                if delay is None:
                    return
            except grpc.RpcError as exc:
                delay = watch.failed(exc)
            finally:
                call.cancel()
            await asyncio.sleep(delay)

    # -- API (see JobClient for each method's documentation)

    async def submit(
        self,
        kind: str,
        params: Mapping[str, Any] | None = None,
        *,
        job_id: str | None = None,
        queue: str = "",
        priority: int = 0,
        labels: Mapping[str, str] | None = None,
        max_attempts: int = 0,
        not_before: datetime | None = None,
        request_id: str | None = None,
    ) -> Job:
        """Submit one job and return it as stored (see JobClient.submit)."""
        spec = JobSpec(
            kind=kind,
            params=params,
            job_id=job_id,
            queue=queue,
            priority=priority,
            labels=labels,
            max_attempts=max_attempts,
            not_before=not_before,
            request_id=request_id,
        )
        return await self._unary(_submit_op(spec))

    async def submit_many(self, specs: Sequence[JobSpec]) -> builtins.list[Job]:
        """Submit many jobs in one call: all are stored, or none is."""
        return await self._unary(_submit_many_op(specs))

    async def get(self, job_id: str) -> Job:
        """One job, with its steps."""
        return await self._unary(_get_op(job_id))

    def list(
        self,
        *,
        states: Iterable[JobState | str] = (),
        kinds: Iterable[str] = (),
        labels: Mapping[str, str] | None = None,
        queues: Iterable[str] = (),
        page_size: int = DEFAULT_PAGE_SIZE,
    ) -> AsyncIterator[Job]:
        """Jobs matching every given criterion, newest first (``async for``)."""
        return self._paged(_list_op(_filter(states, kinds, labels, queues), page_size))

    def watch(
        self, job_id: str, *, after_seq: int = 0, resume: bool = True
    ) -> AsyncIterator[Job | JobEvent]:
        """Follow a job (``async for``); see JobClient.watch."""
        return self._stream(
            _JobWatch(
                job_id,
                after_seq,
                resume=resume,
                resume_timeout=self.resume_timeout,
                deadline=None,
            )
        )

    async def wait(self, job_id: str, *, timeout: float | None = None) -> Job:  # noqa: ASYNC109
        """Wait until the job is terminal and return it; see JobClient.wait."""
        deadline = _deadline(timeout)
        job = await self._unary(_get_op(job_id), deadline)
        if job.state.terminal:
            return job
        watch = _JobWatch(
            job_id,
            job.last_seq,
            resume=True,
            resume_timeout=self.resume_timeout,
            deadline=deadline,
        )
        async for _ in self._stream(watch):
            pass
        return await self._unary(_get_op(job_id), deadline)

    async def cancel(self, job_id: str, reason: str = "") -> Job:
        """Cancel a job; see JobClient.cancel."""
        return await self._unary(_cancel_op(job_id, reason))

    async def delete(
        self, job_id: str, *, force: bool = False, allow_missing: bool = False
    ) -> DeleteResult:
        """Delete a job; see JobClient.delete."""
        return await self._unary(_delete_op(job_id, force, allow_missing))

    def logs(
        self, job_id: str, *, page_size: int = DEFAULT_EVENT_PAGE_SIZE
    ) -> AsyncIterator[JobEvent]:
        """The job's log-line events, oldest first (``async for``)."""
        return self._paged(_logs_op(job_id, page_size))

    def results(
        self, job_id: str, *, page_size: int = DEFAULT_EVENT_PAGE_SIZE
    ) -> AsyncIterator[JobEvent]:
        """The job's per-item results, each key once (``async for``); see
        JobClient.results."""
        return self._paged(_results_op(job_id, page_size))

    async def retry(self, job_id: str, reason: str = "", *, additional_attempts: int = 0) -> Job:
        """Queue an ended job again; see JobClient.retry."""
        return await self._unary(_retry_op(job_id, reason, additional_attempts))

    async def purge(
        self,
        *,
        older_than: timedelta,
        states: Iterable[JobState | str] = (),
        kinds: Iterable[str] = (),
        labels: Mapping[str, str] | None = None,
        queues: Iterable[str] = (),
        dry_run: bool = False,
    ) -> PurgeResult:
        """Delete old ended jobs; see JobClient.purge."""
        flt = _filter(states, kinds, labels, queues)
        return await self._unary(_purge_op(flt, older_than, dry_run))

    async def stats(
        self,
        *,
        window: timedelta | None = None,
        states: Iterable[JobState | str] = (),
        kinds: Iterable[str] = (),
        labels: Mapping[str, str] | None = None,
        queues: Iterable[str] = (),
    ) -> Stats:
        """Counts and timings of jobs; see JobClient.stats."""
        return await self._unary(_stats_op(_filter(states, kinds, labels, queues), window))

    async def artifacts(self, job_id: str) -> builtins.list[Artifact]:
        """The job's artifacts, by name."""
        return await self._unary(_artifacts_op(job_id))

    async def download(
        self,
        job_id: str,
        name: str,
        path: str | Path,
        *,
        resume: bool = False,
        on_progress: ProgressCallback | None = None,
    ) -> Artifact:
        """Download an artifact to ``path``; see JobClient.download. File
        writes run in a thread, off the event loop."""
        sink = await asyncio.to_thread(
            DownloadSink, Path(path), resume=resume, on_progress=on_progress
        )
        call = self._stub.DownloadArtifact(_download_request(job_id, name, sink.offset))
        try:
            async for response in call:
                await asyncio.to_thread(_download_item, sink, response)
        except grpc.RpcError as exc:
            sink.close()
            raise from_rpc_error(exc) from exc
        except BaseException:
            sink.close()
            raise
        finally:
            call.cancel()
        return await asyncio.to_thread(sink.finish)

    def watch_jobs(
        self,
        *,
        states: Iterable[JobState | str] = (),
        kinds: Iterable[str] = (),
        labels: Mapping[str, str] | None = None,
        queues: Iterable[str] = (),
        after_position: int = 0,
        resume: bool = True,
    ) -> AsyncIterator[JobChange]:
        """Follow a job list (``async for``); see JobClient.watch_jobs."""
        watch = _JobsWatch(
            _filter(states, kinds, labels, queues),
            after_position,
            resume=resume,
            resume_timeout=self.resume_timeout,
            deadline=None,
        )
        return self._stream(watch)
