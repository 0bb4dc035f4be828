"""The client's models and converters: enum tables are complete, pb <-> model
conversions round-trip, times are UTC-aware, Structs keep their ints."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from enum import Enum
from typing import Any

import pytest
from google.protobuf.internal.enum_type_wrapper import EnumTypeWrapper

from jobstream.client import models
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
    (models.JOB_STATES, job_pb2.JobState, "JOB_STATE_"),
    (models.STEP_STATES, job_pb2.StepState, "STEP_STATE_"),
    (models.LOG_LEVELS, job_pb2.LogLevel, "LOG_LEVEL_"),
    (models.RESULT_STATUSES, job_pb2.ResultStatus, "RESULT_STATUS_"),
    (models.JOB_OUTCOMES, worker_service_pb2.JobOutcome, "JOB_OUTCOME_"),
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
        models.JOB_STATES.to_pb("paused")
    with pytest.raises(ValueError, match="unexpected JobState value 0"):
        models.JOB_STATES.from_pb(job_pb2.JOB_STATE_UNSPECIFIED)
    with pytest.raises(ValueError, match="unexpected ResultStatus value 99"):
        models.RESULT_STATUSES.from_pb(99)


def test_enum_table_defaults_for_unset() -> None:
    assert models.LOG_LEVELS.from_pb(job_pb2.LOG_LEVEL_UNSPECIFIED) is LogLevel.INFO
    assert models.STEP_STATES.from_pb(job_pb2.STEP_STATE_UNSPECIFIED) is StepState.PENDING


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
        not_before=T0,
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
    msg = models.job_to_pb(job)
    assert models.job_from_pb(msg) == job
    assert models.job_to_pb(models.job_from_pb(msg)) == msg


def test_unset_fields_read_as_none() -> None:
    job = models.job_from_pb(job_pb2.Job(id="j", kind="k", state=job_pb2.JOB_STATE_QUEUED))
    assert job.result is None
    assert job.error is None
    assert job.create_time is None and job.not_before is None and job.end_time is None
    assert job.params == {}
    assert job.steps == ()


def test_empty_result_is_not_none() -> None:
    msg = job_pb2.Job(id="j", kind="k", state=job_pb2.JOB_STATE_SUCCEEDED)
    msg.result.SetInParent()
    assert models.job_from_pb(msg).result == {}


def test_times_are_utc_aware() -> None:
    msg = job_pb2.Job(id="j", kind="k", state=job_pb2.JOB_STATE_QUEUED)
    msg.create_time.FromDatetime(T0)
    created = models.job_from_pb(msg).create_time
    assert created == T0
    assert created is not None and created.utcoffset() == timedelta(0)


def test_aware_datetimes_in_other_zones_convert() -> None:
    plus_two = T0.astimezone(timezone(timedelta(hours=2)))
    request = models.spec_to_pb(JobSpec(kind="k", not_before=plus_two))
    assert request.not_before.ToDatetime(tzinfo=UTC) == T0


def test_naive_datetimes_are_refused() -> None:
    with pytest.raises(ValueError, match="not_before: give a timezone-aware datetime"):
        models.spec_to_pb(JobSpec(kind="k", not_before=datetime(2026, 1, 1)))


def test_struct_keeps_ints_and_floats() -> None:
    data = {"i": 3, "f": 2.5, "neg": -7, "big": 2**53, "list": [1, 1.5], "deep": {"x": 0}}
    msg = models.spec_to_pb(JobSpec(kind="k", params=data))
    back = models.struct_to_dict(msg.params)
    assert back == data
    assert isinstance(back["i"], int) and isinstance(back["f"], float)
    assert isinstance(back["list"][0], int) and isinstance(back["deep"]["x"], int)


def test_struct_refuses_non_json_values() -> None:
    with pytest.raises(ValueError, match="params: not JSON-serialisable"):
        models.spec_to_pb(JobSpec(kind="k", params={"when": datetime.now(UTC)}))


def test_spec_to_pb() -> None:
    request = models.spec_to_pb(
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
    assert models.struct_to_dict(request.params) == {"n": 1}
    bare = models.spec_to_pb(JobSpec(kind="k"))
    assert not bare.HasField("params") and not bare.HasField("not_before")
    assert bare.job_id == "" and bare.request_id == ""


def test_filter_to_pb_takes_enums_and_strings() -> None:
    flt = models.filter_to_pb(
        states=[JobState.QUEUED, "running"], kinds=["k"], labels={"a": "b"}, queues=["q"]
    )
    assert list(flt.states) == [job_pb2.JOB_STATE_QUEUED, job_pb2.JOB_STATE_RUNNING]
    assert list(flt.kinds) == ["k"] and dict(flt.labels) == {"a": "b"} and list(flt.queues) == ["q"]
    assert models.filter_to_pb() == job_pb2.JobFilter()
    with pytest.raises(ValueError, match="expected one of: queued, running"):
        models.filter_to_pb(states=["done"])


EVENTS = [
    JobEvent(
        job_id="j",
        seq=1,
        kind=EventKind.STATE_CHANGE,
        time=T0,
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
    msg = models.event_to_pb(event)
    assert msg.WhichOneof("payload") == event.kind.value
    assert models.event_from_pb(msg) == event


def test_event_without_payload_is_an_error() -> None:
    with pytest.raises(ValueError, match="has no payload"):
        models.event_from_pb(job_pb2.JobEvent(job_id="j", seq=1))


def test_change_from_pb() -> None:
    job = job_pb2.Job(id="j", kind="k", state=job_pb2.JOB_STATE_RUNNING)
    change = models.change_from_pb(job_service_pb2.WatchJobsResponse(position=5, job=job))
    assert change.position == 5 and change.job is not None and change.job.id == "j"
    assert change.deleted_job_id is None and not change.caught_up
    gone = models.change_from_pb(job_service_pb2.WatchJobsResponse(position=6, deleted_job_id="j"))
    assert gone.job is None and gone.deleted_job_id == "j"
    marker = models.change_from_pb(job_service_pb2.WatchJobsResponse(position=7, caught_up=True))
    assert marker.caught_up and marker.job is None and marker.deleted_job_id is None


def test_delete_result_from_pb() -> None:
    result = models.delete_result_from_pb(
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
