"""Artifacts: the output files a worker uploads for a job, stored in the
database in chunks, so every server sharing the database serves, lists and
deletes every job's artifacts, and they go with the job's row: its delete
removes the artifact rows and marks their chunks as garbage, which the
sweep removes a few at a time.

An upload is cut into CHUNK_BYTES chunks as it arrives, each stored by a
writer operation of its own (fenced by the lease) under a fresh upload id,
so other writes commit between the chunks of a large file. Only when size
and SHA-256 match the header does one writer operation (fenced by the lease,
like any report) point the artifact row at the upload, mark the chunks of
the artifact it replaces for removal and add the artifact_added event: a
reader never sees an artifact whose bytes are not all there. A refused or
broken upload discards its chunks; those of one cut off by a crash, of
replaced artifacts and of deleted jobs are removed by
:meth:`Artifacts.discard_dead_uploads` at start-up and on every sweep, a
few at a time.
"""

from __future__ import annotations

import contextlib
import hashlib
import secrets
from collections.abc import AsyncIterator

from jobstream.server.domain import Artifact, ArtifactSpec, now_us
from jobstream.server.errors import Aborted, FailedPrecondition, InvalidArgument, OutOfRange
from jobstream.server.readers import Readers
from jobstream.server.store.artifacts import ArtifactStore
from jobstream.server.writer import Writer
from jobstream.v1 import errors_pb2

CHUNK_BYTES = 1024 * 1024
"""Bytes per stored chunk (an upload's last one is shorter). Fixed, so a
download finds the chunk holding any offset by division: changing it needs a
migration that re-chunks stored artifacts. At 1 MiB one chunk's writer
operation takes milliseconds, so other writes interleave with a large
upload, while a 1 GiB artifact is still only 1,024 rows."""

DOWNLOAD_MESSAGE_BYTES = 256 * 1024
"""Bytes per DownloadArtifact message: large enough to keep per-message
overhead small, well under the default 4 MiB gRPC message limit."""

DISCARD_BATCH = 100
"""Dead uploads looked up per query while sweeping."""

DISCARD_CHUNKS = 4
"""Chunks removed per writer operation while discarding an upload. SQLite
reads every page of a blob to free it (measured on a busy 2-core machine:
2.5 to 3.8 s per 200 MiB with sqlite3 alone, 3 to 7 s for a job delete
through the server), so removing a large upload at once would hold up every
other write; 4 MiB at a time kept submits at p99 under 0.35 s meanwhile."""


class Artifacts:
    """Upload, list, download and clean-up of artifacts: the store's
    artifact storage, written through the writer, read on the reader
    threads."""

    def __init__(
        self, *, store: ArtifactStore, writer: Writer, readers: Readers, max_per_job: int
    ) -> None:
        self.store = store
        self.writer = writer
        self.readers = readers
        self.max_per_job = max_per_job
        """Artifacts one job may hold."""

    async def upload(
        self, spec: ArtifactSpec, pieces: AsyncIterator[bytes]
    ) -> tuple[Artifact, int]:
        """Stores the streamed content as artifact ``spec.name`` of the
        leased job; returns it and the seq of its artifact_added event."""
        store = self.store
        # Refuse a stale lease before taking the bytes, not after.
        await self.readers.run(store.check_lease, spec.job_id, spec.lease_id, now_us())
        upload_id = secrets.token_hex(16)
        digest = hashlib.sha256()
        received = 0
        staged = 0
        pending = bytearray()
        completed = False
        try:
            async for piece in pieces:
                received += len(piece)
                if received > spec.size_bytes:
                    raise InvalidArgument(
                        f"more bytes arrived than the {spec.size_bytes} announced",
                        field="header.size_bytes",
                    )
                digest.update(piece)
                pending += piece
                while len(pending) >= CHUNK_BYTES:
                    # Counted first: if this call is cancelled (client gone)
                    # while the chunk's operation runs, that still commits,
                    # and the discard queued after it must cover it.
                    staged += 1
                    await self._stage(spec, upload_id, staged - 1, bytes(pending[:CHUNK_BYTES]))
                    del pending[:CHUNK_BYTES]
            if received != spec.size_bytes:
                raise InvalidArgument(
                    f"{received} bytes arrived; the header announced {spec.size_bytes}",
                    field="header.size_bytes",
                )
            actual = digest.hexdigest()
            if actual != spec.sha256:
                raise InvalidArgument(
                    f"the content's sha256 is {actual}, not {spec.sha256}", field="header.sha256"
                )
            last = bytes(pending) if pending else None
            result = await self.writer.run(
                lambda c: store.complete_upload(
                    c,
                    spec.job_id,
                    spec.lease_id,
                    upload_id,
                    staged=staged,
                    last=last,
                    name=spec.name,
                    size_bytes=spec.size_bytes,
                    sha256=spec.sha256,
                    content_type=spec.content_type,
                    max_per_job=self.max_per_job,
                    now=now_us(),
                )
            )
            completed = True
            return result
        finally:
            if staged and not completed:
                # Best effort: if this fails too (database gone), the upload
                # is left to the sweep, which removes it once its lease ends.
                with contextlib.suppress(Exception):
                    await self._discard(spec.job_id, upload_id)

    async def _stage(self, spec: ArtifactSpec, upload_id: str, index: int, data: bytes) -> None:
        store = self.store
        await self.writer.run(
            lambda c: store.stage_chunk(
                c, spec.job_id, spec.lease_id, upload_id, index=index, data=data, now=now_us()
            )
        )

    async def _discard(self, job_id: str, upload_id: str) -> None:
        store = self.store
        while not await self.writer.run(
            lambda c: store.discard_upload(c, job_id, upload_id, limit=DISCARD_CHUNKS)
        ):
            pass

    async def list(
        self, job_id: str, owner: str | None = None, *, after: str = "", limit: int | None = None
    ) -> list[Artifact]:
        """The job's artifacts by name, after ``after``, up to ``limit``;
        with ``owner``, another principal's job is NotFound."""
        return await self.readers.run(
            lambda: self.store.list_artifacts(job_id, owner, after=after, limit=limit)
        )

    async def download(
        self, job_id: str, name: str, offset: int, owner: str | None = None
    ) -> AsyncIterator[Artifact | bytes]:
        """The artifact's metadata, then its bytes from ``offset`` (with
        ``owner``, another principal's job is NotFound).

        The upload holding the bytes is looked up once, with the metadata,
        so every byte sent belongs to the file the metadata describes. Once
        a re-upload under the same name has replaced it, the next sweep
        removes those chunks, and the download ends with ABORTED rather than
        going on with another file's bytes. A download resumed after such a
        replacement gets the new file's tail; the sha256 in the metadata
        lets the client notice.
        """
        artifact, upload_id = await self.readers.run(self.store.get_artifact, job_id, name, owner)
        if upload_id is None:
            raise FailedPrecondition(
                f"artifact {name!r} of job {job_id!r} is still a file of an earlier version in "
                "the data directory of the server that received it; it can be downloaded once "
                "that server has started with this version",
                field="name",
                reason=errors_pb2.ARTIFACT_NOT_READY,
                metadata={"jobId": job_id, "name": name},
            )
        if offset > artifact.size_bytes:
            raise OutOfRange(
                f"{offset} is beyond the artifact's size {artifact.size_bytes}",
                field="offset",
                metadata={
                    "jobId": job_id,
                    "name": name,
                    "value": str(offset),
                    "last": str(artifact.size_bytes),
                },
            )
        yield artifact
        index, skip = divmod(offset, CHUNK_BYTES)
        remaining = artifact.size_bytes - offset
        while remaining > 0:
            data = await self.readers.run(self.store.read_chunk, job_id, upload_id, index)
            if data is None:
                raise Aborted(
                    f"artifact {name!r} of job {job_id!r} was replaced or deleted during the "
                    "download; download it again",
                    field="name",
                    reason=errors_pb2.ARTIFACT_REPLACED,
                    metadata={"jobId": job_id, "name": name},
                )
            view = memoryview(data)[skip:]
            for start in range(0, len(view), DOWNLOAD_MESSAGE_BYTES):
                yield bytes(view[start : start + DOWNLOAD_MESSAGE_BYTES])
            remaining -= len(view)
            index += 1
            skip = 0

    async def discard_dead_uploads(self, *, every: bool = False) -> int:
        """Removes the chunks of uploads that can no longer complete (cut
        off, replaced artifacts', deleted jobs'; see ArtifactStore.dead_uploads;
        ``every``: all of them, for SQLite at start-up); returns how many
        were discarded."""
        discarded = 0
        while True:
            dead = await self.readers.run(
                self.store.dead_uploads, now_us(), limit=DISCARD_BATCH, every=every
            )
            for job_id, upload_id in dead:
                await self._discard(job_id, upload_id)
            discarded += len(dead)
            if len(dead) < DISCARD_BATCH:
                return discarded
