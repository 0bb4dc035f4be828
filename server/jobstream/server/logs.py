"""Structured server logs: text by default, JSON lines with ``--log-json``
(the one format of :mod:`jobstream.client.logformat`, the worker's too),
and the request id and job id on every line logged while handling a call.

The ids live in context variables. :class:`LogContextInterceptor` sets them
around each RPC (the request id from the caller's ``x-request-id`` metadata,
else a fresh one; the job id from the request's ``job_id`` field, or the
response's job for calls that make or hand out one), and the writer and
reader threads run their work in the caller's context, so a line logged
anywhere on a call's behalf carries both. A filter on the handler copies
them onto every record; library code keeps plain ``logging.getLogger``.
"""

from __future__ import annotations

import logging
import re
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import grpc

from jobstream.client.logformat import JsonLogFormatter
from jobstream.server.interception import (
    Behavior,
    Continuation,
    Handler,
    Req,
    Resp,
    is_stream,
    rewrap,
    status_name,
)

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


def _request_id(metadata: Any) -> str:
    for key, value in metadata or ():
        if key == REQUEST_ID_HEADER and isinstance(value, str) and REQUEST_ID.fullmatch(value):
            return value
    return uuid.uuid4().hex[:16]


def _job_of(message: Any) -> str | None:
    """``job_id`` of a request, or the id of the job a response carries."""
    job_id = getattr(message, "job_id", None)
    if isinstance(job_id, str) and job_id:
        return job_id
    try:
        if message.HasField("job"):
            return str(message.job.id) or None
    except (AttributeError, ValueError):
        pass
    return None


class LogContextInterceptor(grpc.aio.ServerInterceptor):
    """Sets the request id and job id around every RPC and writes the access log."""

    async def intercept_service(
        self,
        continuation: Continuation[Req, Resp],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler[Req, Resp]:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method
        request_id = _request_id(handler_call_details.invocation_metadata)
        return rewrap(handler, lambda behavior, _kind: _wrap(behavior, method, request_id))


def _wrap(behavior: Behavior, method: str, request_id: str) -> Behavior:
    def begin(request: Any) -> float:
        request_id_var.set(request_id)
        job_id_var.set(_job_of(request))
        return time.perf_counter()

    def end(context: Any, start: float, error: BaseException | None) -> None:
        name = status_name(context, error)
        access_log.debug(
            "%s %s %.1fms",
            method,
            name,
            (time.perf_counter() - start) * 1000,
            extra={
                "method": method,
                "code": name,
                "duration_ms": round((time.perf_counter() - start) * 1000, 3),
            },
        )

    if is_stream(behavior):

        async def stream(request: Any, context: Any) -> AsyncIterator[Any]:
            start = begin(request)
            error: BaseException | None = None
            try:
                async for item in behavior(request, context):
                    yield item
            except BaseException as exc:
                error = exc
                raise
            finally:
                end(context, start, error)

        return stream

    async def call(request: Any, context: Any) -> Any:
        start = begin(request)
        error: BaseException | None = None
        try:
            response = await behavior(request, context)
            bind_job(_job_of(response))
            return response
        except BaseException as exc:
            error = exc
            raise
        finally:
            end(context, start, error)

    return call
