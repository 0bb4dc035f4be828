"""Structured server logs: text by default, JSON lines with ``--log-json``
(the one format of :mod:`jobstream.client.logformat`, the worker's too),
and the request id and job id on every line logged while handling a call.

The ids live in context variables. The server's interceptor
(:mod:`jobstream.server.edge`) sets them around each RPC (the request id
from the caller's ``x-request-id`` metadata, else a fresh one; the job id
from the request's ``job_id`` field, or the response's job for calls that
make or hand out one), and the writer and
reader threads run their work in the caller's context, so a line logged
anywhere on a call's behalf carries both. A filter on the handler copies
them onto every record; library code keeps plain ``logging.getLogger``.
"""

from __future__ import annotations

import itertools
import logging
import re
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from jobstream.client.logformat import JsonLogFormatter

log = logging.getLogger(__name__)
access_log = logging.getLogger("jobstream.server.access")
"""One DEBUG line per finished RPC: method, status, duration, ids."""

REQUEST_ID_HEADER = "x-request-id"
"""Metadata key a caller may set to correlate its own logs with ours."""

REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
"""What a caller's request id may look like; anything else (too long, or
able to forge log structure) is replaced by a fresh id."""

QUIET_LOGGERS = ("peewee", "grpc", "asyncio")
"""Libraries whose DEBUG output (every SQL statement, event-loop internals)
would drown ours: they log at INFO and above even with ``--log-level DEBUG``."""

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s%(ids)s"
"""The text log line; ``ids`` is `` [request_id=… job_id=…]`` when known."""

request_id_var: ContextVar[str | None] = ContextVar("jobstream_request_id", default=None)
"""The id of the RPC being handled."""

job_id_var: ContextVar[str | None] = ContextVar("jobstream_job_id", default=None)
"""The job the code running now acts on."""


def bind_job(job_id: str | None) -> None:
    """Names the job the current call is about (for calls whose request
    does not: submit, acquire)."""
    if job_id:
        job_id_var.set(job_id)


@contextmanager
def job_context(job_id: str) -> Iterator[None]:
    """Lines logged inside the block name ``job_id`` (background work: the
    lease sweeper, retention)."""
    token = job_id_var.set(job_id)
    try:
        yield
    finally:
        job_id_var.reset(token)


class ContextFilter(logging.Filter):
    """Copies the context's ids onto each record (unless the call passed
    its own through ``extra=``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Adds ``request_id``, ``job_id`` and the text suffix ``ids``."""
        request_id = getattr(record, "request_id", None) or request_id_var.get()
        job_id = getattr(record, "job_id", None) or job_id_var.get()
        # setattr: LogRecord declares no such attributes; extra= fields land the same way.
        setattr(record, "request_id", request_id)  # noqa: B010
        setattr(record, "job_id", job_id)  # noqa: B010
        parts = [
            f"{name}={value}"
            for name, value in (("request_id", request_id), ("job_id", job_id))
            if value
        ]
        record.ids = f" [{' '.join(parts)}]" if parts else ""
        return True


def configure(level: str, *, as_json: bool) -> None:
    """Sends the server's logs to stderr as text or JSON lines."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(ContextFilter())
    handler.setFormatter(JsonLogFormatter() if as_json else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    floor = max(logging.getLevelName(level) if isinstance(level, str) else level, logging.INFO)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(floor)


_ID_PREFIX = uuid.uuid4().hex[:8]
"""This process's part of the request ids it makes: ids from two servers
(or two runs of one) never collide."""

_next_id = itertools.count(1)


def request_id(metadata: Any) -> str:
    """The caller's ``x-request-id`` when it is well formed, else a fresh
    id: this process's prefix and a counter (no system call per call, as
    a random id would need)."""
    for key, value in metadata or ():
        if key == REQUEST_ID_HEADER and isinstance(value, str) and REQUEST_ID.fullmatch(value):
            return value
    return f"{_ID_PREFIX}{next(_next_id):08x}"


_JOB_FIELDS: dict[type, tuple[bool, bool]] = {}
"""Per message class: whether it has a ``job_id`` field, and a ``job`` field."""


def job_of(message: Any) -> str | None:
    """``job_id`` of a request, or the id of the job a response carries
    (looked up by the message's fields, known once per message class)."""
    fields = _JOB_FIELDS.get(type(message))
    if fields is None:
        by_name = getattr(getattr(message, "DESCRIPTOR", None), "fields_by_name", {})
        fields = _JOB_FIELDS[type(message)] = ("job_id" in by_name, "job" in by_name)
    has_job_id, has_job = fields
    if has_job_id and message.job_id:
        return str(message.job_id)
    if has_job and message.HasField("job"):
        return str(message.job.id) or None
    return None


def enter_call(request_id_value: str, request: Any) -> None:
    """Names the call's request and (when the request names one) its job
    for every line logged on its behalf."""
    request_id_var.set(request_id_value)
    job_id_var.set(job_of(request))


def access_logged() -> bool:
    """Whether the access log writes its lines (``--log-level DEBUG``)."""
    return access_log.isEnabledFor(logging.DEBUG)


def log_access(method: str, code: str, duration_s: float) -> None:
    """The access log's line of one finished call."""
    duration_ms = duration_s * 1000
    access_log.debug(
        "%s %s %.1fms",
        method,
        code,
        duration_ms,
        extra={"method": method, "code": code, "duration_ms": round(duration_ms, 3)},
    )
