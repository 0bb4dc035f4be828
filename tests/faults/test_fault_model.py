"""Scenario 9: a hypothesis stateful model of the job lifecycle (submit,
acquire, report, finish, cancel, delete, watch) run against one real server
subprocess through the real client and WorkerService calls.

The model keeps, per job: state, attempt, cancel_requested, the live lease
(if any), the leases it held before and the events it must have stored.
After every step the server must agree: same state, attempt, cancel flag and
last seq; events 1..last_seq contiguous and exactly the expected ones; a
stale lease refused with FAILED_PRECONDITION and nothing changed; terminal
jobs unchanged except by delete; deleted jobs NOT_FOUND; a watch of a
terminal job yields exactly its events in order, then ends.

Every example gets its own job kind, so acquire only sees that example's
jobs and examples never disturb each other on the shared server.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import grpc
from conftest import ServerProcess
from helpers import RawWorker
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    invariant,
    rule,
    run_state_machine_as_test,
)

from faults.record import FULL, record, size
from jobstream.client import Job, JobClient, JobState
from jobstream.client.convert import event_from_pb, job_from_pb
from jobstream.client.errors import JobstreamError
from jobstream.client.models import EventKind
from jobstream.v1 import job_service_pb2, job_service_pb2_grpc, worker_service_pb2

LEASE_S = 600
"""Leases the model takes: far longer than any example, so no lease expires
behind the model's back (expiry is scenario 6's subject)."""

WATCH_TIMEOUT_S = 10.0
"""Deadline of every watch stream the model reads."""

OUTCOMES = {
    "succeeded": (worker_service_pb2.JOB_OUTCOME_SUCCEEDED, False),
    "failed": (worker_service_pb2.JOB_OUTCOME_FAILED, False),
    "failed-retryable": (worker_service_pb2.JOB_OUTCOME_FAILED, True),
    "cancelled": (worker_service_pb2.JOB_OUTCOME_CANCELLED, False),
}
"""FinishJob outcomes the model tries: (outcome, retryable)."""


@dataclass
class ModelJob:
    """What the model expects of one job."""

    max_attempts: int
    priority: int
    state: JobState = JobState.QUEUED
    attempt: int = 0
    cancel_requested: bool = False
    lease: str | None = None
    """The live lease, when RUNNING."""
    old_leases: list[str] = field(default_factory=list)
    """Leases this job held before; each must now be refused."""
    events: list[str] = field(default_factory=lambda: ["state_change:queued"])
    """Expected events in seq order: kind, and the state for state changes."""
    backoff: bool = False
    """QUEUED again after a retryable failure: not acquirable until its
    backoff has passed, so an empty acquire is allowed meanwhile."""
    deleted: bool = False
    final: Job | None = None
    """The job as first seen terminal; it must never change after."""


@dataclass
class Tally:
    """What the whole run did."""

    examples: int = 0
    steps: int = 0
    refused_stale: int = 0
    watches: int = 0
    violations: list[str] = field(default_factory=list)


def _describe(kind: EventKind, state: JobState | None) -> str:
    return f"{kind.value}:{state.value}" if state is not None else kind.value


def _code(exc: grpc.RpcError) -> grpc.StatusCode:
    code: grpc.StatusCode = exc.code()
    return code


class JobLifecycle(RuleBasedStateMachine):
    """The model; the test sets the class attributes before running it."""

    client: ClassVar[JobClient]
    worker: ClassVar[RawWorker]
    watcher: ClassVar[job_service_pb2_grpc.JobServiceStub]
    tally: ClassVar[Tally]

    jobs = Bundle("jobs")

    def __init__(self) -> None:
        super().__init__()
        self.kind = f"model.{uuid.uuid4().hex[:12]}"
        self.worker_id = f"model-{self.kind[6:]}"
        self.model: dict[str, ModelJob] = {}
        self.touched: set[str] = set()
        self.tally.examples += 1

    # ------------------------------------------------------------ checking

    def check(self, ok: bool, message: str) -> None:
        """Records a violated invariant and fails the example (hypothesis
        then shrinks it to a minimal sequence of steps)."""
        if not ok:
            self.tally.violations.append(message)
            raise AssertionError(message)

    def stream(self, job_id: str, expect_end: bool) -> tuple[list[str], list[int], bool]:
        """Reads a watch from seq 0: the events' descriptions and seqs, and
        whether the server ended the stream by itself. A live job's watch is
        read up to the model's last seq and then cancelled."""
        want = len(self.model[job_id].events)
        # Any: the generated stubs type the call as a plain iterator, without
        # its cancel().
        call: Any = self.watcher.WatchJob(
            job_service_pb2.WatchJobRequest(job_id=job_id, after_seq=0), timeout=WATCH_TIMEOUT_S
        )
        described: list[str] = []
        seqs: list[int] = []
        ended = False
        try:
            first = True
            for response in call:
                if first:
                    self.check(
                        response.HasField("snapshot"),
                        f"{job_id}: watch did not start with a snapshot",
                    )
                    first = False
                    continue
                for message in response.events.events:
                    event = event_from_pb(message)
                    state = event.state_change.state if event.state_change is not None else None
                    described.append(_describe(event.kind, state))
                    seqs.append(event.seq)
                if not expect_end and len(seqs) >= want:
                    break
                if len(seqs) > want + 1:
                    break  # more than the model knows of: enough to tell
            else:
                ended = True
        except grpc.RpcError as exc:
            self.check(False, f"{job_id}: watch failed {_code(exc).name}: {exc.details()}")
        finally:
            call.cancel()
        return described, seqs, ended

    def check_events(self, job_id: str) -> None:
        """Seqs 1..last_seq, contiguous, exactly the model's events; a
        terminal job's watch ends by itself after them."""
        m = self.model[job_id]
        terminal = m.state.terminal
        described, seqs, ended = self.stream(job_id, expect_end=terminal)
        self.tally.watches += 1
        self.check(
            seqs == list(range(1, len(seqs) + 1)),
            f"{job_id}: seqs not contiguous from 1: {seqs}",
        )
        self.check(described == m.events, f"{job_id}: events {described} != model {m.events}")
        if terminal:
            self.check(ended, f"{job_id}: watch of a terminal job did not end")

    def check_deleted(self, job_id: str) -> None:
        """A deleted job answers NOT_FOUND."""
        try:
            self.client.get(job_id)
        except JobstreamError as exc:
            self.check(
                exc.code is grpc.StatusCode.NOT_FOUND,
                f"{job_id}: deleted job answers {exc.code.name}, not NOT_FOUND",
            )
        else:
            self.check(False, f"{job_id}: deleted job is still there")

    def check_job(self, job_id: str, job: Job) -> None:
        """One live job as listed by the server against the model."""
        m = self.model[job_id]
        got = (job.state, job.attempt, job.cancel_requested, job.last_seq)
        want = (m.state, m.attempt, m.cancel_requested, len(m.events))
        self.check(got == want, f"{job_id}: (state, attempt, cancel, last_seq) {got} != {want}")
        if m.state is JobState.RUNNING:
            self.check(job.worker_id == self.worker_id, f"{job_id}: held by {job.worker_id!r}")
        if m.state.terminal:
            if m.final is None:
                m.final = job
            self.check(job == m.final, f"{job_id}: terminal job changed: {m.final} -> {job}")

    @invariant()
    def server_matches_model(self) -> None:
        """Every job agrees with the model (one listing of the example's
        kind: the live jobs, and no deleted one); the jobs the last step
        touched also have their whole event history read back, or answer
        NOT_FOUND when deleted."""
        listed = {j.id: j for j in self.client.list(kinds=[self.kind], page_size=1000)}
        live = {i for i, m in self.model.items() if not m.deleted}
        self.check(
            set(listed) == live,
            f"listed jobs differ from the model: extra {sorted(set(listed) - live)}, "
            f"missing {sorted(live - set(listed))}",
        )
        for job_id in sorted(live):
            self.check_job(job_id, listed[job_id])
        for job_id in sorted(self.touched):
            if self.model[job_id].deleted:
                self.check_deleted(job_id)
            else:
                self.check_events(job_id)
        self.touched.clear()

    def teardown(self) -> None:
        """Every job's events once more at the end of the example."""
        for job_id, m in self.model.items():
            if m.deleted:
                self.check_deleted(job_id)
            else:
                self.check_events(job_id)

    # ------------------------------------------------------------ rules

    @rule(target=jobs, priority=st.integers(-2, 2), max_attempts=st.integers(1, 3))
    def submit(self, priority: int, max_attempts: int) -> str:
        self.tally.steps += 1
        job = self.client.submit(self.kind, priority=priority, max_attempts=max_attempts)
        self.check(job.state is JobState.QUEUED and job.last_seq == 1, f"submit answered {job}")
        self.check(job.id not in self.model, f"submit reused id {job.id}")
        self.model[job.id] = ModelJob(max_attempts=max_attempts, priority=priority)
        self.touched.add(job.id)
        return job.id

    @rule()
    def acquire(self) -> None:
        self.tally.steps += 1
        self.worker.worker_id = self.worker_id
        response = self.worker.acquire(self.kind, wait=0, lease_s=LEASE_S)
        if not response.HasField("job"):
            ready = [
                i
                for i, m in self.model.items()
                if m.state is JobState.QUEUED and not m.deleted and not m.backoff
            ]
            self.check(not ready, f"acquire found nothing while {ready} were ready")
            return
        job_id = response.job.id
        m = self.model.get(job_id)
        self.check(m is not None, f"acquire handed out a job of no model: {job_id}")
        assert m is not None
        self.check(
            m.state is JobState.QUEUED and not m.deleted and m.lease is None,
            f"acquire handed out {job_id}, which the model has {m.state.value} "
            f"(deleted {m.deleted}, lease {m.lease})",
        )
        self.check(bool(response.lease_id), f"acquire of {job_id} without a lease id")
        better = [
            i
            for i, o in self.model.items()
            if o.state is JobState.QUEUED
            and not (o.deleted or o.backoff)
            and o.priority > m.priority
        ]
        self.check(not better, f"acquire chose {job_id} over higher-priority {better}")
        m.state = JobState.RUNNING
        m.attempt += 1
        m.lease = response.lease_id
        m.backoff = False
        m.events.append("state_change:running")
        self.touched.add(job_id)

    def lease_for(self, m: ModelJob, stale: bool) -> tuple[str, bool]:
        """The lease to send and whether it is live: the job's live one, or
        (when ``stale`` or there is none) an old or made-up one."""
        if m.lease is not None and not stale:
            return m.lease, True
        return (m.old_leases[-1] if m.old_leases else secrets.token_hex(16)), False

    def refused(self, job_id: str, call: Callable[[], object], why: str) -> None:
        """``call`` must be refused FAILED_PRECONDITION (NOT_FOUND for a
        deleted job) and change nothing."""
        m = self.model[job_id]
        before = None if m.deleted else self.client.get(job_id)
        want = grpc.StatusCode.NOT_FOUND if m.deleted else grpc.StatusCode.FAILED_PRECONDITION
        try:
            call()
        except grpc.RpcError as exc:
            self.check(
                _code(exc) is want, f"{job_id}: {why} answered {_code(exc).name}, not {want.name}"
            )
        else:
            self.check(False, f"{job_id}: {why} was accepted")
        if before is not None:
            after = self.client.get(job_id)
            self.check(after == before, f"{job_id}: refused {why} changed the job")
        self.tally.refused_stale += 1

    @rule(job_id=jobs, lines=st.integers(0, 3), stale=st.booleans())
    def report(self, job_id: str, lines: int, stale: bool) -> None:
        self.tally.steps += 1
        m = self.model[job_id]
        lease, live = self.lease_for(m, stale)
        texts = [f"line {i}" for i in range(lines)]
        if not live or m.deleted:
            self.refused(job_id, lambda: self.worker.log(job_id, lease, texts), "stale report")
            return
        ack = self.worker.log(job_id, lease, texts)
        m.events.extend(["log"] * lines)
        self.check(
            (ack.cancel_requested, ack.last_seq) == (m.cancel_requested, len(m.events)),
            f"{job_id}: report ack (cancel, last_seq) {(ack.cancel_requested, ack.last_seq)}",
        )
        self.touched.add(job_id)

    @rule(job_id=jobs, outcome=st.sampled_from(sorted(OUTCOMES)), stale=st.booleans())
    def finish(self, job_id: str, outcome: str, stale: bool) -> None:
        self.tally.steps += 1
        m = self.model[job_id]
        lease, live = self.lease_for(m, stale)
        code, retryable = OUTCOMES[outcome]

        def call() -> worker_service_pb2.FinishJobResponse:
            response: worker_service_pb2.FinishJobResponse = self.worker.stub.FinishJob(
                worker_service_pb2.FinishJobRequest(
                    job_id=job_id, lease_id=lease, outcome=code, retryable=retryable
                ),
                timeout=30,
            )
            return response

        if not live or m.deleted:
            self.refused(job_id, call, "stale finish")
            return
        answer = job_from_pb(call().job)
        if code == worker_service_pb2.JOB_OUTCOME_SUCCEEDED:
            m.state = JobState.SUCCEEDED
        elif code == worker_service_pb2.JOB_OUTCOME_CANCELLED:
            m.state = JobState.CANCELLED
        elif retryable and not m.cancel_requested and m.attempt < m.max_attempts:
            m.state = JobState.QUEUED
            m.backoff = True
        else:
            m.state = JobState.FAILED
        m.old_leases.append(lease)
        m.lease = None
        m.cancel_requested = False if m.state is JobState.QUEUED else m.cancel_requested
        m.events.append(f"state_change:{m.state.value}")
        self.check(answer.state is m.state, f"{job_id}: finish answered {answer.state.value}")
        self.touched.add(job_id)

    @rule(job_id=jobs)
    def cancel(self, job_id: str) -> None:
        self.tally.steps += 1
        m = self.model[job_id]
        if m.deleted or (m.state.terminal and m.state is not JobState.CANCELLED):
            want = grpc.StatusCode.NOT_FOUND if m.deleted else grpc.StatusCode.FAILED_PRECONDITION
            try:
                self.client.cancel(job_id)
            except JobstreamError as exc:
                self.check(exc.code is want, f"{job_id}: cancel answered {exc.code.name}")
            else:
                self.check(False, f"{job_id}: cancel of a {m.state.value} job was accepted")
            return
        job = self.client.cancel(job_id)
        if m.state is JobState.QUEUED:
            m.state = JobState.CANCELLED
            m.backoff = False
            m.events.append("state_change:cancelled")
        elif m.state is JobState.RUNNING and not m.cancel_requested:
            m.cancel_requested = True
            m.events.append("cancel_requested")
        self.check(
            (job.state, job.cancel_requested) == (m.state, m.cancel_requested),
            f"{job_id}: cancel answered {job.state.value}, cancel_requested {job.cancel_requested}",
        )
        self.touched.add(job_id)

    @rule(job_id=jobs, force=st.booleans())
    def delete(self, job_id: str, force: bool) -> None:
        self.tally.steps += 1
        m = self.model[job_id]
        refuse = m.deleted or (m.state is JobState.RUNNING and not force)
        if refuse:
            want = grpc.StatusCode.NOT_FOUND if m.deleted else grpc.StatusCode.FAILED_PRECONDITION
            before = None if m.deleted else self.client.get(job_id)
            try:
                self.client.delete(job_id, force=force)
            except JobstreamError as exc:
                self.check(exc.code is want, f"{job_id}: delete answered {exc.code.name}")
            else:
                self.check(False, f"{job_id}: delete of a running job without force accepted")
            if before is not None:
                self.check(
                    self.client.get(job_id) == before, f"{job_id}: refused delete changed it"
                )
            return
        self.client.delete(job_id, force=force)
        if m.lease is not None:
            m.old_leases.append(m.lease)
        m.lease = None
        m.deleted = True
        self.touched.add(job_id)

    @rule(job_id=jobs)
    def watch(self, job_id: str) -> None:
        self.tally.steps += 1
        m = self.model[job_id]
        if not m.deleted:
            self.check_events(job_id)
            return
        call: Any = self.watcher.WatchJob(
            job_service_pb2.WatchJobRequest(job_id=job_id), timeout=WATCH_TIMEOUT_S
        )
        try:
            items = list(call)
        except grpc.RpcError as exc:
            self.check(
                _code(exc) is grpc.StatusCode.NOT_FOUND,
                f"{job_id}: watch of a deleted job answered {_code(exc).name}",
            )
        else:
            self.check(False, f"{job_id}: watch of a deleted job yielded {len(items)} items")
        finally:
            call.cancel()


def test_stateful_model_of_the_job_lifecycle(
    start_server: Callable[..., ServerProcess],
) -> None:
    server = start_server()
    tally = Tally()
    channel = grpc.insecure_channel(server.target)
    worker = RawWorker(server.target)
    with JobClient(server.target, timeout=30) as client:
        JobLifecycle.client = client
        JobLifecycle.worker = worker
        JobLifecycle.watcher = job_service_pb2_grpc.JobServiceStub(channel)
        JobLifecycle.tally = tally
        failure: Exception | None = None
        try:
            run_state_machine_as_test(
                JobLifecycle,
                settings=settings(
                    max_examples=size(25, 400),
                    stateful_step_count=size(25, 60),
                    deadline=None,
                    database=None,
                    # Reproducible in `make test`; new examples every `make faults`.
                    derandomize=not FULL,
                    suppress_health_check=list(HealthCheck),
                ),
            )
        except Exception as exc:  # a violation, or an error the model did not expect
            failure = exc
            if not tally.violations:
                tally.violations.append(f"{type(exc).__name__}: {exc}")
        finally:
            worker.close()
            channel.close()
    # Shrinking replays the failing example many times, so the number of
    # failed checks says little; the first one found is what to read.
    verdict = (
        "0 invariant violations"
        if failure is None
        else f"invariant violated: {tally.violations[0][:160]}"
    )
    record(
        9,
        f"{tally.steps} steps, {tally.examples} examples ({tally.watches} watches read back, "
        f"{tally.refused_stale} refused stale-lease/invalid calls): {verdict}",
        failure is None,
    )
    if failure is not None:
        raise failure
