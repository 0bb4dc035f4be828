"""Page tokens (AIP-158), and WatchJobs' listing tokens made the same way:
opaque to clients, bound to their request, and valid on every server of
one database.

A token carries the cursor of the next page (a seq, a (create_time, id), a
name) as compact JSON, sealed with the key the servers of the database
share (store/secrets.py, made once and kept in the database):

    token = base64url(version || tag || cursor XOR stream(tag))
    tag = HMAC-SHA256(key, "tag" || binding || cursor)[:16]
    stream(tag) = HMAC-SHA256(key, "stream" || tag || counter) ...
    binding = SHA-256(method || principal || the request without page_size
              and page_token, serialized deterministically)

So a token is unreadable (the cursor is hidden), unforgeable (the tag needs
the key) and bound: used with another filter, job, method or principal its
tag does not match and it is refused with INVALID_ARGUMENT naming
page_token. Why this and not cursors kept in a table: nothing to store,
expire or share at each call, and every server of the database checks any
other's token with the key alone; why the key lives in the database and
not in a flag: servers sharing a database then agree with no set-up, and a
restored backup keeps its tokens valid.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import Message

from jobstream.server.errors import InvalidArgument
from jobstream.server.fields import page_size
from jobstream.server.limits import MAX_PAGE_TOKEN_BYTES
from jobstream.v1 import errors_pb2

VERSION = b"\x01"
"""The first byte of every token of this format."""

TAG_BYTES = 16


def _refused(field: str) -> InvalidArgument:
    return InvalidArgument(
        "is not a page token issued for this request (another filter, job or method, "
        "another database, or altered); list again without it",
        field=field,
        reason=errors_pb2.PAGE_TOKEN_INVALID,
    )


@dataclass(frozen=True, slots=True)
class Page:
    """What a list request asks for: ``size`` items after ``after`` (None:
    from the start), and the binding its next token is sealed with."""

    size: int
    after: Any
    binding: bytes


class PageTokens:
    """Opens list requests and seals their next-page tokens, with the key
    of the servers' database."""

    def __init__(self, key: bytes) -> None:
        if len(key) < 16:
            raise ValueError("a page-token key needs at least 16 bytes")
        self.key = key

    def page(self, request: Message, principal: str, *, default: int, maximum: int) -> Page:
        """The page ``request`` asks for. Its ``page_size`` of 0 takes
        ``default``, one above ``maximum`` is lowered to it (AIP-158);
        its ``page_token`` must be one sealed for this same request."""
        size = page_size(getattr(request, "page_size"), default, maximum)  # noqa: B009
        binding = bind(request, principal, ("page_size", "page_token"))
        token: str = getattr(request, "page_token")  # noqa: B009
        return Page(size, self.open(token, binding, "page_token") if token else None, binding)

    def seal(self, binding: bytes, cursor: Any) -> str:
        """A token of ``cursor`` (JSON) for requests of ``binding``."""
        payload = json.dumps(cursor, separators=(",", ":")).encode()
        tag = self._tag(binding, payload)
        sealed = VERSION + tag + _xor(payload, self._stream(tag, len(payload)))
        return base64.urlsafe_b64encode(sealed).rstrip(b"=").decode()

    def open(self, token: str, binding: bytes, field: str) -> Any:
        """The cursor in ``token``; INVALID_ARGUMENT naming ``field`` unless
        it was sealed for ``binding``."""
        # A long token is refused before any decoding: nothing a client
        # makes up reaches the JSON parser unless it carries a valid tag.
        if len(token) > MAX_PAGE_TOKEN_BYTES:
            raise _refused(field)
        try:
            sealed = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        except (binascii.Error, ValueError) as exc:
            raise _refused(field) from exc
        if len(sealed) < 1 + TAG_BYTES or sealed[:1] != VERSION:
            raise _refused(field)
        tag, hidden = sealed[1 : 1 + TAG_BYTES], sealed[1 + TAG_BYTES :]
        payload = _xor(hidden, self._stream(tag, len(hidden)))
        if not hmac.compare_digest(tag, self._tag(binding, payload)):
            raise _refused(field)
        return json.loads(payload)

    def _tag(self, binding: bytes, payload: bytes) -> bytes:
        return hmac.digest(self.key, b"tag" + binding + payload, "sha256")[:TAG_BYTES]

    def _stream(self, tag: bytes, size: int) -> bytes:
        blocks = (
            hmac.digest(self.key, b"stream" + tag + i.to_bytes(4, "big"), "sha256")
            for i in range((size + 31) // 32)
        )
        return b"".join(blocks)[:size]


def bind(request: Message, principal: str, ignored: tuple[str, ...]) -> bytes:
    """The digest of what a token is bound to: the method's request type,
    the caller, and every field of the request but the ``ignored`` ones
    (those that move from call to call: page_size, page_token …)."""
    rest = type(request)()
    rest.CopyFrom(request)
    for name in ignored:
        rest.ClearField(name)
    digest = hashlib.sha256()
    for part in (request.DESCRIPTOR.full_name.encode(), principal.encode()):
        digest.update(len(part).to_bytes(4, "big") + part)
    digest.update(rest.SerializeToString(deterministic=True))
    return digest.digest()


def _xor(data: bytes, stream: bytes) -> bytes:
    # As two big integers: one operation, not one per byte (a WatchJobs
    # listing seals a token per job).
    size = len(data)
    return (int.from_bytes(data) ^ int.from_bytes(stream[:size])).to_bytes(size)
