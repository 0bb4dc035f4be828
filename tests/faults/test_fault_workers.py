"""Scenario 6: four external workers; two are SIGKILLed and one SIGSTOPped
for longer than the lease. Orphaned jobs go back to QUEUED (or INTERRUPTED)
within the lease plus two sweeps; the stopped worker's later calls are
refused and change nothing; every job ends with exactly one final result.

The bound is measured on the server's clock, from the moment each lease ran
out (its ``lease_expire``, which no dead worker renews) to the expiry's
event: the test's own timing (when it killed, how often it polls) adds
nothing to it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from conftest import TEST_SERVER_ARGS, ServerProcess
from helpers import eventually, stored_events

from faults.record import record, size
from jobstream.client import Job, JobClient, JobState

LEASE_S = 2.0
"""The workers' lease (the server under test sweeps every 0.2 s)."""

SWEEP_S = float(TEST_SERVER_ARGS[TEST_SERVER_ARGS.index("--sweep-seconds") + 1])
"""The server's sweep interval."""

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
"""Where the server's microsecond times count from."""

SWEEPS_BOUND_S = 2 * SWEEP_S
"""The issue's bound (an orphan is rescued within the lease plus two sweeps
of its worker's death) from the end of the lease: the lease ran out at most
a lease after the worker's death, so two sweeps after it are within the
bound."""

WORKER = textwrap.dedent(
    """
    import sys
    from jobstream.client.demo import handlers
    from jobstream.client.worker import Worker
    Worker(sys.argv[1], handlers, worker_id=sys.argv[2], concurrency=2,
           lease_duration=float(sys.argv[3]), flush_interval=0.2).run()
    """
)


def _lease(server: ServerProcess, job_id: str) -> tuple[str, str, int]:
    """The job's state, worker and the end of its lease (µs since the epoch)
    as the server stored them."""
    [(state, worker, expire)] = server.sql(
        "SELECT state, worker_id, lease_expire FROM job WHERE id = ?", job_id
    )
    return str(state), str(worker or ""), int(expire or 0)


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
    lease_ends: dict[str, int] = {}
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
            killed_at = time.monotonic()
            orphans = [*held["w0"], *held["w1"], *held["w2"]]
            pending = set(orphans)
            while pending and time.monotonic() - killed_at < 30:
                for job_id in list(pending):
                    state, owner, expire = _lease(server, job_id)
                    if state == JobState.RUNNING.value and owner in ("w0", "w1", "w2"):
                        # The last value before the rescue is the lease's end
                        # (a report in flight at the kill may still move it).
                        lease_ends[job_id] = expire
                    else:
                        pending.discard(job_id)
                time.sleep(0.05)
            # Every orphan was taken back, so the stopped worker's leases have
            # all run out: it wakes up past them.
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
            # From the end of each lease to the expiry's event, both by the
            # server's clock.
            for job_id in orphans:
                expiry = next(
                    e
                    for e in events[job_id]
                    if e.event_time is not None
                    and e.state_change is not None
                    and e.state_change.reason.startswith("lease expired")
                )
                assert expiry.event_time is not None
                lease_end = EPOCH + timedelta(microseconds=lease_ends[job_id])
                rescues.append((expiry.event_time - lease_end).total_seconds())
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGCONT)
                proc.kill()
            proc.wait(10)
    first, worst = min(rescues, default=0.0), max(rescues, default=0.0)
    succeeded = sum(1 for j in final if j.state is JobState.SUCCEEDED)
    not_one = sum(1 for n in finals.values() if n != 1)
    passed = (
        not pending
        and len(rescues) == len(orphans)
        and first > 0
        and worst <= SWEEPS_BOUND_S
        and succeeded == n_jobs
        and not_one == 0
    )
    record(
        6,
        f"{len(orphans)} orphans rescued {first:.2f}-{worst:.2f} s after their lease ran out "
        f"(server clock; bound {SWEEPS_BOUND_S:.1f} s, i.e. lease + 2 sweeps after the death); "
        f"{succeeded}/{n_jobs} succeeded; {not_one} jobs without exactly one final result",
        passed,
    )
    assert not pending and len(rescues) == len(orphans)
    assert first > 0, "a lease was taken back before it ran out"
    assert worst <= SWEEPS_BOUND_S
    assert succeeded == n_jobs and not_one == 0
