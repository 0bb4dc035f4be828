"""Every list RPC pages alike (AIP-158): a next_page_token only while items
remain (never an empty last page), page_size above the maximum lowered to
it, and page tokens that are opaque and bound to their request: one used
with another filter, job or method is INVALID_ARGUMENT naming page_token.
Tokens hold across a restart (SQLite) and across the servers of one
PostgreSQL database, whose key they share."""

from __future__ import annotations

import base64
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
from conftest import InProcessServer, Server
from helpers import RawWorker, submit_batches

from jobstream.client import JobClient
from jobstream.client.errors import from_rpc_error
from jobstream.server.db import open_database
from jobstream.server.store import Store
from jobstream.server.store.secrets import PAGE_TOKEN_KEY
from jobstream.v1 import job_pb2, job_service_pb2, job_service_pb2_grpc

DEADLINE_S = 30
StartServer = Callable[..., InProcessServer]


@pytest.fixture(scope="module")
def jobs(bare_server: Server) -> Iterator[job_service_pb2_grpc.JobServiceStub]:
    with grpc.insecure_channel(bare_server.target) as channel:
        yield job_service_pb2_grpc.JobServiceStub(channel)


def running_job_with(server: Server, *, logs: int, results: int, artifacts: int) -> str:
    """A job holding that many log lines, results and artifacts."""
    kind = f"paging.{uuid.uuid4().hex[:8]}"
    with JobClient(server.target) as client:
        job_id = client.submit(kind).id
    worker = RawWorker(server.target)
    try:
        lease = worker.acquire(kind).lease_id
        worker.log(job_id, lease, [f"line {i}" for i in range(logs)])
        worker.report(
            job_id,
            lease,
            results=[(f"k{i}", job_pb2.RESULT_STATUS_SUCCEEDED) for i in range(results)],
        )
        for i in range(artifacts):
            worker.upload(job_id, lease, f"a{i:03}.txt", b"x")
    finally:
        worker.close()
    return job_id


LISTS: dict[str, tuple[str, Callable[..., Any], str]] = {
    # name: (rpc, request type, repeated field)
    "ListJobs": ("ListJobs", job_service_pb2.ListJobsRequest, "jobs"),
    "ListJobLogs": ("ListJobLogs", job_service_pb2.ListJobLogsRequest, "events"),
    "ListJobResults": ("ListJobResults", job_service_pb2.ListJobResultsRequest, "events"),
    "ListArtifacts": ("ListArtifacts", job_service_pb2.ListArtifactsRequest, "artifacts"),
}
"""Every list RPC of JobService."""


def test_every_list_rpc_is_here() -> None:
    methods = job_service_pb2.DESCRIPTOR.services_by_name["JobService"].methods
    paged = {m.name for m in methods if "next_page_token" in m.output_type.fields_by_name}
    assert paged == set(LISTS)


def walk_pages(
    jobs: job_service_pb2_grpc.JobServiceStub, name: str, page_size: int, **fields: Any
) -> list[int]:
    """The sizes of the pages of a listing, walked to its end."""
    rpc, request_type, repeated = LISTS[name]
    sizes: list[int] = []
    token = ""
    while True:
        request = request_type(page_size=page_size, page_token=token, **fields)
        page = getattr(jobs, rpc)(request, timeout=DEADLINE_S)
        sizes.append(len(getattr(page, repeated)))
        token = page.next_page_token
        if not token:
            return sizes


@pytest.mark.parametrize("name", sorted(LISTS))
def test_no_empty_last_page_and_no_token_on_it(
    name: str, jobs: job_service_pb2_grpc.JobServiceStub, bare_server: Server
) -> None:
    suite = uuid.uuid4().hex
    if name == "ListJobs":
        submit_batches(jobs, 6, suite)
        fields: dict[str, Any] = {"filter": job_pb2.JobFilter(labels={"suite": suite})}
    else:
        fields = {"job_id": running_job_with(bare_server, logs=6, results=6, artifacts=6)}
    # 6 items in pages of 3: two full pages and no third (empty) one.
    assert walk_pages(jobs, name, 3, **fields) == [3, 3]
    assert walk_pages(jobs, name, 4, **fields) == [4, 2]
    assert walk_pages(jobs, name, 6, **fields) == [6]
    # Above the maximum is lowered to it, not refused.
    assert walk_pages(jobs, name, 2**31 - 1, **fields) == [6]


def test_a_page_size_above_the_maximum_is_the_maximum(
    jobs: job_service_pb2_grpc.JobServiceStub,
) -> None:
    suite = uuid.uuid4().hex
    submit_batches(jobs, 1001, suite)
    flt = job_pb2.JobFilter(labels={"suite": suite})
    assert walk_pages(jobs, "ListJobs", 5000, filter=flt) == [1000, 1]


def test_a_negative_page_size_is_refused(jobs: job_service_pb2_grpc.JobServiceStub) -> None:
    with pytest.raises(grpc.RpcError) as refused:
        jobs.ListJobs(job_service_pb2.ListJobsRequest(page_size=-1), timeout=DEADLINE_S)
    error = from_rpc_error(refused.value)
    assert (error.code, error.field, error.reason) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "page_size",
        "INVALID_FIELD",
    )


def refused_token(call: Callable[[], object]) -> None:
    with pytest.raises(grpc.RpcError) as refused:
        call()
    error = from_rpc_error(refused.value)
    assert error.code is grpc.StatusCode.INVALID_ARGUMENT
    assert (error.field, error.reason) == ("page_token", "PAGE_TOKEN_INVALID")


def test_a_token_is_bound_to_its_request(
    jobs: job_service_pb2_grpc.JobServiceStub, bare_server: Server
) -> None:
    suite = uuid.uuid4().hex
    submit_batches(jobs, 3, suite)
    flt = job_pb2.JobFilter(labels={"suite": suite})
    first = jobs.ListJobs(job_service_pb2.ListJobsRequest(filter=flt, page_size=1))
    token = first.next_page_token
    assert token
    # The same request goes on; page_size may change between pages.
    jobs.ListJobs(job_service_pb2.ListJobsRequest(filter=flt, page_size=5, page_token=token))
    other = job_pb2.JobFilter(labels={"suite": "another"})
    refused_token(
        lambda: jobs.ListJobs(job_service_pb2.ListJobsRequest(filter=other, page_token=token))
    )
    refused_token(lambda: jobs.ListJobs(job_service_pb2.ListJobsRequest(page_token=token)))
    # Logs of one job: not for another job, nor for its results.
    a = running_job_with(bare_server, logs=3, results=0, artifacts=0)
    b = running_job_with(bare_server, logs=3, results=0, artifacts=0)
    logs = jobs.ListJobLogs(job_service_pb2.ListJobLogsRequest(job_id=a, page_size=1))
    refused_token(
        lambda: jobs.ListJobLogs(
            job_service_pb2.ListJobLogsRequest(job_id=b, page_token=logs.next_page_token)
        )
    )
    refused_token(
        lambda: jobs.ListJobResults(
            job_service_pb2.ListJobResultsRequest(job_id=a, page_token=logs.next_page_token)
        )
    )
    # Altered by one bit anywhere: refused.
    raw = bytearray(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    for i in range(len(raw)):
        raw[i] ^= 1
        altered = base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()
        raw[i] ^= 1
        refused_token(
            lambda t=altered: jobs.ListJobs(  # type: ignore[misc]
                job_service_pb2.ListJobsRequest(filter=flt, page_token=t)
            )
        )


def test_a_token_is_opaque(jobs: job_service_pb2_grpc.JobServiceStub) -> None:
    suite = uuid.uuid4().hex
    made = submit_batches(jobs, 2, suite)
    flt = job_pb2.JobFilter(labels={"suite": suite})
    token = jobs.ListJobs(job_service_pb2.ListJobsRequest(filter=flt, page_size=1)).next_page_token
    raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    # The cursor (the last job's id and create time) cannot be read in it.
    assert made[-1].encode() not in raw and made[-1] not in token


def test_tokens_hold_across_a_restart(start_inprocess_server: StartServer) -> None:
    server = start_inprocess_server()
    with grpc.insecure_channel(server.target) as channel:
        stub = job_service_pb2_grpc.JobServiceStub(channel)
        submit_batches(stub, 3, "restart")
        token = stub.ListJobs(job_service_pb2.ListJobsRequest(page_size=2)).next_page_token
    server.stop()
    server.restart()
    with grpc.insecure_channel(server.target) as channel:
        stub = job_service_pb2_grpc.JobServiceStub(channel)
        rest = stub.ListJobs(job_service_pb2.ListJobsRequest(page_size=2, page_token=token))
    assert len(rest.jobs) == 1 and not rest.next_page_token


def test_servers_of_one_database_accept_each_others_tokens(
    postgres_url: str, start_inprocess_server: StartServer
) -> None:
    servers = [
        start_inprocess_server(name=name, extra_args=("--db", postgres_url)) for name in "ab"
    ]
    with (
        grpc.insecure_channel(servers[0].target) as on_a,
        grpc.insecure_channel(servers[1].target) as on_b,
    ):
        a = job_service_pb2_grpc.JobServiceStub(on_a)
        b = job_service_pb2_grpc.JobServiceStub(on_b)
        made = submit_batches(a, 5, "cluster")
        seen: list[str] = []
        token = ""
        for stub in (a, b, a, b, a):
            page = stub.ListJobs(job_service_pb2.ListJobsRequest(page_size=1, page_token=token))
            seen += [j.id for j in page.jobs]
            token = page.next_page_token
        assert sorted(seen) == sorted(made) and not token  # each once, none missed
    # Another database's servers do not (its key is its own).
    other = start_inprocess_server(name="elsewhere")
    with grpc.insecure_channel(other.target) as channel:
        stub = job_service_pb2_grpc.JobServiceStub(channel)
        submit_batches(stub, 3, "elsewhere")
        foreign = stub.ListJobs(job_service_pb2.ListJobsRequest(page_size=1)).next_page_token
        with grpc.insecure_channel(servers[0].target) as on_a:
            a = job_service_pb2_grpc.JobServiceStub(on_a)
            refused_token(
                lambda: a.ListJobs(job_service_pb2.ListJobsRequest(page_size=1, page_token=foreign))
            )


def test_the_client_lists_artifacts_through_the_pages(bare_server: Server) -> None:
    job_id = running_job_with(bare_server, logs=0, results=0, artifacts=3)
    with JobClient(bare_server.target) as client:
        assert [a.name for a in client.artifacts(job_id)] == ["a000.txt", "a001.txt", "a002.txt"]


def test_the_key_is_made_once_per_database(migrated_url: str) -> None:
    db = open_database(migrated_url)
    try:
        with db.connection_context():
            first = Store(db).secrets.get_or_make(PAGE_TOKEN_KEY)
            again = Store(db).secrets.get_or_make(PAGE_TOKEN_KEY)
    finally:
        db.close()
    assert first == again and len(first) == 32
