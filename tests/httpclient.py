"""A curl-sized HTTP client for the tests of the HTTP face: plain requests
(any status is an answer, not an exception) and Server-Sent Events read
with a deadline, on the standard library only."""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

REQUEST_TIMEOUT_S = 15.0
"""Socket timeout of every request."""


@dataclass
class Answer:
    """One HTTP response, read whole."""

    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def json(self) -> Any:
        """The body as JSON."""
        return json.loads(self.body)


def _connection(url: str, timeout: float) -> tuple[http.client.HTTPConnection, str]:
    parts = urlsplit(url)
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    return http.client.HTTPConnection(parts.netloc, timeout=timeout), path


def call(
    method: str,
    url: str,
    body: Any = None,
    headers: Mapping[str, str] | None = None,
    *,
    raw: bytes | None = None,
) -> Answer:
    """``method url`` with a JSON ``body`` (or ``raw`` bytes)."""
    conn, path = _connection(url, REQUEST_TIMEOUT_S)
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    sent = dict(headers or {})
    if data is not None:
        sent.setdefault("Content-Type", "application/json")
    try:
        conn.request(method, path, body=data, headers=sent)
        response = conn.getresponse()
        return Answer(response.status, response.headers, response.read())
    finally:
        conn.close()


@dataclass(frozen=True)
class Event:
    """One server-sent event."""

    event: str
    id: str | None
    data: str

    def json(self) -> Any:
        """The data as JSON."""
        return json.loads(self.data)


@dataclass
class EventStream:
    """An open ``text/event-stream``: iterate it for events until ``deadline``
    (``time.monotonic()``); a stream that stays silent past it fails."""

    url: str
    headers: Mapping[str, str] = field(default_factory=dict)
    deadline: float = 0.0
    status: int = 0
    response_headers: http.client.HTTPMessage | None = None
    body: bytes = b""
    _conn: http.client.HTTPConnection | None = None
    _response: http.client.HTTPResponse | None = None

    def __enter__(self) -> EventStream:
        conn, path = _connection(self.url, REQUEST_TIMEOUT_S)
        conn.request("GET", path, headers={"Accept": "text/event-stream", **self.headers})
        self._conn, self._response = conn, conn.getresponse()
        self.status = self._response.status
        self.response_headers = self._response.headers
        if self.status != 200:
            self.body = self._response.read()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._conn is not None:
            self._conn.close()

    def __iter__(self) -> Iterator[Event]:
        assert self._response is not None
        event, event_id = "message", None
        data: list[str] = []
        while True:
            if time.monotonic() > self.deadline:
                raise AssertionError(f"event stream {self.url} ran past its deadline")
            raw = self._response.readline()
            if not raw:
                return  # the server ended the stream
            line = raw.decode().rstrip("\r\n")
            if line == "":
                if data:
                    yield Event(event, event_id, "\n".join(data))
                event, event_id, data = "message", None, []
            elif line.startswith(":"):
                continue
            else:
                name, _, value = line.partition(":")
                value = value.removeprefix(" ")
                if name == "event":
                    event = value
                elif name == "id":
                    event_id = value
                elif name == "data":
                    data.append(value)


def events(url: str, timeout: float = 30.0, **headers: str) -> EventStream:
    """An event stream of ``url`` that must deliver within ``timeout`` s."""
    return EventStream(
        url, {k.replace("_", "-"): v for k, v in headers.items()}, time.monotonic() + timeout
    )
