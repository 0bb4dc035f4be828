"""The gateway's fast JSON mapping says exactly what json_format says, for
every message type of the API, with every field set and with none."""

from __future__ import annotations

import math
from typing import Any

import pytest
from google.protobuf import json_format
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from hypothesis import given, settings
from hypothesis import strategies as st

from jobstream.gateway.jsonmap import JsonMapper
from jobstream.v1 import job_pb2, job_service_pb2


def full_job(seconds: int = 1_700_000_000, nanos: int = 123_456_000) -> job_pb2.Job:
    job = job_pb2.Job(
        id="job_01",
        kind="demo.count",
        queue="q",
        priority=-3,
        state=job_pb2.JOB_STATE_FAILED,
        cancel_requested=True,
        attempt=2,
        max_attempts=3,
        owner="alice",
        request_id="r",
        last_seq=2**40,
        worker_id="w",
        labels={"team": "growth", "ünï": "cödé"},
    )
    job.params.update({"n": 3, "nested": {"list": [1, "two", None, True, {"x": 1.5}]}, "e": []})
    job.progress.CopyFrom(
        job_pb2.Progress(fraction=0.25, done=1, total=4, phase="p", message="m <b>")
    )
    job.counters.CopyFrom(job_pb2.Counters(succeeded=1, failed=2, skipped=3))
    step = job.steps.add(name="s", state=job_pb2.STEP_STATE_RUNNING, attempts=1, error="e")
    step.data.update({"k": "v"})
    step.start_time.FromNanoseconds(seconds * 10**9 + nanos)
    job.result.update({"total": 3})
    job.error.CopyFrom(job_pb2.JobError(code="c", message="boom"))
    job.error.details.update({"traceback": "Traceback…\n  line"})
    for stamp in (
        job.create_time,
        job.start_time,
        job.end_time,
        job.update_time,
        job.schedule_time,
    ):
        stamp.FromNanoseconds(seconds * 10**9 + nanos)
    job.end_time.FromNanoseconds(seconds * 10**9)  # no fraction
    job.update_time.FromNanoseconds(seconds * 10**9 + 1)  # nanosecond precision
    return job


def event(**payload: Any) -> job_pb2.JobEvent:
    """An event of job ``j`` at seq 7 with this payload."""
    return job_pb2.JobEvent(job_id="j", seq=7, **payload)


def events() -> list[job_pb2.JobEvent]:
    made = [
        event(
            state_change=job_pb2.StateChange(
                state=job_pb2.JOB_STATE_RUNNING, reason="r", attempt=1
            ),
        ),
        event(progress=job_pb2.Progress(done=1)),
        event(
            log=job_pb2.LogLine(
                level=job_pb2.LOG_LEVEL_ERROR,
                text="<script>x</script>",
                stream="stderr",
                truncated=True,
            ),
        ),
        event(step=job_pb2.Step(name="s")),
        event(
            result_item=job_pb2.ResultItem(
                key="k",
                status=job_pb2.RESULT_STATUS_FAILED,
                error="e",
                replaced_status=job_pb2.RESULT_STATUS_SUCCEEDED,
            ),
        ),
        event(cancel_requested=job_pb2.CancelRequested(reason="x")),
        event(
            artifact_added=job_pb2.Artifact(
                name="a.csv", size_bytes=10, sha256="ab", content_type="text/csv", attempt=1
            ),
        ),
        event(log=job_pb2.LogLine()),  # every field default
    ]
    for made_event in made:
        made_event.event_time.FromNanoseconds(1_700_000_000_000_000_000)
    return made


def samples() -> list[Message]:
    stats = job_service_pb2.GetStatsResponse(
        ended_count=4, success_rate=2 / 3, throughput_per_minute=math.inf
    )
    stats.state_counts.add(state=job_pb2.JOB_STATE_QUEUED, count=5)
    stats.kind_counts.add(kind="k", state=job_pb2.JOB_STATE_RUNNING, count=1)
    stats.window.FromSeconds(3600)
    stats.duration_p50.FromNanoseconds(-1_500_000_000)
    return [
        full_job(),
        full_job(nanos=0),
        job_pb2.Job(),
        job_service_pb2.ListJobsResponse(
            jobs=[full_job(), job_pb2.Job(id="x")], next_page_token="t"
        ),
        job_service_pb2.ListJobLogsResponse(events=events()),
        job_service_pb2.WatchJobResponse(snapshot=full_job()),
        job_service_pb2.WatchJobResponse(events=job_service_pb2.JobEventBatch(events=events())),
        job_service_pb2.WatchJobsResponse(position=9, caught_up=True),
        job_service_pb2.WatchJobsResponse(position=9, deleted_job_id="j"),
        job_service_pb2.DeleteJobResponse(deleted=True, removed_paths=["a", "b"]),
        job_service_pb2.DownloadArtifactResponse(chunk=bytes(range(256))),
        job_service_pb2.PurgeJobsResponse(purged_count=2**62, job_ids=["a"]),
        stats,
        job_service_pb2.SubmitJobsResponse(
            responses=[job_service_pb2.SubmitJobResponse(job=full_job(), created=True)]
        ),
        *events(),
    ]


@pytest.mark.parametrize("message", samples(), ids=lambda m: type(m).__name__)
def test_fast_json_equals_json_format(message: Message) -> None:
    assert JsonMapper().to_json(message) == json_format.MessageToDict(message)


def test_every_response_type_of_the_service_is_covered() -> None:
    service = job_service_pb2.DESCRIPTOR.services_by_name["JobService"]
    mapper = JsonMapper()
    for method in service.methods:
        empty = GetMessageClass(method.output_type)()
        assert mapper.to_json(empty) == json_format.MessageToDict(empty)


json_values = st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=10,
)


@settings(max_examples=100, deadline=None)
@given(
    params=st.dictionaries(st.text(), json_values, max_size=4),
    labels=st.dictionaries(st.text(), st.text(), max_size=3),
    numbers=st.tuples(
        st.integers(min_value=0, max_value=2**63 - 1),
        st.integers(min_value=0, max_value=999_999_999),
        st.floats(allow_nan=True, allow_infinity=True),
    ),
    text=st.text(),
)
def test_fast_json_equals_json_format_on_random_jobs(
    params: dict[str, Any],
    labels: dict[str, str],
    numbers: tuple[int, int, float],
    text: str,
) -> None:
    seq, nanos, fraction = numbers
    job = job_pb2.Job(id=text, last_seq=seq, labels=labels)
    job.params.update(params)
    job.progress.fraction = fraction
    job.progress.message = text
    job.create_time.FromNanoseconds(1_600_000_000 * 10**9 + nanos)
    assert JsonMapper().to_json(job) == json_format.MessageToDict(job)
