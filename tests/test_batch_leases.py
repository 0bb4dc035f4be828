"""Several jobs per call: AcquireJob with ``max_jobs`` and FinishJobs,
against a real server on both backends, and the Worker that uses them.

A FinishJobs finish whose lease is gone is answered in its own result
(code and reason, as its own FinishJob would have been refused) and changes
nothing of its job; the other finishes of the call are stored. A malformed
call (a finish missing a field, a job twice) is refused whole and stores
nothing."""

from __future__ import annotations

import functools
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
import grpc.aio
import pytest
from conftest import Server, ServerProcess
from google.protobuf.duration_pb2 import Duration
from helpers import eventually, job_in, stored_events
from test_worker_e2e import running_worker

from jobstream.client import Handlers, JobClient, JobContext, JobSpec, JobState
from jobstream.client.security import PLAINTEXT, Security
from jobstream.v1 import errors_pb2, job_pb2, worker_service_pb2, worker_service_pb2_grpc

pytestmark = pytest.mark.both_backends

T = 30.0
"""Deadline of every call and wait."""

SUCCEEDED = worker_service_pb2.JOB_OUTCOME_SUCCEEDED


@pytest.fixture
def client(bare_server: Server) -> Iterator[JobClient]:
    with JobClient(bare_server.target, timeout=10) as c:
        yield c


@pytest.fixture
def workers(bare_server: Server) -> Iterator[worker_service_pb2_grpc.WorkerServiceStub]:
    channel = PLAINTEXT.channel(bare_server.target, ())
    yield worker_service_pb2_grpc.WorkerServiceStub(channel)
    channel.close()


def _acquire(kind: str, max_jobs: int = 0) -> worker_service_pb2.AcquireJobRequest:
    return worker_service_pb2.AcquireJobRequest(
        worker_id="batch-worker", kinds=[kind], wait=Duration(), max_jobs=max_jobs
    )


def _leases(
    response: worker_service_pb2.AcquireJobResponse,
) -> list[tuple[str, str]]:
    """(job id, lease id) of every job an answer leased, first one first."""
    if not response.HasField("job"):
        return []
    return [
        (response.job.id, response.lease_id),
        *((more.job.id, more.lease_id) for more in response.more_jobs),
    ]


def _finish(job_id: str, lease_id: str) -> worker_service_pb2.FinishJobRequest:
    return worker_service_pb2.FinishJobRequest(job_id=job_id, lease_id=lease_id, outcome=SUCCEEDED)


def _submit(client: JobClient, kind: str, count: int) -> list[str]:
    return [client.submit(kind, {}, job_id=f"{kind}-{i}").id for i in range(count)]


def _gap_free(client: JobClient, job_id: str) -> list[int]:
    seqs = [e.seq for e in stored_events(client, job_id)]
    assert seqs == list(range(1, len(seqs) + 1)), (job_id, seqs)
    return seqs


def _finals(client: JobClient, job_id: str) -> int:
    """How many terminal state events the job has."""
    return sum(
        1
        for e in stored_events(client, job_id)
        if e.state_change is not None and e.state_change.state.terminal
    )


def test_acquire_hands_out_distinct_jobs_up_to_max_jobs(
    client: JobClient, workers: worker_service_pb2_grpc.WorkerServiceStub
) -> None:
    ids = _submit(client, "batch-acq", 5)
    first = workers.AcquireJob(_acquire("batch-acq", 3), timeout=T)
    got = _leases(first)
    assert [job_id for job_id, _ in got] == ids[:3]  # best first: oldest first here
    assert len({lease for _, lease in got}) == 3
    assert all(more.job.state == job_pb2.JOB_STATE_RUNNING for more in first.more_jobs)
    assert all(more.HasField("lease_expire_time") for more in first.more_jobs)
    rest = _leases(workers.AcquireJob(_acquire("batch-acq", 3), timeout=T))
    assert [job_id for job_id, _ in rest] == ids[3:]
    assert not workers.AcquireJob(_acquire("batch-acq", 3), timeout=T).HasField("job")
    for job_id in ids:
        assert client.get(job_id).state is JobState.RUNNING
    # Without max_jobs an answer holds one job, as it always did.
    single = _submit(client, "batch-one", 2)
    one = workers.AcquireJob(_acquire("batch-one"), timeout=T)
    assert one.job.id == single[0] and not one.more_jobs


def test_a_batch_is_acquired_in_its_order(
    client: JobClient, workers: worker_service_pb2_grpc.WorkerServiceStub
) -> None:
    """The jobs of one SubmitJobs share their creation time; the ids the
    server makes them count up, so equal priority runs them in the order
    they were sent."""
    specs = [JobSpec(kind="batch-order", params={"i": i}) for i in range(40)]
    ids = [job.id for job in client.submit_many(specs)]
    assert len({client.get(job_id).create_time for job_id in ids}) == 1
    got = _leases(workers.AcquireJob(_acquire("batch-order", 40), timeout=T))
    assert [job_id for job_id, _ in got] == ids


def test_equal_priorities_run_by_create_time_then_id(
    client: JobClient, workers: worker_service_pb2_grpc.WorkerServiceStub
) -> None:
    # Submitted one after another, their ids in the opposite order.
    ids = [client.submit("by-time", {}, job_id=f"by-time-{9 - i}").id for i in range(5)]
    urgent = client.submit("by-time", {}, job_id="by-time-urgent", priority=1).id
    got = _leases(workers.AcquireJob(_acquire("by-time", 6), timeout=T))
    assert [job_id for job_id, _ in got] == [urgent, *ids]


def test_max_jobs_beyond_its_limit_is_refused(
    client: JobClient, workers: worker_service_pb2_grpc.WorkerServiceStub
) -> None:
    [job_id] = _submit(client, "batch-max", 1)
    for bad in (257, -1):
        with pytest.raises(grpc.RpcError) as refused:
            workers.AcquireJob(_acquire("batch-max", bad), timeout=T)
        assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert refused.value.details() == f"max_jobs: {bad} is outside 0..256"
    assert client.get(job_id).state is JobState.QUEUED


def test_finish_jobs_answers_each_finish_and_fences_each_lease(
    client: JobClient, workers: worker_service_pb2_grpc.WorkerServiceStub
) -> None:
    """One stale lease in a batch: its finish is refused in its own result
    and its job keeps running under its real lease; the others end, and the
    call still leases the next jobs it asked for."""
    ids = _submit(client, "batch-fin", 5)
    held = dict(_leases(workers.AcquireJob(_acquire("batch-fin", 3), timeout=T)))
    assert list(held) == ids[:3]
    stale = "0" * 32
    request = worker_service_pb2.FinishJobsRequest(
        finishes=[
            _finish(ids[0], held[ids[0]]),
            _finish(ids[1], stale),
            _finish(ids[2], held[ids[2]]),
        ]
    )
    request.acquire_next.CopyFrom(_acquire("batch-fin", 3))
    answer = workers.FinishJobs(request, timeout=T)
    ok, refused, ok_too = answer.results
    assert ok.job.state == job_pb2.JOB_STATE_SUCCEEDED and not ok.error_code
    assert ok_too.job.state == job_pb2.JOB_STATE_SUCCEEDED
    assert not refused.HasField("job")
    assert refused.error_code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
    assert refused.error_reason == errors_pb2.LEASE_UNKNOWN
    assert refused.error_message.startswith("lease_id: lease '0000")
    assert [job_id for job_id, _ in _leases(answer.next)] == ids[3:]
    assert client.get(ids[1]).state is JobState.RUNNING
    # Fenced twice over: an ended attempt cannot be finished again, in a
    # batch or alone, and the job it names keeps its one final result.
    again = workers.FinishJobs(
        worker_service_pb2.FinishJobsRequest(
            finishes=[_finish(ids[0], held[ids[0]]), _finish(ids[1], held[ids[1]])]
        ),
        timeout=T,
    )
    assert again.results[0].error_code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
    assert again.results[1].job.state == job_pb2.JOB_STATE_SUCCEEDED
    assert not again.HasField("next")
    for job_id in ids[:3]:
        assert client.get(job_id).state is JobState.SUCCEEDED
        assert _finals(client, job_id) == 1
        _gap_free(client, job_id)
    for job_id in ids[3:]:
        assert client.get(job_id).state is JobState.RUNNING


def test_finish_jobs_answers_each_job_as_written_and_leases_a_job_given_back(
    client: JobClient, workers: worker_service_pb2_grpc.WorkerServiceStub
) -> None:
    """A batch that gives one job back and ends another answers each as
    its finish left it (the batch's row updates are written together at the
    end), and its acquire_next can lease the job just given back."""
    ids = _submit(client, "batch-back", 2)
    held = dict(_leases(workers.AcquireJob(_acquire("batch-back", 2), timeout=T)))
    back = _finish(ids[0], held[ids[0]])
    back.outcome = worker_service_pb2.JOB_OUTCOME_RELEASED
    request = worker_service_pb2.FinishJobsRequest(finishes=[back, _finish(ids[1], held[ids[1]])])
    request.acquire_next.CopyFrom(_acquire("batch-back", 2))
    answer = workers.FinishJobs(request, timeout=T)
    given_back, ended = answer.results
    assert given_back.job.state == job_pb2.JOB_STATE_QUEUED and given_back.job.attempt == 0
    assert ended.job.state == job_pb2.JOB_STATE_SUCCEEDED and ended.job.attempt == 1
    (again, lease), *more = _leases(answer.next)
    assert again == ids[0] and not more
    rerun = client.get(ids[0])
    assert rerun.state is JobState.RUNNING and rerun.attempt == 1
    workers.FinishJob(_finish(ids[0], lease), timeout=T)
    for job_id in ids:
        assert client.get(job_id).state is JobState.SUCCEEDED
        assert _finals(client, job_id) == 1
        _gap_free(client, job_id)


def test_a_finish_of_an_unknown_job_is_answered_not_found(
    workers: worker_service_pb2_grpc.WorkerServiceStub,
) -> None:
    answer = workers.FinishJobs(
        worker_service_pb2.FinishJobsRequest(finishes=[_finish("no-such-job", "0" * 32)]),
        timeout=T,
    )
    [result] = answer.results
    assert result.error_code == grpc.StatusCode.NOT_FOUND.value[0]
    assert result.error_reason == errors_pb2.JOB_NOT_FOUND


@pytest.mark.parametrize(
    ("broken", "field"),
    [
        ("outcome", "finishes[1].outcome"),
        ("twice", "finishes[1].job_id"),
        ("acquire_next", "finishes[1].acquire_next"),
        ("too_many", "finishes"),
        ("bad_next", "acquire_next.max_jobs"),
    ],
)
def test_a_malformed_finish_jobs_is_refused_whole(
    client: JobClient,
    workers: worker_service_pb2_grpc.WorkerServiceStub,
    broken: str,
    field: str,
) -> None:
    kind = f"batch-bad-{broken.replace('_', '-')}"
    ids = _submit(client, kind, 3)
    held = dict(_leases(workers.AcquireJob(_acquire(kind, 2), timeout=T)))
    good = _finish(ids[0], held[ids[0]])
    second = _finish(ids[1], held[ids[1]])
    request = worker_service_pb2.FinishJobsRequest(finishes=[good, second])
    request.acquire_next.CopyFrom(_acquire(kind, 1))
    if broken == "outcome":
        request.finishes[1].ClearField("outcome")
    elif broken == "twice":
        request.finishes[1].CopyFrom(good)
    elif broken == "acquire_next":
        request.finishes[1].acquire_next.CopyFrom(_acquire(kind))
    elif broken == "too_many":
        del request.finishes[:]
        request.finishes.extend([good] * 257)
    else:
        request.acquire_next.max_jobs = 300
    with pytest.raises(grpc.RpcError) as refused:
        workers.FinishJobs(request, timeout=T)
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert (refused.value.details() or "").startswith(f"{field}: ")
    assert [client.get(job_id).state for job_id in ids] == [
        JobState.RUNNING,
        JobState.RUNNING,
        JobState.QUEUED,
    ]


WORKER = textwrap.dedent(
    """
    import sys
    from jobstream.client.demo import handlers
    from jobstream.client.worker import Worker
    Worker(sys.argv[1], handlers, worker_id=sys.argv[2], concurrency=3,
           lease_duration=2.0, flush_interval=0.2).run()
    """
)


def test_a_worker_killed_with_several_jobs_in_hand_loses_none(
    start_server: Callable[..., ServerProcess], module_db_args: tuple[str, ...]
) -> None:
    """A worker leases three jobs in one AcquireJob (three free slots) and
    is SIGKILLed holding them: every one is rescued when its lease runs out
    and runs to one final result on another worker."""
    server: ServerProcess = start_server(extra_args=module_db_args)
    with JobClient(server.target) as client:
        ids = [client.submit("demo.sleep", {"seconds": 30}).id for _ in range(3)]
        victim = subprocess.Popen(
            [sys.executable, "-c", WORKER, server.target, "victim"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            eventually(
                lambda: (
                    all(
                        (j := client.get(i)).state is JobState.RUNNING and j.worker_id == "victim"
                        for i in ids
                    )
                    or None
                ),
                timeout=T,
            )
            victim.send_signal(signal.SIGKILL)
            victim.wait(T)
            for job_id in ids:
                eventually(functools.partial(job_in, client, job_id, JobState.QUEUED), timeout=T)
                reasons = [
                    e.state_change.reason
                    for e in stored_events(client, job_id)
                    if e.state_change is not None
                ]
                assert reasons[-1].startswith("lease expired: worker victim stopped reporting")
        finally:
            if victim.poll() is None:
                victim.kill()
        handlers = Handlers()

        @handlers.handler("demo.sleep")
        def quick(ctx: JobContext) -> dict[str, str]:
            return {"by": "rescuer"}

        with running_worker(server.target, handlers, concurrency=3):
            for job_id in ids:
                done = client.wait(job_id, timeout=T)
                assert done.state is JobState.SUCCEEDED and done.result == {"by": "rescuer"}
        for job_id in ids:
            assert _finals(client, job_id) == 1
            _gap_free(client, job_id)


def test_the_worker_finishes_jobs_that_end_together_in_one_call(
    bare_server: Server, client: JobClient
) -> None:
    """A worker with four slots runs a queue of quick jobs: its first
    AcquireJob asks for a job per free slot, every job runs exactly once and
    ends with one final result, and the attempts that end together go out
    in FinishJobs calls."""
    seen = Methods()
    ran: list[str] = []
    handlers = Handlers()

    @handlers.handler("batch-run")
    async def record(ctx: JobContext) -> None:
        ran.append(ctx.id)

    ids = _submit(client, "batch-run", 40)
    with running_worker(bare_server.target, handlers, concurrency=4, security=Observed(seen=seen)):
        for job_id in ids:
            assert client.wait(job_id, timeout=T).state is JobState.SUCCEEDED
    assert sorted(ran) == sorted(ids)
    assert seen.max_jobs[0] == 4, seen.max_jobs
    assert "FinishJobs" in seen.names, seen.names
    for job_id in ids[:5]:
        assert _finals(client, job_id) == 1


class Methods(grpc.aio.UnaryUnaryClientInterceptor):
    """Names the unary methods a worker calls, in order, and records the
    ``max_jobs`` of each AcquireJob and of each finish's ``acquire_next``."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self.max_jobs: list[int] = []
        self.next_jobs: list[int] = []

    async def intercept_unary_unary(
        self, continuation: Any, details: grpc.aio.ClientCallDetails, request: Any
    ) -> Any:
        method = details.method
        self.names.append((method.decode() if isinstance(method, bytes) else method).split("/")[-1])
        if isinstance(request, worker_service_pb2.AcquireJobRequest):
            self.max_jobs.append(request.max_jobs)
        finishing = (worker_service_pb2.FinishJobRequest, worker_service_pb2.FinishJobsRequest)
        if isinstance(request, finishing) and request.HasField("acquire_next"):
            self.next_jobs.append(request.acquire_next.max_jobs)
        return await continuation(details, request)


@dataclass(frozen=True, kw_only=True, slots=True)
class Observed(Security):
    """Plaintext, with ``seen`` naming the worker's calls."""

    seen: Methods = field(default_factory=Methods)

    def aio_channel(self, target: str, options: Sequence[tuple[str, Any]]) -> grpc.aio.Channel:
        """The worker's channel, through the interceptor."""
        return grpc.aio.insecure_channel(target, options=list(options), interceptors=[self.seen])
