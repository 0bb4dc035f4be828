"""Request fields checked one at a time: ids, names, free text, JSON values,
resume points, times and durations. Each returns the value (or its domain
form) or raises InvalidArgument naming the field and the limit; the
requests built from them are in validation.py."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence, Sized
from typing import Any

from google.protobuf import duration_pb2, struct_pb2, timestamp_pb2

from jobstream.server.domain import JSON, compact_json
from jobstream.server.errors import InvalidArgument
from jobstream.server.limits import (
    ARTIFACT_NAME,
    CLIENT_JOB_ID,
    LABEL_KEY,
    LEASE_ID,
    MAX_DURATION_NANOS,
    MAX_SEQ,
    MAX_TEXT_BYTES,
    SERVER_JOB_ID,
    TRUNCATED_MARKER,
    Limits,
)

_COMPACT_JSON = json.JSONEncoder(separators=(",", ":"))
"""Measures JSON values' size; built once (see store.dumps)."""


def job_id(value: str, field: str = "job_id") -> str:
    """An id naming an existing job (either form)."""
    if CLIENT_JOB_ID.fullmatch(value) or SERVER_JOB_ID.fullmatch(value):
        return value
    raise InvalidArgument(
        f"{value[:80]!r} is not a job id ([a-z0-9][a-z0-9._-]{{0,62}} or job_<ulid>)",
        field=field,
    )


def log_text(value: str, field: str, max_bytes: int) -> str:
    """A log line, cut (not refused) at ``max_bytes``: a handler that
    prints one huge line should lose its tail, not its whole batch."""
    encoded = value.encode()
    if len(encoded) > max_bytes:
        room = max(0, max_bytes - len(TRUNCATED_MARKER.encode()))
        value = encoded[:room].decode(errors="ignore") + TRUNCATED_MARKER
    return text(value, field, max(max_bytes, len(value.encode())))


def pattern(value: str, regex: re.Pattern[str], field: str) -> str:
    """``value`` if it matches ``regex`` whole."""
    if not regex.fullmatch(value):
        raise InvalidArgument(f"{value[:80]!r} must match {regex.pattern}", field=field)
    return value


def text(value: str, field: str, max_bytes: int = MAX_TEXT_BYTES) -> str:
    """Free text: bounded, and without NUL (which PostgreSQL cannot store;
    refused on every backend so both behave the same)."""
    size = len(value.encode())
    if size > max_bytes:
        raise InvalidArgument(f"is {size} bytes; the limit is {max_bytes}", field=field)
    if "\x00" in value:
        raise InvalidArgument("contains a NUL character", field=field)
    return value


def json_value(struct: struct_pb2.Struct, field: str, max_bytes: int, max_depth: int) -> JSON:
    """A Struct as a plain dict, bounded in size and depth. Whole numbers
    come back as ints (Struct carries every number as a double)."""
    value = _plain(struct, field, 1, max_depth)
    size = len(_COMPACT_JSON.encode(value).encode())
    if size > max_bytes:
        raise InvalidArgument(f"is {size} bytes as JSON; the limit is {max_bytes}", field=field)
    assert isinstance(value, dict)
    return value


def json_object(
    struct: struct_pb2.Struct, field: str, max_bytes: int, max_depth: int
) -> tuple[JSON, str]:
    """:func:`json_value`, and its text as stored (domain.compact_json),
    made once for both the size check and the row."""
    value = _plain(struct, field, 1, max_depth)
    text = compact_json(value)
    # ASCII text reads the same escaped or not; other text is measured as
    # json_value measures it, escaped, so the limit means the same.
    size = len(text) if text.isascii() else len(_COMPACT_JSON.encode(value))
    if size > max_bytes:
        raise InvalidArgument(f"is {size} bytes as JSON; the limit is {max_bytes}", field=field)
    return value, text


def _plain(message: Any, field: str, depth: int, max_depth: int) -> Any:
    """``message`` as plain JSON; ``depth`` counts the objects and arrays
    around it, the outermost object being level 1. Leaves are tested first:
    every job's params go through here, and most members are leaves."""
    if isinstance(message, struct_pb2.Value):
        kind = message.WhichOneof("kind")
        if kind == "string_value":
            return message.string_value
        if kind == "number_value":
            number = message.number_value
            if not math.isfinite(number):
                raise InvalidArgument("numbers must be finite", field=field)
            return int(number) if number.is_integer() and abs(number) < 2**53 else number
        if kind == "bool_value":
            return message.bool_value
        if kind == "struct_value":
            message = message.struct_value
        elif kind == "list_value":
            message = message.list_value
        else:
            return None
    if depth > max_depth:
        raise InvalidArgument(f"nests deeper than the limit of {max_depth} levels", field=field)
    if isinstance(message, struct_pb2.Struct):
        return {k: _plain(v, field, depth + 1, max_depth) for k, v in message.fields.items()}
    return [_plain(v, field, depth + 1, max_depth) for v in message.values]


def page_size(value: int, default: int, maximum: int) -> int:
    """A page size (AIP-158): 0 takes the default, one above the maximum is
    lowered to it; only a negative one is refused."""
    if value < 0:
        raise InvalidArgument(f"{value} is negative", field="page_size")
    if value == 0:
        return default
    return min(value, maximum)


def seq(value: int, field: str) -> int:
    """A resume point: 0 or a positive seq / position."""
    if not 0 <= value <= MAX_SEQ:
        raise InvalidArgument(f"{value} is outside 0..{MAX_SEQ}", field=field)
    return value


def timestamp_us(ts: timestamp_pb2.Timestamp, field: str) -> int:
    """A Timestamp in microseconds; refuses out-of-range values."""
    if not 0 <= ts.seconds <= 253402300799 or not 0 <= ts.nanos < 1_000_000_000:
        raise InvalidArgument(
            "is not a valid timestamp (0001..9999, nanos 0..999999999)", field=field
        )
    return ts.seconds * 1_000_000 + ts.nanos // 1000


def labels(labels: Mapping[str, str], field: str, limits: Limits) -> dict[str, str]:
    if len(labels) > limits.max_labels:
        raise InvalidArgument(
            f"has {len(labels)} labels; the limit is {limits.max_labels}", field=field
        )
    for key, value in labels.items():
        pattern(key, LABEL_KEY, f"{field}[{key[:40]!r}]")
        text(value, f"{field}[{key!r}]", limits.max_label_value_bytes)
    return dict(labels)


def names(values: Sequence[str], regex: re.Pattern[str], field: str, limit: int) -> tuple[str, ...]:
    """Names matching ``regex``, at most ``limit`` of them, duplicates
    dropped (order kept)."""
    count(values, field, limit)
    return tuple(dict.fromkeys(pattern(v, regex, field) for v in values))


def count(values: Sized, field: str, limit: int) -> None:
    if len(values) > limit:
        raise InvalidArgument(f"has {len(values)} values; the limit is {limit}", field=field)


def enum_value(value: int, table: Mapping[Any, Any], field: str) -> Any:
    if value not in table:
        raise InvalidArgument(f"{value} is not one of {sorted(table)}", field=field)
    return table[value]


def lease_id(value: str) -> str:
    """A lease id as the server makes them."""
    return pattern(value, LEASE_ID, "lease_id")


def required(value: str, field: str) -> str:
    if not value:
        raise InvalidArgument("is required", field=field)
    return value


def duration_us(value: duration_pb2.Duration, field: str, lo_s: float, hi_s: float) -> int:
    """A Duration in microseconds within ``lo_s..hi_s`` seconds. Malformed
    ones (nanos beyond ±999,999,999, or of the other sign than seconds) are
    refused, and the range is compared exactly (Python ints) before any
    conversion, so no value can overflow."""
    seconds, nanos = value.seconds, value.nanos
    if abs(nanos) > MAX_DURATION_NANOS or (seconds > 0 > nanos) or (seconds < 0 < nanos):
        raise InvalidArgument(
            f"is not a valid Duration (seconds={seconds}, nanos={nanos}): nanos must lie "
            f"within ±{MAX_DURATION_NANOS} and share the sign of seconds",
            field=field,
        )
    total_ns = seconds * 1_000_000_000 + nanos
    if not lo_s * 1e9 <= total_ns <= hi_s * 1e9:
        shown = f"{seconds}s" if nanos == 0 else f"{total_ns / 1e9:g}s"
        raise InvalidArgument(f"{shown} is outside {lo_s:g}s..{hi_s:g}s", field=field)
    return total_ns // 1000


def artifact_name(value: str, field: str = "name") -> str:
    """An artifact name (a plain file name)."""
    if not value:
        raise InvalidArgument("is required", field=field)
    return pattern(value, ARTIFACT_NAME, field)
