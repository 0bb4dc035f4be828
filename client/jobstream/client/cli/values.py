"""Values of command-line flags and environment variables, parsed.

Each converter takes the text as typed (after a flag, or in a
``JOBSTREAM_*`` variable) and returns the value or raises
``argparse.ArgumentTypeError`` with a message that says what was expected.
"""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime, timedelta
from typing import Any

from jobstream.client.models import JobState, LogLevel, ResultStatus
from jobstream.client.settings import parse_timedelta

__all__ = [
    "delay",
    "duration",
    "integer",
    "json_object",
    "key_value",
    "non_negative_int",
    "param",
    "positive_int",
    "result_status",
    "state",
    "timeout",
    "timestamp",
]


def positive_int(text: str) -> int:
    """An integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {text!r}")
    return value


def non_negative_int(text: str) -> int:
    """An integer >= 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative: {text!r}")
    return value


def integer(text: str) -> int:
    """Any integer."""
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None


def timeout(text: str) -> float:
    """Seconds; 0 means no deadline (the caller turns it into ``None``)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value >= 0:  # also refuses NaN
        raise argparse.ArgumentTypeError(f"must be a number of seconds >= 0: {text!r}")
    return value


def key_value(text: str) -> tuple[str, str]:
    """``k=v`` as a pair; the key may not be empty, the value may."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected key=value, got {text!r}")
    return key, value


def param(text: str) -> tuple[str, Any]:
    """``k=v`` with ``v`` read as JSON when it is JSON (``n=200`` is 200)."""
    key, value = key_value(text)
    try:
        return key, json.loads(value)
    except ValueError:
        return key, value


def json_object(text: str) -> dict[str, Any]:
    """A JSON object (a dict)."""
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object")
    return value


def state(text: str) -> JobState:
    """A job state by name, in any case (``running``, ``RUNNING``)."""
    name = text.strip().lower()
    try:
        return JobState(name)
    except ValueError:
        valid = ", ".join(member.value for member in JobState)
        raise argparse.ArgumentTypeError(f"unknown state {text!r} (one of: {valid})") from None


def result_status(text: str) -> ResultStatus:
    """A per-item result status by name, in any case (``failed``, ``FAILED``)."""
    name = text.strip().lower()
    try:
        return ResultStatus(name)
    except ValueError:
        valid = ", ".join(member.value for member in ResultStatus)
        raise argparse.ArgumentTypeError(f"unknown status {text!r} (one of: {valid})") from None


def timestamp(text: str) -> datetime:
    """An ISO 8601 time (UTC unless it says otherwise) or ``+`` and a
    duration (``+10m``) from now."""
    if text.strip().startswith("+"):
        return delay(text.strip()[1:])
    return _iso_time(text, "an ISO 8601 time or +DURATION (e.g. +10m)")


def _iso_time(text: str, expected: str) -> datetime:
    """An ISO 8601 time, UTC unless it says otherwise; ``expected`` words
    the refusal."""
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def duration(text: str) -> timedelta:
    """A span: ``90``, ``1.5s``, ``10m``, ``2h``, ``30d`` (see jobstream.client.settings)."""
    try:
        return parse_timedelta(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def delay(text: str) -> datetime:
    """A time ``text`` (a duration, see :func:`duration`) from now."""
    return datetime.now(UTC) + duration(text)


def since(text: str) -> datetime:
    """A point in the past: a duration ago (``10m``, ``1d``) or an ISO 8601
    time (UTC unless it says otherwise)."""
    try:
        return datetime.now(UTC) - parse_timedelta(text)
    except ValueError:
        return _iso_time(text, "a duration ago (10m, 1d) or an ISO 8601 time")


def log_level(text: str) -> LogLevel:
    """A log level: debug, info, warning (or warn), error."""
    name = text.strip().lower()
    name = {"warn": "warning", "err": "error"}.get(name, name)
    try:
        return LogLevel(name)
    except ValueError:
        valid = ", ".join(level.value for level in LogLevel)
        raise argparse.ArgumentTypeError(f"unknown level {text!r} (one of: {valid})") from None
