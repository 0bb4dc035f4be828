"""Artifacts that versions before migration 0007 kept as files,
``DATA/artifacts/<job id>/<name>``, brought into the database at start-up.

Only the server whose data directory holds a file can import it, so every
server looks at every start-up. The rows still to import are read through a
partial index that is empty once they are all in, so afterwards this costs
one index lookup. Each file is read into chunks, checked against its row's
size and sha256, and stored in one writer operation (all or nothing); only
then is the file removed, with its job's directory once that is empty.
Nothing else under ``DATA/artifacts`` is touched.

A row whose file is not here: with SQLite (one server per database) the file
is gone for good, so the row is dropped with a warning. With PostgreSQL the
data directory of another server may hold it: the row stays (listed;
downloads answer FAILED_PRECONDITION) until that server starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from jobstream.server import limits
from jobstream.server.artifacts import CHUNK_BYTES
from jobstream.server.errors import FailedPrecondition
from jobstream.server.files import ARTIFACTS_DIR
from jobstream.server.readers import Readers
from jobstream.server.store.artifacts import ArtifactStore
from jobstream.server.writer import Writer
from jobstream.v1 import errors_pb2

log = logging.getLogger(__name__)


IMPORT_PAGE = 500
"""Rows still to import read per query."""


@dataclass(frozen=True, kw_only=True, slots=True)
class ImportOutcome:
    """What an import pass did."""

    imported: int = 0
    imported_bytes: int = 0
    dropped: int = 0
    """Rows deleted because their file is gone (SQLite only)."""
    elsewhere: int = 0
    """Rows left for another server (PostgreSQL only)."""
    unreferenced: int = 0
    """Files left under DATA/artifacts that no remaining artifact needs."""


async def import_legacy_artifacts(
    store: ArtifactStore, writer: Writer, readers: Readers, data_dir: Path, *, sole_server: bool
) -> ImportOutcome:
    """Imports the files of earlier versions found in this server's data
    directory; ``sole_server`` (SQLite) drops rows whose file is missing.
    File-system work runs on threads of its own, database reads on the
    reader threads, writes through the writer."""
    root = data_dir / ARTIFACTS_DIR
    imported = imported_bytes = dropped = elsewhere = 0
    after = ("", "")
    while True:
        rows = await readers.run(store.legacy_artifacts, after=after, limit=IMPORT_PAGE)
        for job_id, name, size, sha256 in rows:
            path = await asyncio.to_thread(_file_of, root, job_id, name)
            if path is not None and await _import(
                store, writer, job_id, name, path=path, size=size, sha256=sha256
            ):
                imported += 1
                imported_bytes += size
                await asyncio.to_thread(_remove, path)
            elif sole_server:
                log.warning(
                    "artifact %r of job %s: dropped, its file %s is missing or damaged",
                    name,
                    job_id,
                    root / job_id / name,
                )
                await _drop(store, writer, job_id, name)
                dropped += 1
            else:
                elsewhere += 1
        if len(rows) < IMPORT_PAGE:
            break
        after = rows[-1][:2]
    unreferenced = await asyncio.to_thread(_count_files, root)
    return ImportOutcome(
        imported=imported,
        imported_bytes=imported_bytes,
        dropped=dropped,
        elsewhere=elsewhere,
        unreferenced=unreferenced,
    )


async def _import(
    store: ArtifactStore,
    writer: Writer,
    job_id: str,
    name: str,
    *,
    path: Path,
    size: int,
    sha256: str,
) -> bool:
    """Stores the file's bytes as the artifact's; False (with a warning)
    when they do not match its row or the row changed meanwhile."""
    upload_id = secrets.token_hex(16)
    try:
        await writer.run(
            lambda c: store.import_artifact(
                c,
                job_id,
                name,
                upload_id,
                _read_checked(path, size, sha256),
                size_bytes=size,
                sha256=sha256,
            )
        )
    except FailedPrecondition as exc:
        log.warning("artifact %r of job %s: not imported from %s: %s", name, job_id, path, exc)
        return False
    return True


async def _drop(store: ArtifactStore, writer: Writer, job_id: str, name: str) -> None:
    await writer.run(lambda c: store.drop_legacy_artifact(c, job_id, name))


def _file_of(root: Path, job_id: str, name: str) -> Path | None:
    """The artifact's file of an earlier version, if this data directory
    holds it. A stored row is not trusted to name a path: ids and names
    must have their valid forms, and no symlink is followed out."""
    valid_id = limits.CLIENT_JOB_ID.fullmatch(job_id) or limits.SERVER_JOB_ID.fullmatch(job_id)
    if not valid_id or not limits.ARTIFACT_NAME.fullmatch(name):
        return None
    directory = root / job_id
    path = directory / name
    if directory.is_symlink() or path.is_symlink() or not path.is_file():
        return None
    return path


def _read_checked(path: Path, size: int, sha256: str) -> Iterator[bytes]:
    """The file in CHUNK_BYTES chunks; FailedPrecondition at the end unless
    its size and sha256 are the row's."""
    digest = hashlib.sha256()
    seen = 0
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK_BYTES):
            digest.update(chunk)
            seen += len(chunk)
            yield chunk
    if seen != size or digest.hexdigest() != sha256:
        raise FailedPrecondition(
            f"the file holds {seen} bytes with sha256 {digest.hexdigest()}; "
            f"the artifact is {size} bytes with sha256 {sha256}",
            field="name",
            reason=errors_pb2.ARTIFACT_NOT_READY,
            # The file is <root>/<job id>/<name> (see _file_of).
            metadata={"jobId": path.parent.name, "name": path.name},
        )


def _remove(path: Path) -> None:
    """Removes an imported file, and its job's directory once empty."""
    path.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        path.parent.rmdir()  # fails, as it should, while other files are there


def _count_files(root: Path) -> int:
    """Files (at any depth, symlinks not followed) under ``root``; 0 when
    it does not exist."""
    return sum(len(files) for _, _, files in os.walk(root))
