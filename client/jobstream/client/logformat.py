"""How jobstream's processes log: one text and one JSON line format for the
server (``jobstream serve --log-json``) and the worker (``jobstream worker
--json``), and the handler a library Worker falls back on when the
application configured no logging.

Each record is one JSON object on one line: ``time`` (UTC, ISO 8601 with
milliseconds), ``level`` (``INFO``, ``DEBUG`` …), ``logger``, ``message``;
then whichever context fields the record carries (the ids of the call and
job it was logged for, the access log's method, code and duration); and
``exception`` with the traceback when one was logged.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

__all__ = [
    "FALLBACK_LEVEL",
    "ID_FIELDS",
    "TEXT_FORMAT",
    "VALUE_FIELDS",
    "JsonLogFormatter",
    "fallback_logging",
]

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
"""A text log line of the worker (the server's adds the call's ids)."""

FALLBACK_LEVEL = logging.INFO
"""What a Worker logs when the application configured no logging: its
start, the jobs it finishes, each failure, its stop."""

ID_FIELDS = ("request_id", "job_id")
"""Record attributes written when set and not empty: the RPC and the job a
line was logged for."""

VALUE_FIELDS = ("method", "code", "duration_ms")
"""Record attributes written whenever present (an access log line's)."""


class JsonLogFormatter(logging.Formatter):
    """Formats a record as one line of JSON (see the module docstring)."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as one line of JSON."""
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in ID_FIELDS:
            value = getattr(record, key, None)
            if value:
                line[key] = value
        for key in VALUE_FIELDS:
            if hasattr(record, key):
                line[key] = getattr(record, key)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False, default=str)


class _FallbackHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to stderr until the application configures logging of its own
    (a handler on the root logger): then it stays quiet, so no line shows
    twice."""

    def emit(self, record: logging.LogRecord) -> None:
        """Write ``record`` unless the root logger has handlers now."""
        if logging.getLogger().handlers:
            return
        super().emit(record)


@contextmanager
def fallback_logging(name: str) -> Iterator[None]:
    """Make the logger ``name`` (and those below it) print INFO and above on
    stderr for the duration, if the application has not configured logging.

    "Configured" is what :data:`logging.lastResort` goes by: a handler on the
    logger or any of its ancestors, the root included. So a program that
    calls ``logging.basicConfig`` (or any dictConfig) keeps its own
    settings, and one that wants the library quiet says so the standard
    way, ``logging.getLogger("jobstream").addHandler(logging.NullHandler())``.
    lastResort itself prints only warnings, and a worker's start is INFO.
    """
    logger = logging.getLogger(name)
    if logger.hasHandlers():
        yield
        return
    handler = _FallbackHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    level = logger.level
    logger.addHandler(handler)
    if level == logging.NOTSET:
        logger.setLevel(FALLBACK_LEVEL)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
