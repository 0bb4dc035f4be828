"""A job's recorded files can only ever remove what belongs to that job.

A worker (role ``worker``) tries to record the database and its side files,
the data directory's folders, another principal's job directory and
artifacts, ``..`` and paths outside: each ReportJob is refused with
INVALID_ARGUMENT naming ``server_paths[i]`` and stores nothing, while paths inside
the job's own directory are accepted and removed with the job. Every route
that removes files is covered (DeleteJob, DeleteJob with force, PurgeJobs,
retention), and rows holding bad paths written straight into the database
(as before the rule existed) are refused at delete and purge. SQLite: the
database file is what the bad paths aim at.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import grpc
import pytest
from authmatrix import TOKENS, write_tokens
from conftest import InProcessServer, clean_environ
from helpers import RawWorker, eventually, files_handlers_module

from jobstream.client import Job, JobClient, JobEvent, JobState, NotFoundError
from jobstream.client.security import Security
from jobstream.v1 import worker_service_pb2

RULE = "is outside the job's own directories"
"""What every refusal of a path a job does not own says after the path."""

WATCH_DEADLINE_S = 20.0
"""How long a watch in these tests may take before the test fails."""

StartServer = Callable[..., InProcessServer]


def _client(server: InProcessServer, caller: str) -> JobClient:
    return JobClient(server.target, security=Security(token=TOKENS[caller][0]))


def _worker(server: InProcessServer, name: str) -> RawWorker:
    return RawWorker(server.target, worker_id=name, token=TOKENS["worker"][0])


@dataclass
class Scene:
    """A server with tokens; bob's queued job holding a recorded file and
    an artifact (the victim); alice's job leased by a worker (the attacker)."""

    server: InProcessServer
    alice: JobClient
    bob: JobClient
    admin: JobClient
    worker: RawWorker
    victim: str
    job: str
    lease: str

    @property
    def data(self) -> Path:
        return self.server.data_dir.absolute()

    def hostile(self) -> list[str]:
        """Paths the attacking job does not own."""
        data, job, victim = self.data, self.job, self.victim
        link = data / "jobs" / job / "to-data"
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.is_symlink():
            link.symlink_to(data)  # a link inside the job's own dir pointing out of it
        return [
            "jobstream.db",
            "jobstream.db-wal",
            "jobstream.db-shm",
            "jobstream.db-journal",
            str(data / "jobstream.db"),
            "artifacts",
            "jobs",
            ".",
            str(data),
            f"jobs/{victim}",
            f"jobs/{victim}/keep.txt",
            f"artifacts/{victim}",
            f"artifacts/{job}",
            f"jobs/{job}",
            f"jobs/{job}/..",
            f"jobs/{job}/../{victim}",
            f"jobs/{job}/to-data/jobstream.db",
            "../outside.txt",
            str(data.parent / "outside.txt"),
        ]

    def legit(self) -> list[str]:
        """Files the attacking job does own, created on disk."""
        own = self.data / "jobs" / self.job
        (own / "sub").mkdir(parents=True, exist_ok=True)
        (own / "out.csv").write_text("a,b\n")
        (own / "sub" / "part.txt").write_text("part\n")
        return [f"jobs/{self.job}/out.csv", str(own / "sub"), f"jobs/{self.job}/to-data"]

    def report(
        self, files: list[str], line: str = "report"
    ) -> worker_service_pb2.ReportJobResponse:
        return self.worker.log(self.job, self.lease, [line], files=files)

    def attack(self) -> int:
        """Reports every hostile path (after a legit one, so it is server_paths[1])
        and checks each is refused whole; returns how many were refused."""
        legit = self.legit()
        before = self.alice.get(self.job).last_seq
        refused = 0
        for path in self.hostile():
            with pytest.raises(grpc.RpcError) as caught:
                self.report([legit[0], path], line=f"must not be stored: {path}")
            error = caught.value
            assert error.code() is grpc.StatusCode.INVALID_ARGUMENT, (path, error.details())
            assert str(error.details()).startswith(f"server_paths[1]: {path!r} {RULE}"), (
                error.details()
            )
            refused += 1
        assert self.alice.get(self.job).last_seq == before  # nothing stored
        assert self.report(legit).last_seq == before + 1
        return refused

    def intact(self) -> None:
        """The database, the data directory's folders and bob's job, its
        recorded file and its artifact are all still there."""
        assert (self.data / "jobstream.db").is_file()
        assert (self.data / "jobs").is_dir()
        assert (self.data / "jobs" / self.victim / "keep.txt").read_text() == "bob's\n"
        assert self.bob.get(self.victim).state is JobState.QUEUED
        got = self.bob.download(self.victim, "keep.bin", self.data.parent / "keep.bin")
        assert got.size_bytes == len(b"bob's artifact")

    def own_files_gone(self) -> None:
        own = self.data / "jobs" / self.job
        assert not own.exists() and not own.is_symlink()


@contextmanager
def _scene(start: StartServer, tmp_path: Path, *extra: str) -> Iterator[Scene]:
    tokens = write_tokens(tmp_path / "tokens.json")
    server = start(extra_args=("--tokens-file", str(tokens), *extra), name="files")
    data = server.data_dir.absolute()
    (data.parent / "outside.txt").write_text("precious\n")
    with (
        _client(server, "alice") as alice,
        _client(server, "bob") as bob,
        _client(server, "admin") as admin,
    ):
        worker = _worker(server, "files-worker")
        try:
            victim = bob.submit("files.victim").id
            lease = worker.acquire("files.victim")
            keep = data / "jobs" / victim / "keep.txt"
            keep.parent.mkdir(parents=True)
            keep.write_text("bob's\n")
            worker.log(victim, lease.lease_id, ["bob's file"], files=[f"jobs/{victim}/keep.txt"])
            worker.upload(victim, lease.lease_id, "keep.bin", b"bob's artifact")
            # Back to the queue: not terminal, so no purge or retention takes it.
            worker.finish(victim, lease.lease_id, worker_service_pb2.JOB_OUTCOME_RELEASED)
            job = alice.submit("files.attack", labels={"t": "attack"}).id
            lease = worker.acquire("files.attack")
            assert lease.job.id == job
            yield Scene(server, alice, bob, admin, worker, victim, job, lease.lease_id)
        finally:
            worker.close()
    assert (data.parent / "outside.txt").read_text() == "precious\n"


def test_delete_removes_only_what_the_job_owns(
    start_inprocess_server: StartServer, tmp_path: Path
) -> None:
    with _scene(start_inprocess_server, tmp_path) as scene:
        assert scene.attack() == len(scene.hostile())
        scene.worker.finish(scene.job, scene.lease)
        result = scene.alice.delete(scene.job)
        assert result.deleted
        assert f"jobs/{scene.job}" in result.removed_paths
        assert result.refused_paths == ()
        scene.own_files_gone()
        scene.intact()
        # And after a restart (the database was never touched).
        scene.server.stop()
        scene.server.restart()
        scene.intact()
        with pytest.raises(NotFoundError):
            scene.alice.get(scene.job)


def test_force_delete_removes_only_what_the_job_owns(
    start_inprocess_server: StartServer, tmp_path: Path
) -> None:
    with _scene(start_inprocess_server, tmp_path) as scene:
        assert scene.attack() == len(scene.hostile())
        assert scene.alice.get(scene.job).state is JobState.RUNNING
        result = scene.alice.delete(scene.job, force=True)
        assert result.deleted and result.refused_paths == ()
        assert f"jobs/{scene.job}" in result.removed_paths
        scene.own_files_gone()
        scene.intact()


def test_purge_removes_only_what_each_job_owns(
    start_inprocess_server: StartServer, tmp_path: Path
) -> None:
    with _scene(start_inprocess_server, tmp_path) as scene:
        assert scene.attack() == len(scene.hostile())
        scene.worker.finish(scene.job, scene.lease)
        result = scene.admin.purge(older_than=timedelta(0), labels={"t": "attack"})
        assert result.job_ids == (scene.job,)
        assert f"jobs/{scene.job}" in result.removed_paths
        assert result.refused_paths == ()
        scene.own_files_gone()
        scene.intact()


def test_retention_removes_only_what_each_job_owns(
    start_inprocess_server: StartServer, tmp_path: Path
) -> None:
    retention = ("--retention", "1s", "--retention-every", "0.2")
    with _scene(start_inprocess_server, tmp_path, *retention) as scene:
        assert scene.attack() == len(scene.hostile())
        scene.worker.finish(scene.job, scene.lease)

        def purged() -> bool:
            # The sweep deletes the row first and the files after it: wait
            # for both rather than assume the second follows at once.
            try:
                scene.alice.get(scene.job)
            except NotFoundError:
                own = scene.data / "jobs" / scene.job
                return not own.exists() and not own.is_symlink()
            return False

        eventually(purged, timeout=20)
        scene.own_files_gone()
        scene.intact()


def _write_files_column(db: Path, job_id: str, files: list[str]) -> None:
    """Stores ``files`` as the job's recorded paths, as a row written before
    the rule (or by a bug) would hold them; the server is stopped."""
    with sqlite3.connect(db) as conn:
        changed = conn.execute(
            "UPDATE job SET files = ? WHERE id = ?", (json.dumps(files), job_id)
        ).rowcount
    conn.close()
    assert changed == 1


@pytest.mark.parametrize("route", ["delete", "purge"])
def test_stored_rows_with_bad_paths_are_refused_not_obeyed(
    start_inprocess_server: StartServer, tmp_path: Path, route: str
) -> None:
    with _scene(start_inprocess_server, tmp_path) as scene:
        earlier = scene.alice.submit("files.earlier", labels={"t": "keep"})
        legit = scene.legit()
        scene.report(legit)
        scene.worker.finish(scene.job, scene.lease)
        bad = scene.hostile()
        scene.server.stop()
        _write_files_column(scene.server.db_path, scene.job, [*legit, *bad])
        scene.server.restart()
        if route == "delete":
            result = scene.alice.delete(scene.job)
            removed, refused = result.removed_paths, result.refused_paths
        else:
            purged = scene.admin.purge(older_than=timedelta(0), labels={"t": "attack"})
            assert purged.job_ids == (scene.job,)
            removed, refused = purged.removed_paths, purged.refused_paths
        assert sorted(refused) == sorted(bad)
        assert f"jobs/{scene.job}" in removed
        scene.own_files_gone()
        scene.intact()
        scene.server.stop()
        scene.server.restart()
        scene.intact()
        assert scene.alice.get(earlier.id).state is JobState.QUEUED


def test_force_delete_of_a_running_job_ends_its_watchers_with_cancelled(
    start_inprocess_server: StartServer, tmp_path: Path
) -> None:
    with _scene(start_inprocess_server, tmp_path) as scene:
        scene.report([], line="working")
        seen: list[Job | JobEvent] = []
        errors: list[BaseException] = []
        ended = threading.Event()
        working = threading.Event()

        def watch() -> None:
            try:
                for item in scene.alice.watch(scene.job, resume=False):
                    seen.append(item)
                    if isinstance(item, JobEvent) and item.log and item.log.text == "working":
                        working.set()
            except BaseException as exc:
                errors.append(exc)
            finally:
                ended.set()

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        assert working.wait(WATCH_DEADLINE_S), seen
        assert scene.alice.delete(scene.job, force=True).deleted
        assert ended.wait(WATCH_DEADLINE_S), "the watch did not end"
        watcher.join(WATCH_DEADLINE_S)
        assert errors == []
        last = seen[-1]
        assert isinstance(last, JobEvent) and last.state_change is not None
        assert last.state_change.state is JobState.CANCELLED
        assert last.state_change.reason == "deleted with force"
        assert last.state_change.error is not None
        assert last.state_change.error.code == "cancelled"
        with pytest.raises(NotFoundError):
            scene.alice.get(scene.job)
        # The worker's lease ended with the cancel.
        with pytest.raises(grpc.RpcError) as caught:
            scene.report([], line="too late")
        assert caught.value.code() in (
            grpc.StatusCode.NOT_FOUND,
            grpc.StatusCode.FAILED_PRECONDITION,
        )


def test_output_root_files_are_accepted_and_removed_with_the_job(
    start_inprocess_server: StartServer, tmp_path: Path
) -> None:
    root = tmp_path / "outputs"
    other = root / "someone-else"
    other.mkdir(parents=True)
    (other / "x.txt").write_text("not yours\n")
    with _scene(start_inprocess_server, tmp_path, "--output-root", str(root)) as scene:
        mine = root / scene.job
        mine.mkdir()
        (mine / "report.pdf").write_text("pdf\n")
        for path in (str(root), str(other / "x.txt"), str(mine), str(root / scene.victim)):
            with pytest.raises(grpc.RpcError) as caught:
                scene.report([path])
            assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
            assert str(caught.value.details()).startswith(f"server_paths[0]: {path!r} {RULE}")
        scene.report([str(mine / "report.pdf")])
        scene.worker.finish(scene.job, scene.lease)
        result = scene.alice.delete(scene.job)
        assert str(mine.resolve()) in result.removed_paths
        assert not mine.exists()
        assert (other / "x.txt").read_text() == "not yours\n"
        scene.intact()


def test_a_database_inside_a_job_directory_is_never_removed(
    start_inprocess_server: StartServer, tmp_path: Path
) -> None:
    # An operator put --db inside what becomes the job directory of job "alice.dbjob".
    db = tmp_path / "files" / "data" / "jobs" / "alice.dbjob" / "state.db"
    tokens = write_tokens(tmp_path / "tokens.json")
    server = start_inprocess_server(
        extra_args=("--tokens-file", str(tokens), "--db", str(db)), name="files"
    )
    worker = _worker(server, "db-worker")
    try:
        with _client(server, "alice") as alice:
            job = alice.submit("files.db", job_id="alice.dbjob")
            lease = worker.acquire("files.db")
            (db.parent / "out.txt").write_text("out\n")
            with pytest.raises(grpc.RpcError) as caught:
                worker.log(job.id, lease.lease_id, ["x"], files=["jobs/alice.dbjob/state.db"])
            assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
            assert "database" in str(caught.value.details())
            worker.log(job.id, lease.lease_id, ["x"], files=["jobs/alice.dbjob/out.txt"])
            worker.finish(job.id, lease.lease_id)
            result = alice.delete(job.id)
            assert result.deleted and "jobs/alice.dbjob" not in result.removed_paths
            assert "jobs/alice.dbjob/out.txt" in result.removed_paths
            assert db.is_file()
            later = alice.submit("files.db")
            assert alice.get(later.id).state is JobState.QUEUED
    finally:
        worker.close()


def _write_and_delete(client: JobClient, expected_dir: Path) -> None:
    job = client.submit("files.write", max_attempts=1)
    final = client.wait(job.id, timeout=WATCH_DEADLINE_S)
    assert final.state is JobState.SUCCEEDED, final.error
    assert final.result is not None
    out = Path(str(final.result["path"]))
    assert out == expected_dir / job.id / "out.csv"
    assert out.read_text() == "a,b\n"
    result = client.delete(job.id)
    assert not out.exists() and not out.parent.exists()
    assert result.refused_paths == ()


def test_in_process_handlers_write_into_ctx_job_dir(
    start_inprocess_server: StartServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files_handlers_module(tmp_path, monkeypatch)
    server = start_inprocess_server(handlers=("files_handlers",), name="files")
    with JobClient(server.target) as client:
        _write_and_delete(client, server.data_dir.absolute() / "jobs")


def test_a_standalone_worker_writes_under_a_shared_output_root(
    start_inprocess_server: StartServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files_handlers_module(tmp_path, monkeypatch)
    root = tmp_path / "shared"
    root.mkdir()
    server = start_inprocess_server(extra_args=("--output-root", str(root)), name="files")
    argv = [sys.executable, "-m", "jobstream.client.cli", "worker", "--handlers"]
    argv += ["files_handlers", "--target", server.target, "--files-root", str(root)]
    worker = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=clean_environ()
    )
    try:
        with JobClient(server.target) as client:
            _write_and_delete(client, root)
    finally:
        worker.terminate()
        output, _ = worker.communicate(timeout=30)
    assert b"Traceback" not in output, output.decode(errors="replace")


def test_overlapping_output_roots_stop_the_server(tmp_path: Path) -> None:
    from jobstream.server.config import from_args

    data = tmp_path / "data"
    for roots in ([data], [data / "out"], [tmp_path], [tmp_path / "a", tmp_path / "a" / "b"]):
        args = ["--data-dir", str(data)]
        for root in roots:
            args += ["--output-root", str(root)]
        with pytest.raises(SystemExit):
            from_args(args)
    config = from_args(["--data-dir", str(data), "--output-root", str(tmp_path / "out")])
    assert config.output_roots == (tmp_path / "out",)


def test_check_recorded_follows_no_last_symlink(tmp_path: Path) -> None:
    from jobstream.server.files import FileRoots, check_recorded

    data = tmp_path / "data"
    own = data / "jobs" / "j1"
    own.mkdir(parents=True)
    (own / "link").symlink_to(tmp_path)
    (data / "jobs" / "j2").symlink_to(own)  # another job's dir linking into this one
    roots = FileRoots(data_dir=data, database=data / "jobstream.db")
    assert check_recorded(roots, "j1", "jobs/j1/link").target == own / "link"
    assert check_recorded(roots, "j1", "jobs/j1/link/x").target is None
    assert check_recorded(roots, "j2", "jobs/j2/x").target is None
    assert check_recorded(roots, "j1", "jobs/j1/\0").target is None
    assert check_recorded(roots, "..", "jobs/../x").target is None
