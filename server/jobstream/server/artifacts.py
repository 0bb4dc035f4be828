"""Artifacts: the output files a worker uploads for a job, kept under
``data/artifacts/<job id>/<name>`` and listed, downloaded and deleted with
the job.

An upload is streamed to a temporary file in the job's artifact directory
while its SHA-256 is computed; only when size and digest match the header
does one writer operation record the artifact (fenced by the lease, like any
report) and move the file into place. The row and the file therefore appear
together: a reader never sees an artifact whose bytes are not there, and a
refused or broken upload leaves nothing behind. Names are plain file names
(limits.ARTIFACT_NAME), so the path cannot leave the artifact directory;
temporary files start with a dot, which no artifact name can.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import BinaryIO

from jobstream.server import limits
from jobstream.server.domain import Artifact, ArtifactSpec, Changes, now_us
from jobstream.server.errors import InvalidArgument, NotFound, OutOfRange
from jobstream.server.files import artifact_dir
from jobstream.server.service import JobsService

log = logging.getLogger(__name__)

DOWNLOAD_CHUNK_BYTES = 256 * 1024
"""Bytes per DownloadArtifact message: large enough to keep per-message
overhead small, well under the default 4 MiB gRPC message limit."""

TEMP_PREFIX = ".upload-"
"""Temporary upload files start with this; no artifact name can."""


class ArtifactFiles:
    """Upload, list and download of artifacts, over a JobsService's store,
    writer and reader threads."""

    def __init__(self, service: JobsService) -> None:
        self.service = service

    def path(self, job_id: str, name: str) -> Path:
        """Where an artifact's bytes live."""
        return artifact_dir(self.service.data_dir, job_id) / name

    async def upload(
        self, spec: ArtifactSpec, chunks: AsyncIterator[bytes]
    ) -> tuple[Artifact, int]:
        """Stores the streamed content as artifact ``spec.name`` of the
        leased job; returns it and the seq of its artifact_added event."""
        service = self.service
        store = service.store
        # Refuse a stale lease before taking the bytes, not after.
        await service.read(store.check_lease, spec.job_id, spec.lease_id, now_us())
        directory = artifact_dir(service.data_dir, spec.job_id)
        temp = directory / f"{TEMP_PREFIX}{secrets.token_hex(8)}"
        final = directory / spec.name
        digest = hashlib.sha256()
        received = 0
        handle: BinaryIO = await service.read(_open_temp, temp)
        stored = False
        try:
            async for chunk in chunks:
                received += len(chunk)
                if received > spec.size_bytes:
                    raise InvalidArgument(
                        f"more bytes arrived than the {spec.size_bytes} announced",
                        field="header.size_bytes",
                    )
                digest.update(chunk)
                await service.read(handle.write, chunk)
            await service.read(_sync_close, handle)
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

            def record(changes: Changes) -> tuple[Artifact, int]:
                result = store.add_artifact(
                    changes,
                    spec.job_id,
                    spec.lease_id,
                    name=spec.name,
                    size_bytes=spec.size_bytes,
                    sha256=spec.sha256,
                    content_type=spec.content_type,
                    max_per_job=limits.MAX_ARTIFACTS_PER_JOB,
                    now=now_us(),
                )
                # Moved in the same operation, after the row was accepted: a
                # refused upload (stale lease, too many artifacts) never
                # replaces the file of an earlier one with the same name.
                os.replace(temp, final)
                _sync_dir(directory)
                return result

            result = await service.writer.run(record)
            stored = True
            return result
        finally:
            if not stored:
                handle.close()
                await service.read(_discard, temp)

    async def list(self, job_id: str) -> list[Artifact]:
        """The job's artifacts, by name."""
        return await self.service.read(self.service.store.list_artifacts, job_id)

    async def download(
        self, job_id: str, name: str, offset: int
    ) -> AsyncIterator[Artifact | bytes]:
        """The artifact's metadata, then its bytes from ``offset`` in chunks.

        The file is opened once, before the first chunk: a re-upload under
        the same name while this runs replaces the directory entry, not the
        open file, so the bytes sent always belong to the metadata sent. A
        download resumed after such a replacement gets the new file's tail;
        the sha256 in the metadata lets the client notice.
        """
        service = self.service
        artifact = await service.read(service.store.get_artifact, job_id, name)
        if offset > artifact.size_bytes:
            raise OutOfRange(
                f"{offset} is beyond the artifact's size {artifact.size_bytes}", field="offset"
            )
        try:
            handle: BinaryIO = await service.read(_open_at, self.path(job_id, name), offset)
        except FileNotFoundError:
            raise NotFound(
                f"the file of artifact {name!r} of job {job_id!r} is missing", field="name"
            ) from None
        try:
            yield artifact
            while True:
                chunk = await service.read(handle.read, DOWNLOAD_CHUNK_BYTES)
                if not chunk:
                    return
                yield chunk
        finally:
            handle.close()


def _open_temp(path: Path) -> BinaryIO:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.open("xb")


def _open_at(path: Path, offset: int) -> BinaryIO:
    handle = path.open("rb")
    handle.seek(offset)
    return handle


def _sync_close(handle: BinaryIO) -> None:
    """Flushes the upload to disk before it is recorded: an acknowledged
    upload survives a crash."""
    handle.flush()
    os.fsync(handle.fileno())
    handle.close()


def _sync_dir(directory: Path) -> None:
    """Makes the rename itself durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _discard(temp: Path) -> None:
    """Removes a refused upload, and the directory if it held only that."""
    with contextlib.suppress(FileNotFoundError):
        temp.unlink()
    with contextlib.suppress(OSError):
        temp.parent.rmdir()  # fails, as it should, when other artifacts are there
