"""Scenario 6: four external workers; two are SIGKILLed and one SIGSTOPped
for longer than the lease. Orphaned jobs go back to QUEUED (or INTERRUPTED)
within the lease plus two sweeps; the stopped worker's later calls are
refused and change nothing; every job ends with exactly one final result."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from datetime import UTC, datetime

from conftest import TEST_SERVER_ARGS, ServerProcess
from helpers import eventually, stored_events

from faults.record import record, size
from jobstream.client import Job, JobClient, JobState

LEASE_S = 2.0
"""The workers' lease (the server under test sweeps every 0.2 s)."""

SWEEP_S = float(TEST_SERVER_ARGS[TEST_SERVER_ARGS.index("--sweep-seconds") + 1])
"""The server's sweep interval."""

RESCUE_BOUND_S = LEASE_S + 2 * SWEEP_S
"""The issue's bound: an orphan is rescued within the lease plus two sweeps
(measured from the moment its worker died, when its lease was at most this
old)."""

WORKER = textwrap.dedent(
    """
    import sys
    from jobstream.client.demo import handlers
    from jobstream.client.worker import Worker
    Worker(sys.argv[1], handlers, worker_id=sys.argv[2], concurrency=2,
           lease_duration=float(sys.argv[3]), flush_interval=0.2).run()
    """
)


def _holder(client: JobClient, ids: list[str], worker: str) -> list[str]:
    return [
        j.id
        for j in (client.get(i) for i in ids)
        if j.state is JobState.RUNNING and j.worker_id == worker
    ]


def test_killed_and_stopped_workers(start_server: Callable[..., ServerProcess]) -> None:
    server = start_server(extra_args=("--max-attempts", "10"))
    n_jobs = size(8, 40)
    procs: dict[str, subprocess.Popen[bytes]] = {}
    rescues: list[float] = []
    try:
        with JobClient(server.target) as client:
            ids = [client.submit("demo.sleep", {"seconds": 3}).id for _ in range(n_jobs)]
            for name in ("w0", "w1", "w2", "w3"):
                procs[name] = subprocess.Popen(
                    [sys.executable, "-c", WORKER, server.target, name, str(LEASE_S)],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            # Wait until the victims hold jobs.
            held = eventually(
                lambda: (
                    {w: _holder(client, ids, w) for w in ("w0", "w1", "w2")}
                    if all(_holder(client, ids, w) for w in ("w0", "w1", "w2"))
                    else None
                ),
                timeout=30,
            )
            for victim in ("w0", "w1"):
                procs[victim].kill()
            os.kill(procs["w2"].pid, signal.SIGSTOP)
            killed_at, killed_wall = time.monotonic(), datetime.now(UTC)
            orphans = [*held["w0"], *held["w1"], *held["w2"]]
            pending = set(orphans)
            while pending and time.monotonic() - killed_at < 30:
                for job_id in list(pending):
                    job = client.get(job_id)
                    owner = job.worker_id
                    if not (job.state is JobState.RUNNING and owner in ("w0", "w1", "w2")):
                        pending.discard(job_id)
                time.sleep(0.05)
            time.sleep(LEASE_S)  # the stopped worker is now well past its lease
            os.kill(procs["w2"].pid, signal.SIGCONT)

            def all_done() -> list[Job] | None:
                jobs = [client.get(i) for i in ids]
                return jobs if all(j.state.terminal for j in jobs) else None

            final = eventually(all_done, timeout=120)
            events = {i: stored_events(client, i) for i in ids}
            finals = {
                i: sum(1 for e in events[i] if e.state_change and e.state_change.state.terminal)
                for i in ids
            }
            # Rescue times by the server's own clock (the expiry's event),
            # so the test's polling adds nothing to them.
            for job_id in orphans:
                expiry = next(
                    e
                    for e in events[job_id]
                    if e.time is not None
                    and e.time >= killed_wall
                    and e.state_change is not None
                    and e.state_change.state in (JobState.QUEUED, JobState.INTERRUPTED)
                )
                assert expiry.time is not None
                rescues.append((expiry.time - killed_wall).total_seconds())
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGCONT)
                proc.kill()
            proc.wait(10)
    worst = max(rescues, default=0.0)
    succeeded = sum(1 for j in final if j.state is JobState.SUCCEEDED)
    not_one = sum(1 for n in finals.values() if n != 1)
    passed = not pending and worst <= RESCUE_BOUND_S and succeeded == n_jobs and not_one == 0
    record(
        6,
        f"{len(orphans)} orphans rescued in <= {worst:.2f} s (bound {RESCUE_BOUND_S:.1f} s); "
        f"{succeeded}/{n_jobs} succeeded; {not_one} jobs without exactly one final result",
        passed,
    )
    assert not pending
    assert worst <= RESCUE_BOUND_S
    assert succeeded == n_jobs and not_one == 0
