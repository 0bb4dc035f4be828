"""``--json`` output: client model dataclasses as JSON.

Every JSON document the CLI prints is made by :func:`to_jsonable` from the
client's model dataclasses, so a job looks the same in ``get --json``,
``ls --json`` and the ``watch --json`` snapshot.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from enum import Enum
from typing import Any, TextIO

__all__ = ["dumps", "print_json", "rfc3339", "to_jsonable"]


def rfc3339(value: datetime) -> str:
    """``value`` as an RFC 3339 string in UTC with a ``Z`` suffix.

    A naive datetime is taken to be UTC: the client library makes every time
    UTC, so a naive one can only have lost its tzinfo on the way.
    """
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    text = value.astimezone(UTC).isoformat(timespec="microseconds")
    return text.removesuffix("+00:00") + "Z"


def to_jsonable(value: Any) -> Any:
    """Turn a model dataclass (or anything it holds) into JSON-able data.

    Dataclasses become objects with every field (``None`` fields stay, as
    ``null``, so a script sees the same keys on every line), enums their
    value, datetimes RFC 3339 strings, timedeltas seconds, tuples and other sequences lists,
    non-finite floats ``null``.
    """
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            field.name: to_jsonable(getattr(value, field.name))
            for field in dataclasses.fields(value)
        }
    if isinstance(value, Enum):
        return to_jsonable(value.value)
    if isinstance(value, datetime):
        return rfc3339(value)
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, Mapping):
        return {str(key): to_jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [to_jsonable(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        # JSON has no NaN or infinity; a Struct can still carry them.
        return None
    return value


def dumps(value: Any, *, indent: int | None = None) -> str:
    """Serialise ``value`` (after :func:`to_jsonable`) as one JSON document.

    ``ensure_ascii`` stays on: json escapes C0 controls either way, but with
    it off C1 controls (U+0080..U+009F, which some terminals obey) and bidi
    overrides would be written raw, and ``--json`` output ends up on
    terminals too. Parsed, the text is exactly what the job logged.
    """
    return json.dumps(to_jsonable(value), ensure_ascii=True, indent=indent, allow_nan=False)


def print_json(value: Any, *, file: TextIO, indent: int | None = None) -> None:
    """Write ``value`` as one JSON document and a newline, and flush.

    Flushing per document lets a script read a ``watch --json`` stream line
    by line while the job runs.
    """
    file.write(dumps(value, indent=indent) + "\n")
    file.flush()
