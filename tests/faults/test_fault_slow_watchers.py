"""Scenario 3: a slow watcher (one message a second) and a stalled one beside
fast watchers while one job logs at full speed. The server's memory stays
bounded, the fast watchers get every event, and the slow and the stalled one
later get every event, in order. (The suite's only test of a stalled
watcher's cost: the end-to-end one it grew from checked a subset of this.)"""

from __future__ import annotations

import multiprocessing
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

import grpc
from conftest import ServerProcess
from helpers import RawWorker, rss_bytes

from faults.follow import Tally, follow_tallied
from faults.record import record, size
from jobstream.client import JobClient
from jobstream.v1 import job_service_pb2, job_service_pb2_grpc

RSS_GROWTH_LIMIT = 64 * 1024 * 1024
"""The issue's bound on the server's memory growth."""

BATCH = 1_000
"""Log lines per ReportJob."""

MAX_LINES = 900_000
"""Upper bound on lines written, below the server's per-job log limit."""

SLOW_INTERVAL_S = 1.0
"""The slow watcher reads one message this often while the job logs."""

DRAIN_S = 240.0
"""How long the fast watchers may take to read the rest after logging stops."""

CONNECT_S = 60.0
"""How long the fast watchers' processes may take to start and connect."""

READOUT_S = 400.0
"""How long the slow and the stalled watcher may then take to read every
line left (at full size about 900,000 each, read at the same time)."""


def _slow_reader(stream: Any, stop: threading.Event, seqs: list[int]) -> None:
    """Reads one message a second until ``stop``."""
    while not stop.wait(SLOW_INTERVAL_S):
        msg = next(stream, None)
        if msg is None:
            return
        seqs.extend(e.seq for e in msg.events.events)


def _read_rest(stream: Any, seqs: list[int], errors: list[str]) -> None:
    """Reads a watch to its end, noting the event seqs (and why it stopped early)."""
    try:
        seqs.extend(e.seq for m in stream for e in m.events.events)
    except grpc.RpcError as exc:
        errors.append(f"{exc.code().name}: {exc.details()}")


def test_slow_and_stalled_watchers_beside_fast_ones(
    start_server: Callable[..., ServerProcess],
) -> None:
    duration = size(8, 60)
    n_fast = size(5, 20)
    server = start_server()
    assert server.proc is not None
    channel = grpc.insecure_channel(server.target)
    stub = job_service_pb2_grpc.JobServiceStub(channel)
    stop_slow = threading.Event()
    fast_procs: list[multiprocessing.process.BaseProcess] = []
    worker = RawWorker(server.target)
    try:
        with JobClient(server.target) as client:
            job = client.submit("faults.chatty")
            lease = worker.acquire("faults.chatty", lease_s=duration + 600)
            call_timeout = duration + DRAIN_S + READOUT_S
            request = job_service_pb2.WatchJobRequest(job_id=job.id)
            stalled: Any = stub.WatchJob(request, timeout=call_timeout)
            assert next(stalled).HasField("snapshot")  # connected; then it stops reading
            slow: Any = stub.WatchJob(request, timeout=call_timeout)
            assert next(slow).HasField("snapshot")
            slow_seqs: list[int] = []
            slow_thread = threading.Thread(target=_slow_reader, args=(slow, stop_slow, slow_seqs))
            slow_thread.start()
            # Each fast watcher in a process of its own, as real dashboards
            # are: in threads here they would share one interpreter lock with
            # each other and with the logging below.
            spawn = multiprocessing.get_context("spawn")
            connected = spawn.Semaphore(0)
            results: multiprocessing.Queue[Tally] = spawn.Queue()
            follow_s = CONNECT_S + duration + DRAIN_S
            fast_procs += [
                spawn.Process(
                    target=follow_tallied,
                    args=(server.target, job.id, follow_s, connected, results),
                    daemon=True,
                )
                for _ in range(n_fast)
            ]
            for proc in fast_procs:
                proc.start()
            for _ in fast_procs:
                assert connected.acquire(timeout=CONNECT_S), "a fast watcher did not connect"

            baseline = peak = rss_bytes(server.proc.pid)
            written = 0
            started = time.monotonic()
            while time.monotonic() - started < duration and written < MAX_LINES:
                worker.log(
                    job.id,
                    lease.lease_id,
                    [f"line {written + i:07d} " + "x" * 80 for i in range(BATCH)],
                )
                written += BATCH
                peak = max(peak, rss_bytes(server.proc.pid))
            logged_s = time.monotonic() - started
            stop_slow.set()
            slow_thread.join(SLOW_INTERVAL_S + 30)
            slow_during = len(slow_seqs)
            worker.finish(job.id, lease.lease_id)
            drain_started = time.monotonic()
            fast: list[Tally] = []
            for _ in fast_procs:
                try:
                    left = DRAIN_S - (time.monotonic() - drain_started)
                    fast.append(results.get(timeout=max(1.0, left)))
                except queue.Empty:
                    break
            drain_s = time.monotonic() - drain_started
            peak = max(peak, rss_bytes(server.proc.pid))
            last_seq = client.get(job.id).last_seq
            # The slow and the stalled watcher now read everything left.
            stalled_seqs: list[int] = []
            readout_errors: list[str] = []
            readers = [
                threading.Thread(target=_read_rest, args=(stream, seqs, readout_errors))
                for stream, seqs in ((slow, slow_seqs), (stalled, stalled_seqs))
            ]
            readout_started = time.monotonic()
            for thread in readers:
                thread.start()
            while any(thread.is_alive() for thread in readers):
                peak = max(peak, rss_bytes(server.proc.pid))
                time.sleep(0.5)
            readout_s = time.monotonic() - readout_started
    finally:
        stop_slow.set()
        for proc in fast_procs:
            proc.kill()  # those still reading after the drain; then reap them all
            proc.join(10)
        worker.close()
        channel.close()
    expected = list(range(1, last_seq + 1))
    fast_complete = sum(1 for f in fast if f.complete(last_seq))
    growth = peak - baseline
    passed = (
        growth <= RSS_GROWTH_LIMIT
        and fast_complete == n_fast
        and slow_seqs == expected
        and stalled_seqs == expected
    )
    record(
        3,
        f"{written:,} lines in {logged_s:.0f} s; RSS +{growth / 2**20:.1f} MiB (bound 64); "
        f"fast {fast_complete}/{n_fast} complete (drained in {drain_s:.0f} s); "
        f"slow read {slow_during} live, then "
        f"{'all in order' if slow_seqs == expected else 'NOT all in order'}; stalled "
        f"{'all in order' if stalled_seqs == expected else 'NOT all in order'} "
        f"(read out in {readout_s:.0f} s{'; ' if readout_errors else ''}"
        f"{'; '.join(readout_errors)})",
        passed,
    )
    assert growth <= RSS_GROWTH_LIMIT, f"server grew {growth >> 20} MiB"
    assert fast_complete == n_fast, (last_seq, fast)
    assert slow_seqs == expected
    assert stalled_seqs == expected
