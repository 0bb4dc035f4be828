"""A WatchJobs listing resumes anywhere: each listing message carries a
listing token, and a stream cut off in the middle of a 10,000-job listing
resumes after the last job received, with nothing missed and nothing twice
(jobs made or deleted meanwhile come as changes after caught_up)."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Callable, Iterator

import grpc
import pytest
from conftest import InProcessServer, Server
from helpers import submit_batches

from jobstream.client import JobChange, JobClient
from jobstream.client.errors import from_rpc_error
from jobstream.v1 import job_pb2, job_service_pb2, job_service_pb2_grpc

JOBS = 10_000
CUT_AFTER = 4_321
DEADLINE_S = 120
StartServer = Callable[..., InProcessServer]


@pytest.fixture
def stub(server: Server) -> Iterator[job_service_pb2_grpc.JobServiceStub]:
    with grpc.insecure_channel(server.target) as channel:
        yield job_service_pb2_grpc.JobServiceStub(channel)


@pytest.mark.both_backends
def test_a_listing_cut_in_the_middle_resumes_with_nothing_missed_or_twice(
    stub: job_service_pb2_grpc.JobServiceStub,
) -> None:
    suite = uuid.uuid4().hex
    made = submit_batches(stub, JOBS, suite)
    flt = job_pb2.JobFilter(labels={"suite": suite})
    listed: list[str] = []
    first = stub.WatchJobs(job_service_pb2.WatchJobsRequest(filter=flt), timeout=DEADLINE_S)
    token = ""
    position = 0
    for message in first:
        assert message.HasField("job") and message.listing_token
        listed.append(message.job.id)
        token, position = message.listing_token, message.position
        if len(listed) == CUT_AFTER:
            first.cancel()  # the client goes away in the middle
            break
    # Meanwhile: a job is made, one not listed yet and one listed are deleted.
    [late] = submit_batches(stub, 1, suite)
    not_yet = next(j for j in made if j not in set(listed))
    listed_before = listed[0]
    for job_id in (not_yet, listed_before):
        stub.DeleteJob(job_service_pb2.DeleteJobRequest(job_id=job_id), timeout=DEADLINE_S)
    second = stub.WatchJobs(
        job_service_pb2.WatchJobsRequest(filter=flt, listing_token=token), timeout=DEADLINE_S
    )
    after: list[job_service_pb2.WatchJobsResponse] = []
    caught_up = None
    for message in second:
        after.append(message)
        if message.caught_up:
            caught_up = message
        if caught_up is None:
            continue
        live_ids = {m.job.id or m.deleted_job_id for m in after[after.index(caught_up) :]}
        if {late, not_yet, listed_before} <= live_ids:
            second.cancel()
            break
    assert caught_up is not None and caught_up.position == position
    resumed = [m.job.id for m in after if m.listing_token]
    counts = Counter(listed + resumed)
    assert [job_id for job_id, n in counts.items() if n > 1] == []  # nothing twice
    # Nothing missed: every job of the listing's moment, but the one deleted
    # before the resume reached it.
    assert set(counts) == set(made) - {not_yet}
    # What changed since the listing began comes after caught_up.
    live = after[after.index(caught_up) + 1 :]
    assert {m.deleted_job_id for m in live if m.deleted_job_id} == {not_yet, listed_before}
    assert late in {m.job.id for m in live if m.HasField("job")}
    assert all(m.position > position for m in live)


def test_a_listing_token_is_bound_to_the_filter(
    stub: job_service_pb2_grpc.JobServiceStub,
) -> None:
    suite = uuid.uuid4().hex
    submit_batches(stub, 2, suite)
    flt = job_pb2.JobFilter(labels={"suite": suite})
    stream = stub.WatchJobs(job_service_pb2.WatchJobsRequest(filter=flt), timeout=DEADLINE_S)
    token = next(stream).listing_token
    stream.cancel()
    other = job_pb2.JobFilter(labels={"suite": "other"})
    with pytest.raises(grpc.RpcError) as refused:
        next(
            stub.WatchJobs(
                job_service_pb2.WatchJobsRequest(filter=other, listing_token=token),
                timeout=DEADLINE_S,
            )
        )
    error = from_rpc_error(refused.value)
    assert error.code is grpc.StatusCode.INVALID_ARGUMENT
    assert (error.field, error.reason) == ("listing_token", "PAGE_TOKEN_INVALID")


def test_the_client_resumes_a_listing_across_a_restart(
    start_inprocess_server: StartServer,
) -> None:
    server = start_inprocess_server()
    suite = uuid.uuid4().hex
    with grpc.insecure_channel(server.target) as channel:
        made = submit_batches(job_service_pb2_grpc.JobServiceStub(channel), JOBS, suite)
    seen: list[str] = []
    with JobClient(server.target, resume_timeout=60) as client:
        for change in client.watch_jobs(labels={"suite": suite}):
            if change.caught_up:
                break
            assert change.job is not None
            seen.append(change.job.id)
            if len(seen) == 100:
                # The server goes away mid-listing (still reading it) and
                # comes back; the client resumes after the last job it got.
                server.stop()
                server.restart()
    assert sorted(seen) == sorted(made)  # each once, none missed


def test_a_client_continues_a_listing_it_left(server: Server) -> None:
    suite = uuid.uuid4().hex
    with grpc.insecure_channel(server.target) as channel:
        made = submit_batches(job_service_pb2_grpc.JobServiceStub(channel), 2_000, suite)
    with JobClient(server.target) as client:
        first: list[JobChange] = []
        for change in client.watch_jobs(labels={"suite": suite}):
            first.append(change)
            if len(first) == 777:
                break  # this watch is closed here
        assert first[-1].listing_token
        rest: list[str] = []
        for change in client.watch_jobs(
            labels={"suite": suite}, listing_token=first[-1].listing_token
        ):
            if change.caught_up:
                break
            assert change.job is not None
            rest.append(change.job.id)
    listed = [c.job.id for c in first if c.job is not None] + rest
    assert len(listed) == len(set(listed)) and set(listed) == set(made)
