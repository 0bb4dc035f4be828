"""Following a job through the real client with a deadline.

``JobClient.watch`` has no deadline of its own (it resumes across outages for
up to ``resume_timeout``); the fault scenarios bound every read by closing the
client's channel when the deadline passes, which ends the watch with an error.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Semaphore

from jobstream.client import JobClient, JobEvent
from jobstream.client.errors import JobstreamError


@dataclass
class Followed:
    """What one watcher saw: every event in arrival order, and whether the
    watch ended by itself (after the terminal event) before its deadline."""

    events: list[JobEvent] = field(default_factory=list)
    ended: bool = False
    error: str = ""


@dataclass
class Tally:
    """What one watcher in another process saw, summed up as it arrived (a
    million events need not cross back): how many, whether their seqs ran
    1, 2, 3 … without a gap, repeat or reordering, and how the watch ended."""

    count: int = 0
    last_seq: int = 0
    in_order: bool = True
    ended: bool = False
    error: str = ""

    def add(self, event: JobEvent) -> None:
        self.in_order = self.in_order and event.seq == self.last_seq + 1
        self.last_seq = event.seq
        self.count += 1

    def complete(self, last_seq: int) -> bool:
        """Every event 1 … ``last_seq``, in order, and the watch ended by itself."""
        return self.in_order and self.last_seq == last_seq and self.ended


def follow(target: str, job_id: str, deadline_s: float, into: Followed) -> None:
    """Watches ``job_id`` from the start until the watch ends or
    ``deadline_s`` passes, appending to ``into`` (a thread target)."""
    into.error = _watch(target, job_id, deadline_s, into.events.append, lambda: None)
    into.ended = not into.error


def follow_tallied(
    target: str,
    job_id: str,
    deadline_s: float,
    connected: Semaphore,
    results: Queue[Tally],
) -> None:
    """Like ``follow``, in a process of its own (so reading does not share
    the test's interpreter lock): releases ``connected`` once the watch is
    up, and puts its Tally on ``results`` at the end."""
    tally = Tally()
    tally.error = _watch(target, job_id, deadline_s, tally.add, connected.release)
    tally.ended = not tally.error
    results.put(tally)


def _watch(
    target: str,
    job_id: str,
    deadline_s: float,
    on_event: Callable[[JobEvent], None],
    on_connected: Callable[[], None],
) -> str:
    """Feeds each event of the watch to ``on_event``; returns "" when the
    watch ended by itself, else why it did not (the deadline included)."""
    client = JobClient(target)
    timer = threading.Timer(deadline_s, client.close)
    timer.start()
    try:
        for item in client.watch(job_id):
            if isinstance(item, JobEvent):
                on_event(item)
            else:
                on_connected()  # the snapshot: the stream is up
        return ""
    except (JobstreamError, ValueError) as exc:  # ValueError: channel closed at the deadline
        return f"{type(exc).__name__}: {exc}"
    finally:
        timer.cancel()
        client.close()


def seq_faults(seqs: list[int], last_seq: int) -> tuple[int, int, int]:
    """(gaps, duplicates, reorderings) of the seqs one watcher received,
    against the job's stored events 1 … ``last_seq``."""
    gaps = len(set(range(1, last_seq + 1)) - set(seqs))
    duplicates = len(seqs) - len(set(seqs))
    reorderings = sum(1 for a, b in itertools.pairwise(seqs) if b < a)
    return gaps, duplicates, reorderings
