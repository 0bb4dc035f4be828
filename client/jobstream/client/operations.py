"""Every JobService operation, written once: the request it sends, how its
answer becomes models, and its documentation.

Each function takes the client's :class:`~jobstream.client.calls.Session`
and returns a program (see :mod:`jobstream.client.program`); JobClient and
AsyncJobClient are made from these functions (see
:mod:`jobstream.client.client`), so each public method's signature and
docstring are the ones here, less the session. Requests are built when the
operation is called, so bad arguments fail at the call, also for the
listings and watches that only talk to the server once iterated.
"""

from __future__ import annotations

import builtins
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import grpc

from jobstream.client.artifacts import DownloadSink, ProgressCallback
from jobstream.client.calls import Session, deadline_after, pages, unary
from jobstream.client.convert import (
    LOG_LEVELS,
    artifact_from_pb,
    delete_result_from_pb,
    event_from_pb,
    fill_time,
    filter_to_pb,
    job_from_pb,
    purge_result_from_pb,
    spec_to_pb,
    stats_from_pb,
    worker_from_pb,
)
from jobstream.client.errors import from_rpc_error
from jobstream.client.models import (
    Artifact,
    DeleteResult,
    Job,
    JobChange,
    JobEvent,
    JobSpec,
    JobState,
    LogLevel,
    PurgeResult,
    Stats,
    WorkerInfo,
)
from jobstream.client.program import (
    Items,
    Program,
    blocking,
    collect,
    drain,
    open_stream,
    receive,
)
from jobstream.client.watches import JobsWatch, JobWatch, follow
from jobstream.v1 import job_service_pb2 as pb

__all__ = [
    "DEFAULT_EVENT_PAGE_SIZE",
    "DEFAULT_PAGE_SIZE",
    "artifacts",
    "cancel",
    "delete",
    "download",
    "get",
    "list",
    "logs",
    "purge",
    "results",
    "retry",
    "stats",
    "submit",
    "submit_many",
    "wait",
    "watch",
    "watch_jobs",
    "workers",
]

DEFAULT_PAGE_SIZE = 50
"""Jobs per ListJobs page."""

DEFAULT_EVENT_PAGE_SIZE = 500
"""Events per ListJobLogs / ListJobResults page."""


def submit(
    session: Session,
    kind: str,
    params: Mapping[str, Any] | None = None,
    *,
    job_id: str | None = None,
    queue: str = "",
    priority: int = 0,
    labels: Mapping[str, str] | None = None,
    max_attempts: int = 0,
    schedule_time: datetime | None = None,
    request_id: str | None = None,
) -> Program[Job]:
    """Submit one job and return it as stored.

    ``queue`` "" means "default", ``max_attempts`` 0 the server's
    default; ``schedule_time`` must be timezone-aware. A repeat with the
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
        schedule_time=schedule_time,
        request_id=request_id,
    )
    return unary(
        session, lambda s: s.SubmitJob, spec_to_pb(spec), lambda r: job_from_pb(r.job), read=False
    )


def submit_many(session: Session, specs: Sequence[JobSpec]) -> Program[builtins.list[Job]]:
    """Submit many jobs in one call: all are stored, or none is."""
    request = pb.SubmitJobsRequest(requests=[spec_to_pb(s) for s in specs])
    return unary(
        session,
        lambda s: s.SubmitJobs,
        request,
        lambda r: [job_from_pb(x.job) for x in r.responses],
        read=False,
    )


def get(session: Session, job_id: str) -> Program[Job]:
    """One job, with its steps."""
    return _get(session, job_id, None)


def _get(session: Session, job_id: str, deadline: float | None) -> Program[Job]:
    request = pb.GetJobRequest(job_id=job_id)
    return unary(
        session,
        lambda s: s.GetJob,
        request,
        lambda r: job_from_pb(r.job),
        read=True,
        deadline=deadline,
    )


def watch(
    session: Session, job_id: str, *, after_seq: int = 0, resume: bool = True
) -> Items[Job | JobEvent]:
    """Follow a job: the snapshot Job first, then each JobEvent after
    ``after_seq`` in seq order; ends after the event that makes the job
    terminal.

    With ``resume``, a dropped stream (server restart, network) is
    resumed from the last seen seq without repeating the snapshot or any
    event, for up to ``resume_timeout`` seconds.
    """
    return follow(JobWatch(job_id, after_seq, resume=resume, resume_timeout=session.resume_timeout))


def wait(session: Session, job_id: str, *, timeout: float | None = None) -> Program[Job]:
    """Wait until the job is terminal and return it (with steps).

    Raises DeadlineExceededError after ``timeout`` seconds.
    """
    return _wait(session, job_id, deadline_after(timeout))


def _wait(session: Session, job_id: str, deadline: float | None) -> Program[Job]:
    # One WatchJob, no GetJob: its snapshot is the job when it has ended
    # already, and its last message carries the job as it ended. Only a
    # server that sends no final job (older than final_snapshot) is asked
    # with a GetJob afterwards.
    until_terminal = JobWatch(
        job_id,
        0,
        resume=True,
        resume_timeout=session.resume_timeout,
        deadline=deadline,
        skip_history=True,
        final_snapshot=True,
        # A client that reached the server before retries its reads while
        # the server restarts; the watch that replaces the first GetJob
        # resumes likewise.
        established=session.reached,
    )
    yield from drain(follow(until_terminal))
    session.answered()  # as the GetJob it replaces would have
    if until_terminal.final is not None:
        return until_terminal.final
    return (yield from _get(session, job_id, deadline))


def cancel(session: Session, job_id: str, reason: str = "") -> Program[Job]:
    """Cancel a job: a queued one at once; a running one is asked to stop
    (the returned job is RUNNING with cancel_requested)."""
    request = pb.CancelJobRequest(job_id=job_id, reason=reason)
    return unary(session, lambda s: s.CancelJob, request, lambda r: job_from_pb(r.job), read=False)


def delete(
    session: Session, job_id: str, *, force: bool = False, allow_missing: bool = False
) -> Program[DeleteResult]:
    """Delete a job with its events, results and files. A running job
    needs ``force`` (it is cancelled first: its watchers see it end
    CANCELLED); ``allow_missing`` makes a repeat delete succeed."""
    request = pb.DeleteJobRequest(job_id=job_id, force=force, allow_missing=allow_missing)
    return unary(session, lambda s: s.DeleteJob, request, delete_result_from_pb, read=False)


def logs(
    session: Session,
    job_id: str,
    *,
    page_size: int = DEFAULT_EVENT_PAGE_SIZE,
    level: LogLevel | str | None = None,
    text: str = "",
    since: datetime | None = None,
    tail: int = 0,
) -> Items[JobEvent]:
    """The job's log-line events, oldest first; fetches pages lazily.

    ``level`` keeps lines of that level and more severe ones; ``text`` those
    holding a substring (in any case); ``since`` (timezone-aware) those
    logged at or after it; ``tail`` only the last that many of the lines
    selected (at most ``page_size``), in one page.
    """
    request = pb.ListJobLogsRequest(job_id=job_id, page_size=page_size, text=text, tail=tail)
    if level is not None:
        request.min_level = LOG_LEVELS.to_pb(level)
    if since is not None:
        fill_time(request.since_time, since, what="since")

    def page(token: str) -> pb.ListJobLogsRequest:
        paged = pb.ListJobLogsRequest()
        paged.CopyFrom(request)
        paged.page_token = token
        return paged

    return pages(
        session,
        lambda s: s.ListJobLogs,
        page,
        lambda r: ([event_from_pb(e) for e in r.events], r.next_page_token),
    )


def workers(session: Session, *, page_size: int = DEFAULT_PAGE_SIZE) -> Items[WorkerInfo]:
    """The workers seen polling within the last hour, by id: kinds, queues,
    jobs held, last seen, and whether each is live."""
    return pages(
        session,
        lambda s: s.ListWorkers,
        lambda token: pb.ListWorkersRequest(page_size=page_size, page_token=token),
        lambda r: ([worker_from_pb(w) for w in r.workers], r.next_page_token),
    )


def results(
    session: Session, job_id: str, *, page_size: int = DEFAULT_EVENT_PAGE_SIZE
) -> Items[JobEvent]:
    """The job's per-item results, each key once at its latest version,
    in the order those versions were stored; fetches pages lazily."""
    return pages(
        session,
        lambda s: s.ListJobResults,
        lambda token: pb.ListJobResultsRequest(
            job_id=job_id, page_size=page_size, page_token=token
        ),
        lambda r: ([event_from_pb(e) for e in r.events], r.next_page_token),
    )


def retry(
    session: Session,
    job_id: str,
    reason: str = "",
    *,
    additional_attempts: int = 0,
    request_id: str | None = None,
) -> Program[Job]:
    """Queue a failed, interrupted or cancelled job again as a new attempt.

    Its history stays (events continue, the attempt counter keeps
    counting); it gets ``additional_attempts`` more attempts (0: one). A
    repeat with the same ``request_id`` returns the first answer and
    retries nothing.
    """
    request = pb.RetryJobRequest(
        job_id=job_id,
        reason=reason,
        additional_attempts=additional_attempts,
        request_id=request_id or "",
    )
    return unary(session, lambda s: s.RetryJob, request, lambda r: job_from_pb(r.job), read=False)


def purge(
    session: Session,
    *,
    older_than: timedelta,
    states: Iterable[JobState | str] = (),
    kinds: Iterable[str] = (),
    labels: Mapping[str, str] | None = None,
    queues: Iterable[str] = (),
    dry_run: bool = False,
    request_id: str | None = None,
) -> Program[PurgeResult]:
    """Delete ended jobs (with their files) that ended at least
    ``older_than`` ago; ``dry_run`` only reports what would go.
    ``states`` may name terminal states only (default: all four). A repeat
    of a completed purge with the same ``request_id`` returns its answer and
    purges nothing."""
    flt = filter_to_pb(states=states, kinds=kinds, labels=labels, queues=queues)
    request = pb.PurgeJobsRequest(filter=flt, dry_run=dry_run, request_id=request_id or "")
    request.older_than.FromTimedelta(older_than)
    return unary(session, lambda s: s.PurgeJobs, request, purge_result_from_pb, read=False)


def stats(
    session: Session,
    *,
    window: timedelta | None = None,
    states: Iterable[JobState | str] = (),
    kinds: Iterable[str] = (),
    labels: Mapping[str, str] | None = None,
    queues: Iterable[str] = (),
) -> Program[Stats]:
    """Counts by state and kind, and success rate, run-time percentiles
    and throughput over the last ``window`` (default: one hour)."""
    flt = filter_to_pb(states=states, kinds=kinds, labels=labels, queues=queues)
    request = pb.GetStatsRequest(filter=flt)
    if window is not None:
        request.window.FromTimedelta(window)
    return unary(session, lambda s: s.GetStats, request, stats_from_pb, read=True)


def artifacts(session: Session, job_id: str) -> Program[builtins.list[Artifact]]:
    """The job's artifacts, by name (every page)."""
    return collect(
        pages(
            session,
            lambda s: s.ListArtifacts,
            lambda token: pb.ListArtifactsRequest(job_id=job_id, page_token=token),
            lambda r: ([artifact_from_pb(a) for a in r.artifacts], r.next_page_token),
        )
    )


def download(
    session: Session,
    job_id: str,
    name: str,
    path: str | Path,
    *,
    resume: bool = False,
    on_progress: ProgressCallback | None = None,
) -> Program[Artifact]:
    """Download an artifact to ``path`` and check its sha256.

    With ``resume`` an existing partial file is continued from its size.
    Raises DataLossError when the file does not match the artifact. File
    writes run off the event loop in the asyncio client.
    """
    return _download(job_id, name, Path(path), resume=resume, on_progress=on_progress)


def _download(
    job_id: str, name: str, path: Path, *, resume: bool, on_progress: ProgressCallback | None
) -> Program[Artifact]:
    sink = yield from blocking(DownloadSink, path, resume=resume, on_progress=on_progress)
    request = pb.DownloadArtifactRequest(job_id=job_id, name=name, offset=sink.offset)
    # No deadline: a large file may take long; a dead server ends the
    # stream with UNAVAILABLE, and the partial file can be resumed.
    stream = yield from open_stream(lambda s: s.DownloadArtifact, request, None)
    try:
        while (response := (yield from receive(stream))) is not None:
            yield from blocking(_download_item, sink, response)
    except grpc.RpcError as exc:
        sink.close()
        raise from_rpc_error(exc) from exc
    except BaseException:
        sink.close()
        raise
    finally:
        stream.cancel()
    return (yield from blocking(sink.finish))


def _download_item(sink: DownloadSink, response: pb.DownloadArtifactResponse) -> None:
    """Feeds one DownloadArtifact message to ``sink``."""
    if response.HasField("artifact"):
        sink.start(artifact_from_pb(response.artifact))
    else:
        sink.write(response.chunk)


def watch_jobs(
    session: Session,
    *,
    states: Iterable[JobState | str] = (),
    kinds: Iterable[str] = (),
    labels: Mapping[str, str] | None = None,
    queues: Iterable[str] = (),
    after_position: int = 0,
    listing_token: str = "",
    resume: bool = True,
) -> Items[JobChange]:
    """Follow a job list: from position 0, every matching job as it is
    now, a ``caught_up`` marker, then live changes; never ends.

    Resumes like ``watch`` from the last position seen, and in the middle
    of the listing after the last job received. ``listing_token`` (a
    listed change's, with the same filter) continues a listing an earlier
    watch left unfinished.
    """
    flt = filter_to_pb(states=states, kinds=kinds, labels=labels, queues=queues)
    return follow(
        JobsWatch(
            flt,
            after_position,
            listing_token=listing_token,
            resume=resume,
            resume_timeout=session.resume_timeout,
        )
    )


# Defined last: from here on, ``list`` in this module is this function.
def list(
    session: Session,
    *,
    states: Iterable[JobState | str] = (),
    kinds: Iterable[str] = (),
    labels: Mapping[str, str] | None = None,
    queues: Iterable[str] = (),
    page_size: int = DEFAULT_PAGE_SIZE,
    created_after: datetime | None = None,
    created_before: datetime | None = None,
    ended_after: datetime | None = None,
    ended_before: datetime | None = None,
    text: str = "",
    params: Mapping[str, Any] | None = None,
) -> Items[Job]:
    """Jobs matching every given criterion, newest first; fetches pages lazily.

    Times are timezone-aware (``*_after`` inclusive, ``*_before``
    exclusive; a job not ended matches no ``ended_*``); ``text`` is a
    substring, in any case, of the id, kind, a label or the error;
    ``params`` maps a path of keys joined by dots (``"source.bucket"``) to
    the value that member must equal.
    """
    flt = filter_to_pb(
        states=states,
        kinds=kinds,
        labels=labels,
        queues=queues,
        created_after=created_after,
        created_before=created_before,
        ended_after=ended_after,
        ended_before=ended_before,
        text=text,
        params=params,
    )
    return pages(
        session,
        lambda s: s.ListJobs,
        lambda token: pb.ListJobsRequest(filter=flt, page_size=page_size, page_token=token),
        lambda r: ([job_from_pb(j) for j in r.jobs], r.next_page_token),
    )
