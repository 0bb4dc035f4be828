"""Scenario 7: recorded paths a job does not own, on every route that
removes files (DeleteJob, DeleteJob with force, PurgeJobs, retention).

Workers try to record the database and its side files, the data directory's
folders, another job's directory and artifacts, absolute paths, ``..``, a
sibling directory sharing the data directory's prefix and a symlink pointing
out: every such ReportJob is refused. Then the same paths are written
straight into the jobs' rows (as rows from before the rule would hold them)
and the jobs are removed by each route while a thread keeps swapping a
directory inside each job's own directory for a symlink pointing out.
Checksummed canaries outside, the other job's files and artifact, and the
database are unchanged; the refusals at removal are counted per route.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import grpc
from conftest import ServerProcess
from helpers import RawWorker, eventually

from faults.record import record, size
from jobstream.client import JobClient, JobState, NotFoundError
from jobstream.v1 import worker_service_pb2

ROUTES = ("delete", "force delete", "purge", "retention")
"""Every way a job's files are removed."""

REFUSAL_LOG = "refusing to remove"
"""What the server logs (WARNING) for each stored path it refuses to remove."""

LEASE_S = 300
"""Lease of the scenario's workers: the force-delete route's jobs must still
be running after the server restarts."""


def _checksums(root: Path) -> dict[str, str]:
    return {
        str(p): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


def _canaries(base: Path) -> Path:
    outside = base / "outside"
    for sub in ("", "deep", "data-sibling"):
        d = outside / sub
        d.mkdir(parents=True, exist_ok=True)
        (d / "canary.txt").write_text(f"canary in {sub or 'outside'}\n")
    return outside


def _hostile(data: Path, outside: Path, job_id: str, victim: str) -> list[str]:
    return [
        "jobstream.db",
        "jobstream.db-wal",
        "jobstream.db-shm",
        str(data / "jobstream.db"),
        ".",
        "jobs",
        "artifacts",
        f"jobs/{victim}",
        f"artifacts/{victim}",
        f"jobs/{job_id}/../{victim}",
        str(outside / "canary.txt"),
        "../../outside/canary.txt",
        f"../{data.name}-evil/canary.txt",
        str(data.parent / (data.name + "-evil")),
        f"jobs/{job_id}/link-out/canary.txt",
    ]


@contextmanager
def _swapping(swaps: list[Path], outside: Path) -> Iterator[None]:
    """Keeps replacing each directory with a symlink pointing out."""
    stop = threading.Event()

    def swapper(swap: Path) -> None:
        while not stop.is_set():
            try:
                tmp = swap.with_name("swap-tmp")
                tmp.symlink_to(outside)
                os.replace(tmp, swap)
            except OSError:
                pass

    threads = [threading.Thread(target=swapper, args=(s,)) for s in swaps]
    for thread in threads:
        thread.start()
    try:
        yield
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)


def _gone(client: JobClient, job_id: str) -> bool:
    try:
        client.get(job_id)
    except NotFoundError:
        return True
    return False


def test_recorded_paths_a_job_does_not_own_are_never_obeyed(
    start_server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    server = start_server(name="paths")
    data = server.data_dir.absolute()
    outside = _canaries(tmp_path)
    sibling = data.parent / (data.name + "-evil")
    sibling.mkdir()
    (sibling / "canary.txt").write_text("sibling canary\n")
    rounds = size(2, 10)
    refused_at_report = reports = 0
    jobs: dict[str, list[str]] = {route: [] for route in ROUTES}
    with JobClient(server.target) as client:
        worker = RawWorker(server.target, worker_id="paths")
        try:
            victim = client.submit("faults.victim").id
            lease = worker.acquire("faults.victim")
            (data / "jobs" / victim).mkdir(parents=True)
            (data / "jobs" / victim / "keep.txt").write_text("victim\n")
            worker.log(victim, lease.lease_id, ["x"], files=[f"jobs/{victim}/keep.txt"])
            worker.upload(victim, lease.lease_id, "keep.bin", b"victim artifact")
            worker.finish(victim, lease.lease_id, worker_service_pb2.JOB_OUTCOME_RELEASED)
            watched = [outside, sibling, data / "jobs" / victim, data / "artifacts" / victim]
            before = {str(w): _checksums(w) for w in watched}
            for route in ROUTES:
                for _ in range(rounds):
                    job = client.submit("faults.paths", labels={"route": route.replace(" ", "-")})
                    lease = worker.acquire("faults.paths", lease_s=LEASE_S)
                    own = data / "jobs" / job.id
                    (own / "swap").mkdir(parents=True)
                    (own / "swap" / "f.txt").write_text("inside\n")
                    (own / "out.txt").write_text("inside\n")
                    (own / "link-out").symlink_to(outside / "deep")
                    for bad in _hostile(data, outside, job.id, victim):
                        reports += 1
                        try:
                            worker.log(job.id, lease.lease_id, ["x"], files=[bad])
                        except grpc.RpcError as exc:
                            refused_at_report += exc.code() is grpc.StatusCode.INVALID_ARGUMENT
                    legit = [f"jobs/{job.id}/{n}" for n in ("out.txt", "link-out", "swap")]
                    worker.log(job.id, lease.lease_id, ["files"], files=legit)
                    if route != "force delete":
                        worker.finish(job.id, lease.lease_id)
                    jobs[route].append(job.id)
        finally:
            worker.close()

    # Rows as written before the rule: every hostile path stored as recorded.
    server.stop()
    with sqlite3.connect(server.db_path) as conn:
        for route_jobs in jobs.values():
            for job_id in route_jobs:
                stored = json.dumps(_hostile(data, outside, job_id, victim))
                conn.execute("UPDATE job SET files = ? WHERE id = ?", (stored, job_id))
    conn.close()
    server.restart()

    refused: dict[str, int] = {}
    swaps = {r: [data / "jobs" / j / "swap" for j in ids] for r, ids in jobs.items()}
    with JobClient(server.target) as client:
        assert all(client.get(j).state is JobState.RUNNING for j in jobs["force delete"])
        with _swapping(swaps["delete"], outside):
            refused["delete"] = sum(len(client.delete(j).refused_paths) for j in jobs["delete"])
        with _swapping(swaps["force delete"], outside):
            refused["force delete"] = sum(
                len(client.delete(j, force=True).refused_paths) for j in jobs["force delete"]
            )
        with _swapping(swaps["purge"], outside):
            purged = client.purge(older_than=timedelta(0), labels={"route": "purge"})
            assert sorted(purged.job_ids) == sorted(jobs["purge"])
            refused["purge"] = len(purged.refused_paths)
    logged = server.log().count(REFUSAL_LOG)
    server.stop()
    server.extra_args = ("--retention", "1s", "--retention-every", "0.2")
    with _swapping(swaps["retention"], outside):
        server.restart()
        with JobClient(server.target) as client:
            eventually(lambda: all(_gone(client, j) for j in jobs["retention"]), timeout=30)
            # Files go after the rows' commit, so the last refusals may still
            # be on their way to the log when the jobs are gone.
            wanted = len(jobs["retention"]) * len(_hostile(data, outside, "x", victim))
            eventually(lambda: server.log().count(REFUSAL_LOG) - logged >= wanted, timeout=10)
    refused["retention"] = server.log().count(REFUSAL_LOG) - logged
    server.stop()
    server.extra_args = ()
    server.restart()
    with JobClient(server.target) as client:
        victim_kept = (data / "jobstream.db").is_file()
        victim_kept &= client.get(victim).state is JobState.QUEUED
        victim_kept &= [a.name for a in client.artifacts(victim)] == ["keep.bin"]
    after = {str(w): _checksums(w) for w in watched}
    touched = sum(
        1 for w in before for path, digest in before[w].items() if after[w].get(path) != digest
    )
    per_job = len(_hostile(data, outside, "x", victim))
    expected = rounds * per_job
    routes = ", ".join(f"{r} {refused[r]}/{expected}" for r in ROUTES)
    passed = (
        refused_at_report == reports
        and all(refused[r] == expected for r in ROUTES)
        and touched == 0
        and victim_kept
    )
    record(
        7,
        f"{refused_at_report}/{reports} hostile reports refused; stored paths refused at "
        f"removal: {routes}; {touched} files outside the jobs touched; database and "
        f"other job {'intact' if victim_kept else 'DAMAGED'}",
        passed,
    )
    assert refused_at_report == reports
    assert touched == 0 and victim_kept
    assert refused == dict.fromkeys(ROUTES, expected)
