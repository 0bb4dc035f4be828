"""The secrets the servers of one database share, kept in the database
itself: the first is the key that authenticates page tokens, so a token one
server issued is accepted by every server of the database (behind one load
balancer) and by no other."""

from __future__ import annotations

from typing import Any

import peewee as pw


def up(migrator: Any, db: pw.Database) -> None:
    """Creates server_secret (filled by the first server that starts)."""

    class ServerSecret(pw.Model):
        name = pw.TextField(primary_key=True)
        value = pw.TextField()

        class Meta:
            database = db
            table_name = "server_secret"

    db.create_tables([ServerSecret], safe=True)
