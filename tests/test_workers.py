"""Who serves which kind: the workers polling a server are recorded (at
most every few seconds each) and listed by ListWorkers, ``JobClient.workers``
and ``jobstream workers``; a queued job no live worker serves says so in
``get`` and ``watch``; ``submit`` warns of a kind no worker served lately;
``--refuse-unserved`` refuses such submits. On PostgreSQL, a worker polling
one server is listed by another."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
from cli_runner import run_cli
from conftest import InProcessServer
from helpers import RawWorker, eventually

from jobstream.client import FailedPreconditionError, JobClient, JobState, WorkerInfo

pytestmark = pytest.mark.both_backends

PRESENCE_TIMEOUT_S = 30.0
"""Long enough for a few of the servers' 5 s presence writes."""

UNSERVED_NOTE = "no live worker serves kind demo.typo on queue default"
"""What get and watch say of the queued job nobody serves."""


def _embedded(client: JobClient) -> WorkerInfo | None:
    return next((w for w in client.workers() if w.worker_id.startswith("embedded:")), None)


def test_workers_are_listed_with_kinds_jobs_and_liveness(server: InProcessServer) -> None:
    with JobClient(server.target) as client:
        worker = eventually(lambda: _embedded(client), timeout=PRESENCE_TIMEOUT_S)
        assert worker.live and worker.host and worker.concurrency >= 1
        assert "demo.count" in worker.kinds and worker.queues == ("default",)
        assert worker.serves("demo.sleep") and not worker.serves("demo.sleep", "other")
        job = client.submit("demo.sleep", {"seconds": 60}, labels={"suite": "workers"})

        def holding() -> bool:
            found = _embedded(client)
            return found is not None and found.running_jobs >= 1

        eventually(holding, timeout=PRESENCE_TIMEOUT_S)
        client.cancel(job.id)

    listed = run_cli(["--target", server.target, "workers", "--json"])
    assert listed.returncode == 0, listed.err
    rows = json.loads(listed.out)
    assert any(r["worker_id"] == worker.worker_id and r["live"] for r in rows), rows
    table = run_cli(["--target", server.target, "workers"], env={"COLUMNS": "200"})
    assert worker.worker_id in table.out and "demo.count" in table.out and "yes" in table.out


def test_unserved_kinds_are_noted_warned_of_and_may_be_refused(
    server: InProcessServer, start_inprocess_server: Callable[..., InProcessServer]
) -> None:
    target = server.target
    with JobClient(target) as client:
        eventually(lambda: _embedded(client), timeout=PRESENCE_TIMEOUT_S)
    submitted = run_cli(["--target", target, "submit", "demo.typo", "--label", "suite=workers"])
    assert submitted.returncode == 0
    assert "no worker has served kind demo.typo on queue default" in submitted.err
    job_id = submitted.out.strip()
    served = run_cli(["--target", target, "submit", "demo.sleep", "-p", "seconds=0"])
    assert served.returncode == 0 and "warning" not in served.err

    shown = run_cli(["--target", target, "get", job_id], env={"COLUMNS": "200"})
    assert UNSERVED_NOTE in shown.out

    # watch says so first, then follows the job (here to its cancel, made
    # once the note is shown: before it, no queued job would be left to note).
    def cancel_once_noted(out: Callable[[], str]) -> None:
        eventually(lambda: f"note: {UNSERVED_NOTE}" in out())
        _cancel(target, job_id)

    watched = run_cli(
        ["--target", target, "watch", job_id], env={"COLUMNS": "200"}, meanwhile=cancel_once_noted
    )
    assert watched.returncode == 3, watched.err
    assert f"note: {UNSERVED_NOTE}" in watched.out

    strict = start_inprocess_server(
        handlers=("jobstream.client.demo",), extra_args=("--refuse-unserved",), name="strict"
    )
    with JobClient(strict.target) as client:
        with pytest.raises(FailedPreconditionError) as refused:
            client.submit("demo.typo")
        assert "demo.typo" in refused.value.message and refused.value.field == "kind"
        # Once its worker has been recorded, the served kinds go through.
        job = eventually(lambda: _try_submit(client), timeout=PRESENCE_TIMEOUT_S)
        assert client.get(job).state in (JobState.QUEUED, JobState.RUNNING, JobState.SUCCEEDED)


def _cancel(target: str, job_id: str) -> None:
    with JobClient(target) as client:
        client.cancel(job_id)


def _try_submit(client: JobClient) -> str | None:
    try:
        return client.submit("demo.sleep", {"seconds": 0}).id
    except FailedPreconditionError:
        return None


def test_a_standalone_worker_is_known_while_it_polls(bare_server: InProcessServer) -> None:
    worker = RawWorker(bare_server.target, worker_id="raw-presence")
    try:
        worker.acquire("presence.kind", wait=0)
        with JobClient(bare_server.target) as client:
            found = eventually(
                lambda: next((w for w in client.workers() if w.worker_id == "raw-presence"), None),
                timeout=PRESENCE_TIMEOUT_S,
            )
            assert found.kinds == ("presence.kind",) and found.live
    finally:
        worker.close()
