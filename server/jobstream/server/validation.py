"""The edge: turns protobuf requests into validated domain values, or raises
InvalidArgument naming the field and the limit. Nothing reaches the store
unchecked."""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from collections.abc import Mapping, Sequence, Sized
from typing import Any

from google.protobuf import duration_pb2, struct_pb2, timestamp_pb2

from jobstream.server.domain import (
    JSON,
    Acquire,
    ArtifactSpec,
    ErrorInfo,
    Finish,
    JobFilter,
    LogLevel,
    LogLine,
    NewJob,
    Progress,
    Report,
    ResultItem,
    Step,
)
from jobstream.server.errors import InvalidArgument
from jobstream.server.limits import (
    ARTIFACT_NAME,
    CLIENT_JOB_ID,
    DEFAULT_STATS_WINDOW_S,
    KIND,
    LABEL_KEY,
    LEASE_ID,
    MAX_ACQUIRE_NAMES,
    MAX_ATTEMPTS,
    MAX_BATCH_SUBMIT,
    MAX_BATCH_SUBMIT_BYTES,
    MAX_CONTENT_TYPE_BYTES,
    MAX_DURATION_NANOS,
    MAX_FILTER_VALUES,
    MAX_LEASE_REQUEST_S,
    MAX_PAGE_TOKEN_BYTES,
    MAX_PATH_BYTES,
    MAX_PRIORITY,
    MAX_PURGE_AGE_S,
    MAX_REPORT_ITEMS,
    MAX_REQUEST_ID_BYTES,
    MAX_RESULT_BYTES,
    MAX_RESULT_KEY_BYTES,
    MAX_SEQ,
    MAX_STATS_WINDOW_S,
    MAX_TEXT_BYTES,
    MAX_TIME_US,
    MAX_WAIT_S,
    MIN_LEASE_S,
    QUEUE,
    SERVER_JOB_ID,
    TRUNCATED_MARKER,
    WORKER_ID,
    Limits,
)
from jobstream.server.proto_enums import (
    JOB_STATES,
    LOG_LEVELS,
    OUTCOMES,
    RESULT_STATUSES,
    STEP_STATES,
)
from jobstream.v1 import job_pb2, job_service_pb2, worker_service_pb2

_COMPACT_JSON = json.JSONEncoder(separators=(",", ":"))
"""Measures JSON values' size; built once (see store.dumps)."""


# ---------------------------------------------------------------- primitives


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


def _plain(message: Any, field: str, depth: int, max_depth: int) -> Any:
    """``message`` as plain JSON; ``depth`` counts the objects and arrays
    around it, the outermost object being level 1."""
    if isinstance(message, (struct_pb2.Struct, struct_pb2.ListValue)):
        if depth > max_depth:
            raise InvalidArgument(f"nests deeper than the limit of {max_depth} levels", field=field)
        if isinstance(message, struct_pb2.Struct):
            return {k: _plain(v, field, depth + 1, max_depth) for k, v in message.fields.items()}
        return [_plain(v, field, depth + 1, max_depth) for v in message.values]
    kind = message.WhichOneof("kind")
    if kind == "struct_value":
        return _plain(message.struct_value, field, depth, max_depth)
    if kind == "list_value":
        return _plain(message.list_value, field, depth, max_depth)
    if kind == "number_value":
        number = message.number_value
        if not math.isfinite(number):
            raise InvalidArgument("numbers must be finite", field=field)
        return int(number) if number.is_integer() and abs(number) < 2**53 else number
    if kind == "string_value":
        return message.string_value
    if kind == "bool_value":
        return message.bool_value
    return None


def page_size(value: int, default: int, maximum: int) -> int:
    """A page size: 0 takes the default; beyond 1..maximum is refused."""
    if value == 0:
        return default
    if not 1 <= value <= maximum:
        raise InvalidArgument(f"{value} is outside 1..{maximum}", field="page_size")
    return value


def encode_token(value: Any) -> str:
    """An opaque page token."""
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode()


def decode_token(token: str) -> Any:
    """The value inside a page token; InvalidArgument unless this server
    could have issued it. Only a token that encodes back to exactly itself
    is decoded further, and a long one is refused before decoding, so no
    client-made JSON (nested thousands deep, numbers of any size) reaches
    the parser's recursion or the database."""
    if len(token) > MAX_PAGE_TOKEN_BYTES:
        raise _foreign_token()
    try:
        value = json.loads(base64.urlsafe_b64decode(token.encode()))
    except (binascii.Error, ValueError, UnicodeError, RecursionError) as exc:
        raise _foreign_token() from exc
    if encode_token(value) != token:
        raise _foreign_token()
    return value


def _foreign_token() -> InvalidArgument:
    return InvalidArgument("is not a token this server issued", field="page_token")


def _int_in(value: Any, lo: int, hi: int) -> bool:
    """Whether ``value`` is a JSON integer (not a bool) within ``lo..hi``."""
    return isinstance(value, int) and not isinstance(value, bool) and lo <= value <= hi


def seq_token(token: str) -> int:
    """The seq a GetJobLogs / ListJobResults page token resumes after."""
    if not token:
        return 0
    value = decode_token(token)
    if not _int_in(value, 0, MAX_SEQ):
        raise _foreign_token()
    return int(value)


def job_cursor(token: str) -> tuple[int, str] | None:
    """The (create_time, id) a ListJobs page token resumes after."""
    if not token:
        return None
    value = decode_token(token)
    if (
        isinstance(value, list)
        and len(value) == 2
        and _int_in(value[0], 0, MAX_TIME_US)
        and isinstance(value[1], str)
        and (CLIENT_JOB_ID.fullmatch(value[1]) or SERVER_JOB_ID.fullmatch(value[1]))
    ):
        return value[0], value[1]
    raise _foreign_token()


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


def _labels(labels: Mapping[str, str], field: str, limits: Limits) -> dict[str, str]:
    if len(labels) > limits.max_labels:
        raise InvalidArgument(
            f"has {len(labels)} labels; the limit is {limits.max_labels}", field=field
        )
    for key, value in labels.items():
        pattern(key, LABEL_KEY, f"{field}[{key[:40]!r}]")
        text(value, f"{field}[{key!r}]", limits.max_label_value_bytes)
    return dict(labels)


def _names(
    values: Sequence[str], regex: re.Pattern[str], field: str, limit: int
) -> tuple[str, ...]:
    """Names matching ``regex``, at most ``limit`` of them, duplicates
    dropped (order kept)."""
    _count(values, field, limit)
    return tuple(dict.fromkeys(pattern(v, regex, field) for v in values))


def _count(values: Sized, field: str, limit: int) -> None:
    if len(values) > limit:
        raise InvalidArgument(f"has {len(values)} values; the limit is {limit}", field=field)


# ---------------------------------------------------------------- requests


def new_job(
    req: job_service_pb2.SubmitJobRequest,
    limits: Limits,
    field: str = "",
    owner: str = "",
    id_prefix: str | None = None,
) -> NewJob:
    """A SubmitJobRequest as a NewJob. ``id_prefix``, when given, is the
    namespace a client-chosen job id must lie in (see auth.Principal)."""
    if req.job_id:
        pattern(req.job_id, CLIENT_JOB_ID, f"{field}job_id")
        if id_prefix is not None and not req.job_id.startswith(id_prefix):
            raise InvalidArgument(
                f"{req.job_id!r} must start with {id_prefix!r}: ids a principal chooses "
                "are prefixed with its name and a dot",
                field=f"{field}job_id",
            )
    if not req.kind:
        raise InvalidArgument("is required", field=f"{field}kind")
    pattern(req.kind, KIND, f"{field}kind")
    if req.queue:
        pattern(req.queue, QUEUE, f"{field}queue")
    if not -MAX_PRIORITY <= req.priority <= MAX_PRIORITY:
        raise InvalidArgument(
            f"{req.priority} is outside -{MAX_PRIORITY}..{MAX_PRIORITY}",
            field=f"{field}priority",
        )
    if not 0 <= req.max_attempts <= MAX_ATTEMPTS:
        raise InvalidArgument(
            f"{req.max_attempts} is outside 0..{MAX_ATTEMPTS}", field=f"{field}max_attempts"
        )
    if req.request_id:
        text(req.request_id, f"{field}request_id", MAX_REQUEST_ID_BYTES)
    return NewJob(
        kind=req.kind,
        job_id=req.job_id or None,
        queue=req.queue or "default",
        priority=req.priority,
        params=json_value(
            req.params, f"{field}params", limits.max_params_bytes, limits.max_json_depth
        ),
        labels=_labels(req.labels, f"{field}labels", limits),
        max_attempts=req.max_attempts,
        not_before=(
            timestamp_us(req.not_before, f"{field}not_before")
            if req.HasField("not_before")
            else None
        ),
        request_id=req.request_id or None,
        owner=owner,
    )


def new_jobs(
    req: job_service_pb2.SubmitJobsRequest,
    limits: Limits,
    owner: str = "",
    id_prefix: str | None = None,
) -> list[NewJob]:
    """A SubmitJobsRequest as NewJobs, each field named by its index."""
    if not 1 <= len(req.requests) <= MAX_BATCH_SUBMIT:
        raise InvalidArgument(
            f"has {len(req.requests)} jobs; allowed 1..{MAX_BATCH_SUBMIT}", field="requests"
        )
    size = req.ByteSize()
    if size > MAX_BATCH_SUBMIT_BYTES:
        raise InvalidArgument(
            f"are {size} bytes together; the limit is {MAX_BATCH_SUBMIT_BYTES} "
            "(the answer carries every job back): send smaller batches",
            field="requests",
        )
    return [
        new_job(r, limits, f"requests[{i}].", owner, id_prefix) for i, r in enumerate(req.requests)
    ]


def job_filter(flt: job_pb2.JobFilter, limits: Limits) -> JobFilter:
    """A JobFilter message as a domain filter."""
    _count(flt.states, "filter.states", MAX_FILTER_VALUES)
    states = []
    for value in flt.states:
        if value not in JOB_STATES:
            raise InvalidArgument(f"{value} is not a job state", field="filter.states")
        states.append(JOB_STATES[value])
    return JobFilter(
        states=tuple(dict.fromkeys(states)),
        kinds=_names(flt.kinds, KIND, "filter.kinds", MAX_FILTER_VALUES),
        labels=tuple(sorted(_labels(flt.labels, "filter.labels", limits).items())),
        queues=_names(flt.queues, QUEUE, "filter.queues", MAX_FILTER_VALUES),
    )


def _enum(value: int, table: Mapping[Any, Any], field: str) -> Any:
    if value not in table:
        raise InvalidArgument(f"{value} is not one of {sorted(table)}", field=field)
    return table[value]


def report(req: worker_service_pb2.ReportJobRequest, limits: Limits) -> Report:
    """A ReportJobRequest as a Report."""
    counts = {
        "logs": len(req.logs),
        "steps": len(req.steps),
        "results": len(req.results),
        "files": len(req.files),
    }
    count = sum(counts.values())
    if count > MAX_REPORT_ITEMS:
        raise InvalidArgument(
            f"the report carries {count} logs, steps, results and files together; "
            f"the limit is {MAX_REPORT_ITEMS}",
            field=max(counts, key=lambda k: counts[k]),
        )
    progress = None
    if req.HasField("progress"):
        p = req.progress
        if p.done < 0 or p.total < 0:
            raise InvalidArgument("done and total must not be negative", field="progress")
        fraction = p.fraction
        if fraction == 0 and p.total > 0:
            fraction = min(1.0, p.done / p.total)
        if not (math.isfinite(fraction) and 0.0 <= fraction <= 1.0):
            raise InvalidArgument(f"{p.fraction} is outside 0..1", field="progress.fraction")
        progress = Progress(
            fraction=fraction,
            done=p.done,
            total=p.total,
            phase=text(p.phase, "progress.phase"),
            message=text(p.message, "progress.message"),
        )
    logs = tuple(
        LogLine(
            level=LOG_LEVELS.get(ln.level, LogLevel.INFO),
            text=log_text(ln.text, f"logs[{i}].text", limits.max_log_line_bytes),
            stream=text(ln.stream, f"logs[{i}].stream"),
            truncated=len(ln.text.encode()) > limits.max_log_line_bytes,
        )
        for i, ln in enumerate(req.logs)
    )
    steps = tuple(
        Step(
            name=_required(text(s.name, f"steps[{i}].name"), f"steps[{i}].name"),
            state=_enum(s.state, STEP_STATES, f"steps[{i}].state"),
            error=text(s.error, f"steps[{i}].error"),
            data=(
                json_value(s.data, f"steps[{i}].data", MAX_RESULT_BYTES, limits.max_json_depth)
                if s.HasField("data")
                else None
            ),
        )
        for i, s in enumerate(req.steps)
    )
    results = tuple(
        ResultItem(
            # Results are stored by key: an item without one would replace
            # every other keyless item of the job.
            key=_required(
                text(r.key, f"results[{i}].key", MAX_RESULT_KEY_BYTES), f"results[{i}].key"
            ),
            status=_enum(r.status, RESULT_STATUSES, f"results[{i}].status"),
            data=(
                json_value(r.data, f"results[{i}].data", MAX_RESULT_BYTES, limits.max_json_depth)
                if r.HasField("data")
                else None
            ),
            error=text(r.error, f"results[{i}].error"),
        )
        for i, r in enumerate(req.results)
    )
    files = tuple(
        _required(text(f, f"files[{i}]", MAX_PATH_BYTES), f"files[{i}]")
        for i, f in enumerate(req.files)
    )
    return Report(
        progress=progress,
        logs=logs,
        steps=steps,
        results=results,
        files=files,
        report_seq=seq(req.report_seq, "report_seq"),
    )


def finish(req: worker_service_pb2.FinishJobRequest, limits: Limits) -> Finish:
    """A FinishJobRequest as a Finish."""
    outcome = _enum(req.outcome, OUTCOMES, "outcome")
    error = None
    if req.HasField("error"):
        error = ErrorInfo(
            code=text(req.error.code, "error.code"),
            message=text(req.error.message, "error.message", limits.max_log_line_bytes),
            details=(
                json_value(
                    req.error.details, "error.details", MAX_RESULT_BYTES, limits.max_json_depth
                )
                if req.error.HasField("details")
                else None
            ),
        )
    result = (
        json_value(req.result, "result", MAX_RESULT_BYTES, limits.max_json_depth)
        if req.HasField("result")
        else None
    )
    return Finish(outcome=outcome, result=result, error=error, retryable=req.retryable)


def lease_id(value: str) -> str:
    """A lease id as the server makes them."""
    return pattern(value, LEASE_ID, "lease_id")


def _required(value: str, field: str) -> str:
    if not value:
        raise InvalidArgument("is required", field=field)
    return value


# ------------------------------------------- retry, purge, stats, artifacts

SHA256_HEX = re.compile(r"[0-9a-f]{64}")
"""A SHA-256 digest as lowercase hex."""


def retry_attempts(value: int) -> int:
    """RetryJob's additional_attempts: 0 means one more attempt."""
    if not 0 <= value <= MAX_ATTEMPTS:
        raise InvalidArgument(f"{value} is outside 0..{MAX_ATTEMPTS}", field="additional_attempts")
    return value or 1


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


def acquire(req: worker_service_pb2.AcquireJobRequest) -> Acquire:
    """An AcquireJobRequest as an Acquire."""
    worker_id = pattern(req.worker_id, WORKER_ID, "worker_id")
    if not req.kinds:
        raise InvalidArgument("name at least one kind", field="kinds")
    return Acquire(
        worker_id=worker_id,
        kinds=_names(req.kinds, KIND, "kinds", MAX_ACQUIRE_NAMES),
        queues=_names(req.queues, QUEUE, "queues", MAX_ACQUIRE_NAMES) or ("default",),
        wait_s=duration_us(req.wait, "wait", 0, MAX_WAIT_S) / 1e6,
        lease_us=(
            duration_us(req.lease_duration, "lease_duration", MIN_LEASE_S, MAX_LEASE_REQUEST_S)
            if req.HasField("lease_duration")
            else None
        ),
    )


def purge_filter(flt: job_pb2.JobFilter, limits: Limits) -> JobFilter:
    """A PurgeJobs filter: its states, if any, must all be terminal."""
    domain = job_filter(flt, limits)
    live = [s.value for s in domain.states if not s.terminal]
    if live:
        raise InvalidArgument(
            f"{', '.join(live)} is not a terminal state; live jobs are never purged",
            field="filter.states",
        )
    return domain


def purge_age_us(req: job_service_pb2.PurgeJobsRequest) -> int:
    """PurgeJobs' older_than in microseconds; required so that an empty
    request can never mean "delete everything"."""
    if not req.HasField("older_than"):
        raise InvalidArgument("is required (0s selects every ended job)", field="older_than")
    return duration_us(req.older_than, "older_than", 0, MAX_PURGE_AGE_S)


def stats_window_us(req: job_service_pb2.GetStatsRequest) -> int:
    """GetStats' window in microseconds (unset: the default)."""
    if not req.HasField("window"):
        return DEFAULT_STATS_WINDOW_S * 1_000_000
    return duration_us(req.window, "window", 1, MAX_STATS_WINDOW_S)


def artifact_name(value: str, field: str = "name") -> str:
    """An artifact name (a plain file name)."""
    if not value:
        raise InvalidArgument("is required", field=field)
    return pattern(value, ARTIFACT_NAME, field)


def artifact_header(header: worker_service_pb2.ArtifactHeader, limits: Limits) -> ArtifactSpec:
    """The first message of an upload, checked."""
    if not 0 <= header.size_bytes <= limits.max_artifact_bytes:
        raise InvalidArgument(
            f"{header.size_bytes} is outside 0..{limits.max_artifact_bytes}",
            field="header.size_bytes",
        )
    return ArtifactSpec(
        job_id=job_id(header.job_id, "header.job_id"),
        lease_id=pattern(header.lease_id, LEASE_ID, "header.lease_id"),
        name=artifact_name(header.name, "header.name"),
        content_type=text(header.content_type, "header.content_type", MAX_CONTENT_TYPE_BYTES),
        size_bytes=header.size_bytes,
        sha256=pattern(header.sha256, SHA256_HEX, "header.sha256"),
    )


def download_offset(value: int, limits: Limits) -> int:
    """DownloadArtifact's offset (the upper bound is the artifact's size)."""
    if not 0 <= value <= limits.max_artifact_bytes:
        raise InvalidArgument(f"{value} is outside 0..{limits.max_artifact_bytes}", field="offset")
    return value
