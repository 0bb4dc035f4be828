"""Scenario 12: stalled watchers and the server's memory.

A separate process opens watches on a job that logs 1 KiB lines and is
then SIGSTOPped, so it never reads again; the job keeps logging. The
server admits watches up to its watch memory budget and refuses the rest
with RESOURCE_EXHAUSTED naming ``--watch-memory-budget``; its resident
memory (the real server process, read from /proc) grows by less than the
budget; once the process is killed the memory comes back; a normal watcher
meanwhile receives every event in order. Quick: 200 watchers against a
64 MiB budget; full (``make faults``): 1,000 watchers against the default
budget.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable

from conftest import ServerProcess
from helpers import RawWorker, eventually, rss_bytes

from faults.follow import Followed, follow
from faults.record import FULL, record, size
from jobstream.client import JobClient
from jobstream.server.heap import TRIM_EVERY_S
from jobstream.server.quotas import DEFAULT_WATCH_MEMORY_BUDGET, MIB, WATCH_RESERVE_BYTES

LINE = "x" * 1016
"""A log line's text: with its 8-character number, 1 KiB."""

BATCH = 1_000
"""Log lines per ReportJob."""

WARMUP_LINES = 5_000
"""Lines logged before the baseline is read, so that the database's caches
and the server's message cache have grown to their working size: what the
scenario measures is then the watchers' cost alone."""

STREAMS_PER_CHANNEL = 50
"""Watch streams per connection in the stalled process."""

SETTLE_S = 3.0
"""How long memory is still sampled after the last line was written."""

GONE_S = 4 * TRIM_EVERY_S
"""How long after the stalled process is killed the memory may take to come
back: its connections close at once, and the heap is trimmed within
TRIM_EVERY_S. Read every GONE_POLL_S until it has fallen since the kill and
is within AFTER_BOUND of the baseline (at most GONE_S, as long as the
single reading after GONE_S this replaces)."""

GONE_POLL_S = 0.25
"""How often the server's memory is read while it is expected to come back."""

AFTER_BOUND = 48 * MIB
"""How far above the baseline the server may stay once the stalled watchers
are gone: what malloc cannot give back (pages shared with live allocations)."""

FOLLOW_S = 300.0
"""Deadline of the normal watcher."""

HOLDER = textwrap.dedent(
    """
    import json, sys, time, grpc
    from jobstream.v1 import job_service_pb2, job_service_pb2_grpc
    target, job_id, after = sys.argv[1], sys.argv[2], int(sys.argv[3])
    n, per = int(sys.argv[4]), int(sys.argv[5])
    streams, refused, message = [], 0, ""
    for i in range(n):
        if i % per == 0:
            stub = job_service_pb2_grpc.JobServiceStub(grpc.insecure_channel(target))
        request = job_service_pb2.WatchJobRequest(job_id=job_id, after_seq=after)
        stream = stub.WatchJob(request)
        try:
            next(stream)
            streams.append(stream)
        except grpc.RpcError as exc:
            refused += 1
            message = f"{exc.code().name}: {exc.details()}"
    print(json.dumps({"opened": len(streams), "refused": refused, "message": message}), flush=True)
    time.sleep(3600)
    """
)


def _write(worker: RawWorker, job_id: str, lease_id: str, first: int, count: int) -> None:
    for start in range(first, first + count, BATCH):
        worker.log(job_id, lease_id, [f"{i:07d} {LINE}" for i in range(start, start + BATCH)])


def test_stalled_watchers_stay_within_the_memory_budget(
    start_server: Callable[..., ServerProcess],
) -> None:
    n = size(200, 1_000)
    lines = size(10_000, 40_000)
    budget = DEFAULT_WATCH_MEMORY_BUDGET if FULL else 64 * MIB
    server = start_server(
        extra_args=(
            "--max-watchers",
            "100000",
            "--max-watchers-per-principal",
            "100000",
            *(() if FULL else ("--watch-memory-budget", f"{budget // MIB}MiB")),
        )
    )
    assert server.proc is not None
    pid = server.proc.pid
    worker = RawWorker(server.target)
    # One client throughout: once it has reached the server its reads ride
    # over a moment the server is slow to accept a new connection (as just
    # after the stalled watchers went, while it collects and trims).
    client = JobClient(server.target)
    normal = Followed()
    holder: subprocess.Popen[str] | None = None
    try:
        job_id = client.submit("faults.stalled").id
        lease_id = worker.acquire("faults.stalled", lease_s=3600).lease_id
        follower = threading.Thread(target=follow, args=(server.target, job_id, FOLLOW_S, normal))
        follower.start()
        _write(worker, job_id, lease_id, 0, WARMUP_LINES)
        # The normal watcher's stream is open (it holds one watch) before
        # the stalled ones come.
        eventually(lambda: normal.events, timeout=60)
        # The stalled watchers follow live from here, as dashboards do.
        after_seq = client.get(job_id).last_seq
        baseline = rss_bytes(pid)
        holder = subprocess.Popen(
            [
                sys.executable,
                "-c",
                HOLDER,
                server.target,
                job_id,
                str(after_seq),
                str(n),
                str(STREAMS_PER_CHANNEL),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert holder.stdout is not None
        opened = json.loads(holder.stdout.readline())
        os.kill(holder.pid, signal.SIGSTOP)
        stopped = time.monotonic()
        peak = rss_bytes(pid)
        for start in range(WARMUP_LINES, WARMUP_LINES + lines, BATCH):
            _write(worker, job_id, lease_id, start, BATCH)
            peak = max(peak, rss_bytes(pid))
        written_s = time.monotonic() - stopped
        settle_until = time.monotonic() + SETTLE_S
        while time.monotonic() < settle_until:
            peak = max(peak, rss_bytes(pid))
            time.sleep(0.1)
        at_kill = rss_bytes(pid)
        holder.kill()
        holder.wait(10)
        gone_until = time.monotonic() + GONE_S
        after = rss_bytes(pid)
        while (after >= at_kill or after - baseline > AFTER_BOUND) and (
            time.monotonic() < gone_until
        ):
            time.sleep(GONE_POLL_S)
            after = rss_bytes(pid)
        worker.finish(job_id, lease_id)
        follower.join(FOLLOW_S)
        last_seq = client.get(job_id).last_seq
    finally:
        if holder is not None and holder.poll() is None:
            holder.kill()
            holder.wait(10)
        if holder is not None and holder.stdout is not None:
            holder.stdout.close()
        worker.close()
        client.close()
    admitted = budget // WATCH_RESERVE_BYTES - 1  # the normal watcher holds one
    growth = peak - baseline
    seqs = [e.seq for e in normal.events]
    complete = normal.ended and seqs == list(range(1, last_seq + 1))
    per_watch = growth // max(1, opened["opened"])
    passed = (
        opened["opened"] == min(n, admitted)
        and opened["refused"] == n - opened["opened"]
        and (opened["refused"] == 0 or "--watch-memory-budget" in opened["message"])
        and growth <= budget
        and after - baseline <= AFTER_BOUND
        and complete
    )
    record(
        12,
        f"{n:,} stalled watchers, budget {budget // MIB} MiB: {opened['opened']} admitted, "
        f"{opened['refused']} refused (RESOURCE_EXHAUSTED); {lines:,} lines of 1 KiB in "
        f"{written_s:.0f} s; RSS {baseline / MIB:.0f} -> peak {peak / MIB:.0f} MiB "
        f"(+{growth / MIB:.0f}, {per_watch // 1024} KiB per watcher), "
        f"{after / MIB:.0f} MiB after they went; normal watcher "
        f"{'complete' if complete else 'INCOMPLETE: ' + normal.error}",
        passed,
    )
    assert opened["opened"] == min(n, admitted), opened
    assert opened["refused"] == n - opened["opened"], opened
    if opened["refused"]:
        assert opened["message"].startswith("RESOURCE_EXHAUSTED"), opened
        assert "--watch-memory-budget" in opened["message"], opened
        assert f"{budget // MIB} MiB" in opened["message"], opened
    assert growth <= budget, f"grew {growth / MIB:.0f} MiB, budget {budget / MIB:.0f} MiB"
    assert after - baseline <= AFTER_BOUND, f"{(after - baseline) / MIB:.0f} MiB stayed"
    assert complete, (normal.ended, normal.error, len(seqs), last_seq)
