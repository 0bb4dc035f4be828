"""The client's models and converters: enum tables are complete, pb -> model
conversions invert the encoders at the end of this module (test-only: the
library never sends a Job or an event), times are UTC-aware, Structs keep
their ints."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from enum import Enum
from typing import Any

import pytest
from google.protobuf.internal.enum_type_wrapper import EnumTypeWrapper

from jobstream.client import convert, models
from jobstream.client.convert import (
    JOB_STATES,
    LOG_LEVELS,
    RESULT_STATUSES,
    STEP_STATES,
    fill_struct,
    fill_time,
    job_error_to_pb,
    progress_to_pb,
)
from jobstream.client.models import (
    Counters,
    EventKind,
    Job,
    JobError,
    JobEvent,
    JobSpec,
    JobState,
    LogLevel,
    LogLine,
    Progress,
    ResultItem,
    ResultStatus,
    StateChange,
    Step,
    StepState,
)
from jobstream.v1 import job_pb2, job_service_pb2, worker_service_pb2

T0 = datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)

TABLES: list[tuple[Any, Any, str]] = [
    (convert.JOB_STATES, job_pb2.JobState, "JOB_STATE_"),
    (convert.STEP_STATES, job_pb2.StepState, "STEP_STATE_"),
    (convert.LOG_LEVELS, job_pb2.LogLevel, "LOG_LEVEL_"),
    (convert.RESULT_STATUSES, job_pb2.ResultStatus, "RESULT_STATUS_"),
    (convert.JOB_OUTCOMES, worker_service_pb2.JobOutcome, "JOB_OUTCOME_"),
]


@pytest.mark.parametrize(("table", "pb_enum", "prefix"), TABLES)
def test_enum_table_is_complete_both_ways(
    table: Any, pb_enum: EnumTypeWrapper, prefix: str
) -> None:
    specified = {name: value for name, value in pb_enum.items() if value != 0}
    assert set(table.from_pb_map) == set(specified.values())
    assert set(table.to_pb_map) == set(table.enum)
    for name, value in specified.items():
        member = table.from_pb(value)
        # The str value is the pb name without its prefix, lowercased.
        assert member.value == name.removeprefix(prefix).lower()
        assert table.to_pb(member) == value
        assert table.to_pb(member.value) == value


def test_enum_table_refuses_unknown_values() -> None:
    with pytest.raises(ValueError, match="not a JobState"):
        convert.JOB_STATES.to_pb("paused")
    with pytest.raises(ValueError, match="unexpected JobState value 0"):
        convert.JOB_STATES.from_pb(job_pb2.JOB_STATE_UNSPECIFIED)
    with pytest.raises(ValueError, match="unexpected ResultStatus value 99"):
        convert.RESULT_STATUSES.from_pb(99)


def test_enum_table_defaults_for_unset() -> None:
    assert convert.LOG_LEVELS.from_pb(job_pb2.LOG_LEVEL_UNSPECIFIED) is LogLevel.INFO
    assert convert.STEP_STATES.from_pb(job_pb2.STEP_STATE_UNSPECIFIED) is StepState.PENDING


def test_str_enums_are_strings() -> None:
    for enum in (JobState, StepState, LogLevel, ResultStatus, models.JobOutcome, EventKind):
        assert issubclass(enum, str)
        assert issubclass(enum, Enum)
    assert str(JobState.QUEUED) == "queued"
    assert JobState("failed") is JobState.FAILED


def test_terminal_states() -> None:
    assert {s for s in JobState if s.terminal} == {
        JobState.SUCCEEDED,
        JobState.FAILED,
        JobState.CANCELLED,
        JobState.INTERRUPTED,
    }


def test_event_kinds_are_the_payload_fields() -> None:
    fields = {f.name for f in job_pb2.JobEvent.DESCRIPTOR.oneofs_by_name["payload"].fields}
    assert {k.value for k in EventKind} == fields


def full_job() -> Job:
    return Job(
        id="job_1",
        kind="demo.count",
        state=JobState.FAILED,
        queue="default",
        priority=5,
        params={"n": 3, "ratio": 0.5, "nested": {"list": [1, "two", None, True]}},
        labels={"team": "growth"},
        cancel_requested=True,
        progress=Progress(fraction=0.5, done=1, total=2, phase="count", message="half"),
        counters=Counters(succeeded=1, failed=2, skipped=3),
        steps=(
            Step(
                name="fetch",
                state=StepState.FAILED,
                attempts=2,
                error="boom",
                data={"rows": 10},
                start_time=T0,
                end_time=T0 + timedelta(seconds=1),
            ),
            Step(name="load"),
        ),
        result={"total": 3},
        error=JobError(code="RuntimeError", message="boom", details={"traceback": "..."}),
        attempt=2,
        max_attempts=3,
        schedule_time=T0,
        owner="alice",
        request_id="req-1",
        create_time=T0,
        start_time=T0 + timedelta(seconds=1),
        end_time=T0 + timedelta(seconds=2),
        update_time=T0 + timedelta(seconds=3),
        last_seq=42,
        worker_id="host:1",
    )


def test_job_round_trips() -> None:
    job = full_job()
    msg = job_to_pb(job)
    assert convert.job_from_pb(msg) == job
    assert job_to_pb(convert.job_from_pb(msg)) == msg


def test_unset_fields_read_as_none() -> None:
    job = convert.job_from_pb(job_pb2.Job(id="j", kind="k", state=job_pb2.JOB_STATE_QUEUED))
    assert job.result is None
    assert job.error is None
    assert job.create_time is None and job.schedule_time is None and job.end_time is None
    assert job.params == {}
    assert job.steps == ()


def test_empty_result_is_not_none() -> None:
    msg = job_pb2.Job(id="j", kind="k", state=job_pb2.JOB_STATE_SUCCEEDED)
    msg.result.SetInParent()
    assert convert.job_from_pb(msg).result == {}


def test_times_are_utc_aware() -> None:
    msg = job_pb2.Job(id="j", kind="k", state=job_pb2.JOB_STATE_QUEUED)
    msg.create_time.FromDatetime(T0)
    created = convert.job_from_pb(msg).create_time
    assert created == T0
    assert created is not None and created.utcoffset() == timedelta(0)


def test_aware_datetimes_in_other_zones_convert() -> None:
    plus_two = T0.astimezone(timezone(timedelta(hours=2)))
    request = convert.spec_to_pb(JobSpec(kind="k", schedule_time=plus_two))
    assert request.schedule_time.ToDatetime(tzinfo=UTC) == T0


def test_naive_datetimes_are_refused() -> None:
    with pytest.raises(ValueError, match="schedule_time: give a timezone-aware datetime"):
        convert.spec_to_pb(JobSpec(kind="k", schedule_time=datetime(2026, 1, 1)))


def test_struct_keeps_ints_and_floats() -> None:
    data = {"i": 3, "f": 2.5, "neg": -7, "big": 2**53, "list": [1, 1.5], "deep": {"x": 0}}
    msg = convert.spec_to_pb(JobSpec(kind="k", params=data))
    back = convert.struct_to_dict(msg.params)
    assert back == data
    assert isinstance(back["i"], int) and isinstance(back["f"], float)
    assert isinstance(back["list"][0], int) and isinstance(back["deep"]["x"], int)


def test_struct_refuses_non_json_values() -> None:
    with pytest.raises(ValueError, match="params: not JSON-serialisable"):
        convert.spec_to_pb(JobSpec(kind="k", params={"when": datetime.now(UTC)}))


def test_spec_to_pb() -> None:
    request = convert.spec_to_pb(
        JobSpec(
            kind="demo.count",
            params={"n": 1},
            job_id="my-job",
            queue="q",
            priority=3,
            labels={"a": "b"},
            max_attempts=4,
            request_id="r",
        )
    )
    assert request == job_service_pb2.SubmitJobRequest(
        job_id="my-job",
        kind="demo.count",
        queue="q",
        priority=3,
        params=request.params,
        labels={"a": "b"},
        max_attempts=4,
        request_id="r",
    )
    assert convert.struct_to_dict(request.params) == {"n": 1}
    bare = convert.spec_to_pb(JobSpec(kind="k"))
    assert not bare.HasField("params") and not bare.HasField("schedule_time")
    assert bare.job_id == "" and bare.request_id == ""


def test_filter_to_pb_takes_enums_and_strings() -> None:
    flt = convert.filter_to_pb(
        states=[JobState.QUEUED, "running"], kinds=["k"], labels={"a": "b"}, queues=["q"]
    )
    assert list(flt.states) == [job_pb2.JOB_STATE_QUEUED, job_pb2.JOB_STATE_RUNNING]
    assert list(flt.kinds) == ["k"] and dict(flt.labels) == {"a": "b"} and list(flt.queues) == ["q"]
    assert convert.filter_to_pb() == job_pb2.JobFilter()
    with pytest.raises(ValueError, match="expected one of: queued, running"):
        convert.filter_to_pb(states=["done"])


EVENTS = [
    JobEvent(
        job_id="j",
        seq=1,
        kind=EventKind.STATE_CHANGE,
        event_time=T0,
        state_change=StateChange(
            state=JobState.FAILED,
            reason="handler failed",
            error=JobError(code="E", message="m"),
            attempt=2,
        ),
    ),
    JobEvent(
        job_id="j",
        seq=2,
        kind=EventKind.STATE_CHANGE,
        state_change=StateChange(state=JobState.QUEUED, reason="submitted"),
    ),
    JobEvent(job_id="j", seq=3, kind=EventKind.PROGRESS, progress=Progress(done=1, total=2)),
    JobEvent(
        job_id="j",
        seq=4,
        kind=EventKind.LOG,
        log=LogLine(text="hello", level=LogLevel.WARNING, stream="stderr"),
    ),
    JobEvent(job_id="j", seq=5, kind=EventKind.STEP, step=Step(name="s", state=StepState.RUNNING)),
    JobEvent(
        job_id="j",
        seq=6,
        kind=EventKind.RESULT_ITEM,
        result_item=ResultItem(
            key="row-1", status=ResultStatus.FAILED, data={"x": 1}, error="bad row"
        ),
    ),
    JobEvent(
        job_id="j",
        seq=7,
        kind=EventKind.RESULT_ITEM,
        result_item=ResultItem(
            key="row-1", status=ResultStatus.SUCCEEDED, replaced_status=ResultStatus.FAILED
        ),
    ),
    JobEvent(
        job_id="j", seq=9, kind=EventKind.STEP, step=Step(name="s", state=StepState.CANCELLED)
    ),
    JobEvent(
        job_id="j", seq=10, kind=EventKind.STEP, step=Step(name="s", state=StepState.INTERRUPTED)
    ),
    JobEvent(job_id="j", seq=11, kind=EventKind.CANCEL_REQUESTED, cancel_requested="bored"),
    JobEvent(job_id="j", seq=12, kind=EventKind.CANCEL_REQUESTED, cancel_requested=""),
]


@pytest.mark.parametrize("event", EVENTS, ids=lambda e: f"{e.seq}-{e.kind.value}")
def test_event_round_trips(event: JobEvent) -> None:
    msg = event_to_pb(event)
    assert msg.WhichOneof("payload") == event.kind.value
    assert convert.event_from_pb(msg) == event


def test_event_without_payload_is_an_error() -> None:
    with pytest.raises(ValueError, match="has no payload"):
        convert.event_from_pb(job_pb2.JobEvent(job_id="j", seq=1))


def test_change_from_pb() -> None:
    job = job_pb2.Job(id="j", kind="k", state=job_pb2.JOB_STATE_RUNNING)
    change = convert.change_from_pb(job_service_pb2.WatchJobsResponse(position=5, job=job))
    assert change.position == 5 and change.job is not None and change.job.id == "j"
    assert change.deleted_job_id is None and not change.caught_up
    gone = convert.change_from_pb(job_service_pb2.WatchJobsResponse(position=6, deleted_job_id="j"))
    assert gone.job is None and gone.deleted_job_id == "j"
    marker = convert.change_from_pb(job_service_pb2.WatchJobsResponse(position=7, caught_up=True))
    assert marker.caught_up and marker.job is None and marker.deleted_job_id is None


def test_delete_result_from_pb() -> None:
    result = convert.delete_result_from_pb(
        job_service_pb2.DeleteJobResponse(
            deleted=True, removed_paths=["jobs/j/a.csv"], refused_paths=["/etc/passwd"]
        )
    )
    assert result == models.DeleteResult(
        deleted=True, removed_paths=("jobs/j/a.csv",), refused_paths=("/etc/passwd",)
    )


def test_models_are_frozen_and_keyword_only() -> None:
    progress = Progress()
    with pytest.raises(AttributeError):
        progress.done = 3  # type: ignore[misc]
    with pytest.raises(TypeError):
        Progress(0.5)  # type: ignore[call-arg]


# ------------------------------------------------ encoders, for round trips


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
        "schedule_time": (msg.schedule_time, value.schedule_time),
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
    if value.event_time is not None:
        fill_time(msg.event_time, value.event_time, what="event_time")
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
