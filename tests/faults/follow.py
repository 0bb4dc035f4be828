"""Following a job through the real client with a deadline.

``JobClient.watch`` has no deadline of its own (it resumes across outages for
up to ``resume_timeout``); the fault scenarios bound every read by closing the
client's channel when the deadline passes, which ends the watch with an error.
"""

from __future__ import annotations

import itertools
import threading
from dataclasses import dataclass, field

from jobstream.client import JobClient, JobEvent
from jobstream.client.errors import JobstreamError


@dataclass
class Followed:
    """What one watcher saw: every event in arrival order, and whether the
    watch ended by itself (after the terminal event) before its deadline."""

    events: list[JobEvent] = field(default_factory=list)
    ended: bool = False
    error: str = ""


def follow(target: str, job_id: str, deadline_s: float, into: Followed) -> None:
    """Watches ``job_id`` from the start until the watch ends or
    ``deadline_s`` passes, appending to ``into`` (a thread target)."""
    client = JobClient(target)
    timer = threading.Timer(deadline_s, client.close)
    timer.start()
    try:
        for item in client.watch(job_id):
            if isinstance(item, JobEvent):
                into.events.append(item)
        into.ended = True
    except (JobstreamError, ValueError) as exc:  # ValueError: channel closed at the deadline
        into.error = f"{type(exc).__name__}: {exc}"
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
