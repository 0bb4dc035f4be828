"""kill -9 and restart: acknowledged work survives, running work is rescued,
watchers resume without a gap."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest
from conftest import ServerProcess
from helpers import eventually

from jobstream.client import JobClient, JobEvent, JobState, UnavailableError

pytestmark = pytest.mark.timeout(120)

StartServer = Callable[..., ServerProcess]

SHORT_BUDGET_S = 1.0
"""The read-retry budget of the client whose read is to give up: long
enough for several retries, shorter than the default's five seconds that
would only be waited out."""


def test_acknowledged_submits_survive_sigkill(start_server: StartServer) -> None:
    server = start_server()
    acknowledged: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def submitter(n: int) -> None:
        with JobClient(server.target, timeout=5) as client:
            i = 0
            while not stop.is_set():
                try:
                    job = client.submit("crash.test", request_id=f"s{n}-{i}")
                except UnavailableError:
                    return  # the server is gone; unacknowledged calls may be lost
                with lock:
                    acknowledged.append(job.id)
                i += 1

    with ThreadPoolExecutor(8) as pool:
        for n in range(8):
            pool.submit(submitter, n)
        eventually(lambda: len(acknowledged) >= 200, timeout=30)
        server.kill()
        stop.set()
    server.restart()
    with JobClient(server.target) as client:
        stored = {j.id for j in client.list(kinds=["crash.test"], page_size=1000)}
    assert set(acknowledged) <= stored


def test_job_running_in_embedded_worker_is_rescued_after_sigkill(
    start_server: StartServer,
) -> None:
    server = start_server(handlers=("jobstream.client.demo",))
    with JobClient(server.target) as client:
        job = client.submit("demo.sleep", {"seconds": 3})
        eventually(lambda: client.get(job.id).state is JobState.RUNNING)
    server.kill()
    server.restart()
    with JobClient(server.target) as client:
        final = client.wait(job.id, timeout=60)
        assert final.state is JobState.SUCCEEDED and final.attempt == 2
        reasons = [
            e.state_change.reason
            for e in client.watch(job.id)
            if isinstance(e, JobEvent) and e.state_change
        ]
        assert any("server restarted" in r for r in reasons)


def test_watch_resumes_across_restart_without_gap(start_server: StartServer) -> None:
    server = start_server(handlers=("jobstream.client.demo",))
    seqs: list[int] = []
    errors: list[BaseException] = []
    with JobClient(server.target) as client:
        job = client.submit("demo.count", {"n": 150, "delay": 0.02})

        def watch() -> None:
            try:
                with JobClient(server.target) as own:
                    seqs.extend(e.seq for e in own.watch(job.id) if isinstance(e, JobEvent))
            except BaseException as exc:  # reported below, in the test's thread
                errors.append(exc)

        watcher = threading.Thread(target=watch)
        watcher.start()
        eventually(lambda: len(seqs) > 30)
        server.kill()
        server.restart()
        watcher.join(90)
        assert not errors and not watcher.is_alive()
        final = client.get(job.id)
    assert final.state is JobState.SUCCEEDED
    assert seqs == list(range(1, final.last_seq + 1))


def test_reads_ride_over_a_restart_writes_are_not_resent(
    start_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="jobstream.client.calls")
    server = start_server()
    with (
        JobClient(server.target, timeout=10) as client,
        JobClient(server.target, timeout=10, read_retry_timeout=SHORT_BUDGET_S) as short,
    ):
        job = client.submit("crash.reads")
        assert short.get(job.id).id == job.id  # reached once: its reads are retried
        server.kill()
        with pytest.raises(UnavailableError):
            client.submit("crash.reads")  # a write fails rather than risk running twice
        with pytest.raises(UnavailableError):
            short.get(job.id)  # a read retries for a while (its budget), then says so
        assert any("retrying" in r.getMessage() for r in caplog.records)
        caplog.clear()

        def restart_once_retrying() -> None:
            eventually(lambda: any("retrying" in r.getMessage() for r in caplog.records))
            server.restart()

        # The server comes back while a read is being retried: it answers.
        restarting = threading.Thread(target=restart_once_retrying)
        restarting.start()
        try:
            assert client.get(job.id).id == job.id
            assert [j.id for j in client.list(kinds=["crash.reads"])] == [job.id]
        finally:
            restarting.join(30)
        assert any(r.getMessage().startswith("GetJob: ") for r in caplog.records)
