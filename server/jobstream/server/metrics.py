"""Prometheus metrics: ``/metrics`` on ``--metrics-port``.

Built on prometheus-client (thread-safe, the standard exposition format).
RPC metrics use the names of go-grpc-prometheus / py-grpc-prometheus
(``grpc_server_handled_total`` …) so existing gRPC dashboards and alerts
work unchanged; the rest are ``jobstream_*``.

Where the numbers come from:

* RPCs: :class:`MethodMetrics`, kept by the server's interceptor
  (:mod:`jobstream.server.edge`) for each method.
* Commit batch sizes and times: the writer's ``on_group`` hook (writer thread).
* Events: a commit listener of the writer (event loop).
* Lease expiries: the sweeper.
* Jobs by state, queue depth: a periodic count query (:func:`refresh_loop`),
  not one per scrape, so a scraper cannot load the database.
* Watchers: read from the broker at scrape time.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from jobstream.server.domain import Effects, JobState

log = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
"""RPC latency buckets in seconds: unary calls are milliseconds, long polls
and watch streams run up to minutes (the +Inf bucket takes the rest)."""

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
"""Commit group size buckets, up to the writer's MAX_GROUP."""

COMMIT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1)
"""Group commit duration buckets in seconds (an fsync is ~0.1-10 ms)."""


class Metrics:
    """The server's metrics, in a registry of their own (so two servers in
    one process, as in tests, never share counters)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.rpc_started = Counter(
            "grpc_server_started",
            "RPCs started on the server.",
            ["grpc_type", "grpc_service", "grpc_method"],
            registry=r,
        )
        self.rpc_handled = Counter(
            "grpc_server_handled",
            "RPCs completed on the server, by status code.",
            ["grpc_type", "grpc_service", "grpc_method", "grpc_code"],
            registry=r,
        )
        self.rpc_seconds = Histogram(
            "grpc_server_handling_seconds",
            "Time from an RPC's start to its end (a stream's whole life).",
            ["grpc_type", "grpc_service", "grpc_method", "grpc_code"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.jobs = Gauge(
            "jobstream_jobs", "Jobs stored, by state (periodic count).", ["state"], registry=r
        )
        self.queue_depth = Gauge(
            "jobstream_queue_depth",
            "Queued jobs ready to run now (not_before passed), by queue.",
            ["queue"],
            registry=r,
        )
        self.watchers = Gauge(
            "jobstream_watchers", "Job and job-list watch streams open.", registry=r
        )
        self.events = Counter(
            "jobstream_events", "Job events committed (rate() gives events/s).", registry=r
        )
        self.commit_ops = Histogram(
            "jobstream_commit_batch_ops",
            "Write operations per group commit.",
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.commit_seconds = Histogram(
            "jobstream_commit_seconds",
            "Time to run and commit one group.",
            buckets=COMMIT_BUCKETS,
            registry=r,
        )
        self.lease_expiries = Counter(
            "jobstream_lease_expiries",
            "Leases that ran out (job retried or interrupted).",
            registry=r,
        )
        self.count_errors = Counter(
            "jobstream_job_count_errors",
            "Failed periodic job counts (the gauges keep their last values).",
            registry=r,
        )
        self._queues: set[str] = set()

    # ------------------------------------------------------------------ hooks

    def on_commit(self, effects: Effects) -> None:
        """Commit listener (event loop): counts the committed events."""
        if effects.events:
            self.events.inc(len(effects.events))

    def on_group(self, ops: int, seconds: float) -> None:
        """Writer hook (writer thread): one group of ``ops`` committed."""
        self.commit_ops.observe(ops)
        self.commit_seconds.observe(seconds)

    def watch_broker(self, count: Callable[[], int]) -> None:
        """Reads the watcher count from ``count`` at every scrape."""
        self.watchers.set_function(lambda: float(count()))

    def set_counts(self, by_state: dict[str, int], ready_by_queue: dict[str, int]) -> None:
        """Publishes a job count; states and queues now absent read 0."""
        for state in JobState:
            self.jobs.labels(state=state.value).set(by_state.get(state.value, 0))
        for queue in self._queues - set(ready_by_queue):
            self.queue_depth.labels(queue=queue).set(0)
        for queue, n in ready_by_queue.items():
            self.queue_depth.labels(queue=queue).set(n)
        self._queues |= set(ready_by_queue)

    # ----------------------------------------------------------------- export

    def serve(self, host: str, port: int) -> Callable[[], None]:
        """Serves ``/metrics`` on ``host:port`` from a daemon thread; returns
        the function that stops it."""
        server, thread = start_http_server(port, addr=host, registry=self.registry)
        log.info("metrics on http://%s:%d/metrics", host, server.server_port)

        def stop() -> None:
            server.shutdown()
            server.server_close()
            thread.join()

        return stop


async def refresh_loop(
    metrics: Metrics,
    count: Callable[[], Awaitable[tuple[dict[str, int], dict[str, int]]]],
    interval: float,
) -> None:
    """Re-reads the job counts every ``interval`` seconds, forever."""
    while True:
        try:
            by_state, by_queue = await count()
        except Exception:
            metrics.count_errors.inc()
            log.exception("job count for metrics failed; will retry")
        else:
            metrics.set_counts(by_state, by_queue)
        await asyncio.sleep(interval)


# ------------------------------------------------------------ RPCs


class MethodMetrics:
    """The RPC metrics of one method, their label sets looked up once (a
    labelled metric's ``labels()`` takes a lock and a dict lookup on every
    call): the started counter at once, the handled counter and the latency
    histogram once per status code seen."""

    def __init__(self, metrics: Metrics, kind: str, service: str, method: str) -> None:
        self._m = metrics
        self._labels = (kind, service, method)
        self._started = metrics.rpc_started.labels(*self._labels)
        self._ended: dict[str, tuple[Any, Any]] = {}

    def started(self) -> None:
        """Counts a call as started."""
        self._started.inc()

    def ended(self, code: str, seconds: float) -> None:
        """Counts a call as handled with ``code``, taking ``seconds``."""
        found = self._ended.get(code)
        if found is None:
            found = self._ended[code] = (
                self._m.rpc_handled.labels(*self._labels, code),
                self._m.rpc_seconds.labels(*self._labels, code),
            )
        found[0].inc()
        found[1].observe(seconds)
