"""The params index: one job_param row per member of a job's params that a
filter can name, written with the job, so ``--param region=eu`` is an index
seek on (key, value) instead of a read of every job's params.

Values are canonical JSON computed here (domain.canonical_json), never by
the database: SQLite's ``->`` and PostgreSQL's jsonb write numbers and
objects differently (``1.50``, ``{"a": 1}``), and a filter must find the
same jobs on both.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from typing import Any

from jobstream.server.domain import JSON, canonical_json

PARAM_KEY = re.compile(r"[A-Za-z0-9_-]{1,64}")
"""A name a filter path may hold (limits.PARAM_PATH, one part)."""

MAX_PARAM_DEPTH = 8
"""Parts of the longest filter path (limits.PARAM_PATH)."""

INLINE_VALUE_BYTES = 128
"""Longest canonical value stored as itself; a longer one is stored as its
digest (and a filter's value is looked up the same way), which keeps the
index small whatever the params hold."""

_DIGEST_PREFIX = "sha256:"
"""Marks a digest; no JSON text starts with it."""


def index_value(canonical: str) -> str:
    """What job_param stores for a member whose canonical JSON is ``canonical``."""
    raw = canonical.encode()
    if len(raw) <= INLINE_VALUE_BYTES:
        return canonical
    return _DIGEST_PREFIX + hashlib.sha256(raw).hexdigest()


def members(params: JSON, prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, str]]:
    """(dotted path, index value) of every member a filter can name: each
    member of an object at most MAX_PARAM_DEPTH deep whose path parts are
    plain names (objects and arrays as a whole, too; arrays are not
    entered, as paths have no indexes)."""
    if not isinstance(params, dict):
        return
    for key, value in params.items():
        if not PARAM_KEY.fullmatch(key):
            continue
        path = (*prefix, key)
        yield ".".join(path), index_value(canonical_json(value))
        if len(path) < MAX_PARAM_DEPTH:
            yield from members(value, path)


def param_rows(job_id: str, params: Any) -> list[tuple[str, str, str]]:
    """The job_param rows of a new job: (job_id, key, value)."""
    return [(job_id, key, value) for key, value in members(params)]
