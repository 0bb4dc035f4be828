"""A graceful stop of a server with in-process handlers: the handlers see
``ctx.stopping`` at once; one that can resume gives its job back early
(JobReleased) and the shutdown does not wait out the grace period; one that
runs on finishes within it; and watchers receive every event of that
period live, up to the release or the end, before their streams close."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import InProcessServer
from helpers import eventually

from jobstream.client import JobClient, JobEvent, JobState, UnavailableError

STOP_HANDLERS = """
import time

from jobstream.client import Handlers, JobReleased

handlers = Handlers()


@handlers.handler("stop.release")
def release(ctx):
    for i in range(1, 100_000):
        if ctx.stopping:
            ctx.log(f"stopping at {i}")
            raise JobReleased()
        ctx.log(f"item {i}")
        time.sleep(0.01)


@handlers.handler("stop.finish")
def finish(ctx):
    i = 0
    while not ctx.stopping:
        i += 1
        ctx.log(f"item {i}")
        time.sleep(0.01)
    for j in range(1, 11):
        ctx.log(f"after stop {j}")
        time.sleep(0.01)
    return {"items": i}
"""

GRACE_S = "60"
"""Longer than a test server may take to stop (conftest's STOP_TIMEOUT_S):
a stop that waited out the grace period would fail the test."""


class Watcher(threading.Thread):
    """Follows one job without resuming, recording what arrives and how the
    stream ended."""

    def __init__(self, target: str, job_id: str) -> None:
        super().__init__(daemon=True)
        self.target, self.job_id = target, job_id
        self.events: list[JobEvent] = []
        self.ended: BaseException | None = None
        self.done = threading.Event()

    def run(self) -> None:
        try:
            with JobClient(self.target) as client:
                for item in client.watch(self.job_id, resume=False):
                    if isinstance(item, JobEvent):
                        self.events.append(item)
        except BaseException as exc:
            self.ended = exc
        finally:
            self.done.set()

    def logs(self) -> list[str]:
        return [e.log.text for e in self.events if e.log is not None]

    def states(self) -> list[JobState]:
        return [e.state_change.state for e in self.events if e.state_change is not None]


def _handlers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    module = tmp_path / "modules" / "stop_handlers.py"
    module.parent.mkdir()
    module.write_text(STOP_HANDLERS)
    monkeypatch.syspath_prepend(module.parent)


def test_handlers_see_the_stop_and_watchers_follow_them_live(
    start_inprocess_server: Callable[..., InProcessServer],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _handlers(tmp_path, monkeypatch)
    server = start_inprocess_server(
        handlers=("stop_handlers",), extra_args=("--grace-seconds", GRACE_S)
    )
    with JobClient(server.target) as client:
        released = client.submit("stop.release")
        finished = client.submit("stop.finish")
        watchers = [Watcher(server.target, j.id) for j in (released, finished)]
        for watcher in watchers:
            watcher.start()
        eventually(lambda: all(len(w.logs()) > 5 for w in watchers))

    server.stop()  # fails if it takes the whole grace period
    for watcher in watchers:
        assert watcher.done.wait(30)
    gave_back, ran_on = watchers

    # Released at the stop: its last log line and its return to the queue
    # arrived live, then the stream ended because the server went away.
    assert any(t.startswith("stopping at") for t in gave_back.logs()), gave_back.logs()[-3:]
    assert gave_back.states()[-1] is JobState.QUEUED
    assert isinstance(gave_back.ended, UnavailableError)

    # Ran on through the grace period to its end, followed to the last event.
    assert ran_on.logs()[-10:] == [f"after stop {j}" for j in range(1, 11)]
    assert ran_on.states()[-1] is JobState.SUCCEEDED
    assert ran_on.ended is None

    server.restart()
    with JobClient(server.target) as client:
        job = client.get(released.id)
        # A release does not count as an attempt.
        assert job.state in (JobState.QUEUED, JobState.RUNNING) and job.attempt <= 1
        client.cancel(released.id)
