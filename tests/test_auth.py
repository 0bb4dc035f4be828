"""Bearer tokens, roles and per-owner isolation against a real server."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from authmatrix import TOKENS, run_matrix, write_tokens
from conftest import ServerProcess
from helpers import eventually, job_in

from jobstream.client import JobClient, JobState, NotFoundError
from jobstream.client.errors import JobstreamError
from jobstream.client.security import Security


def _tokens_server(
    start_server: Callable[..., ServerProcess], tmp_path: Path, **kwargs: object
) -> ServerProcess:
    tokens = write_tokens(tmp_path / "tokens.json")
    extra = ("--tokens-file", str(tokens), *kwargs.pop("extra_args", ()))  # type: ignore[misc]
    return start_server(extra_args=extra, **kwargs)


def _client(server: ServerProcess, caller: str) -> JobClient:
    return JobClient(server.target, security=Security(token=TOKENS[caller][0]))


def test_full_auth_matrix(start_server: Callable[..., ServerProcess], tmp_path: Path) -> None:
    server = _tokens_server(start_server, tmp_path)
    result = run_matrix(server.target)
    assert result.cases > 150
    assert result.failures == []


def test_owner_isolation_through_the_client(
    start_server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    server = _tokens_server(start_server, tmp_path)
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
    start_server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    server = _tokens_server(start_server, tmp_path, handlers=("jobstream.client.demo",))
    with _client(server, "alice") as alice:
        job = alice.submit("demo.count", {"n": 3})
        final = eventually(lambda: job_in(alice, job.id), timeout=30)
        assert final.state is JobState.SUCCEEDED


def test_tokens_file_errors_stop_the_server(tmp_path: Path) -> None:
    bad = tmp_path / "tokens.json"
    bad.write_text('{"tokens": [{"token": "t", "principal": "p", "roles": ["root"]}]}')
    data = tmp_path / "data"
    data.mkdir()
    server = ServerProcess(data, extra_args=("--tokens-file", str(bad)))
    with pytest.raises(RuntimeError, match="roles are"):
        server.start()


def test_missing_token_is_unauthenticated(
    start_server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    server = _tokens_server(start_server, tmp_path)
    with JobClient(server.target) as anonymous, pytest.raises(JobstreamError) as exc:
        next(iter(anonymous.list()), None)
    assert exc.value.code is grpc.StatusCode.UNAUTHENTICATED
