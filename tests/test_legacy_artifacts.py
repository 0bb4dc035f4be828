"""Upgrading from a version that kept artifacts as files under
DATA/artifacts/<job id>/: a database left at migration 0005 with artifact
rows and files, then real servers of this version started on it."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from conftest import ServerProcess
from helpers import insert_old_job
from playhouse.migrations import Runner

from jobstream.client import FailedPreconditionError, JobClient
from jobstream.server.db import MIGRATIONS_DIR, execute, open_database
from jobstream.server.domain import now_us

pytestmark = pytest.mark.timeout(120)

BEFORE_CHUNKS = "0005_drop_redundant_indexes"
"""The last migration of the versions that kept artifacts as files."""


def blob(seed: str, size: int) -> bytes:
    """Deterministic bytes that differ per seed."""
    block = hashlib.sha256(seed.encode()).digest()
    return (block * (size // len(block) + 1))[:size]


def old_database(url: str, artifacts: dict[str, bytes]) -> str:
    """A database as an earlier version left it: one job with a row per
    artifact (its bytes were a file); returns the job id."""
    db = open_database(url, migrate=False)
    try:
        with db.connection_context():
            Runner(db, str(MIGRATIONS_DIR)).up(target=BEFORE_CHUNKS)
        job_id = "legacy-1"
        with db.atomic():
            insert_old_job(db, job_id, kind="legacy")
            for name, data in artifacts.items():
                execute(
                    db,
                    "INSERT INTO job_artifact (job_id, name, size_bytes, sha256, content_type,"
                    " create_time, attempt) VALUES (?, ?, ?, ?, '', ?, 1)".replace("?", db.param),
                    (job_id, name, len(data), hashlib.sha256(data).hexdigest(), now_us()),
                )
    finally:
        db.close()
    return job_id


def place(data_dir: Path, job_id: str, files: dict[str, bytes]) -> Path:
    """Writes files where an earlier version kept the job's artifacts."""
    directory = data_dir / "artifacts" / job_id
    directory.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (directory / name).write_bytes(data)
    return directory


@contextmanager
def serving(data_dir: Path, *extra: str) -> Iterator[ServerProcess]:
    """A server of this version on ``data_dir``, killed afterwards."""
    server = ServerProcess(data_dir, extra_args=extra)
    try:
        yield server.start()
    finally:
        server.kill()


def fetch(client: JobClient, job_id: str, name: str, into: Path) -> bytes:
    """Downloads an artifact to ``into`` and returns its bytes."""
    client.download(job_id, name, into)  # checks size and sha256
    return into.read_bytes()


def test_sqlite_imports_its_files_and_drops_rows_whose_file_is_gone(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    good = blob("good", 2 * 1024 * 1024 + 99)
    damaged = blob("damaged", 5000)
    job_id = old_database(
        str(data_dir / "jobstream.db"),
        {"good.bin": good, "damaged.bin": damaged, "missing.bin": b"gone"},
    )
    directory = place(
        data_dir,
        job_id,
        {"good.bin": good, "damaged.bin": damaged[:-1] + b"!", ".upload-0123abcd": b"half"},
    )
    with serving(data_dir) as server, JobClient(server.target) as client:
        assert [a.name for a in client.artifacts(job_id)] == ["good.bin"]
        assert fetch(client, job_id, "good.bin", tmp_path / "good.bin") == good
        log = server.log()
        assert "'missing.bin'" in log and "'damaged.bin'" in log and "dropped" in log
        assert "files no artifact needs" in log
    # Only the imported file was removed; what was not imported stays.
    assert sorted(p.name for p in directory.iterdir()) == [".upload-0123abcd", "damaged.bin"]
    with serving(data_dir) as again, JobClient(again.target) as client:
        assert fetch(client, job_id, "good.bin", tmp_path / "again.bin") == good


def test_postgres_each_server_imports_the_files_it_holds(postgres_url: str, tmp_path: Path) -> None:
    on_a = blob("a", 1500)
    on_b = blob("b", 1024 * 1024 + 1)
    job_id = old_database(postgres_url, {"a.bin": on_a, "b.bin": on_b, "lost.bin": b"lost"})
    dirs = {name: tmp_path / name / "data" for name in ("a", "b")}
    place(dirs["a"], job_id, {"a.bin": on_a})
    place(dirs["b"], job_id, {"b.bin": on_b})
    with serving(dirs["a"], "--db", postgres_url) as a, JobClient(a.target) as client:
        assert fetch(client, job_id, "a.bin", tmp_path / "a.bin") == on_a
        # B's file is not A's to judge: listed, and not downloadable yet.
        assert [x.name for x in client.artifacts(job_id)] == ["a.bin", "b.bin", "lost.bin"]
        with pytest.raises(FailedPreconditionError) as waiting:
            client.download(job_id, "b.bin", tmp_path / "early.bin")
        assert waiting.value.field == "name"
        assert waiting.value.reason == "ARTIFACT_NOT_READY"
        assert waiting.value.metadata["jobId"] == job_id
        with serving(dirs["b"], "--db", postgres_url):
            assert fetch(client, job_id, "b.bin", tmp_path / "b.bin") == on_b
        with pytest.raises(FailedPreconditionError):
            client.download(job_id, "lost.bin", tmp_path / "lost.bin")
    assert not (dirs["a"] / "artifacts" / job_id).exists()
    assert not (dirs["b"] / "artifacts" / job_id).exists()
