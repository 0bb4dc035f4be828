"""Cross-server wake-ups on PostgreSQL: LISTEN on a dedicated connection and
poke the local broker when another server commits. The notification is a
hint, never the data: woken watchers read from the tables.

If the connection drops, watchers are poked every ``poll_s`` until it is
back (so they progress within a bounded delay), and once more on reconnect
to pick up whatever was committed meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging

import psycopg
from psycopg import sql

from jobstream.server.broker import Broker

log = logging.getLogger(__name__)

APPLICATION_NAME = "jobstream-listen"
"""application_name of LISTEN connections (pg_stat_activity shows them)."""

RECONNECT_MAX_S = 5.0
"""Longest pause between attempts to re-establish LISTEN."""


class Listener:
    """Keeps a LISTEN connection up and turns notifications into pokes."""

    def __init__(self, url: str, channel: str, origin: str, broker: Broker, poll_s: float) -> None:
        self.url = url
        self.channel = channel
        self.origin = origin
        self.broker = broker
        self.poll_s = poll_s
        self.connected = asyncio.Event()
        self.connections = 0

    async def run(self) -> None:
        """Listens forever, reconnecting with backoff; polls while down."""
        poller = asyncio.create_task(self._poll_while_down(), name="listener-poll")
        backoff = 0.1
        try:
            while True:
                try:
                    await self._listen()
                except (psycopg.Error, OSError) as exc:
                    if self.connected.is_set():
                        log.warning(
                            "LISTEN connection lost (%s); polling every %.1fs", exc, self.poll_s
                        )
                        backoff = 0.1
                self.connected.clear()
                await asyncio.sleep(backoff)
                backoff = min(RECONNECT_MAX_S, backoff * 2)
        finally:
            poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await poller

    async def _listen(self) -> None:
        async with await psycopg.AsyncConnection.connect(
            self.url, autocommit=True, application_name=f"{APPLICATION_NAME}-{self.origin}"
        ) as conn:
            await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self.channel)))
            self.connections += 1
            self.connected.set()
            log.info("listening on %s", self.channel)
            self.broker.poke(None)  # catch up on commits made while not listening
            while True:
                async for note in conn.notifies(timeout=self.poll_s):
                    self._handle(note.payload)
                # A quiet spell: make sure the connection is alive (a dead one
                # raises here) rather than trusting silence.
                await conn.execute("SELECT 1")

    def _handle(self, payload: str) -> None:
        try:
            message = json.loads(payload)
        except ValueError:
            log.warning("ignoring malformed notification %r", payload[:200])
            return
        if message.get("origin") == self.origin:
            return  # our own commit: the broker already has its events
        self.broker.poke(message.get("jobs"), acquirable=bool(message.get("acquirable")))

    async def _poll_while_down(self) -> None:
        while True:
            await asyncio.sleep(self.poll_s)
            if not self.connected.is_set():
                self.broker.poke(None)


def listen_url(db_url: str) -> str:
    """The psycopg URL for a peewee database URL (peewee's scheme variants
    such as ``postgres+pool://`` become ``postgresql://``)."""
    scheme, rest = db_url.split("://", 1)
    return f"postgresql://{rest}" if scheme != "postgresql" else db_url
