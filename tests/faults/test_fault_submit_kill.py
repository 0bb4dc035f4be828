"""Scenario 1: kill -9 during 32-way concurrent submits. Every acknowledged
submit survives; retrying every request_id (acknowledged or not) yields one
job per request_id."""

from __future__ import annotations

import random
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from conftest import ServerProcess

from faults.record import record, size
from jobstream.client import JobClient
from jobstream.client.errors import JobstreamError

SUBMITTERS = 32
"""Concurrent submitting threads."""

KILL_AFTER_S = (0.3, 1.0)
"""The kill comes at a random moment in this window after submits start."""


def _submit_until_stopped(
    target: str, worker: int, iteration: int, stop: threading.Event
) -> tuple[list[str], dict[str, str]]:
    """Submits until stopped; returns the request ids tried and the acked ones."""
    tried: list[str] = []
    acked: dict[str, str] = {}
    with JobClient(target, timeout=5) as client:
        n = 0
        while not stop.is_set():
            rid = f"it{iteration}-w{worker}-{n}"
            n += 1
            tried.append(rid)
            try:
                job = client.submit("faults.submit", request_id=rid, labels={"it": str(iteration)})
            except JobstreamError:
                break  # the server is gone: this request's fate is unknown
            acked[rid] = job.id
    return tried, acked


def test_kill9_during_concurrent_submits(start_server: Callable[..., ServerProcess]) -> None:
    server = start_server()
    iterations = size(3, 20)
    rng = random.Random(1)
    lost = duplicates = acked_total = 0
    for iteration in range(iterations):
        stop = threading.Event()
        with ThreadPoolExecutor(SUBMITTERS) as pool:
            futures = [
                pool.submit(_submit_until_stopped, server.target, w, iteration, stop)
                for w in range(SUBMITTERS)
            ]
            time.sleep(rng.uniform(*KILL_AFTER_S))
            server.kill()
            time.sleep(0.2)  # let in-flight calls fail against the dead server
            stop.set()
            results = [f.result(timeout=60) for f in futures]
        server.restart()
        tried = [rid for t, _ in results for rid in t]
        acked = {rid: jid for _, a in results for rid, jid in a.items()}
        acked_total += len(acked)
        with JobClient(server.target, timeout=30) as client:
            present = {j.id for j in client.list(labels={"it": str(iteration)}, page_size=1000)}
            lost += sum(1 for jid in acked.values() if jid not in present)

            def retry(rid: str, client: JobClient = client, iteration: int = iteration) -> str:
                job = client.submit("faults.submit", request_id=rid, labels={"it": str(iteration)})
                return job.id

            with ThreadPoolExecutor(SUBMITTERS) as pool:
                again = dict(zip(tried, pool.map(retry, tried), strict=True))
            duplicates += sum(1 for rid, jid in acked.items() if again[rid] != jid)
            per_rid = Counter(
                j.request_id for j in client.list(labels={"it": str(iteration)}, page_size=1000)
            )
            duplicates += sum(n - 1 for n in per_rid.values() if n > 1)
            missing = set(tried) - set(per_rid)
            lost += len(missing)  # a retried submit must exist now
    server.stop()
    with sqlite3.connect(server.db_path) as db:
        integrity = db.execute("PRAGMA integrity_check").fetchone()[0]
    passed = lost == 0 and duplicates == 0 and integrity == "ok" and acked_total > 0
    record(
        1,
        f"{iterations} kills, {acked_total} acked: {lost} lost, {duplicates} duplicates, "
        f"integrity {integrity}",
        passed,
    )
    assert acked_total > 0
    assert (lost, duplicates, integrity) == (0, 0, "ok")
