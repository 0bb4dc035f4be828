"""SubmitJobs as a whole, over real gRPC on both backends: the answer of
each job is the job as stored (the answer is built from the request's
values, not read back), a batch larger than one INSERT statement carries
is stored whole and found by every search, and a batch refused late
stores nothing."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from conftest import Server
from google.protobuf import struct_pb2, timestamp_pb2

from jobstream.server.ids import new_job_ids
from jobstream.server.limits import SERVER_JOB_ID
from jobstream.server.store.sql import MAX_INSERT_ROWS
from jobstream.v1 import job_pb2, job_service_pb2_grpc
from jobstream.v1 import job_service_pb2 as js

CALL_TIMEOUT_S = 15.0
"""Deadline of every call."""

BATCH = MAX_INSERT_ROWS + 88
"""Jobs in the big batch: more than one INSERT statement holds, in
statements of several sizes (512 + 64 + 16 + 8)."""

PAGE = 1_000
"""Enough to list every job of one test in one page."""


@pytest.fixture
def jobs(bare_server: Server) -> Iterator[job_service_pb2_grpc.JobServiceStub]:
    with grpc.insecure_channel(bare_server.target) as channel:
        yield job_service_pb2_grpc.JobServiceStub(channel)


def _struct(value: dict[str, Any]) -> struct_pb2.Struct:
    message = struct_pb2.Struct()
    message.update(value)
    return message


def _listed(jobs: job_service_pb2_grpc.JobServiceStub, flt: job_pb2.JobFilter) -> list[job_pb2.Job]:
    page = jobs.ListJobs(js.ListJobsRequest(filter=flt, page_size=PAGE), timeout=CALL_TIMEOUT_S)
    assert not page.next_page_token
    return list(page.jobs)


def _varied(suite: str) -> list[js.SubmitJobRequest]:
    """Jobs that differ in every field an answer carries."""
    later = timestamp_pb2.Timestamp(seconds=int(time.time()) + 3_600, nanos=123_456_000)
    return [
        js.SubmitJobRequest(kind="batch.plain", labels={"suite": suite}),
        js.SubmitJobRequest(
            kind="batch.full",
            queue="batch-q",
            priority=-7,
            max_attempts=9,
            schedule_time=later,
            labels={"suite": suite, "team": "växjö"},
            params=_struct(
                {
                    "n": 3,
                    "half": 0.5,
                    "zero": -0.0,
                    "big": 2.0**60,
                    "none": None,
                    "flag": True,
                    "list": [1, "two", {"three": [3.5]}],
                    "nested": {"a": {"b": "ü"}},
                }
            ),
        ),
        js.SubmitJobRequest(
            kind="batch.keyed",
            job_id=f"batch-{suite[:12]}",
            request_id=f"r-{suite}",
            labels={"suite": suite},
            params=_struct({"region": "eu"}),
        ),
    ]


def _stored(jobs: job_service_pb2_grpc.JobServiceStub, job_id: str) -> bytes:
    job = jobs.GetJob(js.GetJobRequest(job_id=job_id), timeout=CALL_TIMEOUT_S).job
    return job.SerializeToString(deterministic=True)


@pytest.mark.both_backends
def test_each_answer_is_the_job_as_stored(jobs: job_service_pb2_grpc.JobServiceStub) -> None:
    suite = uuid.uuid4().hex
    requests = _varied(suite)
    # The keyed job again at the end: the same job, not created twice.
    answer = jobs.SubmitJobs(
        js.SubmitJobsRequest(requests=[*requests, requests[2]]), timeout=CALL_TIMEOUT_S
    )
    assert [r.created for r in answer.responses] == [True, True, True, False]
    assert answer.responses[3].job == answer.responses[2].job
    for response in answer.responses:
        assert response.job.SerializeToString(deterministic=True) == _stored(jobs, response.job.id)
    full = answer.responses[1].job
    assert full.params["zero"] == 0 and full.max_attempts == 9
    assert full.schedule_time == requests[1].schedule_time
    # A later batch finds the keyed job stored: its answer is the stored job.
    again = jobs.SubmitJobs(
        js.SubmitJobsRequest(requests=[requests[2], requests[0]]), timeout=CALL_TIMEOUT_S
    )
    assert [r.created for r in again.responses] == [False, True]
    assert again.responses[0].job == answer.responses[2].job
    for response in again.responses:
        assert response.job.SerializeToString(deterministic=True) == _stored(jobs, response.job.id)


@pytest.mark.both_backends
def test_a_batch_larger_than_one_statement_is_stored_and_found(
    jobs: job_service_pb2_grpc.JobServiceStub,
) -> None:
    suite = uuid.uuid4().hex
    requests = [
        js.SubmitJobRequest(
            kind="batch.big",
            labels={"suite": suite, "i": str(i)},
            params=_struct({"i": i, "region": "eu" if i % 2 else "us"}),
        )
        for i in range(BATCH)
    ]
    answer = jobs.SubmitJobs(js.SubmitJobsRequest(requests=requests), timeout=CALL_TIMEOUT_S)
    ids = [r.job.id for r in answer.responses]
    assert len(set(ids)) == BATCH and all(SERVER_JOB_ID.fullmatch(i) for i in ids)
    assert [r.job.labels["i"] for r in answer.responses] == [str(i) for i in range(BATCH)]
    listed = _listed(jobs, job_pb2.JobFilter(labels={"suite": suite}))
    assert sorted(j.id for j in listed) == sorted(ids)
    eu = _listed(jobs, job_pb2.JobFilter(labels={"suite": suite}, params={"region": "eu"}))
    assert sorted(j.id for j in eu) == sorted(ids[1::2])
    one = _listed(jobs, job_pb2.JobFilter(params={"i": str(BATCH - 1)}, text=suite))
    assert [j.id for j in one] == [ids[-1]]
    # Each job's first event is seq 1, the submit's state change.
    for job_id in (ids[0], ids[MAX_INSERT_ROWS], ids[-1]):
        stream = jobs.WatchJob(js.WatchJobRequest(job_id=job_id), timeout=CALL_TIMEOUT_S)
        messages = iter(stream)
        snapshot, history = next(messages), next(messages)
        stream.cancel()
        assert snapshot.snapshot.last_seq == 1
        [event] = history.events.events
        assert event.seq == 1
        assert event.state_change.state == job_pb2.JOB_STATE_QUEUED
        assert event.state_change.reason == "submitted"


@pytest.mark.both_backends
def test_a_batch_refused_at_its_last_job_stores_nothing(
    jobs: job_service_pb2_grpc.JobServiceStub,
) -> None:
    suite = uuid.uuid4().hex
    taken = f"taken-{suite[:12]}"
    jobs.SubmitJob(js.SubmitJobRequest(kind="batch.first", job_id=taken), timeout=CALL_TIMEOUT_S)
    requests = [
        js.SubmitJobRequest(kind="batch.late", labels={"suite": suite}) for _ in range(BATCH)
    ]
    requests[-1].job_id = taken
    with pytest.raises(grpc.RpcError) as info:
        jobs.SubmitJobs(js.SubmitJobsRequest(requests=requests), timeout=CALL_TIMEOUT_S)
    error = info.value
    assert isinstance(error, grpc.Call)
    assert error.code() is grpc.StatusCode.ALREADY_EXISTS
    assert (error.details() or "").startswith(f"requests[{BATCH - 1}].job_id: ")
    assert _listed(jobs, job_pb2.JobFilter(labels={"suite": suite})) == []


def test_ids_made_together_are_distinct_and_sort_by_their_time_and_order() -> None:
    now = time.time_ns() // 1_000
    batch = new_job_ids(1_000, now)
    assert len(set(batch)) == 1_000
    assert batch == sorted(batch)  # in the order asked for
    assert all(SERVER_JOB_ID.fullmatch(i) for i in batch)
    assert len({i[:14] for i in batch}) == 1  # "job_" and the shared milliseconds
    later = new_job_ids(1, now + 1_000)[0]
    assert max(batch) < later
