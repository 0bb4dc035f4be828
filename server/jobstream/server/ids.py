"""Job ids: ``job_`` + 26 lowercase Crockford base32 digits, 48 bits of
milliseconds then 80 bits that start at random (a lowercase ULID, sortable
by creation time; the ids made together count up from there, as ULID's
monotonic mode does, so they sort in the order they were asked for)."""

from __future__ import annotations

import base64
import os
import time

_CROCKFORD = "0123456789abcdefghjkmnpqrstvwxyz"
_TO_CROCKFORD = bytes.maketrans(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", _CROCKFORD.encode())
"""Maps standard base32 digits to Crockford's lowercase ones. Both alphabets
are in ascending order, so encoded ids sort like the numbers they encode."""

_RANDOM_BYTES = 10
"""Random part of an id: 80 bits, exactly 16 base32 digits."""

_RANDOM_START_BITS = 79
"""Bits of the random start of a batch's ids: one less than the part, so
counting up from it never overflows (a batch is far below 2**79 ids)."""


def new_job_id() -> str:
    """A new server-made job id, its time now."""
    return new_job_ids(1, time.time_ns() // 1_000)[0]


def new_job_ids(count: int, now_us: int) -> list[str]:
    """``count`` new server-made job ids whose time is ``now_us``, in
    ascending order. The milliseconds (48 bits, two zero bits after them)
    make the first 10 digits, shared by the batch; the rest counts up from
    one random start, all of the ids in one base32 encoding (the encoding
    is a Python loop in this Python, and a call per id cost more than the
    rest of making the id). Counting up keeps a batch's jobs, or the
    submits stored together, in the order they came among jobs of the same
    priority and creation time."""
    stamp = _base32((now_us // 1_000).to_bytes(6, "big") + b"\0\0\0\0")[:10]
    start = int.from_bytes(os.urandom(_RANDOM_BYTES), "big") >> (
        8 * _RANDOM_BYTES - _RANDOM_START_BITS
    )
    digits = _base32(b"".join((start + i).to_bytes(_RANDOM_BYTES, "big") for i in range(count)))
    prefix = "job_" + stamp
    return [prefix + digits[i : i + 16] for i in range(0, 16 * count, 16)]


def _base32(data: bytes) -> str:
    """``data`` in lowercase Crockford base32 (padding, if any, left as '=')."""
    return base64.b32encode(data).translate(_TO_CROCKFORD).decode()
