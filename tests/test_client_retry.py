"""The read retry without a server: a scripted stub answers once, then is
unavailable. Reads are sent again for the client's ``read_retry_timeout``
(a constructor argument, 5 s unless given), writes never, and a client that
never reached its server fails at once; the same for both faces."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import grpc
import pytest

from jobstream.client import AsyncJobClient, JobClient, UnavailableError
from jobstream.client.calls import DEFAULT_READ_RETRY_TIMEOUT
from jobstream.v1 import job_pb2, job_service_pb2

SHORT_BUDGET_S = 0.5
"""A read retry budget short enough for a unit test."""


class Unavailable(grpc.RpcError):
    """The error of a call to a server that is down."""

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNAVAILABLE

    def details(self) -> str:
        return "connection refused"


def answer() -> job_service_pb2.GetJobResponse:
    job = job_pb2.Job(id="j", kind="k", state=job_pb2.JOB_STATE_RUNNING)
    return job_service_pb2.GetJobResponse(job=job)


class ScriptedStub:
    """Answers unary calls from a script (responses, or errors to raise),
    then is unavailable; counts the calls of each method."""

    def __init__(self, script: Sequence[Any] = ()) -> None:
        self.script = list(script)
        self.calls: dict[str, int] = {}

    def _next(self, method: str) -> Any:
        self.calls[method] = self.calls.get(method, 0) + 1
        item = self.script.pop(0) if self.script else Unavailable()
        if isinstance(item, grpc.RpcError):
            raise item
        return item

    def GetJob(self, request: Any, **options: Any) -> Any:
        return self._next("GetJob")

    def CancelJob(self, request: Any, **options: Any) -> Any:
        return self._next("CancelJob")


class AsyncScriptedStub(ScriptedStub):
    """The same, for the asyncio client."""

    async def GetJob(self, request: Any, **options: Any) -> Any:
        return self._next("GetJob")

    async def CancelJob(self, request: Any, **options: Any) -> Any:
        return self._next("CancelJob")


def blocking_client(stub: ScriptedStub, **kwargs: Any) -> JobClient:
    client = JobClient("127.0.0.1:1", **kwargs)
    client._stub = stub  # type: ignore[assignment]
    return client


def test_the_budget_defaults_to_five_seconds() -> None:
    assert DEFAULT_READ_RETRY_TIMEOUT == 5.0
    with JobClient("127.0.0.1:1") as client:
        assert client.read_retry_timeout == 5.0


def test_a_read_is_retried_for_the_budget_given() -> None:
    stub = ScriptedStub([answer()])
    with blocking_client(stub, read_retry_timeout=SHORT_BUDGET_S) as client:
        assert client.get("j").id == "j"  # the server was reached
        with pytest.raises(UnavailableError, match="connection refused"):
            client.get("j")
    # Backoff 0.1, 0.2, 0.4 ...: the first try and a few more in half a second.
    assert 3 <= stub.calls["GetJob"] - 1 <= 6


def test_a_read_that_gets_an_answer_again_succeeds() -> None:
    stub = ScriptedStub([answer(), Unavailable(), Unavailable(), answer()])
    with blocking_client(stub, read_retry_timeout=SHORT_BUDGET_S) as client:
        client.get("j")
        assert client.get("j").id == "j"
    assert stub.calls["GetJob"] == 4


def test_a_write_is_never_sent_twice() -> None:
    stub = ScriptedStub([answer()])
    with blocking_client(stub, read_retry_timeout=SHORT_BUDGET_S) as client:
        client.get("j")
        with pytest.raises(UnavailableError):
            client.cancel("j")
    assert stub.calls["CancelJob"] == 1


def test_a_server_never_reached_fails_at_once() -> None:
    stub = ScriptedStub()
    with blocking_client(stub) as client, pytest.raises(UnavailableError):
        client.get("j")
    assert stub.calls["GetJob"] == 1


def test_the_async_client_takes_the_same_budget() -> None:
    stub = AsyncScriptedStub([answer()])

    async def main() -> None:
        client = AsyncJobClient("127.0.0.1:1", read_retry_timeout=SHORT_BUDGET_S)
        client._stub_cache = stub  # type: ignore[assignment]
        assert (await client.get("j")).id == "j"
        with pytest.raises(UnavailableError):
            await client.get("j")
        with pytest.raises(UnavailableError):
            await client.cancel("j")

    asyncio.run(main())
    assert 3 <= stub.calls["GetJob"] - 1 <= 6
    assert stub.calls["CancelJob"] == 1
