"""Several servers on one PostgreSQL database: how they tell each other
about commits, and the lock that keeps their change-log positions in order.

A commit's NOTIFY (sent in its transaction, so PostgreSQL delivers it at
commit) names the jobs it changed, or says "everything" past
NOTIFY_MAX_IDS, and whether it made a job acquirable. Every server LISTENs
on the schema's channel and pokes its broker: the notification is a hint,
never the data, and woken watchers read from the tables. If the LISTEN
connection drops, watchers are poked every ``poll_s`` until it is back (so
they progress within a bounded delay), and once more on reconnect to pick
up whatever was committed meanwhile.

psycopg is imported only by the listener: SQLite servers run without it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

import peewee as pw

from jobstream.server.db import dumps, execute
from jobstream.server.domain import Effects

log = logging.getLogger(__name__)

CHANGE_LOG_LOCK = 0x6A6F6263
"""PostgreSQL advisory lock key that orders change-log writers (see
lock_change_log)."""

NOTIFY_MAX_IDS = 100
"""Job ids named in one NOTIFY; past this the hint says "everything"."""

CHANNEL_PREFIX = "jobstream_"
"""Channel names are this and the schema's name."""

MAX_CHANNEL = 63
"""PostgreSQL's longest identifier: a longer channel name is cut."""

APPLICATION_NAME = "jobstream-listen"
"""application_name of LISTEN connections (pg_stat_activity shows them)."""

RECONNECT_MAX_S = 5.0
"""Longest pause between attempts to re-establish LISTEN."""


def lock_change_log(db: pw.Database) -> None:
    """Takes the change-log lock until the transaction ends.

    Positions come from a sequence, and on PostgreSQL a position taken
    first could commit last: a watcher that had read past the later one
    would skip it forever. Taking this lock before drawing positions, and
    holding it to commit, makes positions commit in the order they are
    drawn, so everything below a visible position is already visible.
    """
    execute(db, "SELECT pg_advisory_xact_lock(%s)", (CHANGE_LOG_LOCK,))


def channel_of(db: pw.Database) -> str:
    """The NOTIFY channel of the database's current schema. NOTIFY is
    database-wide; one channel per schema keeps deployments (and test runs)
    sharing a database apart."""
    with db.connection_context():
        schema = execute(db, "SELECT current_schema()").fetchone()[0]
    return f"{CHANNEL_PREFIX}{schema}"[:MAX_CHANNEL]


@dataclass(frozen=True, kw_only=True, slots=True)
class Notice:
    """What one server's commit tells the others."""

    origin: str
    """The server that committed."""
    jobs: tuple[str, ...] | None
    """The jobs it changed or deleted; None: too many to name, assume any."""
    acquirable: bool
    """Whether it made a job acquirable (waiting workers look again)."""

    def payload(self) -> str:
        """The NOTIFY payload."""
        jobs = None if self.jobs is None else list(self.jobs)
        return dumps({"origin": self.origin, "jobs": jobs, "acquirable": self.acquirable})

    @classmethod
    def parse(cls, payload: str) -> Notice | None:
        """A payload as a Notice; None when it is not one of ours."""
        try:
            message = json.loads(payload)
        except ValueError:
            return None
        if not isinstance(message, dict):
            return None
        jobs = message.get("jobs")
        return cls(
            origin=str(message.get("origin", "")),
            jobs=None if jobs is None else tuple(jobs),
            acquirable=bool(message.get("acquirable")),
        )


class Notifier:
    """Sends a commit's NOTIFY, inside the commit's transaction."""

    def __init__(self, db: pw.Database, origin: str) -> None:
        self.db = db
        self.origin = origin
        self.channel = channel_of(db)

    def notify(self, effects: Effects) -> None:
        """Tells the other servers which jobs ``effects`` touched (sent at
        commit); nothing when it touched none."""
        if not (effects.changed_jobs or effects.deleted_jobs or effects.acquirable):
            return
        ids = sorted(effects.changed_jobs | effects.deleted_jobs.keys())
        notice = Notice(
            origin=self.origin,
            jobs=tuple(ids) if len(ids) <= NOTIFY_MAX_IDS else None,
            acquirable=bool(effects.acquirable),
        )
        execute(self.db, "SELECT pg_notify(%s, %s)", (self.channel, notice.payload()))


class Pokeable(Protocol):
    """What a notification wakes: the local broker."""

    def poke(self, job_ids: Iterable[str] | None, *, acquirable: bool = True) -> None:
        """Wakes whoever waits on ``job_ids`` (None: every job) to read again."""


class Listener:
    """Keeps a LISTEN connection up and turns other servers' notifications
    into pokes."""

    def __init__(
        self, url: str, channel: str, origin: str, broker: Pokeable, poll_s: float
    ) -> None:
        self.url = url
        self.channel = channel
        self.origin = origin
        self.broker = broker
        self.poll_s = poll_s
        self.connected = asyncio.Event()
        self.connections = 0

    async def run(self) -> None:
        """Listens forever, reconnecting with backoff; polls while down."""
        import psycopg

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
        import psycopg
        from psycopg import sql

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
        notice = Notice.parse(payload)
        if notice is None:
            log.warning("ignoring malformed notification %r", payload[:200])
            return
        if notice.origin == self.origin:
            return  # our own commit: the broker already has its events
        self.broker.poke(notice.jobs, acquirable=notice.acquirable)

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
