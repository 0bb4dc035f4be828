"""Finding things from the command line, on both backends: a job's log lines
by level, substring, time and tail; jobs by creation and end time, by a
substring of id, kind, labels or error, and by a params member."""

from __future__ import annotations

import json
import sqlite3
import time
import uuid

import pytest
from cli_runner import CliRun, run_cli
from conftest import InProcessServer

from jobstream.client import JobClient, JobSpec, JobState

pytestmark = pytest.mark.both_backends


def cli(server: InProcessServer, *args: str) -> CliRun:
    result = run_cli(["--target", server.target, *args])
    assert result.returncode == 0, result.err
    return result


INDEXED_WITHIN_S = 30.0
"""How long the test waits for the server to index its submitted jobs."""


def _marked(server: InProcessServer) -> int:
    """Jobs of the server's SQLite file not yet in its trigram table."""
    with sqlite3.connect(server.db_path) as conn:
        (count,) = conn.execute('SELECT count(*) FROM "search_pending"').fetchone()
    return int(count)


def _texts(run: CliRun) -> list[str]:
    return [json.loads(line)["log"]["text"] for line in run.out.splitlines()]


def test_logs_by_level_text_time_and_tail(server: InProcessServer) -> None:
    with JobClient(server.target) as client:
        counted = client.submit("demo.count", {"n": 30, "delay": 0})
        failed = client.submit("demo.fail", max_attempts=1)
        assert client.wait(counted.id, timeout=30).state is JobState.SUCCEEDED
        assert client.wait(failed.id, timeout=30).state is JobState.FAILED
        assert [e.log.text for e in client.logs(failed.id, level="error") if e.log] == [
            "about to fail"
        ]

    logs = ("logs", counted.id, "--json")
    grepped = _texts(cli(server, *logs, "--grep", "ITEM 2 "))
    assert grepped == ["item 2 of 30"]
    assert _texts(cli(server, *logs, "--grep", "item 2")) == [
        "item 2 of 30",
        *(f"item {i} of 30" for i in range(20, 30)),
    ]
    assert _texts(cli(server, *logs, "--tail", "2")) == ["item 30 of 30", "counted 30 items"]
    assert _texts(cli(server, *logs, "--grep", "item 3", "--tail", "1")) == ["item 30 of 30"]
    assert len(_texts(cli(server, *logs, "--since", "10m"))) == 31
    assert _texts(cli(server, *logs, "--since", "2999-01-01T00:00:00")) == []
    assert _texts(cli(server, *logs, "--level", "warn")) == []
    assert _texts(cli(server, "logs", failed.id, "--json", "--level", "warn")) == ["about to fail"]
    refused = run_cli(["--target", server.target, "logs", counted.id, "--level", "loud"])
    assert refused.returncode == 2 and "unknown level 'loud'" in refused.err


def test_ls_by_time_text_and_params(server: InProcessServer) -> None:
    suite = f"search-{uuid.uuid4().hex[:8]}"
    with JobClient(server.target) as client:
        eu = client.submit(
            "demo.sleep", {"seconds": 0, "region": "eu", "n": 3}, labels={"s": suite}
        )
        us = client.submit(
            "demo.sleep", {"seconds": 0, "region": "us", "n": 4}, labels={"s": suite}
        )
        odd = client.submit("search.nobody", {"cfg": {"mode": "fast"}}, labels={"s": suite})
        client.wait(eu.id, timeout=30)
        client.wait(us.id, timeout=30)

    def ls(*args: str) -> set[str]:
        found = json.loads(cli(server, "ls", "--json", "--label", f"s={suite}", *args).out)
        return {job["id"] for job in found}

    assert ls() == {eu.id, us.id, odd.id}
    assert ls("--param", "region=eu") == {eu.id}
    assert ls("--param", "n=4") == {us.id}
    assert ls("--param", "cfg.mode=fast") == {odd.id}
    assert ls("--param", "region=eu", "--param", "n=4") == set()
    assert ls("--grep", "NOBODY") == {odd.id}
    assert ls("--grep", suite) == {eu.id, us.id, odd.id}
    assert ls("--since", "1h") == {eu.id, us.id, odd.id}
    assert ls("--until", "1h") == set()
    assert ls("--ended-since", "1h") == {eu.id, us.id}
    table = cli(server, "ls", "--label", f"s={suite}", "--param", "region=us", "--limit", "5")
    assert us.id[-8:] in table.out and eu.id[-8:] not in table.out
    with JobClient(server.target) as client:
        client.cancel(odd.id)


def test_params_compare_canonical_json_alike_on_both_backends(server: InProcessServer) -> None:
    suite = f"canon-{uuid.uuid4().hex[:8]}"
    note = "n" * 300  # longer than an inline index value: looked up by digest
    with JobClient(server.target) as client:
        job = client.submit(
            "search.nobody",
            {"price": 1.5, "whole": 2.0, "cfg": {"b": [1, 2.0], "a": "x"}, "note": note},
            labels={"s": suite},
        )
        other = client.submit("search.nobody", {"price": 1.25}, labels={"s": suite})

    def ls(*args: str) -> set[str]:
        found = json.loads(cli(server, "ls", "--json", "--label", f"s={suite}", *args).out)
        return {j["id"] for j in found}

    assert ls("--param", "price=1.50") == {job.id}
    assert ls("--param", "price=1.5e0") == {job.id}
    assert ls("--param", "whole=2") == {job.id}
    assert ls("--param", "whole=2.0") == {job.id}
    assert ls("--param", 'cfg={"a": "x", "b": [1.0, 2]}') == {job.id}
    assert ls("--param", "cfg.b=[1,2]") == {job.id}
    assert ls("--param", f"note={note}") == {job.id}
    assert ls("--param", f"note={note[:-1]}") == set()
    assert ls("--param", "price=1.250") == {other.id}
    assert ls("--grep", "CANON-") == {job.id, other.id}
    with JobClient(server.target) as client:
        client.cancel(job.id)
        client.cancel(other.id)


def test_jobs_found_from_submit_on_and_indexed_when_idle(server: InProcessServer) -> None:
    suite = f"fresh-{uuid.uuid4().hex[:8]}"
    with JobClient(server.target) as client:
        made = client.submit_many(
            [
                JobSpec(kind="search.nobody", params={"shard": i % 2}, labels={"s": suite})
                for i in range(40)
            ]
        )
        wanted = {j.id for j in made[::2]}

        def found() -> set[str]:
            return {j.id for j in client.list(text=suite, params={"shard": 0})}

        assert found() == wanted  # at once, whether indexed yet or not
        if server.db_url is None:
            # The writer indexes the marked jobs when it has nothing queued.
            deadline = time.monotonic() + INDEXED_WITHIN_S
            while _marked(server) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert _marked(server) == 0
        assert found() == wanted
        for job in made:
            client.cancel(job.id)
