"""Artifact transfer on the client side: writing a download to a file
(resumable, checked against the artifact's sha256) and hashing a file for an
upload. Shared by JobClient, AsyncJobClient and the worker's JobContext."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Generator
from pathlib import Path
from typing import BinaryIO

import grpc

from jobstream.client.errors import DataLossError
from jobstream.client.models import Artifact

__all__ = ["UPLOAD_CHUNK_BYTES", "DownloadSink", "ProgressCallback", "file_digest", "read_chunks"]

UPLOAD_CHUNK_BYTES = 256 * 1024
"""Bytes per UploadArtifact chunk message (the server takes up to 1 MiB)."""

HASH_BLOCK_BYTES = 1024 * 1024
"""Bytes read at a time while hashing a file."""

ProgressCallback = Callable[[int, int], None]
"""Called as ``(bytes_done, bytes_total)`` while a download runs; bytes_done
counts bytes already in the file when resuming."""


def file_digest(path: Path) -> tuple[int, str]:
    """The size of ``path`` and the SHA-256 of its content (lowercase hex)."""
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as handle:
        while block := handle.read(HASH_BLOCK_BYTES):
            digest.update(block)
            size += len(block)
    return size, digest.hexdigest()


def read_chunks(path: Path, chunk_bytes: int = UPLOAD_CHUNK_BYTES) -> Generator[bytes, None, None]:
    """The content of ``path`` in chunks."""
    with path.open("rb") as handle:
        while chunk := handle.read(chunk_bytes):
            yield chunk


class DownloadSink:
    """Writes a download to ``path`` and checks it when it ends.

    With ``resume`` an existing file is kept and the download continues at
    its size (``offset``); its bytes are hashed first so the final check
    covers the whole file. Without it the file is truncated. A download cut
    short leaves what arrived in place, ready to resume.
    """

    def __init__(
        self, path: Path, *, resume: bool = False, on_progress: ProgressCallback | None = None
    ) -> None:
        self.path = path
        self.on_progress = on_progress
        self.artifact: Artifact | None = None
        self._digest = hashlib.sha256()
        self.offset = 0
        if resume and path.exists():
            self.offset = self._prime(path)
        # Opened when the first message shows the artifact exists: a refused
        # download (unknown job or name) creates no file.
        self._handle: BinaryIO | None = None
        self.received = self.offset

    def _prime(self, path: Path) -> int:
        """Hashes the bytes already downloaded; returns their count."""
        size = 0
        with path.open("rb") as handle:
            while block := handle.read(HASH_BLOCK_BYTES):
                self._digest.update(block)
                size += len(block)
        return size

    def start(self, artifact: Artifact) -> None:
        """The stream's first message arrived: what the whole file is."""
        self.artifact = artifact
        self._handle = self.path.open("ab" if self.offset else "wb")
        self._report()

    def write(self, chunk: bytes) -> None:
        """The next bytes."""
        if self._handle is None:
            raise DataLossError(
                grpc.StatusCode.DATA_LOSS, "the download sent bytes before metadata"
            )
        self._handle.write(chunk)
        self._digest.update(chunk)
        self.received += len(chunk)
        self._report()

    def finish(self) -> Artifact:
        """Closes the file; DataLossError unless it is complete and its
        sha256 matches the artifact's."""
        artifact = self.artifact
        if artifact is None or self._handle is None:
            raise DataLossError(grpc.StatusCode.DATA_LOSS, "the download sent no metadata")
        self._handle.flush()
        os.fsync(self._handle.fileno())
        self._handle.close()
        if self.received != artifact.size_bytes:
            raise DataLossError(
                grpc.StatusCode.DATA_LOSS,
                f"{artifact.name}: got {self.received} bytes of {artifact.size_bytes}",
            )
        actual = self._digest.hexdigest()
        if actual != artifact.sha256:
            raise DataLossError(
                grpc.StatusCode.DATA_LOSS,
                f"{artifact.name}: sha256 of {self.path} is {actual}, expected "
                f"{artifact.sha256} (was the artifact replaced while resuming?)",
            )
        return artifact

    def close(self) -> None:
        """Closes the file without checking (the download failed)."""
        if self._handle is not None:
            self._handle.close()

    def _report(self) -> None:
        if self.on_progress is not None and self.artifact is not None:
            self.on_progress(self.received, self.artifact.size_bytes)
