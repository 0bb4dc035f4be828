"""A worker's slots, the jobs it leases ahead of them, and the leases it has
asked for and not yet received.

A slot runs one handler. It is free again as soon as that handler returns:
the attempt's finish goes out afterwards and takes no slot, so the next job
starts while the finish is on its way. Every lease the worker receives (an
AcquireJob's answer, or the next jobs a finish leases in the same call) goes
to a free slot, or waits in hand for the next slot to free.

Leasing ahead is what keeps the slots busy while a finish travels: with
nothing in hand, a slot whose job ended would wait a whole round trip (the
call, the server's commit, the answer) for its next job, and short jobs
would run at the pace of round trips. A worker asks for up to ``ahead``
jobs beyond its free slots, but only as many as its slots are expected to
start within ``AHEAD_HORIZON`` seconds, judged by how long its recent jobs
ran: a worker running long jobs leases none ahead, so it never sits on jobs
another worker could run now. A job in hand that has not started within
``hold`` seconds (its handler took longer than the recent ones) is given
back: released, its attempt not counted, and queued at once for any worker.
While it waits in hand a job is RUNNING on the server, leased to this worker,
its start time the lease's.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

__all__ = ["AHEAD_HORIZON", "MAX_ASK", "RECENT_RUNS", "Slots"]

AHEAD_HORIZON = 0.05
"""Seconds within which the slots should start the jobs leased ahead."""

RECENT_RUNS = 16
"""How many of the latest handler run times judge how long a job runs."""

MAX_ASK = 256
"""Most jobs one call may lease (the server's limit on ``max_jobs``)."""

L = TypeVar("L")


@dataclass(slots=True)
class _Held(Generic[L]):
    lease: L
    timer: asyncio.TimerHandle | None = field(default=None)


class Slots(Generic[L]):
    """Free slots, leases in hand and leases asked for, for one worker.

    ``start`` runs a lease in a slot just taken for it (False when it
    could not: the slot stays free, and the lease expires on the server);
    ``give_back`` releases a lease the worker will not run. Both are the
    worker's.
    """

    def __init__(
        self,
        count: int,
        *,
        ahead: int,
        hold: float,
        start: Callable[[L], bool],
        give_back: Callable[[L], None],
    ) -> None:
        self.count = count
        self.ahead = ahead
        """Most jobs leased beyond the free slots (0: none)."""
        self.hold = hold
        """Seconds a job leased ahead may wait in hand for a slot."""
        self.free = count
        self.asked = 0
        """Jobs asked for by calls not answered yet."""
        self.finishing = 0
        """Attempts whose handler returned and whose finish is not answered
        yet: each will ask for the next jobs."""
        self.closed = False
        """Set when the worker stops: nothing more is asked for or held."""
        self._start = start
        self._give_back = give_back
        self._held: deque[_Held[L]] = deque()
        self._runs: deque[float] = deque(maxlen=RECENT_RUNS)
        self._changed = asyncio.Event()

    def _wanted(self, *, ahead: bool = True) -> int:
        """How many jobs to ask for now: one per free slot not already
        spoken for, and (with ``ahead``) the jobs to lease ahead."""
        if self.closed:
            return 0
        extra = self._ahead_now() if ahead else 0
        want = self.free + extra - len(self._held) - self.asked
        return max(0, min(want, MAX_ASK))

    def _ahead_now(self) -> int:
        if not self.ahead or not self._runs:
            return 0  # nothing ran yet: no idea how long a job takes
        mean = sum(self._runs) / len(self._runs)
        if mean <= 0:
            return self.ahead
        return min(self.ahead, int(self.count * AHEAD_HORIZON / mean))

    def ask(self, *, ahead: bool = True) -> int:
        """Takes ``_wanted()`` jobs as asked for; the caller settles them."""
        want = self._wanted(ahead=ahead)
        self.asked += want
        return want

    def settle(self, asked: int, leases: list[L]) -> None:
        """A call that asked for ``asked`` jobs was answered with ``leases``
        (none when it failed or was cut)."""
        self.asked -= asked
        for lease in leases:
            self.receive(lease)
        self._changed.set()

    def receive(self, lease: L) -> None:
        """Runs a lease in a free slot, or holds it for the next one; once
        the worker stops, gives it back (a call that asked before the stop
        may still bring jobs)."""
        if self.closed:
            self._give_back(lease)
        elif self.free > 0:
            if self._start(lease):
                self.free -= 1
        else:
            held = _Held(lease)
            held.timer = asyncio.get_running_loop().call_later(self.hold, self._expire, held)
            self._held.append(held)

    def ran(self, seconds: float) -> None:
        """A handler ran for ``seconds`` (how long a job takes)."""
        self._runs.append(seconds)

    def freed(self) -> None:
        """A slot's handler returned: its next job starts now, if one is in
        hand. Its attempt is finishing until ``finished``."""
        self.finishing += 1
        while self._held:
            held = self._held.popleft()
            if held.timer is not None:
                held.timer.cancel()
            if self._start(held.lease):
                return
        self.free += 1
        self._changed.set()

    def finished(self) -> None:
        """A finishing attempt ended (its finish answered, or given up)."""
        self.finishing -= 1
        self._changed.set()

    def _expire(self, held: _Held[L]) -> None:
        """A job waited in hand too long: another worker may run it now."""
        try:
            self._held.remove(held)
        except ValueError:
            return
        self._give_back(held.lease)
        self._changed.set()

    def close(self) -> None:
        """The worker stops: every job in hand is given back."""
        self.closed = True
        while self._held:
            held = self._held.popleft()
            if held.timer is not None:
                held.timer.cancel()
            self._give_back(held.lease)
        self._changed.set()

    async def pollable(self) -> int:
        """Waits until a long-poll is the way to get work (a slot is free,
        nothing is in hand, no call that asked for jobs is on its way and no
        finish is about to ask), then returns how many jobs to ask for: one
        per free slot, none ahead, since a long-poll's answer may come much
        later, when the jobs it finds need not be short (0 once the worker
        stops)."""
        while not self.closed and not (
            self.free and not self._held and not self.asked and not self.finishing
        ):
            self._changed.clear()
            await self._changed.wait()
        return self.ask(ahead=False)
