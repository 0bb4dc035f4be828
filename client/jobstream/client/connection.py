"""Staying connected: channel options and the reconnect backoff shared by the
clients and the worker."""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_TARGET = "127.0.0.1:50051"
"""Where the server listens by default."""

BACKOFF_INITIAL = 0.1
"""First wait, in seconds, before retrying after the server was unreachable."""

BACKOFF_MAX = 2.0
"""Longest wait, in seconds, between retries; short enough that a restarted
server is found again within a couple of seconds."""

CHANNEL_OPTIONS: tuple[tuple[str, int], ...] = (
    # gRPC's own reconnect backoff grows to 120 s by default: after a server
    # restart a channel could sit in TRANSIENT_FAILURE long after the server
    # is back, failing every call fast. Keep it in step with BACKOFF_MAX.
    # Not grpc.min_reconnect_backoff_ms: gRPC also takes it as the shortest
    # time a connection attempt may last, so at 0.1 s a server slow to send
    # its HTTP/2 SETTINGS (busy, or on a loaded machine) failed the first
    # call UNAVAILABLE long before its deadline.
    ("grpc.initial_reconnect_backoff_ms", int(BACKOFF_INITIAL * 1000)),
    ("grpc.max_reconnect_backoff_ms", int(BACKOFF_MAX * 1000)),
)
"""Options for the channels the client and worker make themselves."""


@dataclass(slots=True)
class Backoff:
    """Exponential backoff: ``next()`` returns 0.1, 0.2, 0.4 … capped at 2 s;
    ``reset()`` after a success starts over."""

    initial: float = BACKOFF_INITIAL
    maximum: float = BACKOFF_MAX
    _current: float = 0.0

    def next(self) -> float:
        """The next delay, in seconds."""
        self._current = self.initial if self._current == 0 else min(self._current * 2, self.maximum)
        return self._current

    def reset(self) -> None:
        """Start again from the initial delay."""
        self._current = 0.0
