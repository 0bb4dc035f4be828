"""The authorization matrix: every RPC x principal x own / other's / missing
job against a real server started with a tokens file: scenario 10 of the
fault suite.

Another principal's job must answer exactly like a job that does not exist:
same status code and, with the id substituted, the same message.
"""

from __future__ import annotations

import functools
import json
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.duration_pb2 import Duration
from helpers import Raw

from jobstream.v1 import (
    job_pb2,
    job_service_pb2,
    job_service_pb2_grpc,
    worker_service_pb2,
    worker_service_pb2_grpc,
)

CALL_TIMEOUT_S = 10.0
"""Deadline of every call in the matrix (streams: of the first message)."""

TOKENS: dict[str, tuple[str, str, list[str]]] = {
    # caller: (token, principal, roles)
    "admin": ("tok-admin-0123456789", "root", ["admin"]),
    "alice": ("tok-alice-0123456789", "alice", ["submitter"]),
    "alice-reader": ("tok-alice-reader-0123", "alice", ["reader"]),
    "bob": ("tok-bob-0123456789", "bob", ["submitter"]),
    "worker": ("tok-worker-0123456789", "pool-a", ["worker"]),
}
"""The principals of the matrix; ``bob`` owns the "other's" jobs."""

CALLERS = ("admin", "alice", "alice-reader", "worker", "anonymous", "forged")
"""Who calls: the token holders, no token at all, and an unknown token."""

JOB_RPCS = (
    "GetJob",
    "WatchJob",
    "ListJobLogs",
    "ListJobResults",
    "ListArtifacts",
    "DownloadArtifact",
    "RetryJob",
    "CancelJob",
    "DeleteJob",
)
"""RPCs that name one job."""

NOT_OK_ON_OWN = frozenset({"DownloadArtifact", "RetryJob"})
"""Job RPCs whose allowed call on the matrix's own (queued, artifact-less)
job still fails on its merits (no such artifact; not retryable yet): for
them "own" only has to be allowed, not OK."""

COLLECTION_RPCS = (
    "SubmitJob",
    "SubmitJobs",
    "ListJobs",
    "WatchJobs",
    "GetStats",
    "AcquireJob",
    "ReportJob",
    "FinishJob",
    "FinishJobs",
    "UploadArtifact",
)
"""RPCs that name no existing job."""

TARGETS = ("own", "other", "missing")
"""Whose job a job RPC names."""

READS = frozenset(
    {
        "GetJob",
        "WatchJob",
        "ListJobLogs",
        "ListJobResults",
        "ListJobs",
        "WatchJobs",
        "GetStats",
        "ListArtifacts",
        "DownloadArtifact",
    }
)
WRITES = frozenset({"CancelJob", "DeleteJob", "SubmitJob", "SubmitJobs", "RetryJob"})
WORKER_RPCS = frozenset({"AcquireJob", "ReportJob", "FinishJob", "FinishJobs", "UploadArtifact"})
ROLE_RPCS = {
    "admin": READS | WRITES | WORKER_RPCS,
    "alice": READS | WRITES,
    "alice-reader": READS,
    "worker": WORKER_RPCS,
}
"""RPCs each caller's roles allow."""

DENIED = ("UNAUTHENTICATED", "PERMISSION_DENIED")


def write_tokens(path: Path) -> Path:
    """Writes the matrix's tokens file."""
    rows = [{"token": t, "principal": p, "roles": r} for t, p, r in TOKENS.values()]
    path.write_text(json.dumps({"tokens": rows}))
    return path


def metadata(caller: str) -> tuple[tuple[str, str], ...]:
    """The call metadata of ``caller``."""
    if caller == "anonymous":
        return ()
    if caller == "forged":
        return (("authorization", "Bearer tok-forged-0123456789"),)
    return (("authorization", f"Bearer {TOKENS[caller][0]}"),)


@dataclass(frozen=True)
class Outcome:
    """What a call answered: a status code name and its message."""

    code: str
    details: str

    def normalized(self, job_id: str) -> tuple[str, str]:
        """Code and message with the job id replaced, for comparing answers
        about different ids."""
        return self.code, self.details.replace(job_id, "<ID>")


@dataclass
class MatrixResult:
    """Every case run, and the ones that did not answer as expected."""

    cases: int = 0
    failures: list[str] = field(default_factory=list)


def _outcome(fn: Callable[[], Any]) -> Outcome:
    try:
        fn()
    except grpc.RpcError as exc:
        return Outcome(exc.code().name, exc.details() or "")
    return Outcome("OK", "")


def _first(stream: Any) -> None:
    """Reads one message of a stream, then cancels it."""
    try:
        next(iter(stream))
    finally:
        stream.cancel()


def _fake_job_id() -> str:
    return "job_" + "".join(secrets.choice("0123456789abcdefghjkmnpqrstvwxyz") for _ in range(26))


class Matrix:
    """Runs the matrix against the server at ``target``."""

    def __init__(self, target: str) -> None:
        self.channel = grpc.insecure_channel(target)
        self.jobs = job_service_pb2_grpc.JobServiceStub(self.channel)
        self.workers = worker_service_pb2_grpc.WorkerServiceStub(self.channel)
        self.result = MatrixResult()

    def close(self) -> None:
        """Closes the channel."""
        self.channel.close()

    def submit(self, caller: str) -> str:
        """A fresh queued job owned by ``caller``'s principal."""
        response = self.jobs.SubmitJob(
            job_service_pb2.SubmitJobRequest(kind="matrix.noop", queue="matrix"),
            metadata=metadata(caller),
            timeout=CALL_TIMEOUT_S,
        )
        return str(response.job.id)

    def _job_call(self, rpc: str, job_id: str, md: Any) -> Callable[[], Any]:
        t = CALL_TIMEOUT_S
        calls: dict[str, Callable[[], Any]] = {
            "GetJob": lambda: self.jobs.GetJob(
                job_service_pb2.GetJobRequest(job_id=job_id), metadata=md, timeout=t
            ),
            "WatchJob": lambda: _first(
                self.jobs.WatchJob(
                    job_service_pb2.WatchJobRequest(job_id=job_id), metadata=md, timeout=t
                )
            ),
            "ListJobLogs": lambda: self.jobs.ListJobLogs(
                job_service_pb2.ListJobLogsRequest(job_id=job_id), metadata=md, timeout=t
            ),
            "ListJobResults": lambda: self.jobs.ListJobResults(
                job_service_pb2.ListJobResultsRequest(job_id=job_id), metadata=md, timeout=t
            ),
            "ListArtifacts": lambda: self.jobs.ListArtifacts(
                job_service_pb2.ListArtifactsRequest(job_id=job_id), metadata=md, timeout=t
            ),
            "DownloadArtifact": lambda: _first(
                self.jobs.DownloadArtifact(
                    job_service_pb2.DownloadArtifactRequest(job_id=job_id, name="out.txt"),
                    metadata=md,
                    timeout=t,
                )
            ),
            "RetryJob": lambda: self.jobs.RetryJob(
                job_service_pb2.RetryJobRequest(job_id=job_id), metadata=md, timeout=t
            ),
            "CancelJob": lambda: self.jobs.CancelJob(
                job_service_pb2.CancelJobRequest(job_id=job_id, reason="matrix"),
                metadata=md,
                timeout=t,
            ),
            "DeleteJob": lambda: self.jobs.DeleteJob(
                job_service_pb2.DeleteJobRequest(job_id=job_id), metadata=md, timeout=t
            ),
        }
        return calls[rpc]

    def _admin_state(self, job_id: str) -> int | None:
        try:
            job = self.jobs.GetJob(
                job_service_pb2.GetJobRequest(job_id=job_id),
                metadata=metadata("admin"),
                timeout=CALL_TIMEOUT_S,
            ).job
        except grpc.RpcError as exc:
            if exc.code() is grpc.StatusCode.NOT_FOUND:
                return None
            raise
        return int(job.state)

    def _check(self, case: str, got: Outcome, expected: str | None) -> None:
        """``expected`` None means "allowed": anything but a denial."""
        self.result.cases += 1
        ok = got.code not in DENIED if expected is None else got.code == expected
        if not ok:
            self.result.failures.append(
                f"{case}: got {got.code} {got.details!r}, expected {expected or 'allowed'}"
            )

    def run_job_rpcs(self) -> None:
        """Every job RPC x caller x own / other's / missing job."""
        for caller in CALLERS:
            # alice-reader shares alice's principal name, so alice's jobs are
            # its own; callers without a principal get alice's as "own".
            owner = "admin" if caller == "admin" else "alice"
            for rpc in JOB_RPCS:
                answers: dict[str, tuple[str, str]] = {}
                for target in TARGETS:
                    if target == "missing":
                        job_id = _fake_job_id()
                    else:
                        job_id = self.submit(owner if target == "own" else "bob")
                    before = self._admin_state(job_id)
                    got = _outcome(self._job_call(rpc, job_id, metadata(caller)))
                    answers[target] = got.normalized(job_id)
                    case = f"{rpc} by {caller} on {target} job"
                    if caller in ("anonymous", "forged"):
                        expected: str = "UNAUTHENTICATED"
                    elif rpc not in ROLE_RPCS[caller]:
                        expected = "PERMISSION_DENIED"
                    elif target == "missing" or (target == "other" and caller != "admin"):
                        expected = "NOT_FOUND"
                    else:
                        expected = "OK"
                    self._check(
                        case, got, None if expected == "OK" and rpc in NOT_OK_ON_OWN else expected
                    )
                    if target == "other" and expected != "OK":
                        after = self._admin_state(job_id)
                        self.result.cases += 1
                        if after != before:
                            self.result.failures.append(
                                f"{case}: a refused call changed the job ({before} -> {after})"
                            )
                self.result.cases += 1
                if caller in ("alice", "alice-reader") and answers["other"] != answers["missing"]:
                    self.result.failures.append(
                        f"{rpc} by {caller}: other's job answered {answers['other']}, "
                        f"a missing one {answers['missing']}"
                    )

    def run_collection_rpcs(self) -> None:
        """Submit, list, watch-list and the worker calls for every caller,
        and that listings hold only the caller's own jobs."""
        for caller in CALLERS:
            for rpc in COLLECTION_RPCS:
                if caller in ("anonymous", "forged"):
                    expected: str | None = "UNAUTHENTICATED"
                else:
                    expected = None if rpc in ROLE_RPCS[caller] else "PERMISSION_DENIED"
                got = _outcome(functools.partial(self._collection_call, rpc, metadata(caller)))
                self._check(f"{rpc} by {caller}", got, expected)
        self._check_listings()

    def _collection_call(self, rpc: str, md: Any) -> None:
        t = CALL_TIMEOUT_S
        submit = job_service_pb2.SubmitJobRequest(kind="matrix.noop", queue="matrix")
        if rpc == "SubmitJob":
            self.jobs.SubmitJob(submit, metadata=md, timeout=t)
        elif rpc == "SubmitJobs":
            batch = job_service_pb2.SubmitJobsRequest(requests=[submit])
            self.jobs.SubmitJobs(batch, metadata=md, timeout=t)
        elif rpc == "ListJobs":
            self.jobs.ListJobs(job_service_pb2.ListJobsRequest(), metadata=md, timeout=t)
        elif rpc == "WatchJobs":
            _first(self.jobs.WatchJobs(job_service_pb2.WatchJobsRequest(), metadata=md, timeout=t))
        elif rpc == "GetStats":
            self.jobs.GetStats(job_service_pb2.GetStatsRequest(), metadata=md, timeout=t)
        elif rpc == "UploadArtifact":
            header = worker_service_pb2.ArtifactHeader(
                job_id=_fake_job_id(),
                lease_id="0" * 32,
                name="out.txt",
                size_bytes=0,
                sha256="e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            )
            upload = iter([worker_service_pb2.UploadArtifactRequest(header=header)])
            self.workers.UploadArtifact(upload, metadata=md, timeout=t)
        elif rpc == "AcquireJob":
            acquire = worker_service_pb2.AcquireJobRequest(
                worker_id="matrix", kinds=["matrix.never"], wait=Duration(seconds=0)
            )
            self.workers.AcquireJob(acquire, metadata=md, timeout=t)
        elif rpc == "ReportJob":
            report = worker_service_pb2.ReportJobRequest(job_id=_fake_job_id(), lease_id="0" * 32)
            self.workers.ReportJob(report, metadata=md, timeout=t)
        elif rpc == "FinishJobs":
            one = worker_service_pb2.FinishJobRequest(
                job_id=_fake_job_id(),
                lease_id="0" * 32,
                outcome=worker_service_pb2.JOB_OUTCOME_SUCCEEDED,
            )
            finishes = worker_service_pb2.FinishJobsRequest(finishes=[one])
            self.workers.FinishJobs(finishes, metadata=md, timeout=t)
        else:
            finish = worker_service_pb2.FinishJobRequest(job_id=_fake_job_id(), lease_id="0" * 32)
            self.workers.FinishJob(finish, metadata=md, timeout=t)

    def _owners(self, caller: str) -> Iterator[str]:
        token = ""
        while True:
            page = self.jobs.ListJobs(
                job_service_pb2.ListJobsRequest(page_size=1000, page_token=token),
                metadata=metadata(caller),
                timeout=CALL_TIMEOUT_S,
            )
            for job in page.jobs:
                yield job.owner
            token = page.next_page_token
            if not token:
                return

    def _watched_owners(self, caller: str) -> set[str]:
        stream: Any = self.jobs.WatchJobs(
            job_service_pb2.WatchJobsRequest(filter=job_pb2.JobFilter()),
            metadata=metadata(caller),
            timeout=CALL_TIMEOUT_S,
        )
        owners: set[str] = set()
        try:
            for change in stream:
                if change.caught_up:
                    break
                if change.HasField("job"):
                    owners.add(change.job.owner)
        finally:
            stream.cancel()
        return owners

    def _check_listings(self) -> None:
        self.submit("alice")
        self.submit("bob")
        for caller, allowed in (("alice", {"alice"}), ("alice-reader", {"alice"})):
            for how, owners in (
                ("ListJobs", set(self._owners(caller))),
                ("WatchJobs", self._watched_owners(caller)),
            ):
                self.result.cases += 1
                if not owners or not owners <= allowed:
                    self.result.failures.append(f"{how} by {caller} showed owners {owners}")
        self.result.cases += 1
        everyone = set(self._owners("admin"))
        if not {"alice", "bob", "root"} <= everyone:
            self.result.failures.append(f"ListJobs by admin showed only owners {everyone}")

    def run_existence_oracles(self) -> None:
        """A submit naming another principal's job id answers exactly like
        one naming an unused id (both refused: a non-admin's ids must start
        with its own name), through SubmitJob and SubmitJobs alike."""
        taken = "bob.oracle-" + secrets.token_hex(4)
        self.jobs.SubmitJob(
            job_service_pb2.SubmitJobRequest(kind="matrix.noop", queue="matrix", job_id=taken),
            metadata=metadata("bob"),
            timeout=CALL_TIMEOUT_S,
        )
        unused = "bob.oracle-" + secrets.token_hex(4)
        # Callers without the submitter role are refused before any of this
        # (run_collection_rpcs); admins see every job anyway.
        for caller in ("alice",):
            for rpc in ("SubmitJob", "SubmitJobs"):
                answers = []
                for job_id in (taken, unused):
                    request = job_service_pb2.SubmitJobRequest(
                        kind="matrix.noop", queue="matrix", job_id=job_id
                    )
                    if rpc == "SubmitJob":
                        call: Callable[[], Any] = functools.partial(
                            self.jobs.SubmitJob,
                            request,
                            metadata=metadata(caller),
                            timeout=CALL_TIMEOUT_S,
                        )
                    else:
                        call = functools.partial(
                            self.jobs.SubmitJobs,
                            job_service_pb2.SubmitJobsRequest(requests=[request]),
                            metadata=metadata(caller),
                            timeout=CALL_TIMEOUT_S,
                        )
                    got = _outcome(call)
                    self._check(f"{rpc} by {caller} naming {job_id}", got, "INVALID_ARGUMENT")
                    answers.append(got.normalized(job_id))
                self.result.cases += 1
                if answers[0] != answers[1]:
                    self.result.failures.append(
                        f"{rpc} by {caller}: another's id answered {answers[0]}, "
                        f"an unused one {answers[1]}"
                    )

    def run_unlisted(self, methods: list[tuple[str, str]]) -> None:
        """Methods the role table does not list are admin-only: a submitter
        is refused before any servicer code runs. ``methods`` holds (full
        method name, "unary"/"server_stream"/"client_stream")."""
        md = metadata("alice")
        for method, shape in methods:

            def call(m: str = method, shape: str = shape) -> Any:
                # Raw bytes both ways: these methods have no stubs to call.
                raw = Raw(self.channel)
                if shape == "unary":
                    return raw.unary(m)(b"", metadata=md, timeout=CALL_TIMEOUT_S)
                if shape == "server_stream":
                    return _first(raw.server_stream(m)(b"", metadata=md, timeout=CALL_TIMEOUT_S))
                return raw.client_stream(m)(iter([b""]), metadata=md, timeout=CALL_TIMEOUT_S)

            self._check(f"{method} by alice (unlisted)", _outcome(call), "PERMISSION_DENIED")


def unlisted_methods(listed: set[str]) -> list[tuple[str, str]]:
    """Guarded methods of the current protos that ``listed`` does not name."""
    found = []
    for module, name in (
        (job_service_pb2, "JobService"),
        (worker_service_pb2, "WorkerService"),
    ):
        service = module.DESCRIPTOR.services_by_name[name]
        for m in service.methods:
            full = f"/{service.full_name}/{m.name}"
            if full in listed:
                continue
            shape = (
                "client_stream"
                if m.client_streaming
                else "server_stream"
                if m.server_streaming
                else "unary"
            )
            found.append((full, shape))
    return found


def run_matrix(target: str) -> MatrixResult:
    """Runs the whole matrix; the caller asserts ``failures`` is empty."""
    from jobstream.server.auth import METHOD_ROLES

    matrix = Matrix(target)
    try:
        matrix.run_job_rpcs()
        matrix.run_collection_rpcs()
        matrix.run_existence_oracles()
        matrix.run_unlisted(unlisted_methods(set(METHOD_ROLES)))
    finally:
        matrix.close()
    return matrix.result
