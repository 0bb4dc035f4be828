"""Domain values to protobuf messages, for the gRPC layer's answers."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from google.protobuf import duration_pb2, struct_pb2, timestamp_pb2

from jobstream.server.domain import (
    JSON,
    Artifact,
    ErrorInfo,
    Event,
    EventKind,
    Job,
    JobState,
    Lease,
    LogLevel,
    ResultStatus,
    Stats,
    Step,
    StepState,
    Submitted,
    WorkerInfo,
)
from jobstream.server.error_details import CODES
from jobstream.server.errors import ServiceError
from jobstream.server.proto_enums import (
    JOB_STATE_NUMBERS,
    LOG_LEVEL_NUMBERS,
    RESULT_STATUS_NUMBERS,
    STEP_STATE_NUMBERS,
)
from jobstream.v1 import job_pb2, job_service_pb2, worker_service_pb2


def timestamp(us: int | None) -> timestamp_pb2.Timestamp | None:
    """Microseconds since the epoch as a Timestamp (None stays unset)."""
    if us is None:
        return None
    return timestamp_pb2.Timestamp(seconds=us // 1_000_000, nanos=(us % 1_000_000) * 1000)


def struct(value: JSON | None) -> struct_pb2.Struct | None:
    """A dict as a Struct (None stays unset)."""
    if value is None:
        return None
    message = struct_pb2.Struct()
    message.update(value)
    return message


def error(value: ErrorInfo | JSON | None) -> job_pb2.JobError | None:
    """An error (domain or event body) as a JobError."""
    if value is None:
        return None
    if isinstance(value, dict):
        value = ErrorInfo(
            code=value["code"], message=value["message"], details=value.get("details")
        )
    return job_pb2.JobError(code=value.code, message=value.message, details=struct(value.details))


def step(value: Step) -> job_pb2.Step:
    """A step as a Step message."""
    return job_pb2.Step(
        name=value.name,
        state=STEP_STATE_NUMBERS[value.state],
        attempts=value.attempts,
        error=value.error,
        data=struct(value.data),
        start_time=timestamp(value.start_time),
        end_time=timestamp(value.end_time),
    )


def job(value: Job) -> job_pb2.Job:
    """A job as a Job message."""
    p = value.progress
    return job_pb2.Job(
        id=value.id,
        kind=value.kind,
        queue=value.queue,
        priority=value.priority,
        params=struct(value.params),
        labels=value.labels,
        state=JOB_STATE_NUMBERS[value.state],
        cancel_requested=value.cancel_requested,
        progress=job_pb2.Progress(
            fraction=p.fraction, done=p.done, total=p.total, phase=p.phase, message=p.message
        ),
        counters=job_pb2.Counters(
            succeeded=value.counters.succeeded,
            failed=value.counters.failed,
            skipped=value.counters.skipped,
        ),
        steps=[step(s) for s in value.steps],
        result=struct(value.result),
        error=error(value.error),
        attempt=value.attempt,
        max_attempts=value.max_attempts,
        schedule_time=timestamp(value.not_before),
        owner=value.owner,
        request_id=value.request_id,
        create_time=timestamp(value.create_time),
        start_time=timestamp(value.start_time),
        end_time=timestamp(value.end_time),
        update_time=timestamp(value.update_time),
        last_seq=value.last_seq,
        worker_id=value.worker_id,
        server_paths=value.files,
        checkpoint=struct(value.checkpoint),
    )


def submitted(value: Submitted) -> job_service_pb2.SubmitJobsResponse:
    """A submit's answers, one per spec, each job as :func:`job` makes the
    stored job. The jobs it made differ in a few fields only: what they
    share (state, times, empty progress) is built once and merged into
    each, and each is filled in place in the answer (a message passed to a
    constructor is copied): a fifth of what :func:`job` costs per job."""
    # Filled field by field: keyword arguments holding messages copy each
    # one, which cost a lone SubmitJob's answer half its time.
    shared = job_pb2.Job(state=JOB_STATE_NUMBERS[JobState.QUEUED], last_seq=1)
    shared.params.SetInParent()
    shared.progress.SetInParent()
    shared.counters.SetInParent()
    seconds, micros = divmod(value.time, 1_000_000)
    for stamp in (shared.schedule_time, shared.create_time, shared.update_time):
        stamp.seconds = seconds
        stamp.nanos = micros * 1_000
    answer = job_service_pb2.SubmitJobsResponse()
    add = answer.responses.add
    for i, (spec, job_id, created) in enumerate(
        zip(value.specs, value.ids, value.created, strict=True)
    ):
        found = value.found.get(i)
        if found is not None:
            add(job=job(found), created=created)
            continue
        message = add(created=created).job
        message.MergeFrom(shared)
        message.id = job_id
        message.kind = spec.kind
        message.queue = spec.queue
        message.priority = spec.priority
        message.max_attempts = spec.max_attempts or value.default_max_attempts
        message.owner = spec.owner
        if spec.request_id:
            message.request_id = spec.request_id
        if spec.labels:
            message.labels.update(spec.labels)
        if spec.params:
            message.params.update(spec.params)
        if spec.not_before:
            message.schedule_time.FromMicroseconds(spec.not_before)
    return answer


def worker(value: WorkerInfo) -> job_service_pb2.Worker:
    """A worker as a Worker message."""
    return job_service_pb2.Worker(
        worker_id=value.id,
        host=value.host,
        kinds=value.kinds,
        queues=value.queues,
        concurrency=value.concurrency,
        running_jobs=value.running,
        first_seen_time=timestamp(value.first_seen),
        last_seen_time=timestamp(value.last_seen),
        live=value.live,
    )


def _state_change(b: JSON) -> dict[str, Any]:
    return {
        "state_change": job_pb2.StateChange(
            state=JOB_STATE_NUMBERS[JobState(b["state"])],
            reason=b["reason"],
            error=error(b.get("error")),
            attempt=b.get("attempt", 0),
        )
    }


def _progress(b: JSON) -> dict[str, Any]:
    return {"progress": job_pb2.Progress(**b)}


def _log(b: JSON) -> dict[str, Any]:
    return {
        "log": job_pb2.LogLine(
            level=LOG_LEVEL_NUMBERS[LogLevel(b["level"])],
            text=b["text"],
            stream=b["stream"],
            truncated=b.get("truncated", False),
        )
    }


def _step_event(b: JSON) -> dict[str, Any]:
    return {"step": step(Step(**{**b, "state": StepState(b["state"])}))}


def _result(b: JSON) -> dict[str, Any]:
    return {
        "result_item": job_pb2.ResultItem(
            key=b["key"],
            status=RESULT_STATUS_NUMBERS[ResultStatus(b["status"])],
            data=struct(b.get("data")),
            error=b.get("error", ""),
            replaced_status=(
                RESULT_STATUS_NUMBERS[ResultStatus(b["replaced"])]
                if "replaced" in b
                else job_pb2.RESULT_STATUS_UNSPECIFIED
            ),
        )
    }


def _cancel(b: JSON) -> dict[str, Any]:
    return {"cancel_requested": job_pb2.CancelRequested(reason=b["reason"])}


def artifact(value: Artifact) -> job_pb2.Artifact:
    """An artifact as an Artifact message."""
    return job_pb2.Artifact(
        name=value.name,
        size_bytes=value.size_bytes,
        sha256=value.sha256,
        content_type=value.content_type,
        create_time=timestamp(value.create_time),
        attempt=value.attempt,
    )


def _artifact_added(b: JSON) -> dict[str, Any]:
    return {"artifact_added": artifact(Artifact(**b))}


_PAYLOADS: dict[EventKind, Callable[[JSON], dict[str, Any]]] = {
    EventKind.STATE_CHANGE: _state_change,
    EventKind.PROGRESS: _progress,
    EventKind.LOG: _log,
    EventKind.STEP: _step_event,
    EventKind.RESULT_ITEM: _result,
    EventKind.CANCEL_REQUESTED: _cancel,
    EventKind.ARTIFACT_ADDED: _artifact_added,
}


def event(value: Event) -> job_pb2.JobEvent:
    """An event as a JobEvent message."""
    return job_pb2.JobEvent(
        job_id=value.job_id,
        seq=value.seq,
        event_time=timestamp(value.time),
        **_PAYLOADS[value.kind](value.body),
    )


MESSAGE_OVERHEAD_BYTES = 1024
"""Memory a JobEvent message takes beyond its encoded size (measured: about
900 bytes for a 114-byte log event)."""


class EventMessages:
    """JobEvent messages of recently sent events, shared by all their
    watchers, up to about ``max_bytes`` of memory (least recently used go
    first).

    Twenty dashboards on one chatty job would otherwise convert every event
    twenty times (70 % of the server's time in fault scenario 3). A stored
    event never changes, and (job id, seq, time) names one: a job deleted and
    submitted again under its id has new events at other times. Used from the
    event loop only.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._cache: OrderedDict[tuple[str, int, int], tuple[job_pb2.JobEvent, int]]
        self._cache = OrderedDict()
        self._bytes = 0

    def get(self, value: Event) -> tuple[job_pb2.JobEvent, int]:
        """The event's message and its size in bytes."""
        key = (value.job_id, value.seq, value.time)
        hit = self._cache.get(key)
        if hit is not None:
            self._cache.move_to_end(key)
            return hit
        message = event(value)
        entry = self._cache[key] = (message, message.ByteSize())
        self._bytes += entry[1] + MESSAGE_OVERHEAD_BYTES
        while self._bytes > self.max_bytes:
            _, (_, size) = self._cache.popitem(last=False)
            self._bytes -= size + MESSAGE_OVERHEAD_BYTES
        return entry

    def batches(
        self, values: Iterable[Event], max_bytes: int
    ) -> Iterator[job_service_pb2.JobEventBatch]:
        """The events as JobEventBatch messages of about ``max_bytes`` each
        (a batch is cut after the event that reaches it, so one large event
        still goes)."""
        batch = job_service_pb2.JobEventBatch()
        size = 0
        for value in values:
            message, message_size = self.get(value)
            batch.events.append(message)
            size += message_size
            if size >= max_bytes:
                yield batch
                batch = job_service_pb2.JobEventBatch()
                size = 0
        if batch.events:
            yield batch


def lease_fields(lease: Lease) -> dict[str, Any]:
    """An AcquireJobResponse's (or a LeasedJob's) fields for a lease."""
    return {
        "job": job(lease.job),
        "lease_id": lease.lease_id,
        "lease_expire_time": timestamp(lease.expire_time),
    }


def leases(leased: Sequence[Lease]) -> worker_service_pb2.AcquireJobResponse:
    """An AcquireJobResponse: the first lease in its own fields (as a
    single-job answer has always carried it), the others in ``more_jobs``;
    empty when none."""
    if not leased:
        return worker_service_pb2.AcquireJobResponse()
    first, *more = leased
    return worker_service_pb2.AcquireJobResponse(
        **lease_fields(first),
        more_jobs=[worker_service_pb2.LeasedJob(**lease_fields(lease)) for lease in more],
    )


def finish_result(answer: Job | ServiceError) -> worker_service_pb2.FinishJobResult:
    """One finish's answer in a FinishJobsResponse: the job, or why the
    finish was refused (the code, message and reason its own call would
    have ended with)."""
    if isinstance(answer, ServiceError):
        return worker_service_pb2.FinishJobResult(
            error_code=CODES[type(answer)].value[0],
            error_message=answer.details(),
            error_reason=answer.reason,
        )
    return worker_service_pb2.FinishJobResult(job=job(answer))


def duration(us: int) -> duration_pb2.Duration:
    """Microseconds as a Duration."""
    return duration_pb2.Duration(seconds=us // 1_000_000, nanos=(us % 1_000_000) * 1000)


def stats(value: Stats) -> job_service_pb2.GetStatsResponse:
    """Stats as a GetStatsResponse."""
    minutes = value.window_us / 60e6
    return job_service_pb2.GetStatsResponse(
        state_counts=[
            job_service_pb2.StateCount(state=JOB_STATE_NUMBERS[s], count=n)
            for s, n in value.by_state
        ],
        kind_counts=[
            job_service_pb2.KindStateCount(kind=k, state=JOB_STATE_NUMBERS[s], count=n)
            for k, s, n in value.by_kind
        ],
        window=duration(value.window_us),
        ended_count=value.ended,
        success_rate=value.success_rate,
        duration_p50=duration(value.duration_p50_us),
        duration_p95=duration(value.duration_p95_us),
        throughput_per_minute=value.ended / minutes,
    )
