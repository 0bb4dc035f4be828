"""The two shapes a JobService call takes besides a watch, written once as
programs: a unary call (with its read retry) and a paged listing; and the
:class:`Session` every call of one client shares.

Right after a server restart a channel can fail calls fast for a moment
(its reconnect backoff still running though the server is back), so a
client that has reached its server once sends a *read* again while the
server is unavailable, for up to ``read_retry_timeout`` seconds. One that
never reached it fails at once, as a watch does: a CLI pointed at nothing
says so without waiting. Writes are never sent twice here.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

import grpc
from google.protobuf.message import Message

from jobstream.client.connection import Backoff
from jobstream.client.errors import (
    DeadlineExceededError,
    JobstreamError,
    UnavailableError,
    from_rpc_error,
)
from jobstream.client.program import Emit, Items, Program, UnaryRpc, call, sleep

__all__ = [
    "DEFAULT_READ_RETRY_TIMEOUT",
    "DEFAULT_RESUME_TIMEOUT",
    "DEFAULT_TIMEOUT",
    "Outage",
    "Session",
    "call_timeout",
    "deadline_after",
    "pages",
    "unary",
]

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 30.0
"""Deadline, in seconds, of every unary call (streams have none)."""

DEFAULT_RESUME_TIMEOUT = 60.0
"""How long, in seconds, a watch keeps trying to resume after the server
became unreachable before it gives up with UnavailableError."""

DEFAULT_READ_RETRY_TIMEOUT = 5.0
"""How long, in seconds, a read keeps being sent again while a server the
client reached before is unavailable (a restart takes about this long)."""

T = TypeVar("T")
Req = TypeVar("Req", bound=Message)
Resp = TypeVar("Resp", bound=Message)


class Session:
    """What the calls of one client share: where they go, their deadlines
    and retry budgets, and whether the server has answered yet.

    ``timeout`` is the deadline of every unary call (None: none);
    ``resume_timeout`` bounds how long a watch tries to resume after the
    server became unreachable; ``read_retry_timeout`` how long a read is
    sent again while a server that answered before is unavailable.
    """

    def __init__(
        self,
        target: str,
        *,
        timeout: float | None,
        resume_timeout: float,
        read_retry_timeout: float,
    ) -> None:
        self.target = target
        """The server's address, ``host:port``."""
        self.timeout = timeout
        self.resume_timeout = resume_timeout
        self.read_retry_timeout = read_retry_timeout
        self._reached = False

    @property
    def reached(self) -> bool:
        """Whether a call has been answered: only then are reads retried."""
        return self._reached

    def answered(self) -> None:
        """Note that the server answered a call."""
        self._reached = True


def deadline_after(timeout: float | None) -> float | None:
    """A monotonic deadline ``timeout`` seconds from now (None: none)."""
    return None if timeout is None else time.monotonic() + timeout


def call_timeout(default: float | None, deadline: float | None, what: str) -> float | None:
    """The timeout of one call: the client's, shortened to an overall deadline."""
    if deadline is None:
        return default
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise DeadlineExceededError(grpc.StatusCode.DEADLINE_EXCEEDED, f"{what}: timed out")
    return remaining if default is None else min(default, remaining)


class Outage:
    """A spell of the server being unreachable: when it began, and how long
    to wait before trying again (backoff from 0.1 s to 2 s, never past
    ``deadline``). ``delay`` raises the error once ``budget`` seconds have
    gone by."""

    def __init__(self, budget: float, deadline: float | None) -> None:
        self.budget = budget
        self.deadline = deadline
        self.since: float | None = None
        self._backoff = Backoff()

    def delay(self, error: JobstreamError) -> float:
        """Seconds to wait before the next try after ``error``."""
        now = time.monotonic()
        if self.since is None:
            self.since = now
        elif now - self.since >= self.budget:
            raise error
        delay = self._backoff.next()
        if self.deadline is not None:
            delay = max(0.0, min(delay, self.deadline - now))
        return delay

    def over(self) -> None:
        """The server answered: the next outage starts afresh."""
        self.since = None
        self._backoff.reset()


def _read_retry_delay(what: str, exc: grpc.RpcError, *, retry: bool, outage: Outage) -> float:
    """Seconds to wait before sending ``what`` again after ``exc``; raises
    the typed error when it is not to be sent again (``retry`` False: a
    write, or a server never reached)."""
    error = from_rpc_error(exc)
    if not (retry and isinstance(error, UnavailableError)):
        raise error from exc
    if outage.since is None:
        log.info("%s: %s; retrying", what, error.message or error.code.name)
    delay = outage.delay(error)
    if outage.deadline is not None and time.monotonic() + delay >= outage.deadline:
        raise error from exc  # the caller's deadline comes first: say why now
    return delay


def unary(
    session: Session,
    rpc: UnaryRpc[Req, Resp],
    request: Req,
    convert: Callable[[Resp], T],
    *,
    read: bool,
    deadline: float | None = None,
) -> Program[T]:
    """One unary call, its response converted. A ``read`` (a call that
    changes nothing, so sending it twice is safe) is retried as the module
    docstring says; ``deadline`` bounds the whole, retries included."""
    what = type(request).__name__.removesuffix("Request")
    outage = Outage(session.read_retry_timeout, deadline)
    while True:
        timeout = call_timeout(session.timeout, deadline, what)
        try:
            response = yield from call(rpc, request, timeout)
        except grpc.RpcError as exc:
            retry = read and session.reached
            yield from sleep(_read_retry_delay(what, exc, retry=retry, outage=outage))
            continue
        session.answered()
        return convert(response)


def pages(
    session: Session,
    rpc: UnaryRpc[Req, Resp],
    request: Callable[[str], Req],
    page: Callable[[Resp], tuple[Sequence[T], str]],
) -> Items[T]:
    """A paged listing, fetched lazily: ``request(token)`` asks for the page
    after ``token`` ("" for the first); ``page`` gives a response's items
    and the next token ("" after the last page). Each page is a read."""
    token = ""
    while True:
        items, token = yield from unary(session, rpc, request(token), page, read=True)
        for item in items:
            yield Emit(item)
        if not token:
            return
