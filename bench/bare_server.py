"""The bare gRPC server the baselines run against: ``python -m bench.bare_server``.

It does the least a gRPC service can do: an echo (unary, bytes in, same bytes
out) and a server-streaming fan-out of in-memory messages to every
subscriber. No protobuf, no validation, no storage: whatever jobstream
spends beyond this is its own cost. It runs in its own process, like the
jobstream server, so both sides of every comparison pay for one server
process and one load-generating process.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import struct
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import grpc

ECHO_METHOD = "/bench.Bare/Echo"
"""Unary: answers with the request bytes."""

SUBSCRIBE_METHOD = "/bench.Bare/Subscribe"
"""Server streaming: READY, then every message of the next publish, then END."""

PUBLISH_METHOD = "/bench.Bare/Publish"
"""Unary: fills the current topic with ``count`` messages of ``size`` bytes."""

READY = b"ready"
"""First message of a subscription, like a watch's snapshot: the subscriber is
registered and will see every message of the next publish."""

END = b"end"
"""Last message of a subscription, like a watch's terminal event."""

PUBLISH_BATCH = 1_000
"""Messages appended to a topic per wake-up, matching the most log lines a
jobstream worker sends per ReportJob."""

PUBLISH_REQUEST = struct.Struct("!II")
"""Publish request: message count, message size in bytes."""

SEQ = struct.Struct("!Q")
"""Each fan-out message starts with its 0-based sequence number, so a
subscriber can check that nothing was lost or repeated."""


class Topic:
    """One publish's messages, appended in batches, read by every subscriber
    at its own pace (the bare equivalent of the broker plus the event log)."""

    def __init__(self) -> None:
        self.messages: list[bytes] = []
        self.closed = False
        self._wakes: set[asyncio.Event] = set()

    def join(self) -> asyncio.Event:
        """Registers a subscriber; its event is set whenever messages arrive."""
        wake = asyncio.Event()
        self._wakes.add(wake)
        return wake

    def leave(self, wake: asyncio.Event) -> None:
        """Unregisters a subscriber."""
        self._wakes.discard(wake)

    def extend(self, messages: Sequence[bytes], *, close: bool = False) -> None:
        """Appends messages and wakes every subscriber."""
        self.messages.extend(messages)
        self.closed = close
        for wake in self._wakes:
            wake.set()


class Bare:
    """The echo and fan-out handlers."""

    def __init__(self) -> None:
        self.topic = Topic()

    async def echo(self, request: bytes, context: Any) -> bytes:
        """Unary echo."""
        return request

    async def subscribe(self, request: bytes, context: Any) -> AsyncIterator[bytes]:
        """Streams the current topic's messages as they are published."""
        topic = self.topic
        wake = topic.join()
        try:
            yield READY
            position = 0
            while True:
                while position < len(topic.messages):
                    yield topic.messages[position]
                    position += 1
                if topic.closed:
                    yield END
                    return
                # Nothing ran since the checks above (no await in between),
                # so no publish can slip between them and the clear.
                wake.clear()
                await wake.wait()
        finally:
            topic.leave(wake)

    async def publish(self, request: bytes, context: Any) -> bytes:
        """Publishes ``count`` messages to the current subscribers, in batches
        that yield to the event loop like separate commits would; later
        subscribers get a fresh topic."""
        count, size = PUBLISH_REQUEST.unpack(request)
        topic, self.topic = self.topic, Topic()
        pad = b"x" * max(0, size - SEQ.size)
        for start in range(0, count, PUBLISH_BATCH):
            end = min(count, start + PUBLISH_BATCH)
            topic.extend([SEQ.pack(i) + pad for i in range(start, end)], close=end == count)
            await asyncio.sleep(0)
        if count == 0:
            topic.extend([], close=True)
        return b""


async def serve(port: int, port_file: Path | None) -> None:
    """Serves until SIGTERM/SIGINT."""
    bare = Bare()
    handler = grpc.method_handlers_generic_handler(
        "bench.Bare",
        {
            "Echo": grpc.unary_unary_rpc_method_handler(bare.echo),
            "Subscribe": grpc.unary_stream_rpc_method_handler(bare.subscribe),
            "Publish": grpc.unary_unary_rpc_method_handler(bare.publish),
        },
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    if port_file is not None:
        await asyncio.to_thread(port_file.write_text, str(bound))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(0)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m bench.bare_server``."""
    parser = argparse.ArgumentParser(prog="python -m bench.bare_server", description=__doc__)
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1; 0 picks one")
    parser.add_argument("--port-file", type=Path, default=None, help="write the bound port here")
    args = parser.parse_args(argv)
    asyncio.run(serve(args.port, args.port_file))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
