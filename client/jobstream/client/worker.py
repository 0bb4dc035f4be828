"""Workers: lease jobs from the server and run each as an attempt, a few at
a time, until stopped.

A worker takes jobs of the kinds its :class:`~jobstream.client.handlers.Handlers`
know, one AcquireJob long-poll at a time and only while a slot is free, asking
for one job per free slot; each leased job runs as an
:class:`~jobstream.client.attempt.Attempt`. An attempt that ends asks for the
next job in its FinishJob call, so while jobs are waiting a slot goes from one
to the next with one call per job; attempts that end in the same turn of the
event loop finish together in one FinishJobs call
(:mod:`~jobstream.client.finishes`), which leases their next jobs together.
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

from jobstream.client.attempt import Attempt
from jobstream.client.connection import CHANNEL_OPTIONS, DEFAULT_TARGET, Backoff
from jobstream.client.context import JobContext
from jobstream.client.convert import job_from_pb, time_from_pb
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
from jobstream.client.security import PLAINTEXT, Security
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

    ``concurrency`` jobs run at once (a job is only acquired when a slot is
    free); ``lease_duration`` is asked of the server for each lease;
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
    ) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, not {concurrency}")
        if lease_duration <= 0 or flush_interval <= 0:
            raise ValueError("lease_duration and flush_interval must be positive")
        if not 0 <= poll_wait <= 60:
            raise ValueError(f"poll_wait must be within 0..60 seconds, not {poll_wait}")
        self.target = target
        self.handlers = handlers if handlers is not None else Handlers()
        self.worker_id = worker_id or default_worker_id()
        self.queues = tuple(queues)
        self.concurrency = concurrency
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
        self._finishes = FinishBatcher(stub, self._next_request, lambda: len(self._jobs))
        acquirer = asyncio.create_task(self._acquire_loop(stub), name="jobstream-acquire")
        self._acquirer = acquirer
        try:
            # asyncio.wait, not await: stop() cancels the acquirer, and that
            # must not look like this task being cancelled.
            await asyncio.wait([acquirer])
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

    async def _acquire_loop(self, stub: worker_service_pb2_grpc.WorkerServiceAsyncStub) -> None:
        slots = _Slots(self.concurrency)
        backoff = Backoff()
        outage = False
        while not self._stopping:
            # One job per free slot: jobs leased together start together,
            # end together when they take as long, and so finish in one
            # call that leases their next ones together.
            taken = await slots.take_free()
            started = 0
            try:
                request = worker_service_pb2.AcquireJobRequest()
                request.CopyFrom(self._acquire_request)
                request.max_jobs = taken
                try:
                    response = await stub.AcquireJob(
                        request, timeout=self.poll_wait + ACQUIRE_MARGIN
                    )
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
                if outage:
                    log.info("worker %s: connected again", self.worker_id)
                outage = False
                backoff.reset()
                for lease in _leases(response)[:taken]:
                    try:
                        self._start(stub, lease, slots)
                        started += 1
                    except Exception:
                        # Only a server breaking the contract gets here; the
                        # lease will expire and the job be retried.
                        log.exception("worker %s: cannot start a leased job", self.worker_id)
            finally:
                slots.release(taken - started)

    def _start(
        self,
        stub: worker_service_pb2_grpc.WorkerServiceAsyncStub,
        response: worker_service_pb2.AcquireJobResponse | worker_service_pb2.LeasedJob,
        slots: _Slots,
    ) -> None:
        job = job_from_pb(response.job)
        lease_seconds = self.lease_duration
        expire = time_from_pb(response, "lease_expire_time")
        if expire is not None and job.start_time is not None:
            # Both times are the server's clock, so skew does not matter;
            # the server may grant less than was asked.
            granted = (expire - job.start_time).total_seconds()
            if 0 < granted < lease_seconds:
                lease_seconds = granted
        run = Attempt(
            stub=stub,
            job=job,
            lease_id=response.lease_id,
            lease_seconds=lease_seconds,
            handler=self.handlers.get(job.kind),
            flush_interval=self.flush_interval,
            files_root=self.files_root,
            acquire_next=self._next_request,
            on_next=lambda next_lease: self._start_next(stub, next_lease, slots),
            finishes=self._finishes,
        )
        log.debug("job %s (%s): acquired, attempt %d", job.id, job.kind, job.attempt)
        if self._stopping:
            run.ask_to_stop()  # acquired as the stop came
        task = asyncio.create_task(run.run(), name=f"jobstream-job-{job.id}")
        self._jobs[job.id] = (run, task)

        def done(task: asyncio.Task[None]) -> None:
            if self._jobs.get(job.id, (None,))[0] is run:
                self._jobs.pop(job.id)
            if not run.handed_over:
                slots.release(1)
            if not task.cancelled() and task.exception() is not None:
                log.error("job %s: worker error", job.id, exc_info=task.exception())

        task.add_done_callback(done)

    def _next_request(self) -> worker_service_pb2.AcquireJobRequest | None:
        """What a finishing attempt asks for to lease the next job in the
        same FinishJob call; None once the worker is stopping."""
        return None if self._stopping else self._acquire_request

    def _start_next(
        self,
        stub: worker_service_pb2_grpc.WorkerServiceAsyncStub,
        response: worker_service_pb2.AcquireJobResponse,
        slots: _Slots,
    ) -> bool:
        """Runs the job a FinishJob leased, in the slot of the attempt that
        just ended; False when it could not start (the slot is then freed
        by that attempt, and the lease expires on the server)."""
        try:
            self._start(stub, response, slots)
        except Exception:
            log.exception("worker %s: cannot start a leased job", self.worker_id)
            return False
        return True


class _Slots:
    """A worker's free slots: taken all at once by the long-poll, given back
    one by one as attempts end."""

    def __init__(self, count: int) -> None:
        self.free = count
        self._changed = asyncio.Event()

    async def take_free(self) -> int:
        """Waits for a free slot, then takes every free one; returns how many."""
        while not self.free:
            self._changed.clear()
            await self._changed.wait()
        taken, self.free = self.free, 0
        return taken

    def release(self, count: int) -> None:
        """Gives ``count`` slots back."""
        if count > 0:
            self.free += count
            self._changed.set()


def _leases(
    response: worker_service_pb2.AcquireJobResponse,
) -> list[worker_service_pb2.AcquireJobResponse | worker_service_pb2.LeasedJob]:
    """Every job an AcquireJob answer leased, first one first."""
    if not response.HasField("job"):
        return []
    return [response, *response.more_jobs]
