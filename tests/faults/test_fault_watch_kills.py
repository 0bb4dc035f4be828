"""Scenario 2: jobs logging thousands of events each, watchers following
them through the real client, and the server kill -9ed at random moments
(restarted on the same port each time). Every watcher sees each job's events
1, 2, 3 … exactly once, in order, matching what is stored: 0 gaps,
0 duplicates, 0 reorderings."""

from __future__ import annotations

import random
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable

from conftest import ServerProcess
from helpers import eventually

from faults.follow import Followed, follow, seq_faults
from faults.record import record, size
from jobstream.client import Job, JobClient, JobState

WORKERS = 2
"""External worker processes; together they run every job at once."""

LEASE_S = 10.0
"""The workers' lease: longer than a restart, so most leases survive a kill
(one that does not is retried and its events continue)."""

WATCH_DEADLINE_S = 600.0
"""Deadline of each watcher."""

WORKER = textwrap.dedent(
    """
    import sys, time
    from jobstream.client.worker import Handlers, Worker
    handlers = Handlers()

    @handlers.handler("faults.stream")
    def stream(ctx):
        n, delay = int(ctx.params["n"]), float(ctx.params["delay"])
        for i in range(n):
            ctx.log(f"line {i}")
            time.sleep(delay)
        return {"lines": n}

    Worker(sys.argv[1], handlers, worker_id=sys.argv[2], concurrency=int(sys.argv[3]),
           lease_duration=float(sys.argv[4]), flush_interval=0.1).run()
    """
)


def test_watchers_across_kill9s(start_server: Callable[..., ServerProcess]) -> None:
    n_jobs = size(5, 50)
    n_events = size(200, 2_000)
    n_watchers = size(10, 100)
    n_kills = size(2, 5)
    run_s = size(8, 60)  # how long each job takes to log its lines, outages aside
    rng = random.Random(2)
    server = start_server(extra_args=("--max-attempts", "20"))
    procs: list[subprocess.Popen[bytes]] = []
    with JobClient(server.target, timeout=30) as client:
        ids = [
            client.submit("faults.stream", {"n": n_events, "delay": run_s / n_events}).id
            for _ in range(n_jobs)
        ]
        seen = [Followed() for _ in range(n_watchers)]
        watchers = [
            threading.Thread(
                target=follow, args=(server.target, ids[w % n_jobs], WATCH_DEADLINE_S, f)
            )
            for w, f in enumerate(seen)
        ]
        for thread in watchers:
            thread.start()
        try:
            per_worker = -(-n_jobs // WORKERS)
            for w in range(WORKERS):
                procs.append(
                    subprocess.Popen(
                        [
                            *(sys.executable, "-c", WORKER, server.target, f"w{w}"),
                            *(str(per_worker), str(LEASE_S)),
                        ],
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                    )
                )
            # One kill at a random moment in each of n_kills equal slots of the run.
            slot = run_s / n_kills
            started = time.monotonic()
            for k in range(n_kills):
                at = started + k * slot + rng.uniform(0.2, 0.8) * slot
                time.sleep(max(0.0, at - time.monotonic()))
                server.kill()
                server.restart()

            def all_done() -> list[Job] | None:
                jobs = [client.get(i) for i in ids]
                return jobs if all(j.state.terminal for j in jobs) else None

            final = eventually(all_done, timeout=run_s * 3 + 120, every=0.5)
            for thread in watchers:
                thread.join(WATCH_DEADLINE_S)
            stored = {
                i: [(e.seq, e.log.text if e.log else "") for e in client.logs(i, page_size=1000)]
                for i in ids
            }
        finally:
            for proc in procs:
                proc.kill()
                proc.wait(10)
    last = {j.id: j.last_seq for j in final}
    gaps = duplicates = reorderings = mismatched = unfinished = 0
    for w, followed in enumerate(seen):
        job_id = ids[w % n_jobs]
        g, d, r = seq_faults([e.seq for e in followed.events], last[job_id])
        gaps, duplicates, reorderings = gaps + g, duplicates + d, reorderings + r
        logged = [(e.seq, e.log.text) for e in followed.events if e.log is not None]
        mismatched += logged != stored[job_id]
        unfinished += not followed.ended
    delivered = sum(len(f.events) for f in seen)
    succeeded = sum(1 for j in final if j.state is JobState.SUCCEEDED)
    server.stop()
    with sqlite3.connect(server.db_path) as db:
        integrity = db.execute("PRAGMA integrity_check").fetchone()[0]
    passed = (
        (gaps, duplicates, reorderings, mismatched, unfinished) == (0, 0, 0, 0, 0)
        and succeeded == n_jobs
        and integrity == "ok"
    )
    record(
        2,
        f"{n_jobs} jobs x {n_events:,} lines, {n_watchers} watchers, {n_kills} kills: "
        f"{delivered:,} events delivered; {gaps} gaps, {duplicates} duplicates, "
        f"{reorderings} reorderings, {mismatched} differing from stored, {unfinished} "
        f"unfinished; {succeeded}/{n_jobs} succeeded; integrity {integrity}",
        passed,
    )
    assert (gaps, duplicates, reorderings) == (0, 0, 0)
    assert mismatched == 0 and unfinished == 0, [f.error for f in seen if f.error][:5]
    assert succeeded == n_jobs and integrity == "ok"
