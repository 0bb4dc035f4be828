"""Artifacts end to end: a real Worker whose handlers call ``ctx.upload`` /
``ctx.aupload``, a real server, and the real JobClient listing, downloading
(and resuming) them; raw UploadArtifact streams for what a well-behaved
worker never sends. The bytes live in the database, so what stores, reads or
removes them runs on SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
import hashlib
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from conftest import InProcessServer, Server, ServerProcess
from helpers import RawWorker, eventually, job_in

from jobstream.client import (
    Artifact,
    AsyncJobClient,
    DataLossError,
    Handlers,
    InvalidArgumentError,
    JobClient,
    JobContext,
    JobEvent,
    JobState,
    NotFoundError,
    OutOfRangeError,
    Worker,
)
from jobstream.client.errors import JobstreamError
from jobstream.v1 import job_service_pb2, job_service_pb2_grpc, worker_service_pb2

CALL_DEADLINE_S = 15.0
"""Deadline of every raw call in these tests."""

CONTENT_BYTES = 700_000
"""Big enough for several upload and download chunks (256 KiB each)."""

handlers = Handlers()


def content(seed: str, size: int = CONTENT_BYTES) -> bytes:
    """Deterministic bytes that differ per seed."""
    block = hashlib.sha256(seed.encode()).digest()
    return (block * (size // len(block) + 1))[:size]


@handlers.handler("art.sync")
def upload_sync(ctx: JobContext) -> dict[str, Any]:
    """Writes params.size bytes to params.dir and uploads them (sync API)."""
    path = Path(ctx.params["dir"]) / f"{ctx.id}.bin"
    path.write_bytes(content(ctx.id, int(ctx.params["size"])))
    ctx.log("written")
    artifact = ctx.upload(path, ctx.params.get("name"), content_type="application/octet-stream")
    return {"sha256": artifact.sha256, "size": artifact.size_bytes}


@handlers.handler("art.async")
async def upload_async(ctx: JobContext) -> dict[str, Any]:
    """The same through ``aupload``, named after the file."""
    path = Path(ctx.params["dir"]) / "report.csv"
    path.write_text("a,b\n1,2\n")
    artifact = await ctx.aupload(path, content_type="text/csv")
    return {"name": artifact.name}


@handlers.handler("art.badname")
def upload_bad_name(ctx: JobContext) -> dict[str, Any]:
    """Tries a name that would climb out of the artifact directory."""
    path = Path(ctx.params["dir"]) / f"{ctx.id}.txt"
    path.write_text("x")
    try:
        ctx.upload(path, "../escape.txt")
    except JobstreamError as exc:
        return {"code": exc.code.name, "field": exc.field}
    return {"code": "OK"}


@contextmanager
def running_worker(target: str) -> Iterator[Worker]:
    """The test's handlers served by a real Worker on an event loop of its
    own thread; stopped (gracefully) and checked when the block ends."""
    loop = asyncio.new_event_loop()
    worker = Worker(
        target, handlers, worker_id=f"art-{uuid.uuid4().hex[:6]}", poll_wait=1, flush_interval=0.05
    )
    thread = threading.Thread(target=loop.run_forever, name="artifact-test-worker")
    thread.start()
    running = asyncio.run_coroutine_threadsafe(worker.run_async(), loop)
    try:
        yield worker
    finally:
        try:
            asyncio.run_coroutine_threadsafe(worker.stop(grace=5), loop).result(30)
            running.result(30)  # re-raises whatever ended the worker early
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(30)
            loop.close()


@pytest.fixture(scope="module")
def client(bare_server: Server) -> Iterator[JobClient]:
    with JobClient(bare_server.target) as c:
        yield c


@pytest.fixture(scope="module")
def worker(bare_server: Server) -> Iterator[Worker]:
    with running_worker(bare_server.target) as w:
        yield w


def _staged_rows(server: Server, job_id: str) -> tuple[int, int]:
    """Chunk rows and open-upload rows stored for the job."""
    [(chunks,)] = server.sql("SELECT count(*) FROM job_artifact_chunk WHERE job_id = ?", job_id)
    [(uploads,)] = server.sql("SELECT count(*) FROM job_artifact_upload WHERE job_id = ?", job_id)
    return int(chunks), int(uploads)


def _downloaded(server: Server, job_id: str, name: str, offset: int = 0) -> bytes:
    """The bytes a raw DownloadArtifact sends from ``offset``."""
    with grpc.insecure_channel(server.target) as channel:
        stub = job_service_pb2_grpc.JobServiceStub(channel)
        request = job_service_pb2.DownloadArtifactRequest(job_id=job_id, name=name, offset=offset)
        messages = list(stub.DownloadArtifact(request, timeout=CALL_DEADLINE_S))
    assert messages[0].HasField("artifact")
    return b"".join(m.chunk for m in messages[1:])


def run_job(client: JobClient, kind: str, **params: Any) -> str:
    """Submits a job for the test worker and waits until it ends."""
    job = client.submit(kind, params)
    eventually(lambda: job_in(client, job.id), timeout=30)
    return job.id


@pytest.mark.both_backends
def test_upload_list_download_and_event(
    client: JobClient, worker: Worker, bare_server: Server, tmp_path: Path
) -> None:
    job_id = run_job(client, "art.sync", dir=str(tmp_path), size=CONTENT_BYTES, name="out.bin")
    job = client.get(job_id)
    assert job.state is JobState.SUCCEEDED, job.error
    expected = content(job_id)
    digest = hashlib.sha256(expected).hexdigest()
    assert job.result == {"sha256": digest, "size": CONTENT_BYTES}

    [artifact] = client.artifacts(job_id)
    assert (artifact.name, artifact.size_bytes, artifact.sha256) == (
        "out.bin",
        CONTENT_BYTES,
        digest,
    )
    assert artifact.content_type == "application/octet-stream" and artifact.attempt == 1
    # The bytes are rows of the database (one chunk here), not files.
    assert _staged_rows(bare_server, job_id) == (1, 0)
    assert not (bare_server.data_dir / "artifacts").exists()

    events = [e for e in client.watch(job_id) if isinstance(e, JobEvent)]
    kinds = [(e.log.text if e.log else None, e.artifact_added) for e in events]
    log_at = next(i for i, (text, _) in enumerate(kinds) if text == "written")
    added_at = next(i for i, (_, a) in enumerate(kinds) if a is not None)
    assert log_at < added_at  # reported before the upload, stored before it
    assert events[added_at].artifact_added == artifact

    target = tmp_path / "downloaded.bin"
    seen: list[tuple[int, int]] = []
    got = client.download(job_id, "out.bin", target, on_progress=lambda d, t: seen.append((d, t)))
    assert got == artifact and target.read_bytes() == expected
    assert seen[0] == (0, CONTENT_BYTES) and seen[-1] == (CONTENT_BYTES, CONTENT_BYTES)
    assert len(seen) > 2  # several chunks


@pytest.mark.both_backends
def test_download_resumes_from_a_partial_file(
    client: JobClient, worker: Worker, tmp_path: Path
) -> None:
    job_id = run_job(client, "art.sync", dir=str(tmp_path), size=CONTENT_BYTES)
    expected = content(job_id)
    name = f"{job_id}.bin"  # default name: the file's
    partial = tmp_path / "partial.bin"
    partial.write_bytes(expected[:300_000])
    seen: list[int] = []
    client.download(job_id, name, partial, resume=True, on_progress=lambda d, t: seen.append(d))
    assert partial.read_bytes() == expected
    assert seen[0] == 300_000

    wrong = tmp_path / "wrong.bin"
    wrong.write_bytes(b"\0" * 1000)
    with pytest.raises(DataLossError, match="sha256"):
        client.download(job_id, name, wrong, resume=True)

    too_long = tmp_path / "too-long.bin"
    too_long.write_bytes(expected + b"extra")
    with pytest.raises(OutOfRangeError) as beyond:
        client.download(job_id, name, too_long, resume=True)
    assert beyond.value.field == "offset"

    complete = tmp_path / "complete.bin"
    complete.write_bytes(expected)
    assert client.download(job_id, name, complete, resume=True).size_bytes == CONTENT_BYTES
    assert complete.read_bytes() == expected


def test_async_client_and_async_handler(
    bare_server: Server, worker: Worker, client: JobClient, tmp_path: Path
) -> None:
    job_id = run_job(client, "art.async", dir=str(tmp_path))
    target = tmp_path / "copy.csv"

    async def main() -> Artifact:
        async with AsyncJobClient(bare_server.target) as aclient:
            [listed] = await aclient.artifacts(job_id)
            downloaded = await aclient.download(job_id, "report.csv", target)
            assert downloaded == listed
            return listed

    artifact = asyncio.run(main())
    assert artifact.name == "report.csv" and artifact.content_type == "text/csv"
    assert target.read_text() == "a,b\n1,2\n"


def test_bad_names_and_missing_artifacts(client: JobClient, worker: Worker, tmp_path: Path) -> None:
    job_id = run_job(client, "art.badname", dir=str(tmp_path))
    assert client.get(job_id).result == {"code": "INVALID_ARGUMENT", "field": "header.name"}
    assert client.artifacts(job_id) == []
    with pytest.raises(NotFoundError) as missing:
        client.download(job_id, "nothing.txt", tmp_path / "x")
    assert missing.value.field == "name"
    assert not (tmp_path / "x").exists()  # a refused download makes no file
    with pytest.raises(InvalidArgumentError) as bad:
        client.download(job_id, "../../etc/passwd", tmp_path / "x")
    assert bad.value.field == "name"
    with pytest.raises(NotFoundError):
        client.artifacts("no-such-job-artifacts")


def _upload(
    raw: RawWorker, header: worker_service_pb2.ArtifactHeader, chunks: list[bytes]
) -> worker_service_pb2.UploadArtifactResponse:
    messages = [worker_service_pb2.UploadArtifactRequest(header=header)]
    messages += [worker_service_pb2.UploadArtifactRequest(chunk=c) for c in chunks]
    response: worker_service_pb2.UploadArtifactResponse = raw.stub.UploadArtifact(
        iter(messages), timeout=CALL_DEADLINE_S
    )
    return response


def _header(
    job_id: str, lease_id: str, name: str, data: bytes
) -> worker_service_pb2.ArtifactHeader:
    return worker_service_pb2.ArtifactHeader(
        job_id=job_id,
        lease_id=lease_id,
        name=name,
        size_bytes=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
    )


@pytest.mark.both_backends
def test_uploads_are_checked_and_replace_by_name(client: JobClient, bare_server: Server) -> None:
    kind = f"art.raw.{uuid.uuid4().hex[:8]}"
    job = client.submit(kind)
    raw = RawWorker(bare_server.target)
    try:
        lease = raw.acquire(kind)
        data = b"first version"
        header = _header(job.id, lease.lease_id, "out.txt", data)

        def refused(
            h: worker_service_pb2.ArtifactHeader, chunks: list[bytes], code: grpc.StatusCode
        ) -> str:
            with pytest.raises(grpc.RpcError) as info:
                _upload(raw, h, chunks)
            assert info.value.code() is code, info.value.details()
            return info.value.details() or ""

        bad_sha = worker_service_pb2.ArtifactHeader()
        bad_sha.CopyFrom(header)
        bad_sha.sha256 = "0" * 64
        assert refused(bad_sha, [data], grpc.StatusCode.INVALID_ARGUMENT).startswith(
            "header.sha256:"
        )
        assert refused(header, [data[:5]], grpc.StatusCode.INVALID_ARGUMENT).startswith(
            "header.size_bytes:"
        )
        assert refused(header, [data, b"more"], grpc.StatusCode.INVALID_ARGUMENT).startswith(
            "header.size_bytes:"
        )
        too_big = worker_service_pb2.ArtifactHeader()
        too_big.CopyFrom(header)
        too_big.size_bytes = 2**40
        assert "0..1073741824" in refused(too_big, [], grpc.StatusCode.INVALID_ARGUMENT)
        with pytest.raises(grpc.RpcError) as no_header:
            raw.stub.UploadArtifact(
                iter([worker_service_pb2.UploadArtifactRequest(chunk=b"x")]),
                timeout=CALL_DEADLINE_S,
            )
        assert (no_header.value.details() or "").startswith("header:")
        assert client.artifacts(job.id) == []
        assert _staged_rows(bare_server, job.id) == (0, 0)  # refused uploads left nothing

        first = _upload(raw, header, [data[:5], data[5:]])
        second_data = b"second, longer version"
        second = _upload(
            raw, _header(job.id, lease.lease_id, "out.txt", second_data), [second_data]
        )
        assert second.seq == first.seq + 1
        [artifact] = client.artifacts(job.id)
        assert artifact.size_bytes == len(second_data)
        assert _downloaded(bare_server, job.id, "out.txt") == second_data
        # The first version's chunk goes with the next sweep.
        eventually(lambda: _staged_rows(bare_server, job.id) == (1, 0))

        raw.finish(job.id, lease.lease_id)
        stale = refused(
            _header(job.id, lease.lease_id, "late.txt", b"late"),
            [b"late"],
            grpc.StatusCode.FAILED_PRECONDITION,
        )
        assert stale.startswith("lease_id:")
        assert [a.name for a in client.artifacts(job.id)] == ["out.txt"]
        assert _staged_rows(bare_server, job.id) == (1, 0)
    finally:
        raw.close()

    with grpc.insecure_channel(bare_server.target) as channel:
        stub = job_service_pb2_grpc.JobServiceStub(channel)
        request = job_service_pb2.DownloadArtifactRequest(job_id=job.id, name="out.txt", offset=999)
        with pytest.raises(grpc.RpcError) as beyond:
            list(stub.DownloadArtifact(request, timeout=CALL_DEADLINE_S))
    assert beyond.value.code() is grpc.StatusCode.OUT_OF_RANGE
    assert (beyond.value.details() or "").startswith("offset:")

    result = client.delete(job.id)
    assert result.deleted and result.removed_paths == ()  # rows, not files
    # The chunks are left to the sweep, which the delete wakes.
    eventually(lambda: _staged_rows(bare_server, job.id) == (0, 0))


@pytest.mark.both_backends
def test_downloads_start_at_any_offset_across_stored_chunks(
    client: JobClient, bare_server: Server
) -> None:
    mib = 1024 * 1024
    data = content("chunks", 2 * mib + 4321)
    kind = f"art.offsets.{uuid.uuid4().hex[:8]}"
    job = client.submit(kind)
    raw = RawWorker(bare_server.target)
    try:
        lease = raw.acquire(kind)
        # Pieces that straddle the stored chunks' boundaries.
        pieces = [data[i : i + 300_000] for i in range(0, len(data), 300_000)]
        _upload(raw, _header(job.id, lease.lease_id, "big.bin", data), pieces)
        raw.finish(job.id, lease.lease_id)
    finally:
        raw.close()
    assert _staged_rows(bare_server, job.id) == (3, 0)  # 1 MiB, 1 MiB, the rest
    for offset in (0, 1, mib - 1, mib, mib + 1, 2 * mib, len(data) - 1, len(data)):
        assert _downloaded(bare_server, job.id, "big.bin", offset) == data[offset:], offset


@pytest.mark.both_backends
def test_an_empty_artifact_has_no_chunks(client: JobClient, bare_server: Server) -> None:
    kind = f"art.empty.{uuid.uuid4().hex[:8]}"
    job = client.submit(kind)
    raw = RawWorker(bare_server.target)
    try:
        lease = raw.acquire(kind)
        stored = _upload(raw, _header(job.id, lease.lease_id, "empty.txt", b""), [])
    finally:
        raw.close()
    assert stored.artifact.size_bytes == 0
    assert _staged_rows(bare_server, job.id) == (0, 0)
    assert _downloaded(bare_server, job.id, "empty.txt") == b""


@pytest.mark.both_backends
def test_a_download_never_mixes_two_versions(client: JobClient, bare_server: Server) -> None:
    kind = f"art.mix.{uuid.uuid4().hex[:8]}"
    first = content("first version", 24 * 1024 * 1024)
    job = client.submit(kind)
    raw = RawWorker(bare_server.target)
    received = b""
    try:
        lease = raw.acquire(kind, lease_s=60)
        pieces = [first[i : i + 1024 * 1024] for i in range(0, len(first), 1024 * 1024)]
        _upload(raw, _header(job.id, lease.lease_id, "out.bin", first), pieces)
        with grpc.insecure_channel(bare_server.target) as channel:
            stub = job_service_pb2_grpc.JobServiceStub(channel)
            request = job_service_pb2.DownloadArtifactRequest(job_id=job.id, name="out.bin")
            stream = iter(stub.DownloadArtifact(request, timeout=CALL_DEADLINE_S))
            assert next(stream).artifact.size_bytes == len(first)
            # Replaced while the download waits; the sweep then removes the
            # first version's chunks, most of them not sent yet.
            _upload(raw, _header(job.id, lease.lease_id, "out.bin", b"v2"), [b"v2"])
            eventually(lambda: _staged_rows(bare_server, job.id) == (1, 0))
            with pytest.raises(grpc.RpcError) as cut:
                for message in stream:
                    received += message.chunk
    finally:
        raw.close()
    assert cut.value.code() is grpc.StatusCode.ABORTED, cut.value.details()
    assert (cut.value.details() or "").startswith("name:")
    assert len(received) < len(first) and received == first[: len(received)]


MIB = 1024 * 1024
"""Bytes in a stored chunk."""

DELETED_BYTES = 3 * MIB + 1234
"""Three full stored chunks and a short last one."""


@pytest.mark.parametrize("delete_at", ["first chunk", "all bytes sent", "completed"])
@pytest.mark.both_backends
def test_a_job_deleted_during_or_after_its_upload_keeps_no_artifact_and_no_chunks(
    client: JobClient, bare_server: Server, delete_at: str
) -> None:
    data = content("deleted", DELETED_BYTES)
    pieces = [data[i : i + 256 * 1024] for i in range(0, len(data), 256 * 1024)]
    # Where the upload stream waits for the delete, and the chunks stored by then.
    pause_at, staged = {
        "first chunk": (5, 1),
        "all bytes sent": (len(pieces), 3),
        "completed": (None, 4),
    }[delete_at]
    kind = f"art.deleted.{uuid.uuid4().hex[:8]}"
    job = client.submit(kind)
    raw = RawWorker(bare_server.target)
    paused = threading.Event()
    resume = threading.Event()
    try:
        lease = raw.acquire(kind, lease_s=60)

        def messages() -> Iterator[worker_service_pb2.UploadArtifactRequest]:
            yield worker_service_pb2.UploadArtifactRequest(
                header=_header(job.id, lease.lease_id, "big.bin", data)
            )
            for n, piece in enumerate(pieces):
                if n == pause_at:
                    paused.set()
                    resume.wait(CALL_DEADLINE_S)
                yield worker_service_pb2.UploadArtifactRequest(chunk=piece)
            if pause_at == len(pieces):  # every byte is in; completing waits for the end
                paused.set()
                resume.wait(CALL_DEADLINE_S)

        upload = raw.stub.UploadArtifact.future(messages(), timeout=CALL_DEADLINE_S)
        if pause_at is None:
            upload.result(timeout=CALL_DEADLINE_S)
        else:
            assert paused.wait(CALL_DEADLINE_S)
        eventually(lambda: _staged_rows(bare_server, job.id)[0] == staged)
        assert client.delete(job.id, force=True).deleted
        resume.set()
        if pause_at is not None:
            with pytest.raises(grpc.RpcError) as cut:
                upload.result(timeout=CALL_DEADLINE_S)
            assert cut.value.code() is grpc.StatusCode.NOT_FOUND, cut.value.details()
    finally:
        resume.set()
        raw.close()
    # The bytes go with the sweep the delete woke; no artifact row ever
    # pointed at an upload cut off by the delete.
    eventually(lambda: _staged_rows(bare_server, job.id) == (0, 0))
    assert bare_server.sql("SELECT count(*) FROM job_artifact WHERE job_id = ?", job.id) == [(0,)]
    with pytest.raises(NotFoundError):
        client.artifacts(job.id)


@pytest.mark.both_backends
def test_purge_removes_artifacts(
    client: JobClient, worker: Worker, bare_server: Server, tmp_path: Path
) -> None:
    job_id = run_job(client, "art.sync", dir=str(tmp_path), size=10)
    assert _staged_rows(bare_server, job_id) == (1, 0)
    result = client.purge(older_than=timedelta(0), kinds=["art.sync"])
    assert job_id in result.job_ids
    eventually(lambda: _staged_rows(bare_server, job_id) == (0, 0))


def test_artifact_limits_are_configurable(
    start_inprocess_server: Callable[..., InProcessServer],
) -> None:
    server = start_inprocess_server(
        extra_args=("--max-artifact-bytes", "10", "--max-artifacts-per-job", "1")
    )
    with JobClient(server.target) as c:
        job = c.submit("art.limits")
        raw = RawWorker(server.target)
        try:
            lease = raw.acquire("art.limits")
            big = b"x" * 11
            with pytest.raises(grpc.RpcError) as too_big:
                _upload(raw, _header(job.id, lease.lease_id, "big.bin", big), [big])
            assert too_big.value.code() is grpc.StatusCode.INVALID_ARGUMENT
            assert (too_big.value.details() or "") == "header.size_bytes: 11 is outside 0..10"
            _upload(raw, _header(job.id, lease.lease_id, "one.bin", b"1"), [b"1"])
            with pytest.raises(grpc.RpcError) as too_many:
                _upload(raw, _header(job.id, lease.lease_id, "two.bin", b"2"), [b"2"])
            assert too_many.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
            assert (too_many.value.details() or "").startswith("name:")
            assert [a.name for a in c.artifacts(job.id)] == ["one.bin"]
        finally:
            raw.close()


@pytest.mark.both_backends
def test_an_upload_cut_off_by_kill_leaves_nothing_after_restart(
    start_server: Callable[..., ServerProcess], module_db_args: tuple[str, ...]
) -> None:
    server = start_server(extra_args=module_db_args)
    kind = f"art.kill.{uuid.uuid4().hex[:8]}"
    data = content("killed", 3 * 1024 * 1024)
    pieces = [data[i : i + 256 * 1024] for i in range(0, len(data), 256 * 1024)]
    with JobClient(server.target) as c:
        job = c.submit(kind)
        raw = RawWorker(server.target)
        never = threading.Event()
        try:
            lease = raw.acquire(kind)

            def messages() -> Iterator[worker_service_pb2.UploadArtifactRequest]:
                yield worker_service_pb2.UploadArtifactRequest(
                    header=_header(job.id, lease.lease_id, "cut.bin", data)
                )
                for piece in pieces[:8]:  # 2 of 3 MiB, then the sender stalls
                    yield worker_service_pb2.UploadArtifactRequest(chunk=piece)
                never.wait(CALL_DEADLINE_S)

            upload = raw.stub.UploadArtifact.future(messages(), timeout=CALL_DEADLINE_S)
            eventually(lambda: _staged_rows(server, job.id)[0] >= 1)
            server.kill()
            with pytest.raises(grpc.RpcError):
                upload.result(timeout=CALL_DEADLINE_S)
        finally:
            never.set()
            raw.close()
        server.restart()
        if server.db_url is None:
            # One server per SQLite file: every staged upload is dead at
            # start-up, and is gone before the server serves.
            assert _staged_rows(server, job.id) == (0, 0)
        else:
            # Another server might be receiving it: it goes once its lease
            # has ended (2 s here) and a sweep runs.
            eventually(lambda: _staged_rows(server, job.id) == (0, 0), timeout=CALL_DEADLINE_S)
        assert c.artifacts(job.id) == []
    assert list(server.data_dir.rglob(".upload-*")) == []
