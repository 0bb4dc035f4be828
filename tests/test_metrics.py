"""``--metrics-port``: the Prometheus endpoint of a real server, scraped over
HTTP while real clients and workers use it."""

from __future__ import annotations

import socket
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
from conftest import InProcessServer, ServerProcess
from helpers import RawWorker, eventually, job_in
from prometheus_client.parser import text_string_to_metric_families

from jobstream.client import JobClient, JobState
from jobstream.client.errors import NotFoundError
from jobstream.v1 import job_service_pb2, job_service_pb2_grpc

SCRAPE_TIMEOUT_S = 10.0
"""Deadline of one scrape and of each stream read."""

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def free_port() -> int:
    """A port nothing listens on right now, for the metrics server."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def scrape(port: int) -> Samples:
    """Every sample on /metrics, keyed by name and labels."""
    url = f"http://127.0.0.1:{port}/metrics"
    with urllib.request.urlopen(url, timeout=SCRAPE_TIMEOUT_S) as response:
        text = response.read().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    """One sample's value, None when absent."""
    return samples.get((name, frozenset(labels.items())))


def rpc(method: str, code: str, kind: str = "unary") -> dict[str, str]:
    """The labels of a JobService RPC's metrics."""
    return {
        "grpc_type": kind,
        "grpc_service": "jobstream.v1.JobService",
        "grpc_method": method,
        "grpc_code": code,
    }


@pytest.fixture
def metered(
    start_inprocess_server: Callable[..., InProcessServer],
) -> Iterator[tuple[InProcessServer, int]]:
    """A server with the demo handlers and metrics on, recounting jobs often."""
    port = free_port()
    server = start_inprocess_server(
        handlers=("jobstream.client.demo",),
        extra_args=("--metrics-port", str(port), "--metrics-interval", "0.1"),
    )
    yield server, port


def test_rpc_counts_and_latencies_by_method_and_code(metered: tuple[InProcessServer, int]) -> None:
    server, port = metered
    with JobClient(server.target) as client:
        job = client.submit("demo.count", {"n": 5, "delay": 0})
        client.wait(job.id, timeout=30)
        for _ in range(3):
            with pytest.raises(NotFoundError):
                client.get("no-such-job")
    samples = scrape(port)
    assert value(samples, "grpc_server_handled_total", **rpc("GetJob", "NOT_FOUND")) == 3
    assert value(samples, "grpc_server_handled_total", **rpc("SubmitJob", "OK")) == 1
    assert value(samples, "grpc_server_handling_seconds_count", **rpc("GetJob", "NOT_FOUND")) == 3
    total = value(samples, "grpc_server_handling_seconds_sum", **rpc("GetJob", "NOT_FOUND"))
    assert total is not None and total > 0
    # The in-process worker's calls are counted as well.
    finish = {**rpc("FinishJob", "OK"), "grpc_service": "jobstream.v1.WorkerService"}
    assert value(samples, "grpc_server_handled_total", **finish) == 1
    started = {k: v for k, v in rpc("GetJob", "").items() if k != "grpc_code"}
    handled = sum(
        v
        for (name, labels), v in samples.items()
        if name == "grpc_server_handled_total" and ("grpc_method", "GetJob") in labels
    )
    # Every started call was handled.
    assert value(samples, "grpc_server_started_total", **started) == handled >= 3


def test_jobs_queue_depth_events_and_batches(metered: tuple[InProcessServer, int]) -> None:
    server, port = metered
    queue = "q" + uuid.uuid4().hex[:8]
    with JobClient(server.target) as client:
        done = client.submit("demo.count", {"n": 20, "delay": 0})
        client.wait(done.id, timeout=30)
        # Nobody handles this kind: the jobs stay queued.
        waiting = [client.submit("metrics.nobody", queue=queue) for _ in range(2)]

        def counted() -> Samples | None:
            samples = scrape(port)
            ok = (
                value(samples, "jobstream_jobs", state="succeeded") == 1
                and value(samples, "jobstream_jobs", state="queued") == 2
                and value(samples, "jobstream_queue_depth", queue=queue) == 2
            )
            return samples if ok else None

        samples = eventually(counted)
        assert value(samples, "jobstream_jobs", state="failed") == 0
        # Every stored event went through a commit the metrics saw.
        stored = sum(client.get(j.id).last_seq for j in [done, *waiting])
        assert value(samples, "jobstream_events_total") == stored
    ops = value(samples, "jobstream_commit_batch_ops_count")
    assert ops is not None and ops >= 1
    ops_sum = value(samples, "jobstream_commit_batch_ops_sum")
    assert ops_sum is not None and ops_sum >= ops
    assert value(samples, "jobstream_commit_seconds_count") == ops


def test_watchers_gauge(metered: tuple[InProcessServer, int]) -> None:
    server, port = metered
    with JobClient(server.target) as client:
        job = client.submit("metrics.nobody")
    assert value(scrape(port), "jobstream_watchers") == 0
    with grpc.insecure_channel(server.target) as channel:
        stub = job_service_pb2_grpc.JobServiceStub(channel)
        # Any: grpc-stubs types the call as an iterator without cancel().
        streams: list[Any] = [
            stub.WatchJob(job_service_pb2.WatchJobRequest(job_id=job.id), timeout=60)
            for _ in range(2)
        ]
        for stream in streams:
            assert next(stream).HasField("snapshot")
        # The snapshot is sent after the subscription is made, so both count.
        assert value(scrape(port), "jobstream_watchers") == 2
        for stream in streams:
            stream.cancel()
    eventually(lambda: value(scrape(port), "jobstream_watchers") == 0)


def test_lease_expiries(metered: tuple[InProcessServer, int]) -> None:
    server, port = metered
    worker = RawWorker(server.target, worker_id="metrics-dead-worker")
    try:
        with JobClient(server.target) as client:
            job = client.submit("metrics.lease", max_attempts=1)
            acquired = worker.acquire("metrics.lease", lease_s=1)
            assert acquired.job.id == job.id
            # The worker never reports: the sweeper ends the job.
            eventually(lambda: job_in(client, job.id, JobState.INTERRUPTED))
    finally:
        worker.close()
    assert value(scrape(port), "jobstream_lease_expiries_total") == 1


def test_metrics_flag_in_help() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "jobstream.server", "--help"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert "--metrics-port" in result.stdout
    assert "JOBSTREAM_METRICS_PORT" in result.stdout
    assert "JOBSTREAM_LOG_JSON" in result.stdout


def test_no_metrics_by_default(start_server: Callable[..., ServerProcess]) -> None:
    server = start_server(extra_args=("--log-level", "INFO"))
    log = eventually(lambda: server.log() if "serving on" in server.log() else None)
    assert "metrics on" not in log
