"""What the client hands out: frozen value objects and str enums, and the
converters between them and the protobuf messages.

This is the one client module (besides the call layers in client.py and
worker.py) that touches ``pb`` messages. Conventions at the edge:

* a ``google.protobuf.Timestamp`` becomes a timezone-aware UTC ``datetime``,
  an unset one ``None``; naive datetimes are refused on the way out;
* a ``google.protobuf.Struct`` becomes a ``dict``; JSON has only one number
  type, so integral numbers come back as ``int`` (``{"n": 3}`` stays 3, not 3.0);
* pb enum ints map to str enums through one table per enum.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import Enum, StrEnum
from typing import Any, Generic, TypeVar

from google.protobuf import json_format, struct_pb2, timestamp_pb2
from google.protobuf.message import Message

from jobstream.v1 import job_pb2, job_service_pb2, worker_service_pb2

__all__ = [
    "Artifact",
    "Counters",
    "DeleteResult",
    "EventKind",
    "Job",
    "JobChange",
    "JobError",
    "JobEvent",
    "JobOutcome",
    "JobSpec",
    "JobState",
    "LogLevel",
    "LogLine",
    "Progress",
    "PurgeResult",
    "ResultItem",
    "ResultStatus",
    "StateChange",
    "Stats",
    "Step",
    "StepState",
]

JsonObject = dict[str, Any]
"""A JSON object as Python sees it (params, results, step and item data)."""

_MAX_EXACT_INT = 2**53
"""Largest integer a JSON/Struct number (an IEEE double) holds exactly."""


# --------------------------------------------------------------------- enums


class JobState(StrEnum):
    """Where a job is in its life; the last four are terminal."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"

    @property
    def terminal(self) -> bool:
        """True when the job never changes again (short of a retry)."""
        return self not in (JobState.QUEUED, JobState.RUNNING)


class StepState(StrEnum):
    """The state of one named step of a job."""

    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"
    CANCELLED = "cancelled"
    """Stopped because the job was cancelled."""
    INTERRUPTED = "interrupted"
    """Cut short: the attempt ended (lease expired, server restarted) while
    the step ran."""


class LogLevel(StrEnum):
    """Severity of a job's log line."""

    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


class ResultStatus(StrEnum):
    """Outcome of one item a job processed."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"


class JobOutcome(StrEnum):
    """How a worker ends an attempt."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    RELEASED = "released"


class EventKind(StrEnum):
    """What a JobEvent records; each value is the name of its payload field."""

    STATE_CHANGE = "state_change"
    PROGRESS = "progress"
    LOG = "log"
    STEP = "step"
    RESULT_ITEM = "result_item"
    CANCEL_REQUESTED = "cancel_requested"
    ARTIFACT_ADDED = "artifact_added"


E = TypeVar("E", bound=Enum)
P = TypeVar("P", bound=int)


class EnumTable(Generic[E, P]):
    """A two-way mapping between a str enum and a pb enum's int values.

    ``default`` is what an unset (0) or unknown pb value reads as; without
    one such a value is an error, because it means the server broke the
    contract.
    """

    def __init__(self, enum: type[E], pairs: Mapping[E, P], *, default: E | None = None) -> None:
        self.enum = enum
        self.to_pb_map: dict[E, P] = dict(pairs)
        self.from_pb_map: dict[int, E] = {int(v): k for k, v in pairs.items()}
        self.default = default

    def to_pb(self, value: E | str) -> P:
        """The pb value for an enum member or its string value."""
        try:
            return self.to_pb_map[self.enum(value)]
        except ValueError:
            choices = ", ".join(str(m.value) for m in self.to_pb_map)
            raise ValueError(
                f"{value!r} is not a {self.enum.__name__}; expected one of: {choices}"
            ) from None

    def from_pb(self, value: int) -> E:
        """The enum member for a pb value."""
        member = self.from_pb_map.get(int(value), self.default)
        if member is None:
            raise ValueError(f"unexpected {self.enum.__name__} value {value} from the server")
        return member


JOB_STATES = EnumTable(
    JobState,
    {
        JobState.QUEUED: job_pb2.JOB_STATE_QUEUED,
        JobState.RUNNING: job_pb2.JOB_STATE_RUNNING,
        JobState.SUCCEEDED: job_pb2.JOB_STATE_SUCCEEDED,
        JobState.FAILED: job_pb2.JOB_STATE_FAILED,
        JobState.CANCELLED: job_pb2.JOB_STATE_CANCELLED,
        JobState.INTERRUPTED: job_pb2.JOB_STATE_INTERRUPTED,
    },
)
"""JobState <-> jobstream.v1.JobState."""

STEP_STATES = EnumTable(
    StepState,
    {
        StepState.PENDING: job_pb2.STEP_STATE_PENDING,
        StepState.RUNNING: job_pb2.STEP_STATE_RUNNING,
        StepState.SUCCEEDED: job_pb2.STEP_STATE_SUCCEEDED,
        StepState.FAILED: job_pb2.STEP_STATE_FAILED,
        StepState.SKIPPED: job_pb2.STEP_STATE_SKIPPED,
        StepState.CANCELLED: job_pb2.STEP_STATE_CANCELLED,
        StepState.INTERRUPTED: job_pb2.STEP_STATE_INTERRUPTED,
    },
    default=StepState.PENDING,
)
"""StepState <-> jobstream.v1.StepState (unset reads as pending)."""

LOG_LEVELS = EnumTable(
    LogLevel,
    {
        LogLevel.DEBUG: job_pb2.LOG_LEVEL_DEBUG,
        LogLevel.INFO: job_pb2.LOG_LEVEL_INFO,
        LogLevel.WARNING: job_pb2.LOG_LEVEL_WARNING,
        LogLevel.ERROR: job_pb2.LOG_LEVEL_ERROR,
    },
    default=LogLevel.INFO,
)
"""LogLevel <-> jobstream.v1.LogLevel (unset reads as info, as the server stores it)."""

RESULT_STATUSES = EnumTable(
    ResultStatus,
    {
        ResultStatus.SUCCEEDED: job_pb2.RESULT_STATUS_SUCCEEDED,
        ResultStatus.FAILED: job_pb2.RESULT_STATUS_FAILED,
        ResultStatus.SKIPPED: job_pb2.RESULT_STATUS_SKIPPED,
    },
)
"""ResultStatus <-> jobstream.v1.ResultStatus."""

JOB_OUTCOMES = EnumTable(
    JobOutcome,
    {
        JobOutcome.SUCCEEDED: worker_service_pb2.JOB_OUTCOME_SUCCEEDED,
        JobOutcome.FAILED: worker_service_pb2.JOB_OUTCOME_FAILED,
        JobOutcome.CANCELLED: worker_service_pb2.JOB_OUTCOME_CANCELLED,
        JobOutcome.RELEASED: worker_service_pb2.JOB_OUTCOME_RELEASED,
    },
)
"""JobOutcome <-> jobstream.v1.JobOutcome."""


# ------------------------------------------------------------- value objects


@dataclass(frozen=True, kw_only=True, slots=True)
class Progress:
    """How far a job has come."""

    fraction: float = 0.0
    """Fraction done, 0..1."""
    done: int = 0
    """Items done so far."""
    total: int = 0
    """Items in all (0 when unknown)."""
    phase: str = ""
    """Name of the current phase."""
    message: str = ""
    """A short human-readable status line."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Counters:
    """Per-item results a job reported, counted."""

    succeeded: int = 0
    failed: int = 0
    skipped: int = 0


@dataclass(frozen=True, kw_only=True, slots=True)
class Step:
    """One named step of a job."""

    name: str
    state: StepState = StepState.PENDING
    attempts: int = 0
    """How many times the step was started."""
    error: str = ""
    """Error text of the last failure ("" when none)."""
    data: JsonObject = field(default_factory=dict)
    start_time: datetime | None = None
    end_time: datetime | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class JobError:
    """Why a job failed, was cancelled or interrupted."""

    code: str
    """Short machine-readable code, e.g. "lease_expired" or an exception class name."""
    message: str = ""
    details: JsonObject = field(default_factory=dict)
    """Free-form details, e.g. {"traceback": "..."}."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Job:
    """A job and everything known about it (steps only from ``get``)."""

    id: str
    kind: str
    state: JobState
    queue: str = ""
    priority: int = 0
    params: JsonObject = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    cancel_requested: bool = False
    progress: Progress = field(default_factory=Progress)
    counters: Counters = field(default_factory=Counters)
    steps: tuple[Step, ...] = ()
    result: JsonObject | None = None
    """Final result of a succeeded job; None when unset."""
    error: JobError | None = None
    attempt: int = 0
    max_attempts: int = 0
    not_before: datetime | None = None
    owner: str = ""
    request_id: str = ""
    """Idempotency key given at submit ("" when none)."""
    create_time: datetime | None = None
    start_time: datetime | None = None
    end_time: datetime | None = None
    update_time: datetime | None = None
    last_seq: int = 0
    """Seq of the job's newest event; pass it as after_seq to watch from now."""
    worker_id: str = ""


@dataclass(frozen=True, kw_only=True, slots=True)
class StateChange:
    """A job entering a state."""

    state: JobState
    reason: str = ""
    error: JobError | None = None
    attempt: int = 0


@dataclass(frozen=True, kw_only=True, slots=True)
class LogLine:
    """One line a job logged."""

    text: str
    level: LogLevel = LogLevel.INFO
    stream: str = ""
    """e.g. "stdout"; "" for the job's own log."""
    truncated: bool = False
    """The server cut the text to its log line limit."""


@dataclass(frozen=True, kw_only=True, slots=True)
class ResultItem:
    """Outcome of one item a job processed."""

    key: str
    status: ResultStatus = ResultStatus.SUCCEEDED
    data: JsonObject = field(default_factory=dict)
    error: str = ""
    replaced_status: ResultStatus | None = None
    """In a watched result event: the status of the earlier version of this
    key that the item replaced (None when the key is new)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Artifact:
    """A named output file of a job, kept by the server."""

    name: str
    size_bytes: int = 0
    sha256: str = ""
    """SHA-256 of the content, lowercase hex."""
    content_type: str = ""
    create_time: datetime | None = None
    attempt: int = 0
    """The attempt that uploaded it."""


@dataclass(frozen=True, kw_only=True, slots=True)
class JobEvent:
    """One change to a job; exactly the payload field named by ``kind`` is set."""

    job_id: str
    seq: int
    """Position in the job's event sequence: 1, 2, 3 … with no gaps."""
    kind: EventKind
    time: datetime | None = None
    state_change: StateChange | None = None
    progress: Progress | None = None
    log: LogLine | None = None
    step: Step | None = None
    result_item: ResultItem | None = None
    cancel_requested: str | None = None
    """The reason given with a cancel request."""
    artifact_added: Artifact | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class JobChange:
    """One change of a watched job list: a job's new state, a deletion, or
    the marker that ends the initial listing."""

    position: int
    """Pass as after_position to resume after this change."""
    job: Job | None = None
    deleted_job_id: str | None = None
    caught_up: bool = False


@dataclass(frozen=True, kw_only=True, slots=True)
class PurgeResult:
    """What a purge deleted (or, as a dry run, would delete)."""

    purged_count: int
    job_ids: tuple[str, ...] = ()
    """Their ids, oldest first (the server lists up to 1000)."""
    removed_paths: tuple[str, ...] = ()
    """Files and directories removed, relative to the server's data directory
    (absolute under one of its output roots)."""
    refused_paths: tuple[str, ...] = ()
    """Recorded paths the job did not own (outside its own directories, or
    the database), left untouched."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Stats:
    """Counts and timings of a set of jobs (see ``JobClient.stats``)."""

    by_state: dict[JobState, int] = field(default_factory=dict)
    """Jobs per state (states without jobs left out)."""
    by_kind: dict[str, dict[JobState, int]] = field(default_factory=dict)
    """Jobs per kind, then per state."""
    window: timedelta = timedelta(0)
    """The recent window the figures below cover."""
    ended_count: int = 0
    """Jobs that ended within the window."""
    success_rate: float = 0.0
    """Succeeded / (ended within the window, cancelled ones not counted)."""
    duration_p50: timedelta = timedelta(0)
    """Median run time of jobs that succeeded or failed within the window."""
    duration_p95: timedelta = timedelta(0)
    """95th percentile of the same run times."""
    throughput_per_minute: float = 0.0
    """Jobs ended per minute over the window."""


@dataclass(frozen=True, kw_only=True, slots=True)
class DeleteResult:
    """What a delete removed."""

    deleted: bool
    """False when the job did not exist (allow_missing)."""
    removed_paths: tuple[str, ...] = ()
    """Files and directories removed, relative to the server's data directory
    (absolute under one of its output roots); artifacts are database rows,
    deleted with the job, and not listed."""
    refused_paths: tuple[str, ...] = ()
    """Recorded paths the job did not own (outside its own directories, or
    the database), left untouched."""


@dataclass(frozen=True, kw_only=True, slots=True)
class JobSpec:
    """One job to submit (``JobClient.submit_many``); fields as for ``submit``."""

    kind: str
    params: Mapping[str, Any] | None = None
    job_id: str | None = None
    queue: str = ""
    priority: int = 0
    labels: Mapping[str, str] | None = None
    max_attempts: int = 0
    not_before: datetime | None = None
    request_id: str | None = None


# ---------------------------------------------------------- scalar converters


def _normalise_numbers(value: Any) -> Any:
    """Integral doubles back to int, recursively (see the module docstring)."""
    if isinstance(value, float):
        if math.isfinite(value) and value.is_integer() and abs(value) <= _MAX_EXACT_INT:
            return int(value)
        return value
    if isinstance(value, dict):
        return {k: _normalise_numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_normalise_numbers(v) for v in value]
    return value


def struct_to_dict(message: struct_pb2.Struct) -> JsonObject:
    """A Struct as a plain dict."""
    result: JsonObject = _normalise_numbers(json_format.MessageToDict(message))
    return result


def fill_struct(target: struct_pb2.Struct, value: Mapping[str, Any], *, what: str) -> None:
    """Sets ``target`` (a Struct field, marked present even when empty) to ``value``.

    ``what`` names the field in the error for a value JSON cannot hold.
    """
    target.Clear()
    target.SetInParent()
    try:
        target.update(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{what}: not JSON-serialisable: {exc}") from exc


def time_from_pb(parent: Message, name: str) -> datetime | None:
    """The Timestamp field ``name`` of ``parent`` as UTC datetime; None when unset."""
    if not parent.HasField(name):
        return None
    stamp: timestamp_pb2.Timestamp = getattr(parent, name)
    return stamp.ToDatetime(tzinfo=UTC)


def fill_time(target: timestamp_pb2.Timestamp, value: datetime, *, what: str) -> None:
    """Sets a Timestamp field from a timezone-aware datetime.

    A naive datetime is refused: whether it meant local time or UTC cannot
    be known, and guessing wrong shifts a schedule by hours.
    """
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{what}: give a timezone-aware datetime, e.g. datetime.now(timezone.utc)")
    target.FromDatetime(value)


# ------------------------------------------------------------- pb -> models


def progress_from_pb(msg: job_pb2.Progress) -> Progress:
    """Progress from pb."""
    return Progress(
        fraction=msg.fraction, done=msg.done, total=msg.total, phase=msg.phase, message=msg.message
    )


def step_from_pb(msg: job_pb2.Step) -> Step:
    """Step from pb."""
    return Step(
        name=msg.name,
        state=STEP_STATES.from_pb(msg.state),
        attempts=msg.attempts,
        error=msg.error,
        data=struct_to_dict(msg.data),
        start_time=time_from_pb(msg, "start_time"),
        end_time=time_from_pb(msg, "end_time"),
    )


def job_error_from_pb(msg: job_pb2.JobError) -> JobError:
    """JobError from pb."""
    return JobError(code=msg.code, message=msg.message, details=struct_to_dict(msg.details))


def job_from_pb(msg: job_pb2.Job) -> Job:
    """Job from pb."""
    return Job(
        id=msg.id,
        kind=msg.kind,
        queue=msg.queue,
        priority=msg.priority,
        params=struct_to_dict(msg.params),
        labels=dict(msg.labels),
        state=JOB_STATES.from_pb(msg.state),
        cancel_requested=msg.cancel_requested,
        progress=progress_from_pb(msg.progress),
        counters=Counters(
            succeeded=msg.counters.succeeded,
            failed=msg.counters.failed,
            skipped=msg.counters.skipped,
        ),
        steps=tuple(step_from_pb(s) for s in msg.steps),
        result=struct_to_dict(msg.result) if msg.HasField("result") else None,
        error=job_error_from_pb(msg.error) if msg.HasField("error") else None,
        attempt=msg.attempt,
        max_attempts=msg.max_attempts,
        not_before=time_from_pb(msg, "not_before"),
        owner=msg.owner,
        request_id=msg.request_id,
        create_time=time_from_pb(msg, "create_time"),
        start_time=time_from_pb(msg, "start_time"),
        end_time=time_from_pb(msg, "end_time"),
        update_time=time_from_pb(msg, "update_time"),
        last_seq=msg.last_seq,
        worker_id=msg.worker_id,
    )


def artifact_from_pb(msg: job_pb2.Artifact) -> Artifact:
    """Artifact from pb."""
    return Artifact(
        name=msg.name,
        size_bytes=msg.size_bytes,
        sha256=msg.sha256,
        content_type=msg.content_type,
        create_time=time_from_pb(msg, "create_time"),
        attempt=msg.attempt,
    )


def _state_change_from_pb(msg: job_pb2.StateChange) -> StateChange:
    return StateChange(
        state=JOB_STATES.from_pb(msg.state),
        reason=msg.reason,
        error=job_error_from_pb(msg.error) if msg.HasField("error") else None,
        attempt=msg.attempt,
    )


def _log_from_pb(msg: job_pb2.LogLine) -> LogLine:
    return LogLine(
        text=msg.text,
        level=LOG_LEVELS.from_pb(msg.level),
        stream=msg.stream,
        truncated=msg.truncated,
    )


def _result_item_from_pb(msg: job_pb2.ResultItem) -> ResultItem:
    return ResultItem(
        key=msg.key,
        status=RESULT_STATUSES.from_pb(msg.status),
        data=struct_to_dict(msg.data),
        error=msg.error,
        replaced_status=(
            RESULT_STATUSES.from_pb(msg.replaced_status) if msg.replaced_status else None
        ),
    )


def _cancel_reason_from_pb(msg: job_pb2.CancelRequested) -> str:
    return msg.reason


_EVENT_PAYLOADS: dict[str, Callable[[Any], Any]] = {
    "state_change": _state_change_from_pb,
    "progress": progress_from_pb,
    "log": _log_from_pb,
    "step": step_from_pb,
    "result_item": _result_item_from_pb,
    "cancel_requested": _cancel_reason_from_pb,
    "artifact_added": artifact_from_pb,
}
"""Per payload (the oneof's field, named as the JobEvent field and the
EventKind value): its conversion. Watchers convert every event, so the
JobEvent is built once, without a second dataclass copy."""


def event_from_pb(msg: job_pb2.JobEvent) -> JobEvent:
    """JobEvent from pb; an event without a payload is a contract breach."""
    which = msg.WhichOneof("payload")
    if which is None:
        raise ValueError(f"event {msg.seq} of job {msg.job_id!r} has no payload")
    payload = _EVENT_PAYLOADS[which](getattr(msg, which))
    return JobEvent(
        job_id=msg.job_id,
        seq=msg.seq,
        kind=EventKind(which),
        time=time_from_pb(msg, "time"),
        **{which: payload},
    )


def purge_result_from_pb(msg: job_service_pb2.PurgeJobsResponse) -> PurgeResult:
    """PurgeResult from pb."""
    return PurgeResult(
        purged_count=msg.purged_count,
        job_ids=tuple(msg.job_ids),
        removed_paths=tuple(msg.removed_paths),
        refused_paths=tuple(msg.refused_paths),
    )


def stats_from_pb(msg: job_service_pb2.GetStatsResponse) -> Stats:
    """Stats from pb."""
    by_kind: dict[str, dict[JobState, int]] = {}
    for row in msg.kind_counts:
        by_kind.setdefault(row.kind, {})[JOB_STATES.from_pb(row.state)] = row.count
    return Stats(
        by_state={JOB_STATES.from_pb(row.state): row.count for row in msg.state_counts},
        by_kind=by_kind,
        window=msg.window.ToTimedelta(),
        ended_count=msg.ended_count,
        success_rate=msg.success_rate,
        duration_p50=msg.duration_p50.ToTimedelta(),
        duration_p95=msg.duration_p95.ToTimedelta(),
        throughput_per_minute=msg.throughput_per_minute,
    )


def change_from_pb(msg: job_service_pb2.WatchJobsResponse) -> JobChange:
    """JobChange from one WatchJobs message."""
    return JobChange(
        position=msg.position,
        job=job_from_pb(msg.job) if msg.HasField("job") else None,
        deleted_job_id=msg.deleted_job_id if msg.HasField("deleted_job_id") else None,
        caught_up=msg.caught_up,
    )


def delete_result_from_pb(msg: job_service_pb2.DeleteJobResponse) -> DeleteResult:
    """DeleteResult from pb."""
    return DeleteResult(
        deleted=msg.deleted,
        removed_paths=tuple(msg.removed_paths),
        refused_paths=tuple(msg.refused_paths),
    )


# ------------------------------------------------------------- models -> pb


def progress_to_pb(value: Progress) -> job_pb2.Progress:
    """Progress to pb."""
    return job_pb2.Progress(
        fraction=value.fraction,
        done=value.done,
        total=value.total,
        phase=value.phase,
        message=value.message,
    )


def step_to_pb(value: Step) -> job_pb2.Step:
    """Step to pb (times only when set)."""
    msg = job_pb2.Step(
        name=value.name,
        state=STEP_STATES.to_pb(value.state),
        attempts=value.attempts,
        error=value.error,
    )
    if value.data:
        fill_struct(msg.data, value.data, what="data")
    if value.start_time is not None:
        fill_time(msg.start_time, value.start_time, what="start_time")
    if value.end_time is not None:
        fill_time(msg.end_time, value.end_time, what="end_time")
    return msg


def job_error_to_pb(value: JobError) -> job_pb2.JobError:
    """JobError to pb."""
    msg = job_pb2.JobError(code=value.code, message=value.message)
    if value.details:
        fill_struct(msg.details, value.details, what="details")
    return msg


def log_line_to_pb(value: LogLine) -> job_pb2.LogLine:
    """LogLine to pb."""
    return job_pb2.LogLine(
        level=LOG_LEVELS.to_pb(value.level), text=value.text, stream=value.stream
    )


def result_item_to_pb(value: ResultItem) -> job_pb2.ResultItem:
    """ResultItem to pb."""
    msg = job_pb2.ResultItem(
        key=value.key, status=RESULT_STATUSES.to_pb(value.status), error=value.error
    )
    if value.replaced_status is not None:
        msg.replaced_status = RESULT_STATUSES.to_pb(value.replaced_status)
    if value.data:
        fill_struct(msg.data, value.data, what="data")
    return msg


def job_to_pb(value: Job) -> job_pb2.Job:
    """Job to pb: the inverse of job_from_pb (for test doubles and round trips)."""
    msg = job_pb2.Job(
        id=value.id,
        kind=value.kind,
        queue=value.queue,
        priority=value.priority,
        labels=dict(value.labels),
        state=JOB_STATES.to_pb(value.state),
        cancel_requested=value.cancel_requested,
        progress=progress_to_pb(value.progress),
        counters=job_pb2.Counters(
            succeeded=value.counters.succeeded,
            failed=value.counters.failed,
            skipped=value.counters.skipped,
        ),
        steps=[step_to_pb(s) for s in value.steps],
        attempt=value.attempt,
        max_attempts=value.max_attempts,
        owner=value.owner,
        request_id=value.request_id,
        last_seq=value.last_seq,
        worker_id=value.worker_id,
    )
    fill_struct(msg.params, value.params, what="params")
    if value.result is not None:
        fill_struct(msg.result, value.result, what="result")
    if value.error is not None:
        msg.error.CopyFrom(job_error_to_pb(value.error))
    times = {
        "not_before": (msg.not_before, value.not_before),
        "create_time": (msg.create_time, value.create_time),
        "start_time": (msg.start_time, value.start_time),
        "end_time": (msg.end_time, value.end_time),
        "update_time": (msg.update_time, value.update_time),
    }
    for name, (target, when) in times.items():
        if when is not None:
            fill_time(target, when, what=name)
    return msg


def event_to_pb(value: JobEvent) -> job_pb2.JobEvent:
    """JobEvent to pb: the inverse of event_from_pb."""
    msg = job_pb2.JobEvent(job_id=value.job_id, seq=value.seq)
    if value.time is not None:
        fill_time(msg.time, value.time, what="time")
    match value.kind:
        case EventKind.STATE_CHANGE if value.state_change is not None:
            sc = value.state_change
            msg.state_change.CopyFrom(
                job_pb2.StateChange(
                    state=JOB_STATES.to_pb(sc.state), reason=sc.reason, attempt=sc.attempt
                )
            )
            if sc.error is not None:
                msg.state_change.error.CopyFrom(job_error_to_pb(sc.error))
        case EventKind.PROGRESS if value.progress is not None:
            msg.progress.CopyFrom(progress_to_pb(value.progress))
        case EventKind.LOG if value.log is not None:
            msg.log.CopyFrom(log_line_to_pb(value.log))
        case EventKind.STEP if value.step is not None:
            msg.step.CopyFrom(step_to_pb(value.step))
        case EventKind.RESULT_ITEM if value.result_item is not None:
            msg.result_item.CopyFrom(result_item_to_pb(value.result_item))
        case EventKind.CANCEL_REQUESTED if value.cancel_requested is not None:
            msg.cancel_requested.reason = value.cancel_requested
        case EventKind.ARTIFACT_ADDED if value.artifact_added is not None:
            a = value.artifact_added
            msg.artifact_added.CopyFrom(
                job_pb2.Artifact(
                    name=a.name,
                    size_bytes=a.size_bytes,
                    sha256=a.sha256,
                    content_type=a.content_type,
                    attempt=a.attempt,
                )
            )
            if a.create_time is not None:
                fill_time(msg.artifact_added.create_time, a.create_time, what="create_time")
        case _:
            raise ValueError(f"event kind {value.kind} without its payload")
    return msg


def spec_to_pb(spec: JobSpec) -> job_service_pb2.SubmitJobRequest:
    """A SubmitJobRequest for one JobSpec."""
    msg = job_service_pb2.SubmitJobRequest(
        job_id=spec.job_id or "",
        kind=spec.kind,
        queue=spec.queue,
        priority=spec.priority,
        labels=dict(spec.labels or {}),
        max_attempts=spec.max_attempts,
        request_id=spec.request_id or "",
    )
    if spec.params is not None:
        fill_struct(msg.params, spec.params, what="params")
    if spec.not_before is not None:
        fill_time(msg.not_before, spec.not_before, what="not_before")
    return msg


def filter_to_pb(
    *,
    states: Iterable[JobState | str] = (),
    kinds: Iterable[str] = (),
    labels: Mapping[str, str] | None = None,
    queues: Iterable[str] = (),
) -> job_pb2.JobFilter:
    """A JobFilter; every given criterion must match, an empty one matches all."""
    return job_pb2.JobFilter(
        states=[JOB_STATES.to_pb(s) for s in states],
        kinds=list(kinds),
        labels=dict(labels or {}),
        queues=list(queues),
    )
