"""Scenario 11: the disk fills up. The server's data directory is a small
tmpfs (mounted by the test, which needs root; without it the scenario is
skipped and the reason printed and recorded). Jobs with large params fill it
until writes fail. Writes must fail cleanly (UNAVAILABLE or
RESOURCE_EXHAUSTED, never UNKNOWN/INTERNAL, never a crash), reads keep
answering, and once a ballast file on the same tmpfs is deleted writes
succeed again without a restart. Afterwards ``PRAGMA integrity_check`` is ok
and every acknowledged job is there."""

from __future__ import annotations

import sqlite3
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest
from conftest import ServerProcess
from helpers import RawWorker

from faults.record import record, record_skip, size
from jobstream.client import JobClient, JobState
from jobstream.client.errors import JobstreamError
from jobstream.v1 import job_service_pb2, job_service_pb2_grpc

T = TypeVar("T")

TMPFS_BYTES = 8 * 1024 * 1024
"""Size of the data directory's filesystem."""

BALLAST_BYTES = 2 * 1024 * 1024
"""A file on the same tmpfs, deleted to free space."""

BIG_PARAMS_BYTES = 128 * 1024
"""Params of the jobs that fill the disk (under the 256 KiB limit)."""

SMALL_PARAMS_BYTES = 2 * 1024
"""Params of the jobs that fill the last gaps."""

MAX_FILL_WRITES = 1_000
"""Bound on the filling loop (8 MiB takes about 60 big submits)."""

CLEAN = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED})
"""What a write refused for lack of space may answer."""

RECOVERY_S = 10.0
"""How long after space is freed writes may take to succeed again."""

LEASE_S = 600
"""The test worker's lease: it must outlive the scenario."""

CALL_TIMEOUT_S = 30.0
"""Deadline of every call and stream."""


@contextmanager
def _tmpfs(path: Path, size_bytes: int) -> Iterator[str | None]:
    """Mounts a tmpfs of ``size_bytes`` on ``path`` and yields None, or
    yields why it could not; unmounts on exit."""
    try:
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size_bytes}", "tmpfs", str(path)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        yield f"cannot run mount: {exc}"
        return
    if done.returncode != 0:
        yield f"mount -t tmpfs refused: {(done.stderr or done.stdout).strip()}"
        return
    try:
        yield None
    finally:
        unmounted = subprocess.run(
            ["umount", str(path)], capture_output=True, timeout=30, check=False
        )
        if unmounted.returncode != 0:
            # Something still holds a file there: detach it now (it goes
            # once released) rather than leave a mount behind the run.
            subprocess.run(
                ["umount", "-l", str(path)], capture_output=True, timeout=30, check=False
            )


class Outcomes:
    """Status codes of the writes tried while the disk was full."""

    def __init__(self) -> None:
        self.codes: Counter[str] = Counter()
        self.unclean: list[str] = []

    def attempt(self, what: str, call: Callable[[], T]) -> T | None:
        """Runs a write; a refusal is counted (and noted when unclean)."""
        try:
            result = call()
        except JobstreamError as exc:
            self.note(what, exc.code, exc.message)
            return None
        except grpc.RpcError as exc:
            self.note(what, exc.code(), exc.details() or "")
            return None
        self.codes["OK"] += 1
        return result

    def note(self, what: str, code: grpc.StatusCode, message: str) -> None:
        self.codes[code.name] += 1
        if code not in CLEAN:
            self.unclean.append(f"{what}: {code.name} {message}")


def test_disk_full(tmp_path: Path) -> None:
    data = tmp_path / "full" / "data"
    data.mkdir(parents=True)
    with _tmpfs(data, TMPFS_BYTES) as refused:
        if refused is not None:
            record_skip(11, refused)
            pytest.skip(refused)
        server = ServerProcess(data)
        try:
            _scenario(server, data)
        finally:
            server.kill()


def _scenario(server: ServerProcess, data: Path) -> None:
    ballast = data / "ballast.bin"
    ballast.write_bytes(b"\xa5" * BALLAST_BYTES)
    server.start()
    pid = server.proc.pid if server.proc else -1
    worker = RawWorker(server.target, "disk-full-worker")
    channel = grpc.insecure_channel(server.target)
    jobs_stub = job_service_pb2_grpc.JobServiceStub(channel)
    fill = Outcomes()
    full = Outcomes()
    acked: dict[str, str] = {}
    read_failures: list[str] = []
    recovered_after = -1.0
    try:
        with JobClient(server.target, timeout=CALL_TIMEOUT_S) as client:
            running = client.submit("faults.disk", request_id="running")
            lease = worker.acquire("faults.disk", wait=5, lease_s=LEASE_S)
            assert lease.job.id == running.id, "the test's worker did not get its job"
            queued = client.submit("faults.disk.queued", request_id="queued")
            acked.update({"running": running.id, "queued": queued.id})

            # Fill: big jobs until refused, then small ones until refused.
            writes = 0
            for params_bytes in (BIG_PARAMS_BYTES, SMALL_PARAMS_BYTES):
                while writes < MAX_FILL_WRITES:
                    rid = f"fill-{writes}"
                    writes += 1
                    job = fill.attempt(
                        "submit",
                        lambda rid=rid, n=params_bytes: client.submit(  # type: ignore[misc]
                            "faults.disk.fill", {"blob": "x" * n}, request_id=rid
                        ),
                    )
                    if job is None:
                        break
                    acked[rid] = job.id
            disk_was_full = sum(n for c, n in fill.codes.items() if c != "OK") > 0

            # Every kind of write while full: each answers cleanly (or fits).
            for i in range(size(5, 20)):
                full.attempt(
                    "report",
                    lambda: worker.log(running.id, lease.lease_id, ["y" * 16_000] * 4),
                )
                job = full.attempt(
                    "submit",
                    lambda i=i: client.submit("faults.disk.fill", request_id=f"full-{i}"),  # type: ignore[misc]
                )
                if job is not None:
                    acked[f"full-{i}"] = job.id
            full.attempt("acquire", lambda: worker.acquire("faults.disk.none", wait=0))
            full.attempt("cancel", lambda: client.cancel(queued.id))
            alive_while_full = server.proc is not None and server.proc.poll() is None

            # Reads keep answering.
            for rid, job_id in acked.items():
                try:
                    client.get(job_id)
                except JobstreamError as exc:
                    read_failures.append(f"get {rid}: {exc.code.name} {exc.message}")
            try:
                listed = sum(1 for _ in client.list(kinds=["faults.disk.fill"], page_size=100))
            except JobstreamError as exc:
                listed = -1
                read_failures.append(f"list: {exc.code.name} {exc.message}")
            read_failures += _watch_problems(jobs_stub, running.id)

            # Free space: writes succeed again, same process.
            ballast.unlink()
            freed_at = time.monotonic()
            retrying = Outcomes()
            job = None
            while job is None and time.monotonic() - freed_at < RECOVERY_S:
                job = retrying.attempt(
                    "submit", lambda: client.submit("faults.disk.after", request_id="after")
                )
                if job is None:
                    time.sleep(0.1)
            if job is not None:
                recovered_after = time.monotonic() - freed_at
                acked["after"] = job.id
            after = Outcomes()
            big = after.attempt(
                "submit",
                lambda: client.submit(
                    "faults.disk.after", {"blob": "z" * BIG_PARAMS_BYTES}, request_id="after-big"
                ),
            )
            if big is not None:
                acked["after-big"] = big.id
            after.attempt("report", lambda: worker.log(running.id, lease.lease_id, ["after"]))
            after.attempt("finish", lambda: worker.finish(running.id, lease.lease_id))
            cancelled = after.attempt("cancel", lambda: client.cancel(queued.id))
            ended = client.get(running.id).state
            same_process = server.proc is not None and server.proc.poll() is None
            present = set()
            for rid, job_id in acked.items():
                try:
                    present.add(client.get(job_id).id)
                except JobstreamError as exc:
                    read_failures.append(f"get {rid} after: {exc.code.name} {exc.message}")
    finally:
        worker.close()
        channel.close()
    exit_code = server.stop()
    # closing(): a connection left open would keep the tmpfs busy at unmount.
    with closing(sqlite3.connect(server.db_path)) as db:
        integrity = db.execute("PRAGMA integrity_check").fetchone()[0]
        stored = {r[0] for r in db.execute("SELECT id FROM job")}
    lost = sorted(
        rid for rid, job_id in acked.items() if job_id not in stored or job_id not in present
    )
    recovered = (
        recovered_after >= 0
        and after.codes.get("OK", 0) == sum(after.codes.values())
        and ended is JobState.SUCCEEDED
        and cancelled is not None
    )
    passed = (
        disk_was_full
        and not (fill.unclean or full.unclean)
        and alive_while_full
        and not read_failures
        and recovered
        and same_process
        and integrity == "ok"
        and not lost
    )
    refused = {c: n for c, n in full.codes.items() if c != "OK"}
    record(
        11,
        f"{TMPFS_BYTES >> 20} MiB tmpfs, {len(acked)} acked; while full {sum(refused.values())} "
        f"writes refused {refused}, {len(full.unclean)} UNKNOWN/INTERNAL, "
        f"{full.codes.get('OK', 0)} fitted, {listed} listed, {len(read_failures)} read failures; "
        f"writes back {recovered_after:.2f} s after freeing space, same pid {pid}: "
        f"{same_process}; integrity {integrity}; {len(lost)} acked lost",
        passed,
    )
    assert disk_was_full, f"the disk never filled: {full.codes}"
    assert fill.unclean + full.unclean == []
    assert alive_while_full, f"the server died while the disk was full:\n{server.log()[-3000:]}"
    assert read_failures == []
    assert recovered, f"writes did not recover: {retrying.codes} then {after.codes}, job {ended}"
    assert same_process
    assert integrity == "ok"
    assert lost == []
    assert exit_code == 0, f"server exited {exit_code}"


def _watch_problems(stub: job_service_pb2_grpc.JobServiceStub, job_id: str) -> list[str]:
    """A watch of a live job reads its stored events (with a deadline)."""
    call: Any = stub.WatchJob(
        job_service_pb2.WatchJobRequest(job_id=job_id), timeout=CALL_TIMEOUT_S
    )
    seqs: list[int] = []
    last = -1
    try:
        for response in call:
            if response.HasField("snapshot"):
                last = response.snapshot.last_seq
            else:
                seqs.extend(e.seq for e in response.events.events)
            if last >= 0 and len(seqs) >= last:
                break
    except grpc.RpcError as exc:
        return [f"watch: {exc.code().name} {exc.details()}"]
    finally:
        call.cancel()
    if seqs != list(range(1, last + 1)):
        return [f"watch: seqs {seqs} for last_seq {last}"]
    return []
