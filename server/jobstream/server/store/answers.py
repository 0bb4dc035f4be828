"""The first answers of idempotent calls that store them (RetryJob,
PurgeJobs): what a repeat of the same request_id is answered with. An
answer is recorded in the transaction of the write it answers where there
is one (a retry), so a key is never left without the change it stands for.
"""

from __future__ import annotations

import peewee as pw

from jobstream.server.db import AnswerRow
from jobstream.server.domain import RequestKey
from jobstream.server.errors import AlreadyExists
from jobstream.v1 import errors_pb2


class Answers:
    """Reads and writes the request_answer table."""

    def __init__(self, db: pw.Database) -> None:
        self.db = db

    def first(self, key: RequestKey) -> bytes | None:
        """The answer recorded for ``key``, or None when there is none;
        AlreadyExists when the key was used for a different request."""
        row = (
            AnswerRow.select(AnswerRow.fingerprint, AnswerRow.answer)
            .where(
                (AnswerRow.owner == key.owner)
                & (AnswerRow.method == key.method)
                & (AnswerRow.request_id == key.request_id)
            )
            .first()
        )
        if row is None:
            return None
        if row.fingerprint != key.fingerprint:
            raise AlreadyExists(
                f"request_id {key.request_id!r} was used for a different {key.method} request",
                field="request_id",
                reason=errors_pb2.REQUEST_ID_REUSED,
                metadata={"requestId": key.request_id, "method": key.method},
            )
        return bytes(row.answer)

    def record(self, key: RequestKey, answer: bytes, now: int) -> bytes:
        """Records ``answer`` as the first one for ``key`` and returns it; when
        a concurrent call recorded one first, returns that one instead."""
        AnswerRow.insert(
            owner=key.owner,
            method=key.method,
            request_id=key.request_id,
            fingerprint=key.fingerprint,
            answer=answer,
            create_time=now,
        ).on_conflict_ignore().execute()
        stored = self.first(key)
        assert stored is not None  # just written, or written first by another call
        return stored
