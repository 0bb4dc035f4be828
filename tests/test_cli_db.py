"""``jobstream db migrate|check|backup|restore|vacuum``, called in this process
(``cli_runner``); the backup and vacuum against a database a live server in
another process is writing to."""

from __future__ import annotations

import functools
import json
import shutil
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cli_runner import CliRun, run_cli
from conftest import InProcessServer, ServerProcess
from helpers import eventually, files_handlers_module

from jobstream.client import JobClient, JobState
from jobstream.server.db import MIGRATIONS_DIR

ALL_MIGRATIONS = sorted(p.stem for p in MIGRATIONS_DIR.glob("0*.py"))
"""The migration scripts the server ships, in order."""

ENDLESS_COUNT = {"n": 1_000_000, "delay": 0.001}
"""demo.count params for a job that keeps writing events until cancelled."""


class DbRun:
    """A finished ``jobstream db`` run, its output as text."""

    def __init__(self, run: CliRun) -> None:
        self.returncode = run.returncode
        self.stdout = run.out
        self.stderr = run.err


def db_cmd(*args: str) -> DbRun:
    """``jobstream db ARGS`` to completion."""
    return DbRun(run_cli(["db", *args]))


def check_json(*args: str) -> tuple[int, dict[str, Any]]:
    """``db check --json ARGS``: exit status and the parsed report."""
    result = db_cmd("check", "--json", *args)
    assert "Traceback" not in result.stderr, result.stderr
    report: dict[str, Any] = json.loads(result.stdout)
    return result.returncode, report


def test_migrate_then_check(tmp_path: Path) -> None:
    data = tmp_path / "data"
    first = db_cmd("migrate", "--data-dir", str(data))
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip() == f"applied: {', '.join(ALL_MIGRATIONS)}"
    again = db_cmd("migrate", "--data-dir", str(data))
    assert again.returncode == 0
    assert again.stdout.strip() == "schema is up to date"
    code, report = check_json("--data-dir", str(data))
    assert code == 0
    assert report["ok"] is True
    assert report["applied"] == ALL_MIGRATIONS
    assert report["pending"] == [] and report["integrity"] == []


def test_check_reports_pending_migrations(tmp_path: Path) -> None:
    data = tmp_path / "data"
    assert db_cmd("migrate", "--data-dir", str(data)).returncode == 0
    with sqlite3.connect(data / "jobstream.db") as conn:
        conn.execute("DELETE FROM schema_migration WHERE name = ?", (ALL_MIGRATIONS[-1],))
    conn.close()
    result = db_cmd("check", "--data-dir", str(data))
    assert result.returncode == 1
    assert f"pending migration: {ALL_MIGRATIONS[-1]}" in result.stdout
    assert "problems found" in result.stdout


def test_check_reports_corruption(tmp_path: Path) -> None:
    data = tmp_path / "data"
    assert db_cmd("migrate", "--data-dir", str(data)).returncode == 0
    path = data / "jobstream.db"
    with sqlite3.connect(path) as conn:
        conn.executemany(
            "INSERT INTO job_label (job_id, key, value) VALUES (?, ?, ?)",
            [(f"j{i}", "k", "v" * 50) for i in range(500)],
        )
        (page_size,) = conn.execute("PRAGMA page_size").fetchone()
        (root,) = conn.execute(
            "SELECT rootpage FROM sqlite_master WHERE type = 'index' AND tbl_name = 'job_label'"
            " ORDER BY rootpage DESC LIMIT 1"
        ).fetchone()
    conn.close()
    # Scribble over one index page: the schema (page 1) still reads, so the
    # file opens, but the integrity check must notice.
    with path.open("r+b") as f:
        f.seek(page_size * (root - 1))
        f.write(b"\xff" * page_size)
    result = db_cmd("check", "--data-dir", str(data))
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr
    assert "integrity:" in result.stdout or "malformed" in result.stderr


def test_check_refuses_a_missing_database(tmp_path: Path) -> None:
    result = db_cmd("check", "--data-dir", str(tmp_path / "nothing"))
    assert result.returncode == 2
    assert "no database at" in result.stderr
    assert not (tmp_path / "nothing").exists()


def _has_events(client: JobClient, job_id: str) -> bool:
    """Whether the job has stored a few events yet."""
    return client.get(job_id).last_seq > 10


def _backup_is_consistent(path: Path) -> dict[str, tuple[str, int]]:
    """Every job's events in the copy are gap-free and end at its last_seq
    (both are written in the same transaction, so a torn copy would break
    this); returns each job's (state, last_seq)."""
    with sqlite3.connect(path) as conn:
        jobs = conn.execute("SELECT id, state, last_seq FROM job").fetchall()
        seen: dict[str, tuple[str, int]] = {}
        for job_id, state, last_seq in jobs:
            count, top = conn.execute(
                "SELECT count(*), coalesce(max(seq), 0) FROM job_event WHERE job_id = ?",
                (job_id,),
            ).fetchone()
            assert count == top == last_seq, (job_id, count, top, last_seq)
            seen[job_id] = (state, last_seq)
    conn.close()
    return seen


def test_backup_while_serving(
    start_server: Callable[..., ServerProcess],
    start_inprocess_server: Callable[..., InProcessServer],
    tmp_path: Path,
) -> None:
    server = start_server(handlers=("jobstream.client.demo",))
    data = str(server.data_dir)
    with JobClient(server.target) as client:
        jobs = [client.submit("demo.count", ENDLESS_COUNT) for _ in range(3)]
        for job in jobs:
            eventually(functools.partial(_has_events, client, job.id))
        copies = [tmp_path / f"backup{i}.db" for i in range(3)]
        for copy in copies:
            result = db_cmd("backup", str(copy), "--data-dir", data)
            assert result.returncode == 0, result.stderr
            assert f"backed up to {copy}" in result.stdout
        snapshots = [_backup_is_consistent(copy) for copy in copies]
        for job in jobs:
            # Taken mid-run: the copies hold the running job, and later
            # copies hold more of its events.
            states = [snap[job.id][0] for snap in snapshots]
            assert states == ["running"] * len(copies), states
            seqs = [snap[job.id][1] for snap in snapshots]
            assert seqs == sorted(seqs) and seqs[0] > 10
        assert client.get(jobs[0].id).last_seq >= snapshots[-1][jobs[0].id][1]
        for job in jobs:
            client.cancel(job.id)

        refused = db_cmd("backup", str(copies[0]), "--data-dir", data)
        assert refused.returncode == 2 and "exists" in refused.stderr

    code, report = check_json("--db", str(copies[-1]))
    assert code == 0 and report["ok"], report
    assert not Path(f"{copies[-1]}-wal").exists()

    # The copy is a working database: a server started on it has the jobs.
    restored_db = tmp_path / "restored" / "data" / "jobstream.db"
    restored_db.parent.mkdir(parents=True)
    shutil.copy(copies[-1], restored_db)
    restored = start_inprocess_server(name="restored")
    assert restored.db_path == restored_db
    with JobClient(restored.target) as client:
        for job in jobs:
            assert client.get(job.id).kind == "demo.count"


def test_vacuum_while_serving(start_server: Callable[..., ServerProcess]) -> None:
    server = start_server()
    data = str(server.data_dir)
    # 2 MB of pages freed by the deletes, in few calls.
    blob = {"pad": "x" * 100_000}
    with JobClient(server.target) as client:
        ids = [client.submit("vacuum.test", blob).id for _ in range(20)]
        for job_id in ids:
            client.cancel(job_id)
            client.delete(job_id)
        result = db_cmd("vacuum", "--json", "--data-dir", data)
        assert result.returncode == 0, result.stderr
        sizes = json.loads(result.stdout)
        assert sizes["after_bytes"] < sizes["before_bytes"]
        # The server carries on writing after the vacuum.
        kept = client.submit("vacuum.test")
        assert client.get(kept.id).state == JobState.QUEUED
    code, report = check_json("--data-dir", data)
    assert code == 0 and report["ok"]


def test_backup_and_restore_bring_back_rows_artifacts_and_job_files(
    start_inprocess_server: Callable[..., InProcessServer],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    files_handlers_module(tmp_path, monkeypatch)
    server = start_inprocess_server(handlers=("files_handlers", "jobstream.client.demo"))
    data = str(server.data_dir)
    copy = tmp_path / "saved" / "backup.db"
    copy.parent.mkdir()
    with JobClient(server.target) as client:
        written = client.wait(client.submit("files.write").id, timeout=30)
        reported = client.wait(client.submit("demo.report", {"n": 50}).id, timeout=30)
        assert written.state is reported.state is JobState.SUCCEEDED
        out = server.data_dir / "jobs" / written.id / "out.csv"
        assert out.read_text() == "a,b\n"
        # The recorded path is part of the job, in get and its --json.
        assert client.get(written.id).server_paths == (str(out.absolute()),)
        shown = run_cli(["--target", server.target, "get", written.id], env={"COLUMNS": "300"})
        assert "files" in shown.out and str(out.absolute()) in shown.out
        as_json = json.loads(run_cli(["--target", server.target, "get", written.id, "--json"]).out)
        assert as_json["server_paths"] == [str(out.absolute())]
        result = db_cmd("backup", str(copy), "--data-dir", data, "--json")
        assert result.returncode == 0, result.stderr
        report = json.loads(result.stdout)
        assert report["file"] == str(copy) and report["files"] == 1
        saved = copy.parent / "backup.db.files" / "jobs" / written.id / "out.csv"
        assert saved.read_text() == "a,b\n"
        # What the backup must bring back: both jobs, the file, the artifact.
        client.delete(written.id)
        client.delete(reported.id)
        assert not out.exists()
    server.stop()

    refused = db_cmd("restore", str(copy), "--data-dir", data)
    assert refused.returncode == 2 and "stop the server" in refused.stderr
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"not a database" * 100)
    wrong = db_cmd("restore", str(garbage), "--data-dir", data, "--force")
    assert wrong.returncode == 2 and "not a jobstream backup" in wrong.stderr
    restored = db_cmd("restore", str(copy), "--data-dir", data, "--force")
    assert restored.returncode == 0, restored.stderr
    assert f"restored {copy}" in restored.stdout and "1 job files" in restored.stdout
    assert out.read_text() == "a,b\n"

    server.restart()
    with JobClient(server.target) as client:
        assert client.get(written.id).state is JobState.SUCCEEDED
        target = tmp_path / "report.csv"
        client.download(reported.id, "report.csv", target)
        assert target.read_text().count("\n") == 51
        # The restored job's recorded file still goes with it.
        assert f"jobs/{written.id}" in client.delete(written.id).removed_paths
    assert not out.exists()
