"""Handlers that pick up where they stopped: demo.count checkpoints after
each item; a graceful stop of its server makes it give the job back at
once, and the rerun after the restart resumes after the last item stored,
so every item is counted exactly once. On both backends."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from cli_runner import run_cli
from conftest import InProcessServer
from helpers import eventually

from jobstream.client import JobClient, JobState

N = 1500
"""Items of the job: long enough to be stopped in the middle (the stop comes
after item 200; the 1,300 left take at least 2.6 s at 2 ms each). The size
is not what is tested: every item is counted once whatever N is."""


def test_a_stopped_count_resumes_from_its_checkpoint(
    start_inprocess_server: Callable[..., InProcessServer], database_url: str
) -> None:
    server = start_inprocess_server(
        handlers=("jobstream.client.demo",),
        extra_args=("--db", database_url, "--grace-seconds", "60"),
    )
    with JobClient(server.target) as client:
        job = client.submit("demo.count", {"n": N, "delay": 0.002})
        eventually(lambda: client.get(job.id).progress.done >= 200, timeout=30)
    server.stop()  # fails if it waits out the 60 s grace period

    server.restart()
    with JobClient(server.target) as client:
        stopped = client.get(job.id)
        assert stopped.checkpoint is not None and 200 <= stopped.checkpoint["done"] < N
        final = client.wait(job.id, timeout=120)
        assert final.state is JobState.SUCCEEDED, final.error
        assert final.checkpoint == {"done": N}
        lines = [e.log.text for e in client.logs(job.id) if e.log is not None]
    done = stopped.checkpoint["done"]
    assert f"worker stopping after item {done} of {N}; a rerun resumes there" in lines
    assert f"resuming after item {done} of {N}" in lines
    items = Counter(t for t in lines if t.startswith("item "))
    assert len(items) == N and set(items.values()) == {1}, "an item counted twice or never"

    shown = run_cli(["--target", server.target, "get", job.id], env={"COLUMNS": "200"})
    assert "checkpoint" in shown.out and f'"done": {N}' in shown.out
