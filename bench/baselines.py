"""The bare baselines: what gRPC and SQLite do on this machine, in this run,
with nothing of jobstream in the way.

- unary echo of a 100-byte payload with 1 or 32 calls in flight;
- server-streaming fan-out of ~100-byte messages to 1 or 100 subscribers;
- raw ``sqlite3`` inserts in WAL mode, 100 rows per commit with executemany.

The gRPC ones run against bench/bare_server.py in its own process.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from bench.bare_server import (
    ECHO_METHOD,
    END,
    PUBLISH_METHOD,
    PUBLISH_REQUEST,
    READY,
    SEQ,
    SUBSCRIBE_METHOD,
)
from bench.harness import PAYLOAD_BYTES, SQLITE_ROWS_PER_COMMIT, Throughput

WARMUP_CALLS = 20
"""Calls made before a timed unary sample, so connection set-up and first-call
costs stay out of it (the service measures warm up the same way)."""

WATCHER_CHANNEL_OPTIONS: tuple[tuple[str, Any], ...] = (
    # Without a local pool, channels to one target share one TCP connection;
    # 100 watchers are 100 clients, each with its own connection.
    ("grpc.use_local_subchannel_pool", 1),
)
"""Options for each subscriber's (and each jobstream watcher's) channel."""

SQLITE_SYNCHRONOUS = "FULL"
"""The baseline commits as durably as jobstream does by default."""


@dataclass(slots=True)
class SeqTally:
    """Counts a stream's numbered items: how many came, lost, repeated."""

    expected: int
    received: int = 0
    lost: int = 0
    duplicated: int = 0

    def see(self, seq: int) -> None:
        """Records one item; ``expected`` is the next number wanted."""
        self.received += 1
        if seq < self.expected:
            self.duplicated += 1
            return
        self.lost += seq - self.expected
        self.expected = seq + 1


@dataclass(frozen=True, kw_only=True, slots=True)
class FanoutResult:
    """One fan-out sample: per-subscriber delivery rate and its correctness."""

    messages: int
    subscribers: int
    elapsed_s: float
    lost: int
    duplicated: int
    incomplete: int

    @property
    def rate(self) -> float:
        """Messages per second each subscriber received (the tail rate)."""
        return self.messages / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @classmethod
    def merged(cls, parts: list[FanoutResult]) -> FanoutResult:
        """Several fan-out samples as one."""
        return cls(
            messages=sum(p.messages for p in parts),
            subscribers=max(p.subscribers for p in parts),
            elapsed_s=sum(p.elapsed_s for p in parts),
            lost=sum(p.lost for p in parts),
            duplicated=sum(p.duplicated for p in parts),
            incomplete=sum(p.incomplete for p in parts),
        )


def echo(channel: grpc.aio.Channel) -> Callable[[], Awaitable[object]]:
    """A zero-argument coroutine factory making one echo call."""
    # No (de)serializers: bytes go over the wire as they are.
    method: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(
        ECHO_METHOD, None, None
    )
    payload = b"x" * PAYLOAD_BYTES

    def call() -> Awaitable[object]:
        return method(payload)

    return call


async def bare_fanout(
    target: str, *, subscribers: int, messages: int, timeout_s: float
) -> FanoutResult:
    """Opens ``subscribers`` streams (one connection each), publishes
    ``messages`` and times until the last subscriber has the last one."""
    channels = [
        grpc.aio.insecure_channel(target, options=WATCHER_CHANNEL_OPTIONS)
        for _ in range(subscribers)
    ]
    ready = asyncio.Semaphore(0)
    finished: list[float] = []
    tallies: list[SeqTally] = []

    async def subscribe(channel: grpc.aio.Channel) -> None:
        method: grpc.aio.UnaryStreamMultiCallable[bytes, bytes] = channel.unary_stream(
            SUBSCRIBE_METHOD, None, None
        )
        call = method(b"")
        tally = SeqTally(expected=0)
        tallies.append(tally)
        stream = call.__aiter__()
        if await stream.__anext__() != READY:
            raise RuntimeError("bare fan-out did not start with READY")
        ready.release()
        async for message in stream:
            if message == END:
                finished.append(time.perf_counter())
                return
            tally.see(SEQ.unpack_from(message)[0])

    tasks = [asyncio.create_task(subscribe(c)) for c in channels]
    try:
        async with asyncio.timeout(timeout_s):
            for _ in range(subscribers):
                await ready.acquire()
            publish: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channels[0].unary_unary(
                PUBLISH_METHOD, None, None
            )
            started = time.perf_counter()
            await publish(PUBLISH_REQUEST.pack(messages, PAYLOAD_BYTES))
            await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(*(c.close(None) for c in channels))
    return FanoutResult(
        messages=messages,
        subscribers=subscribers,
        elapsed_s=max(finished) - started,
        lost=sum(t.lost + (messages - t.expected) for t in tallies),
        duplicated=sum(t.duplicated for t in tallies),
        incomplete=subscribers - len(finished),
    )


def sqlite_batched(path: Path, *, duration_s: float) -> Throughput:
    """Rows per second inserted by raw ``sqlite3`` into a fresh WAL database,
    :data:`SQLITE_ROWS_PER_COMMIT` rows per executemany and commit.

    Rows are shaped like a stored log line (job id, seq, time, ~100-byte body;
    primary key (job id, seq)), so the baseline pays for the same index a
    jobstream event insert does.
    """
    path.unlink(missing_ok=True)
    for suffix in ("-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={SQLITE_SYNCHRONOUS}")
        conn.execute(
            "CREATE TABLE line (job_id TEXT NOT NULL, seq INTEGER NOT NULL, "
            "time INTEGER NOT NULL, body TEXT NOT NULL, PRIMARY KEY (job_id, seq))"
        )
        body = "x" * PAYLOAD_BYTES
        job_id = "job_" + "0" * 26
        seq = 0
        commits = 0
        started = time.perf_counter()
        deadline = started + duration_s
        while time.perf_counter() < deadline:
            rows = [
                (job_id, seq + i, time.time_ns() // 1000, body)
                for i in range(SQLITE_ROWS_PER_COMMIT)
            ]
            seq += SQLITE_ROWS_PER_COMMIT
            conn.execute("BEGIN")
            conn.executemany("INSERT INTO line VALUES (?, ?, ?, ?)", rows)
            conn.execute("COMMIT")
            commits += 1
        elapsed = time.perf_counter() - started
    finally:
        conn.close()
    return Throughput(count=commits * SQLITE_ROWS_PER_COMMIT, elapsed_s=elapsed, latencies_s=[])
