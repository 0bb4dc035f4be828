"""Small shared test helpers: a raw worker on the generated stubs (for the
tests that must hold a lease themselves), polling with a deadline, and
process memory readings."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration

from jobstream.client import Job, JobClient, JobEvent, JobState
from jobstream.client.security import Security
from jobstream.v1 import (
    job_pb2,
    job_service_pb2,
    job_service_pb2_grpc,
    worker_service_pb2,
    worker_service_pb2_grpc,
)

if TYPE_CHECKING:
    # Server types, for annotations only: client-only tests import this
    # module with the server extra missing.
    from jobstream.server.domain import Effects
    from jobstream.server.store import Store

T = TypeVar("T")


def eventually(probe: Callable[[], T | None], timeout: float = 15.0, every: float = 0.05) -> T:
    """Polls ``probe`` until it returns something truthy; fails after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s (last: {value!r})")
        time.sleep(every)


def open_watch(stub: Any, request: Any, timeout: float = 120.0) -> Any:
    """A WatchJob stream whose snapshot arrived (so it holds its place in
    the server's watch caps), or None when the server refused it with
    RESOURCE_EXHAUSTED; any other error is raised."""
    stream = stub.WatchJob(request, timeout=timeout)
    try:
        next(stream)
    except grpc.RpcError as exc:
        if exc.code() is grpc.StatusCode.RESOURCE_EXHAUSTED:
            return None
        raise
    return stream


def rss_bytes(pid: int) -> int:
    """Resident memory of a process, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


class RawWorker:
    """A worker speaking WorkerService directly, holding its lease by hand
    (with ``token``, as that token's principal)."""

    def __init__(
        self, target: str, worker_id: str = "raw-worker", *, token: str | None = None
    ) -> None:
        self.channel = Security(token=token).channel(target, ())
        self.stub = worker_service_pb2_grpc.WorkerServiceStub(self.channel)
        self.worker_id = worker_id

    def close(self) -> None:
        self.channel.close()

    def acquire(
        self, kind: str, wait: float = 5.0, lease_s: int | None = None
    ) -> worker_service_pb2.AcquireJobResponse:
        req = worker_service_pb2.AcquireJobRequest(
            worker_id=self.worker_id, kinds=[kind], wait=Duration(seconds=int(wait))
        )
        if lease_s is not None:
            req.lease_duration.CopyFrom(Duration(seconds=lease_s))
        response: worker_service_pb2.AcquireJobResponse = self.stub.AcquireJob(
            req, timeout=wait + 10
        )
        return response

    def log(
        self, job_id: str, lease_id: str, lines: list[str], files: list[str] | None = None
    ) -> worker_service_pb2.ReportJobResponse:
        response: worker_service_pb2.ReportJobResponse = self.stub.ReportJob(
            worker_service_pb2.ReportJobRequest(
                job_id=job_id,
                lease_id=lease_id,
                logs=[job_pb2.LogLine(text=t) for t in lines],
                server_paths=files or [],
            ),
            timeout=30,
        )
        return response

    def upload(
        self, job_id: str, lease_id: str, name: str, data: bytes
    ) -> worker_service_pb2.UploadArtifactResponse:
        header = worker_service_pb2.ArtifactHeader(
            job_id=job_id,
            lease_id=lease_id,
            name=name,
            size_bytes=len(data),
            sha256=hashlib.sha256(data).hexdigest(),
        )
        # Chunks of at most 1 MiB (an empty artifact still sends one).
        step = 1024 * 1024
        messages = [worker_service_pb2.UploadArtifactRequest(header=header)] + [
            worker_service_pb2.UploadArtifactRequest(chunk=data[i : i + step])
            for i in range(0, max(len(data), 1), step)
        ]
        response: worker_service_pb2.UploadArtifactResponse = self.stub.UploadArtifact(
            iter(messages), timeout=30
        )
        return response

    def report(
        self,
        job_id: str,
        lease_id: str,
        *,
        results: Sequence[tuple[str, job_pb2.ResultStatus.ValueType]] = (),
        steps: Sequence[tuple[str, job_pb2.StepState.ValueType]] = (),
    ) -> worker_service_pb2.ReportJobResponse:
        """One ReportJob with ``(key, status)`` results and ``(name, state)`` steps."""
        response: worker_service_pb2.ReportJobResponse = self.stub.ReportJob(
            worker_service_pb2.ReportJobRequest(
                job_id=job_id,
                lease_id=lease_id,
                results=[job_pb2.ResultItem(key=k, status=s) for k, s in results],
                steps=[job_pb2.Step(name=n, state=s) for n, s in steps],
            ),
            timeout=30,
        )
        return response

    def finish(
        self,
        job_id: str,
        lease_id: str,
        outcome: worker_service_pb2.JobOutcome.ValueType = (
            worker_service_pb2.JOB_OUTCOME_SUCCEEDED
        ),
        *,
        retryable: bool = False,
        acquire_next: worker_service_pb2.AcquireJobRequest | None = None,
    ) -> worker_service_pb2.FinishJobResponse:
        request = worker_service_pb2.FinishJobRequest(
            job_id=job_id, lease_id=lease_id, outcome=outcome, retryable=retryable
        )
        if acquire_next is not None:
            request.acquire_next.CopyFrom(acquire_next)
        response: worker_service_pb2.FinishJobResponse = self.stub.FinishJob(request, timeout=30)
        return response


def stored_events(client: JobClient, job_id: str) -> list[JobEvent]:
    """The job's events stored so far (a watch that hangs up at the current
    last seq, so it works for jobs that are not finished)."""
    last = client.get(job_id).last_seq
    events: list[JobEvent] = []
    if last == 0:
        return events
    for item in client.watch(job_id):
        if isinstance(item, JobEvent):
            events.append(item)
            if item.seq >= last:
                break
    return events


def job_in(client: JobClient, job_id: str, *states: JobState) -> Job | None:
    """The job if it is in one of ``states`` (any terminal state when none
    is named), else None: a probe for :func:`eventually`."""
    job = client.get(job_id)
    wanted = job.state in states if states else job.state.terminal
    return job if wanted else None


class Raw:
    """Methods called with raw bytes both ways, as a client with no stubs
    (or a hostile one) calls them."""

    def __init__(self, channel: grpc.Channel) -> None:
        self.channel = channel

    def unary(self, method: str) -> grpc.UnaryUnaryMultiCallable[bytes, bytes]:
        """A unary method."""
        call: grpc.UnaryUnaryMultiCallable[bytes, bytes] = self.channel.unary_unary(method)
        return call

    def server_stream(self, method: str) -> grpc.UnaryStreamMultiCallable[bytes, bytes]:
        """A method answering with a stream."""
        call: grpc.UnaryStreamMultiCallable[bytes, bytes] = self.channel.unary_stream(method)
        return call

    def client_stream(self, method: str) -> grpc.StreamUnaryMultiCallable[bytes, bytes]:
        """A method taking a request stream."""
        call: grpc.StreamUnaryMultiCallable[bytes, bytes] = self.channel.stream_unary(method)
        return call

    def bidi(self, method: str) -> grpc.StreamStreamMultiCallable[bytes, bytes]:
        """A method streaming both ways."""
        call: grpc.StreamStreamMultiCallable[bytes, bytes] = self.channel.stream_stream(method)
        return call


FILES_HANDLERS_MODULE = """
from jobstream.client import Handlers

handlers = Handlers()


@handlers.handler("files.write")
def write(ctx):
    out = ctx.job_dir / "out.csv"
    out.write_text("a,b\\n")
    ctx.add_file(out)
    return {"path": str(out)}
"""
"""A handler that writes into ``ctx.job_dir`` and records the file."""


def files_handlers_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Makes ``files_handlers`` importable here and in the processes started."""
    module = tmp_path / "modules" / "files_handlers.py"
    module.parent.mkdir()
    module.write_text(FILES_HANDLERS_MODULE)
    monkeypatch.setenv("PYTHONPATH", str(module.parent))
    monkeypatch.syspath_prepend(module.parent)


def insert_old_job(db: Any, job_id: str, *, kind: str = "k", owner: str = "") -> None:
    """Inserts a queued job into a database left at an older schema, with
    only the columns every version has: submit fills the newer ones too."""
    from jobstream.server.db import JobRow

    now = time.time_ns() // 1000
    with db.bind_ctx([JobRow]):
        JobRow.insert(
            id=job_id,
            kind=kind,
            queue="default",
            state="queued",
            not_before=now,
            owner=owner,
            create_time=now,
            update_time=now,
        ).execute()


def submit_batches(
    stub: job_service_pb2_grpc.JobServiceStub, n: int, suite: str, kind: str = "bulk.job"
) -> list[str]:
    """Submits ``n`` jobs labelled ``suite`` in SubmitJobs batches of 1,000
    (quick bulk set-up); their ids, in submit order."""
    made: list[str] = []
    for start in range(0, n, 1000):
        batch = [
            job_service_pb2.SubmitJobRequest(kind=kind, labels={"suite": suite})
            for _ in range(min(1000, n - start))
        ]
        answer = stub.SubmitJobs(job_service_pb2.SubmitJobsRequest(requests=batch), timeout=120)
        made += [r.job.id for r in answer.responses]
    return made


def store_write(store: Store, fn: Callable[[Effects], T]) -> T:
    """Runs one store write in its own transaction, as the writer does."""
    from jobstream.server.domain import Effects, now_us

    effects = Effects()
    with store.db.atomic():
        result = fn(effects)
        store.changes.record(effects, now_us())
    return result
