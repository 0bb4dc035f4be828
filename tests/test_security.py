"""TLS and mutual TLS, the loopback-only rule, watcher caps, BadRequest
details and the CLI's security flags, against real servers."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from authmatrix import TOKENS, write_tokens
from cli_runner import run_cli
from conftest import InProcessServer
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from helpers import eventually, job_in

from jobstream.client import JobClient, JobState
from jobstream.client.errors import JobstreamError
from jobstream.client.security import Security
from jobstream.v1 import job_service_pb2, job_service_pb2_grpc

CALL_TIMEOUT_S = 10.0
"""Deadline of the raw calls here."""

StartServer = Callable[..., InProcessServer]


def _tls_args(pki: Path, mutual: bool = False) -> tuple[str, ...]:
    args = ("--tls-cert", str(pki / "server.pem"), "--tls-key", str(pki / "server.key"))
    return (*args, "--tls-client-ca", str(pki / "ca.pem")) if mutual else args


@pytest.mark.parametrize("depth", ["shallow", "deep"])
def test_tls_server_with_embedded_worker(
    start_inprocess_server: StartServer, pki: Path, depth: str
) -> None:
    # "deep": a data directory whose socket path would pass the 107
    # characters a Unix socket path may have.
    name = "tls" if depth == "shallow" else "d" * 110
    server = start_inprocess_server(
        extra_args=_tls_args(pki), handlers=("jobstream.client.demo",), name=name
    )
    with JobClient(server.target, security=Security(ca=pki / "ca.pem")) as client:
        job = client.submit("demo.count", {"n": 3})
        # The in-process worker reaches a TLS server through its private socket.
        assert eventually(lambda: job_in(client, job.id), timeout=30).state is JobState.SUCCEEDED
    with JobClient(server.target, timeout=3) as plaintext, pytest.raises(JobstreamError):
        plaintext.get(job.id)


def test_mutual_tls_needs_a_client_certificate(
    start_inprocess_server: StartServer, pki: Path
) -> None:
    server = start_inprocess_server(extra_args=_tls_args(pki, mutual=True))
    with_cert = Security(ca=pki / "ca.pem", cert=pki / "client.pem", key=pki / "client.key")
    with JobClient(server.target, security=with_cert) as client:
        assert client.submit("x.y").state is JobState.QUEUED
    without = Security(ca=pki / "ca.pem")
    with JobClient(server.target, security=without, timeout=5) as client:
        with pytest.raises(JobstreamError) as exc:
            client.submit("x.y")
        assert exc.value.code is grpc.StatusCode.UNAVAILABLE


def _serve_args(tmp_path: Path, *extra: str) -> list[str]:
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    return [sys.executable, "-m", "jobstream.server", "--data-dir", str(data), *extra]


def test_refuses_to_listen_beyond_loopback_unprotected(tmp_path: Path) -> None:
    done = subprocess.run(
        _serve_args(tmp_path, "--host", "0.0.0.0", "--port", "0"),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "--insecure" in done.stderr and "beyond loopback" in done.stderr


def test_a_second_server_cannot_take_a_port_in_use(
    tmp_path: Path, start_inprocess_server: StartServer
) -> None:
    first = start_inprocess_server()
    port = first.target.rsplit(":", 1)[1]
    (tmp_path / "second").mkdir()
    done = subprocess.run(
        _serve_args(tmp_path / "second", "--port", port),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode != 0
    assert f"Failed to bind to address 127.0.0.1:{port}" in done.stderr
    with JobClient(first.target) as client:
        assert client.submit("still.first").id


@pytest.mark.parametrize("how", ["insecure", "tokens"])
def test_listens_beyond_loopback_when_told_or_protected(
    tmp_path: Path, start_inprocess_server: StartServer, how: str
) -> None:
    extra = (
        ("--insecure",)
        if how == "insecure"
        else ("--tokens-file", str(write_tokens(tmp_path / "t.json")))
    )
    server = start_inprocess_server(extra_args=("--host", "0.0.0.0", *extra))
    token = None if how == "insecure" else TOKENS["alice"][0]
    with JobClient(server.target, security=Security(token=token)) as client:
        assert client.submit("x.y").state is JobState.QUEUED


def test_watchers_capped_per_principal_and_server(
    start_inprocess_server: StartServer,
) -> None:
    server = start_inprocess_server(
        extra_args=("--max-watchers", "3", "--max-watchers-per-principal", "2")
    )
    channel = grpc.insecure_channel(server.target)
    stub = job_service_pb2_grpc.JobServiceStub(channel)
    try:
        job_id = stub.SubmitJob(job_service_pb2.SubmitJobRequest(kind="x.y")).job.id
        request = job_service_pb2.WatchJobRequest(job_id=job_id)
        open_streams = []
        for _ in range(2):
            stream: Any = stub.WatchJob(request, timeout=60)
            next(stream)  # the snapshot: the stream holds its slot now
            open_streams.append(stream)
        third: Any = stub.WatchJob(request, timeout=CALL_TIMEOUT_S)
        with pytest.raises(grpc.RpcError) as exc:
            next(third)
        assert exc.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "--max-watchers-per-principal" in (exc.value.details() or "")
        # A closed stream gives its slot back.
        open_streams.pop().cancel()
        again = eventually(lambda: _opens(stub, request), timeout=15)
        again.cancel()
    finally:
        for stream in open_streams:
            stream.cancel()
        channel.close()


def _opens(stub: job_service_pb2_grpc.JobServiceStub, request: Any) -> Any:
    stream: Any = stub.WatchJob(request, timeout=60)
    try:
        next(stream)
    except grpc.RpcError:
        return None
    return stream


def test_invalid_argument_carries_bad_request_details(
    start_inprocess_server: StartServer,
) -> None:
    server = start_inprocess_server()
    with grpc.insecure_channel(server.target) as channel:
        stub = job_service_pb2_grpc.JobServiceStub(channel)
        with pytest.raises(grpc.RpcError) as exc:
            stub.GetJob(job_service_pb2.GetJobRequest(job_id="../etc"), timeout=CALL_TIMEOUT_S)
    assert exc.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    status = rpc_status.from_call(exc.value)
    assert status is not None
    bad = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(bad)
    assert [v.field for v in bad.field_violations] == ["job_id"]


def test_message_size_limit_is_resource_exhausted(
    start_inprocess_server: StartServer,
) -> None:
    server = start_inprocess_server(extra_args=("--max-message-bytes", "4096"))
    with JobClient(server.target) as client, pytest.raises(JobstreamError) as exc:
        client.submit("x.y", {"blob": "x" * 10_000})
    assert exc.value.code is grpc.StatusCode.RESOURCE_EXHAUSTED


def test_cli_token_from_environment(tmp_path: Path, start_inprocess_server: StartServer) -> None:
    server = start_inprocess_server(
        extra_args=("--tokens-file", str(write_tokens(tmp_path / "t.json")))
    )
    target = ("--target", server.target)
    submitted = run_cli([*target, "submit", "x.y"], env={"JOBSTREAM_TOKEN": TOKENS["alice"][0]})
    assert submitted.returncode == 0, submitted.err
    refused = run_cli([*target, "ls"])
    assert refused.returncode == 2
    assert "UNAUTHENTICATED" in refused.err or "token" in refused.err.lower()
