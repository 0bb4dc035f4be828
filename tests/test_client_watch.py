"""Watch resumption without a server: a scripted stub drops streams with
UNAVAILABLE and the client must resume from the last seq / position, never
repeating the snapshot or an event."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

import grpc
import pytest

from jobstream.client import (
    AsyncJobClient,
    Job,
    JobChange,
    JobClient,
    JobEvent,
    NotFoundError,
    UnavailableError,
)
from jobstream.v1 import job_pb2, job_service_pb2


class FakeRpcError(grpc.RpcError):
    """A failed call's error."""

    def __init__(self, code: grpc.StatusCode, details: str = "") -> None:
        super().__init__(details)
        self._code = code
        self._details = details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


DROP = FakeRpcError(grpc.StatusCode.UNAVAILABLE, "Socket closed")
"""Script entry: the stream breaks here."""

Script = Sequence[Any]
"""One stream: responses, optionally ending with an error to raise."""


class FakeCall:
    """A scripted server stream, iterable sync or async, cancellable."""

    def __init__(self, script: Script) -> None:
        self.script = list(script)
        self.cancelled = False

    def __iter__(self) -> Iterator[Any]:
        for item in self.script:
            if isinstance(item, grpc.RpcError):
                raise item
            yield item

    async def _aiter(self) -> AsyncIterator[Any]:
        for item in self:
            yield item

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._aiter()

    def cancel(self) -> bool:
        self.cancelled = True
        return True


class FakeStub:
    """Answers WatchJob/WatchJobs from a list of scripts, recording requests."""

    def __init__(self, scripts: Sequence[Script]) -> None:
        self.scripts = list(scripts)
        self.requests: list[Any] = []
        self.calls: list[FakeCall] = []

    def _next(self, request: Any) -> FakeCall:
        self.requests.append(request)
        if not self.scripts:
            raise AssertionError(f"unexpected call {request}")
        call = FakeCall(self.scripts.pop(0))
        self.calls.append(call)
        return call

    def WatchJob(self, request: Any, timeout: float | None = None) -> FakeCall:
        return self._next(request)

    def WatchJobs(self, request: Any, timeout: float | None = None) -> FakeCall:
        return self._next(request)


def snapshot(
    state: job_pb2.JobState.ValueType = job_pb2.JOB_STATE_RUNNING, last_seq: int = 0
) -> Any:
    job = job_pb2.Job(id="j", kind="k", state=state, last_seq=last_seq)
    return job_service_pb2.WatchJobResponse(snapshot=job)


def event(seq: int, state: job_pb2.JobState.ValueType | None = None) -> Any:
    msg = job_pb2.JobEvent(job_id="j", seq=seq)
    if state is None:
        msg.log.text = f"line {seq}"
    else:
        msg.state_change.state = state
    return job_service_pb2.WatchJobResponse(events=job_service_pb2.JobEventBatch(events=[msg]))


def batch(*responses: Any) -> Any:
    """The events of ``event(...)`` responses, as one message."""
    return job_service_pb2.WatchJobResponse(
        events=job_service_pb2.JobEventBatch(events=[e for r in responses for e in r.events.events])
    )


def change(position: int, job_id: str = "j", caught_up: bool = False, token: str = "") -> Any:
    if caught_up:
        return job_service_pb2.WatchJobsResponse(position=position, caught_up=True)
    job = job_pb2.Job(id=job_id, kind="k", state=job_pb2.JOB_STATE_RUNNING)
    return job_service_pb2.WatchJobsResponse(position=position, job=job, listing_token=token)


def sync_client(stub: FakeStub, resume_timeout: float = 5.0) -> JobClient:
    client = JobClient("127.0.0.1:1", resume_timeout=resume_timeout)
    client._stub = stub  # type: ignore[assignment]
    return client


def seqs(items: Sequence[Job | JobEvent]) -> list[int | str]:
    return ["snapshot" if isinstance(i, Job) else i.seq for i in items]


SUCCEEDED = job_pb2.JOB_STATE_SUCCEEDED


def test_resumes_after_last_seq_without_repeats() -> None:
    stub = FakeStub(
        [
            [snapshot(), event(1), event(2), DROP],
            [snapshot(last_seq=3), event(2), event(3), DROP],
            [snapshot(last_seq=4), event(1), event(3), event(4, SUCCEEDED)],
        ]
    )
    with sync_client(stub) as client:
        items = list(client.watch("j"))
    assert seqs(items) == ["snapshot", 1, 2, 3, 4]
    assert [r.after_seq for r in stub.requests] == [0, 2, 3]
    assert all(call.cancelled for call in stub.calls)


def test_batched_events_are_unpacked_once_each_in_order() -> None:
    # A resumed stream's batch may start before the last seen seq; a
    # terminal event inside a batch ends the watch there.
    stub = FakeStub(
        [
            [snapshot(), batch(event(1), event(2), event(3)), DROP],
            [
                snapshot(last_seq=5),
                batch(event(2), event(3), event(4)),
                event(5, SUCCEEDED),
                batch(event(6), event(7)),
            ],
        ]
    )
    with sync_client(stub) as client:
        items = list(client.watch("j"))
    assert seqs(items) == ["snapshot", 1, 2, 3, 4, 5]
    assert [r.after_seq for r in stub.requests] == [0, 3]


def test_a_terminal_event_inside_a_batch_ends_the_watch() -> None:
    stub = FakeStub([[snapshot(last_seq=2), batch(event(1), event(2, SUCCEEDED), event(3))]])
    with sync_client(stub) as client:
        assert seqs(list(client.watch("j"))) == ["snapshot", 1, 2]
    assert stub.calls[0].cancelled


def test_after_seq_is_where_the_watch_starts() -> None:
    stub = FakeStub([[snapshot(last_seq=7), event(5), event(6), event(7, SUCCEEDED)]])
    with sync_client(stub) as client:
        items = list(client.watch("j", after_seq=5))
    assert seqs(items) == ["snapshot", 6, 7]
    assert stub.requests[0].after_seq == 5


def test_ends_after_the_terminal_event_even_if_the_stream_stays_open() -> None:
    stub = FakeStub([[snapshot(), event(1, SUCCEEDED), event(2)]])
    with sync_client(stub) as client:
        assert seqs(list(client.watch("j"))) == ["snapshot", 1]
    assert stub.calls[0].cancelled


def test_an_earlier_terminal_state_does_not_end_the_watch() -> None:
    # History: failed, then retried (a later event) - only the newest counts.
    stub = FakeStub([[snapshot(last_seq=3), event(1, SUCCEEDED), event(2), event(3, SUCCEEDED)]])
    with sync_client(stub) as client:
        assert seqs(list(client.watch("j"))) == ["snapshot", 1, 2, 3]


def test_terminal_snapshot_with_nothing_after_ends() -> None:
    stub = FakeStub([[snapshot(SUCCEEDED, last_seq=4)]])
    with sync_client(stub) as client:
        assert seqs(list(client.watch("j", after_seq=4))) == ["snapshot"]


def test_a_stream_that_ends_early_is_resumed() -> None:
    stub = FakeStub([[snapshot(), event(1)], [snapshot(), event(2, SUCCEEDED)]])
    with sync_client(stub) as client:
        assert seqs(list(client.watch("j"))) == ["snapshot", 1, 2]
    assert stub.requests[1].after_seq == 1


def test_no_resume_without_resume() -> None:
    stub = FakeStub([[snapshot(), event(1), DROP]])
    with sync_client(stub) as client, pytest.raises(UnavailableError):
        list(client.watch("j", resume=False))


def test_a_server_down_at_the_start_fails_fast() -> None:
    stub = FakeStub([[DROP]])
    with sync_client(stub) as client, pytest.raises(UnavailableError):
        list(client.watch("j"))
    assert len(stub.requests) == 1


def test_other_errors_are_not_resumed() -> None:
    gone = FakeRpcError(grpc.StatusCode.NOT_FOUND, "job_id: job 'j' was deleted")
    stub = FakeStub([[snapshot(), event(1), gone]])
    with sync_client(stub) as client, pytest.raises(NotFoundError, match="was deleted"):
        list(client.watch("j"))


def test_gives_up_after_resume_timeout() -> None:
    stub = FakeStub([[snapshot(), event(1), DROP]] + [[DROP]] * 50)
    with sync_client(stub, resume_timeout=0.5) as client:
        seen: list[Job | JobEvent] = []
        with pytest.raises(UnavailableError):
            for item in client.watch("j"):
                seen.append(item)
    assert seqs(seen) == ["snapshot", 1]
    # Backoff 0.1, 0.2, 0.4 ... : a handful of attempts in half a second.
    assert 3 <= len(stub.requests) <= 6


def test_watch_jobs_resumes_by_position() -> None:
    stub = FakeStub(
        [
            # The initial listing carries the head position on every job and
            # a listing token: a drop inside it resumes after the last job.
            [change(10, "a", token="after-a"), DROP],
            [change(10, "b", token="after-b"), change(10, caught_up=True), change(11, "a"), DROP],
            [change(11, "a"), change(12, "b"), DROP],
            [change(10, caught_up=True), change(12, "b"), change(13, "c")],
            [],
        ]
    )
    with sync_client(stub) as client:
        changes: list[JobChange] = []
        for c in client.watch_jobs(resume=True):
            changes.append(c)
            if c.position == 13:
                break
    described = [
        ("caught_up" if c.caught_up else c.job.id if c.job else "?", c.position) for c in changes
    ]
    assert described == [
        ("a", 10),
        ("b", 10),
        ("caught_up", 10),
        ("a", 11),
        ("b", 12),
        ("c", 13),
    ]
    assert [r.after_position for r in stub.requests] == [0, 0, 11, 12]
    assert [r.listing_token for r in stub.requests] == ["", "after-a", "", ""]


def test_async_watch_resumes_the_same_way() -> None:
    stub = FakeStub(
        [
            [snapshot(), event(1), event(2), DROP],
            [snapshot(), event(2), event(3, SUCCEEDED)],
        ]
    )

    async def main() -> list[Job | JobEvent]:
        client = AsyncJobClient("127.0.0.1:1")
        client._stub_cache = stub  # type: ignore[assignment]
        return [item async for item in client.watch("j")]

    assert seqs(asyncio.run(main())) == ["snapshot", 1, 2, 3]
    assert [r.after_seq for r in stub.requests] == [0, 2]
