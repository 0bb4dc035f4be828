"""One JSON log line format for every jobstream process: the server
(``jobstream serve --log-json``) and the worker (``jobstream worker --json``).

Each record is one JSON object on one line: ``time`` (UTC, ISO 8601 with
milliseconds), ``level`` (``INFO``, ``DEBUG`` …), ``logger``, ``message``;
then whichever context fields the record carries (the ids of the call and
job it was logged for, the access log's method, code and duration); and
``exception`` with the traceback when one was logged.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

__all__ = ["ID_FIELDS", "VALUE_FIELDS", "JsonLogFormatter"]

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
