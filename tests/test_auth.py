"""Bearer tokens, roles and per-owner isolation against a real server.

The full authorization matrix (every RPC x principal x own / other's /
missing job) runs once, as scenario 10 of the fault suite
(tests/faults/test_fault_auth.py).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from authmatrix import TOKENS, metadata, write_tokens
from conftest import InProcessServer
from helpers import eventually, job_in

from jobstream.client import (
    AlreadyExistsError,
    InvalidArgumentError,
    Job,
    JobClient,
    JobSpec,
    JobState,
    NotFoundError,
)
from jobstream.client.errors import JobstreamError
from jobstream.client.security import Security
from jobstream.v1 import job_service_pb2, job_service_pb2_grpc

WATCH_TIMEOUT_S = 15.0
"""Deadline of every watch stream in these tests."""


StartServer = Callable[..., InProcessServer]


def _tokens_server(start: StartServer, tmp_path: Path, **kwargs: object) -> InProcessServer:
    tokens = write_tokens(tmp_path / "tokens.json")
    extra = ("--tokens-file", str(tokens), *kwargs.pop("extra_args", ()))  # type: ignore[misc]
    return start(extra_args=extra, **kwargs)


def _client(server: InProcessServer, caller: str) -> JobClient:
    return JobClient(server.target, security=Security(token=TOKENS[caller][0]))


def test_owner_isolation_through_the_client(
    start_inprocess_server: StartServer, tmp_path: Path
) -> None:
    server = _tokens_server(start_inprocess_server, tmp_path)
    with _client(server, "alice") as alice, _client(server, "bob") as bob:
        mine = alice.submit("x.y", request_id="same-key")
        theirs = bob.submit("x.y", request_id="same-key")
        # Idempotency keys are per principal: the same key makes two jobs.
        assert mine.id != theirs.id
        assert mine.owner == "alice" and theirs.owner == "bob"
        with pytest.raises(NotFoundError) as other:
            alice.get(theirs.id)
        with pytest.raises(NotFoundError) as missing:
            alice.get("job_" + "0" * 26)
        assert str(other.value).replace(theirs.id, "ID") == str(missing.value).replace(
            "job_" + "0" * 26, "ID"
        )
        # allow_missing answers "nothing deleted" and leaves bob's job alone.
        assert not alice.delete(theirs.id, allow_missing=True).deleted
        assert bob.get(theirs.id).id == theirs.id


def test_embedded_worker_runs_with_tokens_on(
    start_inprocess_server: StartServer, tmp_path: Path
) -> None:
    server = _tokens_server(start_inprocess_server, tmp_path, handlers=("jobstream.client.demo",))
    with _client(server, "alice") as alice:
        job = alice.submit("demo.count", {"n": 3})
        final = eventually(lambda: job_in(alice, job.id), timeout=30)
        assert final.state is JobState.SUCCEEDED


def test_tokens_file_errors_stop_the_server(
    start_inprocess_server: StartServer, tmp_path: Path
) -> None:
    bad = tmp_path / "tokens.json"
    bad.write_text('{"tokens": [{"token": "t", "principal": "p", "roles": ["root"]}]}')
    with pytest.raises(RuntimeError, match="roles are"):
        start_inprocess_server(extra_args=("--tokens-file", str(bad)))


def test_missing_token_is_unauthenticated(
    start_inprocess_server: StartServer, tmp_path: Path
) -> None:
    server = _tokens_server(start_inprocess_server, tmp_path)
    with JobClient(server.target) as anonymous, pytest.raises(JobstreamError) as exc:
        next(iter(anonymous.list()), None)
    assert exc.value.code is grpc.StatusCode.UNAUTHENTICATED


def test_chosen_job_ids_are_namespaced_by_principal(
    start_inprocess_server: StartServer, tmp_path: Path
) -> None:
    server = _tokens_server(start_inprocess_server, tmp_path)
    with (
        _client(server, "alice") as alice,
        _client(server, "bob") as bob,
        _client(server, "admin") as admin,
    ):
        assert bob.submit("x.y", job_id="bob.nightly-1").id == "bob.nightly-1"
        assert alice.submit("x.y", job_id="alice.nightly-1").owner == "alice"
        # bob's id and an unused id in bob's namespace answer alike: no
        # submit tells alice whether another principal's job exists.
        answers = []
        for taken in ("bob.nightly-1", "bob.unused-1", "nightly-1"):
            with pytest.raises(InvalidArgumentError) as refused:
                alice.submit("x.y", job_id=taken)
            assert refused.value.field == "job_id"
            assert "must start with 'alice.'" in str(refused.value)
            answers.append(str(refused.value).replace(taken, "ID"))
        assert len(set(answers)) == 1
        with pytest.raises(InvalidArgumentError) as batch:
            alice.submit_many([JobSpec(kind="x.y"), JobSpec(kind="x.y", job_id="bob.nightly-1")])
        assert batch.value.field == "requests[1].job_id"
        # Its own namespace behaves as before: a taken id is ALREADY_EXISTS.
        with pytest.raises(AlreadyExistsError):
            alice.submit("x.y", job_id="alice.nightly-1")
        # Admins choose any id.
        assert admin.submit("x.y", job_id="nightly-1").id == "nightly-1"
    assert [j.id for j in _listed(server, "admin")].count("bob.nightly-1") == 1


def _listed(server: InProcessServer, caller: str) -> list[Job]:
    with _client(server, caller) as client:
        return list(client.list())


@pytest.mark.parametrize("name", ["Growth", "team.growth", "a" * 33, "x y", "-lead"])
def test_principal_names_that_cannot_prefix_an_id_stop_the_server(
    start_inprocess_server: StartServer, tmp_path: Path, name: str
) -> None:
    bad = tmp_path / "tokens.json"
    bad.write_text(json.dumps({"tokens": [{"token": "t", "principal": name, "roles": ["reader"]}]}))
    with pytest.raises(RuntimeError, match=r"principal.*must match"):
        start_inprocess_server(extra_args=("--tokens-file", str(bad)))


def _watch_list(server: InProcessServer, caller: str, after: int) -> Any:
    channel = grpc.insecure_channel(server.target)
    stub = job_service_pb2_grpc.JobServiceStub(channel)
    stream = stub.WatchJobs(
        job_service_pb2.WatchJobsRequest(after_position=after),
        metadata=metadata(caller),
        timeout=WATCH_TIMEOUT_S,
    )
    return channel, stream


def test_resumed_watch_list_hears_of_own_deletions_and_no_others(
    start_inprocess_server: StartServer, tmp_path: Path
) -> None:
    server = _tokens_server(start_inprocess_server, tmp_path)
    with _client(server, "alice") as alice, _client(server, "bob") as bob:
        mine = alice.submit("x.y").id
        theirs = bob.submit("x.y").id
        # A position from before the deletions, taken from a first stream.
        channel, stream = _watch_list(server, "alice", 0)
        try:
            position = next(m.position for m in stream if m.caught_up)
        finally:
            stream.cancel()
            channel.close()
        # bob's deletion comes first: had it been sent, it would arrive
        # before alice's own.
        bob.delete(theirs)
        alice.delete(mine)
    for caller, expected in (
        ("alice", [mine]),
        ("alice-reader", [mine]),
        ("admin", [theirs, mine]),
    ):
        channel, stream = _watch_list(server, caller, position)
        deleted: list[str] = []
        try:
            for message in stream:
                if message.HasField("deleted_job_id"):
                    deleted.append(message.deleted_job_id)
                if mine in deleted:
                    break
        finally:
            stream.cancel()
            channel.close()
        assert deleted == expected, caller
