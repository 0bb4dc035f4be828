"""Several servers on one PostgreSQL database (issue: scale out). Every test
here needs PostgreSQL; in CI an unreachable database fails them."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from functools import partial

import psycopg
import pytest
from conftest import POSTGRES_URL, ServerProcess
from helpers import RawWorker, eventually, job_in, stored_events

from jobstream.client import JobChange, JobClient, JobEvent, JobState
from jobstream.server.db import open_database
from jobstream.server.domain import Changes, now_us
from jobstream.server.store import Store

pytestmark = pytest.mark.timeout(180)

StartServer = Callable[..., ServerProcess]


@pytest.fixture
def cluster(postgres_url: str, start_server: StartServer) -> Callable[..., ServerProcess]:
    """Starts servers that share one fresh PostgreSQL schema."""

    def start(name: str, handlers: tuple[str, ...] = ()) -> ServerProcess:
        return start_server(
            name=name, handlers=handlers, extra_args=("--db", postgres_url, "--poll-seconds", "1")
        )

    return start


def collect(target: str, job_id: str, into: list[int]) -> threading.Thread:
    def run() -> None:
        with JobClient(target) as client:
            into.extend(e.seq for e in client.watch(job_id) if isinstance(e, JobEvent))

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_submit_on_a_work_on_b_watch_on_both(cluster: Callable[..., ServerProcess]) -> None:
    a = cluster("a")
    b = cluster("b", handlers=("jobstream.client.demo",))
    with JobClient(a.target) as client:
        job = client.submit("demo.count", {"n": 40, "delay": 0.01})
        on_a: list[int] = []
        on_b: list[int] = []
        threads = [collect(a.target, job.id, on_a), collect(b.target, job.id, on_b)]
        for t in threads:
            t.join(60)
        final = client.get(job.id)
    assert final.state is JobState.SUCCEEDED and final.worker_id.startswith("embedded:")
    expected = list(range(1, final.last_seq + 1))
    assert on_a == expected and on_b == expected


def test_four_workers_on_two_servers_run_each_job_once(
    cluster: Callable[..., ServerProcess],
) -> None:
    servers = [cluster("a"), cluster("b")]
    jobs = 500
    with JobClient(servers[0].target) as client:
        from jobstream.client import JobSpec

        for _ in range(0, jobs, 250):
            client.submit_many([JobSpec(kind="race.job") for _ in range(250)])
    acquired: list[tuple[str, int]] = []
    lock = threading.Lock()

    def work(target: str, n: int) -> None:
        worker = RawWorker(target, worker_id=f"w{n}")
        try:
            while True:
                got = worker.acquire("race.job", wait=1)
                if not got.job.id:
                    return
                with lock:
                    acquired.append((got.job.id, got.job.attempt))
                worker.finish(got.job.id, got.lease_id)
        finally:
            worker.close()

    threads = [threading.Thread(target=work, args=(servers[n % 2].target, n)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(150)
    counts = Counter(acquired)
    assert len(counts) == jobs and max(counts.values()) == 1
    with JobClient(servers[1].target) as client:
        done = list(client.list(kinds=["race.job"], states=[JobState.SUCCEEDED], page_size=1000))
    assert len(done) == jobs


def test_survivor_rescues_jobs_of_a_killed_server(cluster: Callable[..., ServerProcess]) -> None:
    a = cluster("a", handlers=("jobstream.client.demo",))
    b = cluster("b")
    with JobClient(b.target) as client:
        jobs = [client.submit("demo.sleep", {"seconds": 60}, max_attempts=2) for _ in range(3)]
        eventually(lambda: all(client.get(j.id).state is JobState.RUNNING for j in jobs))
        a.kill()
        for job in jobs:
            rescued = eventually(partial(job_in, client, job.id, JobState.QUEUED), timeout=30)
            assert rescued.attempt == 1
        reasons = [
            e.state_change.reason for e in stored_events(client, jobs[0].id) if e.state_change
        ]
        assert "lease expired" in reasons[-1]
        assert client.submit("still.serving").state is JobState.QUEUED


def _listener_pids(origin_hint: str = "jobstream-listen-") -> list[int]:
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name LIKE %s",
            (origin_hint + "%",),
        ).fetchall()
    return [r[0] for r in rows]


def test_watchers_progress_when_the_listen_connection_is_killed(
    cluster: Callable[..., ServerProcess],
) -> None:
    a = cluster("a")
    b = cluster("b")
    before = set(_listener_pids())
    with JobClient(a.target) as client_a:
        job = client_a.submit("listen.test")
        worker = RawWorker(a.target)
        lease = worker.acquire("listen.test", lease_s=120)
        seen: list[int] = []
        watcher = collect(b.target, job.id, seen)
        eventually(lambda: len(seen) >= 2)
        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            for pid in before:
                conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
        for i in range(3):
            sent = time.monotonic()
            ack = worker.log(job.id, lease.lease_id, [f"after kill {i}"])
            eventually(lambda s=ack.last_seq: len(seen) >= s, timeout=5)  # type: ignore[misc]
            assert time.monotonic() - sent < 1 + 1.5  # poll interval + slack
        worker.finish(job.id, lease.lease_id)
        worker.close()
        watcher.join(30)
    assert seen == list(range(1, client_a_last(a, job.id) + 1))
    eventually(lambda: set(_listener_pids()) - before, timeout=15)  # both reconnected


def client_a_last(server: ServerProcess, job_id: str) -> int:
    with JobClient(server.target) as client:
        return client.get(job_id).last_seq


@pytest.fixture
def direct_store(postgres_url: str) -> Iterator[Store]:
    db = open_database(postgres_url)
    yield Store(db)
    db.close()


def test_out_of_order_commit_cannot_make_watch_jobs_skip(
    cluster: Callable[..., ServerProcess], direct_store: Store
) -> None:
    server = cluster("a")
    with JobClient(server.target) as client:
        x = client.submit("order.x")
        y = client.submit("order.y")
        changes: list[JobChange] = []
        head = max(c.position for c in _take(client, 1))

        def watch() -> None:
            with JobClient(server.target) as own:
                for change in own.watch_jobs(after_position=head):
                    changes.append(change)
                    if {c.job.id for c in changes if c.job} >= {x.id, y.id}:
                        return

        watcher = threading.Thread(target=watch)
        watcher.start()
        db = direct_store.db

        def commit(changes: Changes) -> None:
            # What a server's writer does at the end of each transaction.
            direct_store.record_changes(changes, now_us())
            direct_store.notify(changes)

        first_drawn = threading.Event()
        second_done = threading.Event()
        order: list[str] = []

        def first() -> None:
            # Draws its position first, then commits last.
            with db.connection_context(), db.atomic():
                commit(Changes(changed_jobs={x.id}))
                first_drawn.set()
                time.sleep(1.0)
                order.append("first committed")

        def second() -> None:
            first_drawn.wait(10)
            with db.connection_context(), db.atomic():
                commit(Changes(changed_jobs={y.id}))
            order.append("second committed")
            second_done.set()

        threads = [threading.Thread(target=first), threading.Thread(target=second)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        watcher.join(30)
    assert order == ["first committed", "second committed"]  # the lock held the second back
    seen = [c.job.id for c in changes if c.job]
    assert x.id in seen and y.id in seen


def _take(client: JobClient, n: int) -> list[JobChange]:
    out: list[JobChange] = []
    for change in client.watch_jobs():
        out.append(change)
        if change.caught_up:
            return out
    return out
