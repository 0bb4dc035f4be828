"""Wiring: database, store, writer, broker, services, gRPC server, the
lease sweeper and the in-process worker; start-up and shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import os
import signal
import socket
import uuid
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from jobstream.server import heap, logs, tls
from jobstream.server.artifacts import Artifacts
from jobstream.server.broker import Broker
from jobstream.server.cluster import Listener, Notifier, listen_url
from jobstream.server.config import ServerConfig, from_args
from jobstream.server.db import bind_thread, is_sqlite, open_database, unbind_thread
from jobstream.server.domain import JobState, Rescue, now_us
from jobstream.server.edge import EdgeInterceptor
from jobstream.server.files import ARTIFACTS_DIR, JOBS_DIR, FileRoots
from jobstream.server.legacy_artifacts import ImportOutcome, import_legacy_artifacts
from jobstream.server.logs import job_context
from jobstream.server.metrics import Metrics, refresh_loop
from jobstream.server.presence import Presence
from jobstream.server.purge import MIN_RETENTION_EVERY_S, Purges, retention_loop
from jobstream.server.quotas import WatcherQuota
from jobstream.server.readers import Readers
from jobstream.server.service import JobService
from jobstream.server.servicers import JobServiceServicer, WorkerServiceServicer
from jobstream.server.store import RetryPolicy, Store
from jobstream.server.store.secrets import PAGE_TOKEN_KEY
from jobstream.server.tokens import PageTokens
from jobstream.server.writer import CommitStep, Writer
from jobstream.v1 import (
    job_service_pb2,
    job_service_pb2_grpc,
    worker_service_pb2,
    worker_service_pb2_grpc,
)

log = logging.getLogger(__name__)

EMBEDDED_PREFIX = "embedded:"
"""Worker ids of in-process workers start with this; with SQLite (one server
per file) any such lease found at start-up belongs to a dead process."""

SERVER_OPTIONS: list[tuple[str, Any]] = [
    # Ping idle connections so a vanished watcher is noticed and reaped.
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.http2.ping_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
    ("grpc.max_receive_message_length", 16 * 1024 * 1024),
    # gRPC binds with SO_REUSEPORT by default: a second server started on
    # a port in use would share it silently, and the kernel would hand each
    # new connection to either. Refuse the second bind instead.
    ("grpc.so_reuseport", 0),
]


HEALTH_SERVICES = (
    job_service_pb2.DESCRIPTOR.services_by_name["JobService"].full_name,
    worker_service_pb2.DESCRIPTOR.services_by_name["WorkerService"].full_name,
)
"""Services the health service reports on by name (besides the server, "")."""


def _event_loop_runner() -> Callable[[Coroutine[Any, Any, None]], None]:
    """uvloop's runner where it is installed (the server extra installs it
    off Windows): the same asyncio API on a faster loop, which the server's
    per-call work spends much of its time in; asyncio's otherwise."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run
    return uvloop.run


def main(argv: Sequence[str]) -> int:
    """``jobstream serve``: runs until SIGINT/SIGTERM."""
    config = from_args(argv)
    logs.configure(config.log_level, as_json=config.log_json)
    try:
        _event_loop_runner()(_serve_until_signalled(config))
    except KeyboardInterrupt:
        return 130
    except tls.ConfigError as exc:
        log.error("%s", exc)
        return 2
    return 0


async def _serve_until_signalled(config: ServerConfig) -> None:
    """serve() as the main program: SIGINT/SIGTERM stop it once it serves
    (until then a signal ends the process as usual)."""
    ready, stop = asyncio.Event(), asyncio.Event()
    serving = asyncio.create_task(serve(config, ready, stop))
    started = asyncio.create_task(ready.wait())
    await asyncio.wait({serving, started}, return_when=asyncio.FIRST_COMPLETED)
    started.cancel()
    if ready.is_set():
        _install_signals(asyncio.get_running_loop(), stop)
    await serving


async def serve(
    config: ServerConfig, ready: asyncio.Event | None = None, stop: asyncio.Event | None = None
) -> None:
    """Serves until ``stop`` is set; sets ``ready`` once it serves. Installs
    no signal handlers, so it runs in any thread of any process."""
    loop = asyncio.get_running_loop()
    stop = stop or asyncio.Event()
    config.data_dir.mkdir(parents=True, exist_ok=True)
    auth, access = tls.prepare(config)
    limits = config.limits
    db = open_database(config.database_url, synchronous=config.synchronous)
    # This server's threads use its own database, whatever else runs in
    # the process (see db.bind_thread).
    bind_thread(db)
    origin = uuid.uuid4().hex[:12]
    store = Store(
        db,
        RetryPolicy(
            default_max_attempts=config.max_attempts, backoff_base_us=int(config.backoff_s * 1e6)
        ),
        limits=limits,
    )
    broker = Broker()
    metrics = Metrics()  # always counted (cheap); exported only with --metrics-port
    at_commit: list[CommitStep] = [lambda effects: store.changes.record(effects, now_us())]
    # Several servers on one database tell each other of their commits.
    notifier = Notifier(db, origin) if store.dialect.shared else None
    if notifier is not None:
        at_commit.append(notifier.notify)
    writer = Writer(
        db,
        loop,
        at_commit=at_commit,
        on_commit=[broker.publish, metrics.on_commit],
        idle=store.search.index_pending if store.search.deferred else None,
    )
    writer.on_group = metrics.on_group
    writer.start()
    readers = Readers(db)
    roots = FileRoots(
        data_dir=config.data_dir,
        output_roots=config.output_roots,
        database=Path(db.database) if is_sqlite(db) else None,
    )
    # Set when a commit left artifact chunks to remove (a delete or purge of
    # jobs holding artifacts): wakes the sweeper at once, so the space is
    # reclaimed without waiting for its next tick.
    sweep_wanted = asyncio.Event()
    service = JobService(
        store=store,
        writer=writer,
        readers=readers,
        broker=broker,
        roots=roots,
        sweep_wanted=sweep_wanted,
        lease_us=int(config.lease_s * 1e6),
        max_lease_us=int(config.max_lease_s * 1e6),
    )
    artifacts = Artifacts(
        store=store.artifacts,
        writer=writer,
        readers=readers,
        max_per_job=limits.max_artifacts_per_job,
    )
    purges = Purges(
        deletions=store.deletions,
        writer=writer,
        readers=readers,
        roots=roots,
        sweep_wanted=sweep_wanted,
    )
    edge = EdgeInterceptor(
        auth,
        max_json_depth=limits.max_json_depth,
        metrics=metrics if config.metrics_port else None,
    )
    server = grpc.aio.server(options=_server_options(config.max_message_bytes), interceptors=[edge])
    presence = Presence(store.workers, writer, readers)
    quota = WatcherQuota(
        config.max_watchers,
        config.max_watchers_per_principal,
        memory_budget=config.watch_memory_budget,
    )
    job_service_pb2_grpc.add_JobServiceServicer_to_server(
        JobServiceServicer(
            service,
            artifacts=artifacts,
            purges=purges,
            limits=limits,
            page_tokens=PageTokens(store.secrets.get_or_make(PAGE_TOKEN_KEY)),
            quota=quota,
            presence=presence,
            refuse_unserved=config.refuse_unserved,
        ),
        server,
    )
    worker_service_pb2_grpc.add_WorkerServiceServicer_to_server(
        WorkerServiceServicer(service, artifacts=artifacts, limits=limits, presence=presence),
        server,
    )
    health = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    reflection.enable_server_reflection(
        [
            job_service_pb2.DESCRIPTOR.services_by_name["JobService"].full_name,
            worker_service_pb2.DESCRIPTOR.services_by_name["WorkerService"].full_name,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ],
        server,
    )
    credentials = tls.server_credentials(config)
    address = f"{config.host}:{config.port}"
    if credentials is None:
        port = server.add_insecure_port(address)
    else:
        port = server.add_secure_port(address, credentials)
    if access.socket_path is not None:
        server.add_insecure_port(f"unix:{access.socket_path}")
    if is_sqlite(db):
        while rescued := await service.expire_leases(worker_prefix=EMBEDDED_PREFIX):
            _log_rescues(rescued)
    outcome = await import_legacy_artifacts(
        store.artifacts, writer, readers, config.data_dir, sole_server=is_sqlite(db)
    )
    await _prepare_artifacts(artifacts, outcome, config.data_dir, sole_server=is_sqlite(db))
    await server.start()
    # Per-service statuses too: health probes (grpc_health_probe -service,
    # Kubernetes grpc probes) commonly ask for a service by name.
    for name in ("", *HEALTH_SERVICES):
        await health.set(name, health_pb2.HealthCheckResponse.SERVING)
    gateway = await _start_gateway(config, port, access)
    log.info("serving on %s:%d (data in %s)", config.host, port, config.data_dir)
    if config.port_file:
        config.port_file.write_text(str(port))

    tasks = [
        asyncio.create_task(
            _sweep(service, artifacts, sweep_wanted, config.sweep_s, metrics), name="sweeper"
        ),
        asyncio.create_task(presence.run(), name="presence"),
        # Memory the ended watches freed goes back to the system (heap.py).
        asyncio.create_task(
            heap.trim_loop(lambda: quota.released, lambda: quota.abandoned), name="heap-trim"
        ),
    ]
    if config.retention_s > 0:
        tasks.append(
            asyncio.create_task(
                retention_loop(
                    purges,
                    keep_us=int(config.retention_s * 1e6),
                    every_s=max(config.retention_every_s, MIN_RETENTION_EVERY_S),
                ),
                name="retention",
            )
        )
    stop_metrics = None
    if config.metrics_port:
        metrics.watch_broker(lambda: broker.watcher_count)
        tasks.append(
            asyncio.create_task(
                refresh_loop(
                    metrics,
                    lambda: readers.run(store.stats.counts, now_us()),
                    config.metrics_interval_s,
                ),
                name="metrics",
            )
        )
        stop_metrics = metrics.serve(config.host, config.metrics_port)
    if notifier is not None:
        listener = Listener(
            listen_url(config.database_url), notifier.channel, origin, broker, config.poll_s
        )
        tasks.append(asyncio.create_task(listener.run(), name="listener"))
    worker = _embedded_worker(config, port, access)
    if worker is not None:
        tasks.append(asyncio.create_task(worker.run_async(), name="embedded-worker"))
    if ready is not None:
        ready.set()
    try:
        await stop.wait()
    finally:
        log.info("shutting down (grace %.0fs)", config.grace_s)
        await health.enter_graceful_shutdown()
        broker.drain()
        if worker is not None:
            # Before the streams end: the handlers' last events (up to their
            # checkpoint and release) reach the watchers live, and shutdown
            # takes as long as the handlers need, at most the grace period.
            await worker.stop(grace=config.grace_s)
        if gateway is not None:
            # Before the broker closes: its event streams end now, and their
            # browsers resume (Last-Event-ID) once a server is back.
            await gateway.stop()
        broker.close()
        await server.stop(config.grace_s)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if stop_metrics is not None:
            stop_metrics()
        writer.stop()
        readers.close()
        db.close()
        unbind_thread()
        tls.remove_socket(access)
        log.info("stopped")


def _install_signals(loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> None:
    """First SIGINT/SIGTERM drains; a second one exits at once."""

    def on_signal() -> None:
        if stop.is_set():
            log.warning("second signal: exiting now")
            os._exit(1)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, on_signal)


async def _prepare_artifacts(
    artifacts: Artifacts, outcome: ImportOutcome, data_dir: Path, *, sole_server: bool
) -> None:
    """Before serving: reports the import of the artifact files of earlier
    versions, and discards uploads cut off by a crash. With SQLite
    (``sole_server``) no other process can be receiving an upload, so every
    one staged is dead; with PostgreSQL only those whose lease has ended are."""
    if outcome.imported:
        log.info(
            "imported %d artifact files (%d bytes) of an earlier version into the database",
            outcome.imported,
            outcome.imported_bytes,
        )
    if outcome.elsewhere:
        log.info(
            "%d artifacts of an earlier version are files of another server; "
            "they are imported when that server starts",
            outcome.elsewhere,
        )
    if outcome.unreferenced:
        log.warning(
            "%s holds %d files no artifact needs (interrupted uploads, deleted jobs' files "
            "of an earlier version); artifacts live in the database now, so they can be removed",
            data_dir / ARTIFACTS_DIR,
            outcome.unreferenced,
        )
    discarded = await artifacts.discard_dead_uploads(every=sole_server)
    if discarded:
        log.info("discarded %d uploads cut off before they completed", discarded)


async def _sweep(
    service: JobService,
    artifacts: Artifacts,
    wanted: asyncio.Event,
    interval: float,
    metrics: Metrics,
) -> None:
    """Rescues jobs whose lease ran out, and removes the chunks of uploads
    that can no longer complete, every ``interval`` seconds and whenever a
    delete or purge left chunks to remove (``wanted``), forever."""
    while True:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wanted.wait(), interval)
        # Cleared before the pass: garbage marked while it runs sets it
        # again, and the next pass starts at once.
        wanted.clear()
        try:
            while expired := await service.expire_leases():
                _log_rescues(expired)
                metrics.lease_expiries.inc(len(expired))
            await artifacts.discard_dead_uploads()
        except Exception:
            log.exception("lease sweep failed; will retry")


RESCUE_VERBS = {
    JobState.QUEUED: "rescued",
    JobState.INTERRUPTED: "interrupted",
    JobState.CANCELLED: "cancelled",
}
"""How a rescue's log line names what became of the job."""


def _log_rescues(rescues: Sequence[Rescue]) -> None:
    """One INFO line per job taken from a dead worker, naming the job."""
    for rescue in rescues:
        with job_context(rescue.job_id):
            log.info("%s job %s: %s", RESCUE_VERBS[rescue.state], rescue.job_id, rescue.reason)


def _server_options(max_message_bytes: int) -> list[tuple[str, Any]]:
    """SERVER_OPTIONS with the configured message size limit."""
    key = "grpc.max_receive_message_length"
    return [o for o in SERVER_OPTIONS if o[0] != key] + [(key, max_message_bytes)]


def _loopback_target(config: ServerConfig, port: int, access: tls.EmbeddedAccess) -> str:
    """How this process's own clients (worker, HTTP face) reach its gRPC
    port: the private Unix socket when TCP speaks TLS, else loopback."""
    if access.socket_path:
        return f"unix:{access.socket_path}"
    host = config.host if config.host not in ("0.0.0.0", "::", "") else "127.0.0.1"
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{host}:{port}"


async def _start_gateway(config: ServerConfig, port: int, access: tls.EmbeddedAccess) -> Any:
    """The HTTP face on --http-port, on this event loop, calling this
    server over gRPC like any other client (with each caller's token)."""
    if config.http_port is None:
        return None
    from jobstream.gateway import Gateway, GatewayConfig

    gateway = Gateway(
        GatewayConfig(
            target=_loopback_target(config, port, access),
            host=config.host,
            port=config.http_port,
            tls_cert=config.tls_cert,
            tls_key=config.tls_key,
        )
    )
    await gateway.start()
    log.info("HTTP API and dashboard on %s", gateway.url)
    if config.http_port_file:
        config.http_port_file.write_text(str(gateway.port))
    return gateway


def _embedded_worker(config: ServerConfig, port: int, access: tls.EmbeddedAccess) -> Any:
    """The in-process worker for --handlers, through the same Worker code
    that `jobstream worker` runs, talking to this server over loopback."""
    if not config.handlers:
        return None
    from jobstream.client.security import Security
    from jobstream.client.worker import Handlers, Worker

    merged = Handlers()
    for name in config.handlers:
        merged.update(importlib.import_module(name).handlers)
    return Worker(
        _loopback_target(config, port, access),
        merged,
        concurrency=config.concurrency,
        lease_duration=config.lease_s,
        worker_id=f"{EMBEDDED_PREFIX}{socket.gethostname()}:{os.getpid()}",
        security=Security(token=access.token),
        # Handlers here share the server's file system: ctx.job_dir is the
        # job's own directory, whose files the server accepts and removes.
        files_root=(config.data_dir / JOBS_DIR).absolute(),
    )
