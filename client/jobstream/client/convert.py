"""Between protobuf messages and the client's models: the one client module
that reads ``pb`` messages (the call layers in client.py and the worker
send them). Conventions at the edge:

* a ``google.protobuf.Timestamp`` becomes a timezone-aware UTC ``datetime``,
  an unset one ``None``; naive datetimes are refused on the way out;
* a ``google.protobuf.Struct`` becomes a ``dict``; JSON has only one number
  type, so integral numbers come back as ``int`` (``{"n": 3}`` stays 3, not 3.0);
* pb enum ints map to str enums through one table per enum.

The way out holds only what the library sends: a submit's spec, a filter,
and the progress and error a worker reports.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from enum import Enum
from typing import Any, Generic, TypeVar

from google.protobuf import json_format, struct_pb2, timestamp_pb2
from google.protobuf.message import Message

from jobstream.client.models import (
    Artifact,
    Counters,
    DeleteResult,
    EventKind,
    Job,
    JobChange,
    JobError,
    JobEvent,
    JobOutcome,
    JobSpec,
    JobState,
    JsonObject,
    LogLevel,
    LogLine,
    Progress,
    PurgeResult,
    ResultItem,
    ResultStatus,
    StateChange,
    Stats,
    Step,
    StepState,
    WorkerInfo,
)
from jobstream.v1 import job_pb2, job_service_pb2, worker_service_pb2

_MAX_EXACT_INT = 2**53
"""Largest integer a JSON/Struct number (an IEEE double) holds exactly."""


# --------------------------------------------------------------- enum tables


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
        schedule_time=time_from_pb(msg, "schedule_time"),
        owner=msg.owner,
        request_id=msg.request_id,
        create_time=time_from_pb(msg, "create_time"),
        start_time=time_from_pb(msg, "start_time"),
        end_time=time_from_pb(msg, "end_time"),
        update_time=time_from_pb(msg, "update_time"),
        last_seq=msg.last_seq,
        worker_id=msg.worker_id,
        server_paths=tuple(msg.server_paths),
        checkpoint=struct_to_dict(msg.checkpoint) if msg.HasField("checkpoint") else None,
    )


def worker_from_pb(msg: job_service_pb2.Worker) -> WorkerInfo:
    """WorkerInfo from pb."""
    return WorkerInfo(
        worker_id=msg.worker_id,
        host=msg.host,
        kinds=tuple(msg.kinds),
        queues=tuple(msg.queues),
        concurrency=msg.concurrency,
        running_jobs=msg.running_jobs,
        first_seen_time=time_from_pb(msg, "first_seen_time"),
        last_seen_time=time_from_pb(msg, "last_seen_time"),
        live=msg.live,
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
        event_time=time_from_pb(msg, "event_time"),
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
        listing_token=msg.listing_token,
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


def job_error_to_pb(value: JobError) -> job_pb2.JobError:
    """JobError to pb."""
    msg = job_pb2.JobError(code=value.code, message=value.message)
    if value.details:
        fill_struct(msg.details, value.details, what="details")
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
    if spec.schedule_time is not None:
        fill_time(msg.schedule_time, spec.schedule_time, what="schedule_time")
    return msg


def filter_to_pb(
    *,
    states: Iterable[JobState | str] = (),
    kinds: Iterable[str] = (),
    labels: Mapping[str, str] | None = None,
    queues: Iterable[str] = (),
    created_after: datetime | None = None,
    created_before: datetime | None = None,
    ended_after: datetime | None = None,
    ended_before: datetime | None = None,
    text: str = "",
    params: Mapping[str, Any] | None = None,
) -> job_pb2.JobFilter:
    """A JobFilter; every given criterion must match, an empty one matches
    all. ``params`` maps a path of keys joined by dots to the value that
    member must equal (a string, number, boolean or null)."""
    flt = job_pb2.JobFilter(
        states=[JOB_STATES.to_pb(s) for s in states],
        kinds=list(kinds),
        labels=dict(labels or {}),
        queues=list(queues),
        text=text,
        params={k: json.dumps(v) for k, v in (params or {}).items()},
    )
    for name, value in (
        ("create_time_after", created_after),
        ("create_time_before", created_before),
        ("end_time_after", ended_after),
        ("end_time_before", ended_before),
    ):
        if value is not None:
            fill_time(getattr(flt, name), value, what=name)
    return flt
