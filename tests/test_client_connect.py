"""Connecting to a server slow to answer: the client waits out its call's
deadline for the HTTP/2 handshake instead of giving up on the connection
attempt after the reconnect backoff's first step (0.1 s). A busy server (or
a loaded machine) can take longer than that to send its SETTINGS frame; the
first call must not fail UNAVAILABLE because of it."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator

import pytest

from jobstream.client import AsyncJobClient, DeadlineExceededError, JobClient

DEADLINE_S = 1.5
"""The call's deadline: well past the 0.1 s a connection attempt was cut at."""


@pytest.fixture
def silent_server() -> Iterator[str]:
    """A TCP listener that accepts connections and never answers (a server
    that has not sent its SETTINGS frame yet); yields its target."""
    listener = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            held.append(conn)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        thread.join()
        for conn in held:
            conn.close()
        listener.close()


def test_a_first_call_waits_for_a_slow_handshake_until_its_deadline(silent_server: str) -> None:
    with (
        JobClient(silent_server, timeout=DEADLINE_S) as client,
        pytest.raises(DeadlineExceededError),
    ):
        client.get("job_x")


def test_the_async_client_waits_for_a_slow_handshake_until_its_deadline(
    silent_server: str,
) -> None:
    async def main() -> None:
        async with AsyncJobClient(silent_server, timeout=DEADLINE_S) as client:
            with pytest.raises(DeadlineExceededError):
                await client.get("job_x")

    asyncio.run(main())
