"""The server converts each event once for all its watchers, within a
memory budget, and never hands out another event's message."""

from __future__ import annotations

from jobstream.server.convert import MESSAGE_OVERHEAD_BYTES, EventMessages
from jobstream.server.domain import Event, EventKind


def log_event(seq: int, text: str, time: int = 1_763_900_000_000_000) -> Event:
    body = {"text": text, "level": "info", "stream": "", "truncated": False}
    return Event(job_id="job_a", seq=seq, time=time + seq, kind=EventKind.LOG, body=body)


def test_an_event_read_again_is_not_converted_again() -> None:
    messages = EventMessages(1 << 20)
    first, size = messages.get(log_event(1, "hello"))
    again, _ = messages.get(log_event(1, "hello"))  # the same event, read by another watcher
    assert again is first
    assert first.log.text == "hello" and size == first.ByteSize()


def test_a_recreated_job_s_event_gets_its_own_message() -> None:
    messages = EventMessages(1 << 20)
    old, _ = messages.get(log_event(1, "before the delete"))
    new, _ = messages.get(log_event(1, "after", time=1_763_900_000_000_000 + 7))
    assert (old.log.text, new.log.text) == ("before the delete", "after")


def test_memory_budget_drops_the_least_recently_used() -> None:
    messages = EventMessages(3 * (MESSAGE_OVERHEAD_BYTES + 100))
    events = [log_event(seq, "x" * 60) for seq in range(1, 6)]
    kept = {e.seq: messages.get(e)[0] for e in events}
    assert messages.get(events[-1])[0] is kept[5]
    assert messages.get(events[0])[0] is not kept[1]  # dropped, converted anew


def test_batches_are_cut_after_the_event_that_reaches_the_size() -> None:
    messages = EventMessages(1 << 20)
    events = [log_event(seq, "y" * 1000) for seq in range(1, 11)]
    batches = list(messages.batches(events, 3000))
    assert [len(b.events) for b in batches] == [3, 3, 3, 1]
    assert [e.seq for b in batches for e in b.events] == list(range(1, 11))
