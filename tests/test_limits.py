"""Configurable limits: long lines cut and flagged, a per-job line cap with
one "truncated" line and then RESOURCE_EXHAUSTED, a label cap; and two
servers in one process, each keeping its own limits and its own database."""

from __future__ import annotations

from collections.abc import Callable

import grpc
import pytest
from conftest import InProcessServer
from helpers import RawWorker

from jobstream.client import InvalidArgumentError, JobClient

LINE_LIMIT = 100
"""--max-log-line-bytes of the server under test."""

LINES_PER_JOB = 10
"""--max-log-lines-per-job of the server under test."""


@pytest.fixture
def limited(start_inprocess_server: Callable[..., InProcessServer]) -> InProcessServer:
    return start_inprocess_server(
        extra_args=(
            "--max-log-line-bytes",
            str(LINE_LIMIT),
            "--max-log-lines-per-job",
            str(LINES_PER_JOB),
            "--max-labels",
            "2",
        )
    )


def test_long_lines_are_cut_and_flagged(limited: InProcessServer) -> None:
    with JobClient(limited.target) as client:
        job = client.submit("limits.cut")
        worker = RawWorker(limited.target)
        try:
            lease = worker.acquire("limits.cut")
            worker.log(job.id, lease.lease_id, ["é" * 200, "short"])
        finally:
            worker.close()
        lines = [e.log for e in client.logs(job.id) if e.log is not None]
    assert [line.truncated for line in lines] == [True, False]
    assert len(lines[0].text.encode()) <= LINE_LIMIT
    assert lines[0].text.startswith("é" * 10) and lines[0].text.endswith("[truncated]")
    assert lines[1].text == "short"


def test_lines_per_job_then_one_marker_then_refusal(limited: InProcessServer) -> None:
    with JobClient(limited.target) as client:
        job = client.submit("limits.count")
        worker = RawWorker(limited.target)
        try:
            lease = worker.acquire("limits.count")
            worker.log(job.id, lease.lease_id, [f"a{i}" for i in range(7)])
            worker.log(job.id, lease.lease_id, [f"b{i}" for i in range(7)])  # 3 fit
            with pytest.raises(grpc.RpcError) as refused:
                worker.log(job.id, lease.lease_id, ["c0"])
        finally:
            worker.close()
        texts = [e.log.text for e in client.logs(job.id) if e.log is not None]
    assert texts[:LINES_PER_JOB] == [f"a{i}" for i in range(7)] + ["b0", "b1", "b2"]
    assert len(texts) == LINES_PER_JOB + 1 and texts[-1].startswith("log truncated")
    assert refused.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "--max-log-lines-per-job" in (refused.value.details() or "")


def test_label_count_limit_is_configurable(limited: InProcessServer) -> None:
    with JobClient(limited.target) as client:
        client.submit("limits.labels", labels={"a": "1", "b": "2"})
        with pytest.raises(InvalidArgumentError, match="the limit is 2"):
            client.submit("limits.labels", labels={"a": "1", "b": "2", "c": "3"})


def test_two_servers_in_one_process_keep_their_own_limits_and_databases(
    start_inprocess_server: Callable[..., InProcessServer],
) -> None:
    strict = start_inprocess_server(extra_args=("--max-labels", "1"), name="strict")
    lenient = start_inprocess_server(extra_args=("--max-labels", "3"), name="lenient")
    two = {"a": "1", "b": "2"}
    with JobClient(strict.target) as s, JobClient(lenient.target) as le:
        with pytest.raises(InvalidArgumentError, match="the limit is 1"):
            s.submit("limits.two", labels=two)
        kept = le.submit("limits.two", labels=two)
        own = s.submit("limits.one", labels={"a": "1"})
        assert [j.id for j in le.list()] == [kept.id]
        assert [j.id for j in s.list()] == [own.id]
    assert strict.sql("SELECT id FROM job") == [(own.id,)]
    assert lenient.sql("SELECT id FROM job") == [(kept.id,)]
