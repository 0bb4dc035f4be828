"""Several servers on one PostgreSQL database (issue: scale out). Every test
here needs PostgreSQL; in CI an unreachable database fails them."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import grpc
import psycopg
import pytest
from conftest import FIGURE, POSTGRES_URL, ServerProcess, schema_of
from helpers import RawWorker, eventually, job_in, stored_events
from psycopg import sql

from jobstream.client import JobChange, JobClient, JobEvent, JobState, NotFoundError, WorkerInfo
from jobstream.server.cluster import APPLICATION_NAME, Notifier
from jobstream.server.db import execute, open_database
from jobstream.server.domain import Effects, now_us
from jobstream.server.store import Store
from jobstream.v1 import job_service_pb2, job_service_pb2_grpc, worker_service_pb2

pytestmark = pytest.mark.timeout(180)

StartServer = Callable[..., ServerProcess]

RecordProperty = Callable[[str, object], None]
"""pytest's ``record_property``."""

NOTIFY_TIMEOUT_S = 10.0
"""Deadline of the wait for the servers' notifications."""


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


def _listener_pids(origins: set[str]) -> set[int]:
    """Backends of the LISTEN connections of the servers with ``origins``
    (only this test's: other tests and other runs share the database)."""
    names = [f"{APPLICATION_NAME}-{origin}" for origin in origins]
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = ANY(%s)", (names,)
        ).fetchall()
    return {int(r[0]) for r in rows}


def _origins(channel: str, servers: list[ServerProcess]) -> set[str]:
    """The origin of each server: what its own commits' notifications on
    ``channel`` carry (a submit on each makes one)."""
    origins: set[str] = set()
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
        for server in servers:
            with JobClient(server.target) as client:
                client.submit("listen.origin")
        for note in conn.notifies(timeout=NOTIFY_TIMEOUT_S):
            origins.add(json.loads(note.payload)["origin"])
            if len(origins) == len(servers):
                break
    assert len(origins) == len(servers), origins
    return origins


def test_watchers_progress_when_the_listen_connection_is_killed(
    cluster: Callable[..., ServerProcess], postgres_url: str, record_property: RecordProperty
) -> None:
    a = cluster("a")
    b = cluster("b")
    channel = f"jobstream_{schema_of(postgres_url)}"[:63]
    origins = _origins(channel, [a, b])

    def both_listening() -> set[int] | None:
        pids = _listener_pids(origins)
        return pids if len(pids) == 2 else None

    # Both listen before their connections are killed, or nothing is killed.
    before = eventually(both_listening)
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
        delays = []
        for i in range(3):
            sent = time.monotonic()
            ack = worker.log(job.id, lease.lease_id, [f"after kill {i}"])
            eventually(lambda s=ack.last_seq: len(seen) >= s, timeout=5)  # type: ignore[misc]
            delays.append(time.monotonic() - sent)
        worker.finish(job.id, lease.lease_id)
        worker.close()
        watcher.join(30)
    assert seen == list(range(1, client_a_last(a, job.id) + 1))

    def listening_anew() -> bool:
        pids = both_listening()
        return pids is not None and not pids & before

    eventually(listening_anew)
    record_property(
        FIGURE,
        f"after the LISTEN connections were killed, events reached the other server's "
        f"watcher {', '.join(f'{d:.2f}' for d in delays)} s after the report storing them was sent "
        f"(poll interval 1 s)",
    )


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
        notifier = Notifier(db, origin="")

        def commit(effects: Effects) -> None:
            # What a server's writer does at the end of each transaction.
            direct_store.changes.record(effects, now_us())
            notifier.notify(effects)

        first_drawn = threading.Event()
        second_done = threading.Event()
        second_pid: list[int] = []
        order: list[str] = []

        def second_waits_for_a_lock() -> bool:
            with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
                row = conn.execute(
                    "SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s", second_pid
                ).fetchone()
            return row is not None and row[0] == "Lock"

        def first() -> None:
            # Draws its position first, then commits last: once the second
            # transaction is blocked behind it.
            with db.connection_context(), db.atomic():
                commit(Effects(changed_jobs={x.id}))
                first_drawn.set()
                eventually(lambda: second_pid and second_waits_for_a_lock())
                order.append("first committed")

        def second() -> None:
            first_drawn.wait(10)
            with db.connection_context(), db.atomic():
                [(pid,)] = execute(db, "SELECT pg_backend_pid()").fetchall()
                second_pid.append(int(pid))
                commit(Effects(changed_jobs={y.id}))
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


ARTIFACT_BYTES = 3 * 1024 * 1024 + 12_345
"""Several stored chunks (1 MiB each) and a short last one."""

UPLOAD_PIECE = 256 * 1024
"""Bytes per UploadArtifact chunk message, as the client's Worker sends them."""

PAUSE_AFTER = 6
"""Upload messages (1.5 MiB) sent before the upload pauses for B's restart."""


def _staged(server: ServerProcess, job_id: str) -> int:
    """Chunk rows stored for the job, whichever upload they belong to."""
    [(n,)] = server.sql("SELECT count(*) FROM job_artifact_chunk WHERE job_id = ?", job_id)
    return int(n)


def test_artifacts_are_served_listed_and_deleted_by_every_server(
    cluster: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    a = cluster("a")
    b = cluster("b")
    data = (hashlib.sha256(b"cluster").digest() * (ARTIFACT_BYTES // 32 + 1))[:ARTIFACT_BYTES]
    digest = hashlib.sha256(data).hexdigest()
    pieces = [data[i : i + UPLOAD_PIECE] for i in range(0, len(data), UPLOAD_PIECE)]
    with JobClient(a.target) as on_a, JobClient(b.target) as on_b:
        job = on_a.submit("cluster.artifact")
        raw = RawWorker(a.target)
        try:
            lease = raw.acquire("cluster.artifact", lease_s=60)
            header = worker_service_pb2.ArtifactHeader(
                job_id=job.id,
                lease_id=lease.lease_id,
                name="out.bin",
                size_bytes=len(data),
                sha256=digest,
            )
            resume = threading.Event()

            def messages() -> Iterator[worker_service_pb2.UploadArtifactRequest]:
                yield worker_service_pb2.UploadArtifactRequest(header=header)
                for n, piece in enumerate(pieces):
                    if n == PAUSE_AFTER:
                        resume.wait(60)
                    yield worker_service_pb2.UploadArtifactRequest(chunk=piece)

            upload = raw.stub.UploadArtifact.future(messages(), timeout=90)
            eventually(lambda: _staged(a, job.id))
            # B starting (and sweeping) while A still receives the upload:
            # another server's upload in progress is not B's to clean up.
            b.kill()
            b.restart()
            assert _staged(a, job.id) > 0
            assert on_b.artifacts(job.id) == []  # staged bytes are no artifact yet
            resume.set()
            stored = upload.result(timeout=60)
            raw.finish(job.id, lease.lease_id)
        finally:
            resume.set()
            raw.close()
        assert stored.artifact.sha256 == digest

        [listed] = on_b.artifacts(job.id)
        assert (listed.name, listed.size_bytes, listed.sha256) == ("out.bin", len(data), digest)
        full = tmp_path / "full.bin"
        assert on_b.download(job.id, "out.bin", full) == listed  # checks the sha256 too
        assert full.read_bytes() == data
        partial = tmp_path / "partial.bin"
        partial.write_bytes(data[: 1024 * 1024 + 7])  # resumes inside the second chunk
        on_b.download(job.id, "out.bin", partial, resume=True)
        assert partial.read_bytes() == data
        with grpc.insecure_channel(b.target) as channel:
            stub = job_service_pb2_grpc.JobServiceStub(channel)
            request = job_service_pb2.DownloadArtifactRequest(
                job_id=job.id, name="out.bin", offset=2 * 1024 * 1024
            )
            tail = b"".join(m.chunk for m in stub.DownloadArtifact(request, timeout=30))
        assert tail == data[2 * 1024 * 1024 :]

        deleted = on_b.delete(job.id)
        assert deleted.deleted
        with pytest.raises(NotFoundError):
            on_a.artifacts(job.id)
        with pytest.raises(NotFoundError):
            on_a.download(job.id, "out.bin", tmp_path / "gone.bin")
    # The chunks are left to the sweep, which the delete woke on B.
    eventually(lambda: _staged(a, job.id) == 0)
    eventually(
        lambda: a.sql("SELECT count(*) FROM job_artifact_upload WHERE job_id = ?", job.id) == [(0,)]
    )
    assert not (a.data_dir / "artifacts").exists()


def test_a_worker_polling_one_server_is_listed_by_the_other(
    cluster: Callable[..., ServerProcess],
) -> None:
    a, b = cluster("a", handlers=("jobstream.client.demo",)), cluster("b")

    def embedded_on_a() -> WorkerInfo | None:
        with JobClient(b.target) as client:
            return next((w for w in client.workers() if w.worker_id.startswith("embedded:")), None)

    seen = eventually(embedded_on_a, timeout=30)
    assert seen.live and "demo.count" in seen.kinds
    with JobClient(a.target) as client:
        assert [w.worker_id for w in client.workers()] == [seen.worker_id]
