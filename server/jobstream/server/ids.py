"""Job ids: ``job_`` + a lowercase ULID (sortable by creation time)."""

from __future__ import annotations

import base64
import os
import time

_CROCKFORD = "0123456789abcdefghjkmnpqrstvwxyz"
_TO_CROCKFORD = bytes.maketrans(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", _CROCKFORD.encode())
"""Maps standard base32 digits to Crockford's lowercase ones. Both alphabets
are in ascending order, so encoded ids sort like the numbers they encode."""


def new_job_id() -> str:
    """A new server-made job id: 48 bits of milliseconds, 80 random bits,
    as 26 base32 characters (the encoding runs through C, not a Python loop)."""
    value = (time.time_ns() // 1_000_000).to_bytes(6, "big") + os.urandom(10)
    return "job_" + base64.b32encode(value).translate(_TO_CROCKFORD)[:26].decode()
