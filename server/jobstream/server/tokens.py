"""Page tokens: opaque to clients, checked on the way back. A token is the
base64 of a small JSON value (a seq, or a (create_time, id) cursor); only
one this server could have issued is decoded further."""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from jobstream.server.errors import InvalidArgument
from jobstream.server.limits import (
    CLIENT_JOB_ID,
    MAX_PAGE_TOKEN_BYTES,
    MAX_SEQ,
    MAX_TIME_US,
    SERVER_JOB_ID,
)
from jobstream.v1 import errors_pb2


def encode_token(value: Any) -> str:
    """An opaque page token."""
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode()


def decode_token(token: str) -> Any:
    """The value inside a page token; InvalidArgument unless this server
    could have issued it. Only a token that encodes back to exactly itself
    is decoded further, and a long one is refused before decoding, so no
    client-made JSON (nested thousands deep, numbers of any size) reaches
    the parser's recursion or the database."""
    if len(token) > MAX_PAGE_TOKEN_BYTES:
        raise _foreign_token()
    try:
        value = json.loads(base64.urlsafe_b64decode(token.encode()))
    except (binascii.Error, ValueError, UnicodeError, RecursionError) as exc:
        raise _foreign_token() from exc
    if encode_token(value) != token:
        raise _foreign_token()
    return value


def _foreign_token() -> InvalidArgument:
    return InvalidArgument(
        "is not a token this server issued",
        field="page_token",
        reason=errors_pb2.PAGE_TOKEN_INVALID,
    )


def _int_in(value: Any, lo: int, hi: int) -> bool:
    """Whether ``value`` is a JSON integer (not a bool) within ``lo..hi``."""
    return isinstance(value, int) and not isinstance(value, bool) and lo <= value <= hi


def seq_token(token: str) -> int:
    """The seq a GetJobLogs / ListJobResults page token resumes after."""
    if not token:
        return 0
    value = decode_token(token)
    if not _int_in(value, 0, MAX_SEQ):
        raise _foreign_token()
    return int(value)


def job_cursor(token: str) -> tuple[int, str] | None:
    """The (create_time, id) a ListJobs page token resumes after."""
    if not token:
        return None
    value = decode_token(token)
    if (
        isinstance(value, list)
        and len(value) == 2
        and _int_in(value[0], 0, MAX_TIME_US)
        and isinstance(value[1], str)
        and (CLIENT_JOB_ID.fullmatch(value[1]) or SERVER_JOB_ID.fullmatch(value[1]))
    ):
        return value[0], value[1]
    raise _foreign_token()
