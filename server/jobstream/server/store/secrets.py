"""Secrets the servers of one database share (see migration 0014)."""

from __future__ import annotations

import secrets

import peewee as pw

from jobstream.server.db import SecretRow

PAGE_TOKEN_KEY = "page_token_key"
"""The name of the key that authenticates (and hides) page tokens."""


class Secrets:
    """Reads, and on first use makes, the shared secrets."""

    def __init__(self, db: pw.Database) -> None:
        self.db = db

    def get_or_make(self, name: str) -> bytes:
        """The secret ``name``: 32 random bytes made by whichever server asks
        first. Insert-if-absent, then read: two servers starting at once on
        one PostgreSQL both read the one that won."""
        with self.db.atomic():
            SecretRow.insert(name=name, value=secrets.token_hex(32)).on_conflict_ignore().execute()
            value: str = SecretRow.get_by_id(name).value
        return bytes.fromhex(value)
