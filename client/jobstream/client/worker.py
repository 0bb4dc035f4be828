"""Workers: lease jobs from the server and run each as an attempt, a few at
a time, until stopped.

A worker takes jobs of the kinds its :class:`~jobstream.client.handlers.Handlers`
know, one AcquireJob long-poll at a time and only while a slot is free and
nothing else is bringing work, asking for one job per free slot; each leased
job runs as an :class:`~jobstream.client.attempt.Attempt`. A slot is free
again once its handler returns, and the attempt's finish asks for the next
jobs in the same call, so while jobs are waiting the worker goes from one to
the next without a long-poll; the finishes that come while one is on its way
go together in the next FinishJobs call (:mod:`~jobstream.client.finishes`).
A worker running short jobs leases a few ahead of its free slots, so a slot
never waits a round trip for its next job (:mod:`~jobstream.client.slots`).
The worker runs on ``grpc.aio``: an ``async def`` handler runs as a task on
its event loop, a plain function in a thread of its own (see JobContext).

The handler API is importable from here too: ``Handlers``, ``JobContext``,
``JobCancelled``, ``FatalJobError``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
import socket
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import grpc
import grpc.aio
from google.protobuf import duration_pb2

from jobstream.client.attempt import TRANSIENT_CODES, Attempt
from jobstream.client.connection import CHANNEL_OPTIONS, DEFAULT_TARGET, Backoff
from jobstream.client.context import JobContext
from jobstream.client.convert import JOB_OUTCOMES, job_from_pb, time_from_pb
from jobstream.client.errors import from_rpc_error, unreachable_reason
from jobstream.client.finishes import FinishBatcher
from jobstream.client.handlers import (
    FatalJobError,
    H,
    Handler,
    Handlers,
    JobCancelled,
    JobReleased,
)
from jobstream.client.logformat import fallback_logging
from jobstream.client.models import JobOutcome
from jobstream.client.security import PLAINTEXT, Security
from jobstream.client.slots import MAX_ASK, Slots
from jobstream.v1 import worker_service_pb2, worker_service_pb2_grpc

__all__ = [
    "DEFAULT_CONCURRENCY",
    "DEFAULT_QUEUES",
    "FatalJobError",
    "Handler",
    "Handlers",
    "JobCancelled",
    "JobContext",
    "JobReleased",
    "Worker",
]

log = logging.getLogger(__name__)

LIBRARY_LOGGER = "jobstream.client"
"""The logger above the worker's and its attempts': what the default
logging of a Worker covers."""

DEFAULT_CONCURRENCY = 4
"""Jobs a worker runs at once."""

DEFAULT_QUEUES = ("default",)
"""Queues a worker takes jobs from unless told otherwise: the one a submit
without a queue lands in."""

DEFAULT_LEASE_DURATION = 30.0
"""Seconds a lease lasts unless renewed; a dead worker's job is rescued after this."""

DEFAULT_FLUSH_INTERVAL = 0.2
"""Seconds a job's flusher sleeps between checks whether its lease is due
for renewal; updates never wait for it (they are sent as soon as no report
of the job is in flight)."""

DEFAULT_POLL_WAIT = 20.0
"""Seconds one AcquireJob long-poll waits for a job (the server allows 0..60)."""

ACQUIRE_MARGIN = 5.0
"""Extra seconds on AcquireJob's deadline beyond its wait: the server answers
at the end of the wait, plus the time to commit a lease and send it."""

HOLD = 1.0
"""Most seconds a job leased ahead waits in hand for a slot before it is
given back (a third of the lease, when that is shorter)."""

PREFETCH_PER_SLOT = 32
"""Jobs a worker may lease ahead per slot unless told otherwise, up to
MAX_ASK in all (only while its jobs are short; see slots.py)."""

RELEASE_TIMEOUT = 5.0
"""Deadline, in seconds, of giving back a job leased ahead."""

FORCE_GRACE = 5.0
"""Seconds handlers get to stop after a forced stop before their jobs are
abandoned (their leases then expire on the server)."""

_FATAL_ACQUIRE_CODES = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNIMPLEMENTED,
    }
)
"""AcquireJob errors that retrying cannot fix: the worker stops with them."""


Lease = worker_service_pb2.AcquireJobResponse | worker_service_pb2.LeasedJob
"""A leased job, as an AcquireJob answer holds them."""


def default_worker_id() -> str:
    """``host:pid``, restricted to the characters a worker id may hold."""
    host = re.sub(r"[^A-Za-z0-9._@-]", "-", socket.gethostname())[:100] or "worker"
    return f"{host}:{os.getpid()}"


def _duration(seconds: float) -> duration_pb2.Duration:
    value = duration_pb2.Duration()
    value.FromTimedelta(timedelta(seconds=seconds))
    return value


class Worker:
    """Leases jobs of the kinds its handlers know and runs them.

    ``concurrency`` jobs run at once; while its jobs are short the worker
    leases up to ``prefetch`` more ahead of its free slots (default: 32
    per slot, at most 256; 0 never leases ahead), as many as its slots should start
    within 50 ms by how long its recent jobs ran, and gives back any that
    waits over a second for a slot (see :mod:`~jobstream.client.slots`);
    ``lease_duration`` is asked of the server for each lease;
    updates are sent as soon as no report of the job is in flight (those
    written meanwhile go together in the next), and the lease is checked
    for renewal every ``flush_interval`` seconds; each AcquireJob
    waits up to ``poll_wait`` seconds for a job. A worker survives server
    restarts: it backs off and tries again.

    ``files_root`` is a directory the server shares at the same path (its
    data directory's ``jobs`` folder, or one of its output roots):
    each job's ``ctx.job_dir`` is ``files_root/<job id>``. Without it
    ``ctx.job_dir`` is None.

    ``run()`` blocks and handles SIGINT/SIGTERM; ``await run_async()`` runs
    inside an existing event loop (installing no signal handlers) until
    ``await stop()``, or until its task is cancelled. A worker runs once.
    """

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        handlers: Handlers | None = None,
        *,
        worker_id: str | None = None,
        queues: tuple[str, ...] = DEFAULT_QUEUES,
        concurrency: int = DEFAULT_CONCURRENCY,
        lease_duration: float = DEFAULT_LEASE_DURATION,
        flush_interval: float = DEFAULT_FLUSH_INTERVAL,
        poll_wait: float = DEFAULT_POLL_WAIT,
        security: Security = PLAINTEXT,
        files_root: str | os.PathLike[str] | None = None,
        prefetch: int | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, not {concurrency}")
        if prefetch is not None and prefetch < 0:
            raise ValueError(f"prefetch must be at least 0, not {prefetch}")
        if lease_duration <= 0 or flush_interval <= 0:
            raise ValueError("lease_duration and flush_interval must be positive")
        if not 0 <= poll_wait <= 60:
            raise ValueError(f"poll_wait must be within 0..60 seconds, not {poll_wait}")
        self.target = target
        self.handlers = handlers if handlers is not None else Handlers()
        self.worker_id = worker_id or default_worker_id()
        self.queues = tuple(queues)
        self.concurrency = concurrency
        self.prefetch = (
            min(PREFETCH_PER_SLOT * concurrency, MAX_ASK) if prefetch is None else prefetch
        )
        self.lease_duration = lease_duration
        self.flush_interval = flush_interval
        self.poll_wait = poll_wait
        self.security = security
        self.files_root = Path(files_root).absolute() if files_root is not None else None
        self._running = False
        self._stopping = False
        self._stopped = asyncio.Event()
        self._acquirer: asyncio.Task[None] | None = None
        self._jobs: dict[str, tuple[Attempt, asyncio.Task[None]]] = {}
        self._finishes: FinishBatcher | None = None
        self._slots: Slots[Lease] | None = None
        self._stub: worker_service_pb2_grpc.WorkerServiceAsyncStub | None = None
        self._releases: set[asyncio.Task[None]] = set()

    def handler(self, kind: str) -> Callable[[H], H]:
        """Decorator: register a handler for ``kind`` on this worker's Handlers."""
        return self.handlers.handler(kind)

    @property
    def running_jobs(self) -> tuple[str, ...]:
        """Ids of the jobs running now."""
        return tuple(self._jobs)

    # -- lifecycle

    def run(self) -> None:
        """Run until SIGINT/SIGTERM. The first signal stops acquiring and
        lets running jobs finish; a second one stops them."""
        asyncio.run(self._run_with_signals())

    async def _run_with_signals(self) -> None:
        loop = asyncio.get_running_loop()
        received = 0

        def on_signal(sig: signal.Signals) -> None:
            nonlocal received
            received += 1
            if received == 1:
                log.warning(
                    "%s: finishing %d running job(s); send it again to stop them now",
                    sig.name,
                    len(self._jobs),
                )
                self._request_stop()
            else:
                log.warning("%s: stopping running jobs", sig.name)
                self._force_stop()

        installed: list[signal.Signals] = []
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, on_signal, sig)
                installed.append(sig)
            except (NotImplementedError, RuntimeError, ValueError):
                pass  # not the main thread, or no loop signal support (Windows)
        try:
            await self.run_async()
        finally:
            for sig in installed:
                loop.remove_signal_handler(sig)

    async def run_async(self) -> None:
        """Acquire and run jobs until stopped; then wait for running jobs.

        Cancelling the task that runs this stops everything at once: handlers
        are asked to stop, given FORCE_GRACE seconds, then abandoned.

        The worker logs its start, each job it takes (DEBUG), each failed
        attempt (WARNING, with the exception and where it was raised) and
        its stop, through the ``jobstream.client`` loggers. When the
        application has configured no logging, those lines go to stderr at
        INFO and above (see :func:`~jobstream.client.logformat.fallback_logging`).
        """
        with fallback_logging(LIBRARY_LOGGER):
            await self._run()

    async def _run(self) -> None:
        kinds = self.handlers.kinds
        if not kinds:
            raise ValueError("the worker has no handlers")
        if self._running:
            raise RuntimeError("the worker is already running")
        if self._stopping:
            return  # stop() came first
        self._running = True
        channel = self.security.aio_channel(self.target, CHANNEL_OPTIONS)
        stub = worker_service_pb2_grpc.WorkerServiceStub(channel)
        log.info(
            "worker %s: started: kinds %s, queue(s) %s, server %s, concurrency %d",
            self.worker_id,
            ", ".join(kinds),
            ", ".join(self.queues),
            self.target,
            self.concurrency,
        )
        self._acquire_request = worker_service_pb2.AcquireJobRequest(
            worker_id=self.worker_id,
            kinds=kinds,
            queues=self.queues,
            wait=_duration(self.poll_wait),
            lease_duration=_duration(self.lease_duration),
            host=socket.gethostname()[:255],
            concurrency=self.concurrency,
        )
        self._stub = stub
        self._slots = Slots(
            self.concurrency,
            ahead=self.prefetch,
            hold=min(HOLD, self.lease_duration / 3),
            start=lambda lease: self._start(stub, lease),
            give_back=self._give_back,
        )
        self._finishes = FinishBatcher(
            stub, self._ask_next, self._got_next, lambda: len(self._jobs)
        )
        acquirer = asyncio.create_task(
            self._acquire_loop(stub, self._slots), name="jobstream-acquire"
        )
        self._acquirer = acquirer
        try:
            # asyncio.wait, not await: stop() cancels the acquirer, and that
            # must not look like this task being cancelled.
            await asyncio.wait([acquirer])
            if not acquirer.cancelled() and acquirer.exception() is not None:
                # A refused AcquireJob stops the worker: no finish may lease
                # more work while the running jobs drain.
                self._request_stop()
            await self._drain()
            error = None if acquirer.cancelled() else acquirer.exception()
            if error is not None:
                raise error
        except asyncio.CancelledError:
            self._stopping = True
            acquirer.cancel()
            await self._shutdown_now()
            raise
        finally:
            self._running = False
            if self._releases:
                # Bounded: a worker cancelled while the server is away does
                # not wait out the retries (those leases expire instead).
                _, late = await asyncio.wait(self._releases, timeout=RELEASE_TIMEOUT)
                for task in late:
                    task.cancel()
            await channel.close(None)
            self._stopped.set()
            log.info("worker %s: stopped", self.worker_id)

    async def stop(self, *, grace: float | None = None) -> None:
        """Stop acquiring (at once, cancelling the long-poll) and wait for the
        running jobs; after ``grace`` seconds (None: no limit) stop them too.
        Returns when the worker has stopped."""
        self._request_stop()
        if not self._running:
            return
        try:
            await asyncio.wait_for(self._stopped.wait(), grace)
        except TimeoutError:
            self._force_stop()
            await self._stopped.wait()

    def _request_stop(self) -> None:
        if not self._stopping:
            self._stopping = True
            log.info("worker %s: stopping", self.worker_id)
        if self._slots is not None:
            self._slots.close()
        for run, _ in self._jobs.values():
            run.ask_to_stop()
        if self._acquirer is not None:
            self._acquirer.cancel()

    def _force_stop(self) -> None:
        self._request_stop()
        for run, _ in self._jobs.values():
            run.interrupt()
        if self._jobs:
            asyncio.get_running_loop().call_later(FORCE_GRACE, self._abandon)

    def _abandon(self) -> None:
        for run, task in list(self._jobs.values()):
            # A job whose handler has returned is only reporting and
            # finishing, bounded by its lease: let it end properly.
            if not run.handler_done:
                log.warning("job %s: handler did not stop; abandoning it", run.job.id)
                task.cancel()

    async def _drain(self) -> None:
        while True:
            tasks = [task for _, task in self._jobs.values() if not task.done()]
            if not tasks:
                return
            await asyncio.wait(tasks)

    async def _shutdown_now(self) -> None:
        if self._slots is not None:
            self._slots.close()
        for run, _ in self._jobs.values():
            run.interrupt()
        tasks = [task for _, task in self._jobs.values()]
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=FORCE_GRACE)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)

    # -- acquiring

    async def _acquire_loop(
        self, stub: worker_service_pb2_grpc.WorkerServiceAsyncStub, slots: Slots[Lease]
    ) -> None:
        backoff = Backoff()
        outage = False
        while not self._stopping:
            # Only when no job is in hand and no finish is bringing the next
            # ones: while jobs keep ending, their finishes lease the next.
            asked = await slots.pollable()
            if not asked:
                return  # stopping
            request = self._asking_for(asked)
            leases: list[Lease] = []
            try:
                response = await stub.AcquireJob(request, timeout=self.poll_wait + ACQUIRE_MARGIN)
                leases = _leases(response)[:asked]
            except grpc.RpcError as exc:
                error = from_rpc_error(exc)
                if error.code in _FATAL_ACQUIRE_CODES:
                    log.error("worker %s: AcquireJob refused: %s", self.worker_id, error)
                    raise error from exc
                delay = backoff.next()
                if not outage:
                    reason = unreachable_reason(error)
                    log.warning(
                        "worker %s: cannot acquire (%s); retrying",
                        self.worker_id,
                        f"cannot reach the server at {self.target}: {reason}"
                        if reason is not None
                        else f"{error.code.name}: {error.message}",
                    )
                outage = True
                await asyncio.sleep(delay)
                continue
            finally:
                slots.settle(asked, leases)
            if outage:
                log.info("worker %s: connected again", self.worker_id)
            outage = False
            backoff.reset()

    def _start(self, stub: worker_service_pb2_grpc.WorkerServiceAsyncStub, lease: Lease) -> bool:
        """Runs a leased job in the slot just taken for it; False when it
        cannot start (only a server breaking the contract gets there: the
        lease expires and the job runs again)."""
        slots = self._slots
        assert slots is not None
        freed = False

        def free(seconds: float | None) -> None:
            nonlocal freed
            if not freed:
                freed = True
                if seconds is not None:
                    slots.ran(seconds)
                slots.freed()

        try:
            job = job_from_pb(lease.job)
            lease_seconds = self.lease_duration
            expire = time_from_pb(lease, "lease_expire_time")
            if expire is not None and job.start_time is not None:
                # Both times are the server's clock, so skew does not matter;
                # the server may grant less than was asked.
                granted = (expire - job.start_time).total_seconds()
                if 0 < granted < lease_seconds:
                    lease_seconds = granted
            run = Attempt(
                stub=stub,
                job=job,
                lease_id=lease.lease_id,
                lease_seconds=lease_seconds,
                handler=self.handlers.get(job.kind),
                flush_interval=self.flush_interval,
                files_root=self.files_root,
                acquire_next=self._ask_next,
                on_next=self._got_next,
                on_handler_done=free,
                finishes=self._finishes,
            )
        except Exception:
            log.exception("worker %s: cannot start a leased job", self.worker_id)
            return False
        log.debug("job %s (%s): acquired, attempt %d", job.id, job.kind, job.attempt)
        task = asyncio.create_task(run.run(), name=f"jobstream-job-{job.id}")
        self._jobs[job.id] = (run, task)

        def done(task: asyncio.Task[None]) -> None:
            if self._jobs.get(job.id, (None,))[0] is run:
                self._jobs.pop(job.id)
            free(None)
            slots.finished()
            if not task.cancelled() and task.exception() is not None:
                log.error("job %s: worker error", job.id, exc_info=task.exception())

        task.add_done_callback(done)
        return True

    def _ask_next(self) -> worker_service_pb2.AcquireJobRequest | None:
        """What a finish asks for to lease the worker's next jobs in the same
        call (they count as asked for until ``_got_next``); None when it
        wants none, or is stopping (its slots are closed then)."""
        asked = self._slots.ask() if self._slots is not None else 0
        return self._asking_for(asked) if asked else None

    def _asking_for(self, jobs: int) -> worker_service_pb2.AcquireJobRequest:
        """This worker's AcquireJob request for ``jobs`` jobs."""
        request = worker_service_pb2.AcquireJobRequest()
        request.CopyFrom(self._acquire_request)
        request.max_jobs = jobs
        return request

    def _got_next(
        self,
        asked: worker_service_pb2.AcquireJobRequest,
        answer: worker_service_pb2.AcquireJobResponse | None,
    ) -> None:
        """A finish that asked for next jobs was answered (None: failed)."""
        if self._slots is not None:
            self._slots.settle(asked.max_jobs, _leases(answer)[: asked.max_jobs] if answer else [])

    def _give_back(self, lease: Lease) -> None:
        """Releases a job leased ahead that will not run here (the worker
        stops, or it waited too long for a slot): back to the queue at once,
        its attempt not counted."""
        stub = self._stub
        if stub is None:
            return
        request = worker_service_pb2.FinishJobRequest(
            job_id=lease.job.id,
            lease_id=lease.lease_id,
            outcome=JOB_OUTCOMES.to_pb(JobOutcome.RELEASED),
        )
        deadline = asyncio.get_running_loop().time() + self.lease_duration
        task = asyncio.create_task(
            self._release(stub, request, deadline), name="jobstream-give-back"
        )
        self._releases.add(task)
        task.add_done_callback(self._releases.discard)

    async def _release(
        self,
        stub: worker_service_pb2_grpc.WorkerServiceAsyncStub,
        request: worker_service_pb2.FinishJobRequest,
        deadline: float,
    ) -> None:
        """Gives a job back, retrying transient failures while its lease may
        still be alive (an expired lease would count the attempt)."""
        loop = asyncio.get_running_loop()
        backoff = Backoff()
        while True:
            try:
                await stub.FinishJob(request, timeout=RELEASE_TIMEOUT)
            except grpc.RpcError as exc:
                error = from_rpc_error(exc)
                delay = backoff.next()
                if error.code in TRANSIENT_CODES and loop.time() + delay < deadline:
                    await asyncio.sleep(delay)
                    continue
                log.warning(
                    "job %s: could not give it back (%s); it runs again when its lease expires",
                    request.job_id,
                    error,
                )
                return
            log.debug("job %s: given back before it started", request.job_id)
            return


def _leases(response: worker_service_pb2.AcquireJobResponse) -> list[Lease]:
    """Every job an AcquireJob answer leased, first one first."""
    if not response.HasField("job"):
        return []
    return [response, *response.more_jobs]
