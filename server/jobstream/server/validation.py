"""The edge: turns protobuf requests into validated domain values, or raises
InvalidArgument naming the field and the limit. Nothing reaches the store
unchecked. The single fields are checked by fields.py."""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from jobstream.server import fields
from jobstream.server.domain import (
    Acquire,
    ArtifactSpec,
    ErrorInfo,
    Finish,
    FinishItem,
    JobFilter,
    LogLevel,
    LogLine,
    LogSearch,
    NewJob,
    Progress,
    Report,
    RequestKey,
    ResultItem,
    Step,
    canonical_json,
)
from jobstream.server.errors import InvalidArgument
from jobstream.server.limits import (
    CLIENT_JOB_ID,
    DEFAULT_STATS_WINDOW_S,
    KIND,
    LEASE_ID,
    MAX_ACQUIRE_JOBS,
    MAX_ACQUIRE_NAMES,
    MAX_ATTEMPTS,
    MAX_BATCH_SUBMIT,
    MAX_BATCH_SUBMIT_BYTES,
    MAX_CONCURRENCY,
    MAX_CONTENT_TYPE_BYTES,
    MAX_FILTER_VALUES,
    MAX_FINISH_BATCH,
    MAX_HOST_BYTES,
    MAX_LEASE_REQUEST_S,
    MAX_PARAM_VALUE_BYTES,
    MAX_PATH_BYTES,
    MAX_PRIORITY,
    MAX_PURGE_AGE_S,
    MAX_REPORT_ITEMS,
    MAX_REQUEST_ID_BYTES,
    MAX_RESULT_BYTES,
    MAX_RESULT_KEY_BYTES,
    MAX_SEARCH_TEXT_BYTES,
    MAX_STATS_WINDOW_S,
    MAX_WAIT_S,
    MIN_LEASE_S,
    PARAM_PATH,
    QUEUE,
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


@dataclass(slots=True)
class KnownNames:
    """Kinds and queues already found valid in one batch: a batch of 500
    jobs names a few, and each is matched against its pattern once."""

    kinds: set[str] = field(default_factory=set)
    queues: set[str] = field(default_factory=set)


def new_job(
    req: job_service_pb2.SubmitJobRequest,
    limits: Limits,
    field: str = "",
    owner: str = "",
    id_prefix: str | None = None,
    *,
    known: KnownNames | None = None,
) -> NewJob:
    """A SubmitJobRequest as a NewJob. ``id_prefix``, when given, is the
    namespace a client-chosen job id must lie in (see auth.Principal);
    ``known``, the names a batch's earlier jobs had checked."""
    known = known or KnownNames()
    if req.job_id:
        fields.pattern(req.job_id, CLIENT_JOB_ID, f"{field}job_id")
        if id_prefix is not None and not req.job_id.startswith(id_prefix):
            raise InvalidArgument(
                f"{req.job_id!r} must start with {id_prefix!r}: ids a principal chooses "
                "are prefixed with its name and a dot",
                field=f"{field}job_id",
            )
    kind = req.kind
    if kind not in known.kinds:
        if not kind:
            raise InvalidArgument("is required", field=f"{field}kind")
        known.kinds.add(fields.pattern(kind, KIND, f"{field}kind"))
    queue = req.queue or "default"
    if queue not in known.queues:
        known.queues.add(fields.pattern(queue, QUEUE, f"{field}queue"))
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
        fields.text(req.request_id, f"{field}request_id", MAX_REQUEST_ID_BYTES)
    params, params_json = fields.json_object(
        req.params, f"{field}params", limits.max_params_bytes, limits.max_json_depth
    )
    return NewJob(
        kind=kind,
        job_id=req.job_id or None,
        queue=queue,
        priority=req.priority,
        params=params,
        params_json=params_json,
        labels=fields.labels(req.labels, f"{field}labels", limits) if req.labels else {},
        max_attempts=req.max_attempts,
        not_before=(
            fields.timestamp_us(req.schedule_time, f"{field}schedule_time")
            if req.HasField("schedule_time")
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
    known = KnownNames()
    return [
        new_job(r, limits, f"requests[{i}].", owner, id_prefix, known=known)
        for i, r in enumerate(req.requests)
    ]


def job_filter(flt: job_pb2.JobFilter, limits: Limits) -> JobFilter:
    """A JobFilter message as a domain filter."""
    fields.count(flt.states, "filter.states", MAX_FILTER_VALUES)
    states = []
    for value in flt.states:
        if value not in JOB_STATES:
            raise InvalidArgument(f"{value} is not a job state", field="filter.states")
        states.append(JOB_STATES[value])
    return JobFilter(
        states=tuple(dict.fromkeys(states)),
        kinds=fields.names(flt.kinds, KIND, "filter.kinds", MAX_FILTER_VALUES),
        labels=tuple(sorted(fields.labels(flt.labels, "filter.labels", limits).items())),
        queues=fields.names(flt.queues, QUEUE, "filter.queues", MAX_FILTER_VALUES),
        created_after=_time(flt, "create_time_after"),
        created_before=_time(flt, "create_time_before"),
        ended_after=_time(flt, "end_time_after"),
        ended_before=_time(flt, "end_time_before"),
        text=fields.text(flt.text, "filter.text", MAX_SEARCH_TEXT_BYTES),
        params=_param_filters(flt.params),
    )


def _time(msg: Any, name: str) -> int | None:
    """An optional Timestamp field of ``msg`` in microseconds."""
    return fields.timestamp_us(getattr(msg, name), f"filter.{name}") if msg.HasField(name) else None


def _param_filters(params: Mapping[str, str]) -> tuple[tuple[tuple[str, ...], str], ...]:
    """JobFilter.params: (path, value as canonical JSON) pairs. A value that
    is not JSON is the string it spells ("eu")."""
    fields.count(params, "filter.params", MAX_FILTER_VALUES)
    pairs = []
    for key, raw in sorted(params.items()):
        name = f"filter.params[{key!r}]"
        fields.pattern(key, PARAM_PATH, name)
        fields.text(raw, name, MAX_PARAM_VALUE_BYTES)
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw
        pairs.append((tuple(key.split(".")), canonical_json(value)))
    return tuple(pairs)


def log_search(req: job_service_pb2.ListJobLogsRequest, page_size: int) -> LogSearch:
    """ListJobLogs' filters."""
    levels: tuple[LogLevel, ...] = ()
    if req.min_level:
        least = fields.enum_value(req.min_level, LOG_LEVELS, "min_level")
        order = list(LogLevel)
        levels = tuple(order[order.index(least) :])
    if not 0 <= req.tail <= page_size:
        raise InvalidArgument(f"{req.tail} is outside 0..{page_size} (the page size)", field="tail")
    return LogSearch(
        levels=levels,
        text=fields.text(req.text, "text", MAX_SEARCH_TEXT_BYTES),
        since=fields.timestamp_us(req.since_time, "since_time")
        if req.HasField("since_time")
        else None,
        tail=req.tail,
    )


def report(req: worker_service_pb2.ReportJobRequest, limits: Limits) -> Report:
    """A ReportJobRequest as a Report."""
    counts = {
        "logs": len(req.logs),
        "steps": len(req.steps),
        "results": len(req.results),
        "server_paths": len(req.server_paths),
    }
    count = sum(counts.values())
    if count > MAX_REPORT_ITEMS:
        raise InvalidArgument(
            f"the report carries {count} logs, steps, results and server paths together; "
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
            phase=fields.text(p.phase, "progress.phase"),
            message=fields.text(p.message, "progress.message"),
        )
    logs = tuple(
        LogLine(
            level=LOG_LEVELS.get(ln.level, LogLevel.INFO),
            text=fields.log_text(ln.text, f"logs[{i}].text", limits.max_log_line_bytes),
            stream=fields.text(ln.stream, f"logs[{i}].stream"),
            truncated=len(ln.text.encode()) > limits.max_log_line_bytes,
        )
        for i, ln in enumerate(req.logs)
    )
    steps = tuple(
        Step(
            name=fields.required(fields.text(s.name, f"steps[{i}].name"), f"steps[{i}].name"),
            state=fields.enum_value(s.state, STEP_STATES, f"steps[{i}].state"),
            error=fields.text(s.error, f"steps[{i}].error"),
            data=(
                fields.json_value(
                    s.data, f"steps[{i}].data", MAX_RESULT_BYTES, limits.max_json_depth
                )
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
            key=fields.required(
                fields.text(r.key, f"results[{i}].key", MAX_RESULT_KEY_BYTES), f"results[{i}].key"
            ),
            status=fields.enum_value(r.status, RESULT_STATUSES, f"results[{i}].status"),
            data=(
                fields.json_value(
                    r.data, f"results[{i}].data", MAX_RESULT_BYTES, limits.max_json_depth
                )
                if r.HasField("data")
                else None
            ),
            error=fields.text(r.error, f"results[{i}].error"),
        )
        for i, r in enumerate(req.results)
    )
    files = tuple(
        fields.required(fields.text(f, f"server_paths[{i}]", MAX_PATH_BYTES), f"server_paths[{i}]")
        for i, f in enumerate(req.server_paths)
    )
    checkpoint = (
        fields.json_value(
            req.checkpoint, "checkpoint", limits.max_checkpoint_bytes, limits.max_json_depth
        )
        if req.HasField("checkpoint")
        else None
    )
    return Report(
        progress=progress,
        logs=logs,
        steps=steps,
        results=results,
        files=files,
        report_seq=fields.seq(req.report_seq, "report_seq"),
        checkpoint=checkpoint,
    )


def finish(req: worker_service_pb2.FinishJobRequest, limits: Limits) -> Finish:
    """A FinishJobRequest as a Finish."""
    outcome = fields.enum_value(req.outcome, OUTCOMES, "outcome")
    error = None
    if req.HasField("error"):
        error = ErrorInfo(
            code=fields.text(req.error.code, "error.code"),
            message=fields.text(req.error.message, "error.message", limits.max_log_line_bytes),
            details=(
                fields.json_value(
                    req.error.details, "error.details", MAX_RESULT_BYTES, limits.max_json_depth
                )
                if req.error.HasField("details")
                else None
            ),
        )
    result = (
        fields.json_value(req.result, "result", MAX_RESULT_BYTES, limits.max_json_depth)
        if req.HasField("result")
        else None
    )
    return Finish(outcome=outcome, result=result, error=error, retryable=req.retryable)


SHA256_HEX = re.compile(r"[0-9a-f]{64}")
"""A SHA-256 digest as lowercase hex."""


def retry_attempts(value: int) -> int:
    """RetryJob's additional_attempts: 0 means one more attempt."""
    if not 0 <= value <= MAX_ATTEMPTS:
        raise InvalidArgument(f"{value} is outside 0..{MAX_ATTEMPTS}", field="additional_attempts")
    return value or 1


def acquire(req: worker_service_pb2.AcquireJobRequest) -> Acquire:
    """An AcquireJobRequest as an Acquire."""
    worker_id = fields.pattern(req.worker_id, WORKER_ID, "worker_id")
    if not req.kinds:
        raise InvalidArgument("name at least one kind", field="kinds")
    if not 0 <= req.concurrency <= MAX_CONCURRENCY:
        raise InvalidArgument(
            f"{req.concurrency} is outside 0..{MAX_CONCURRENCY}", field="concurrency"
        )
    if not 0 <= req.max_jobs <= MAX_ACQUIRE_JOBS:
        raise InvalidArgument(f"{req.max_jobs} is outside 0..{MAX_ACQUIRE_JOBS}", field="max_jobs")
    return Acquire(
        worker_id=worker_id,
        host=fields.text(req.host, "host", MAX_HOST_BYTES),
        concurrency=req.concurrency,
        kinds=fields.names(req.kinds, KIND, "kinds", MAX_ACQUIRE_NAMES),
        queues=fields.names(req.queues, QUEUE, "queues", MAX_ACQUIRE_NAMES) or ("default",),
        wait_s=fields.duration_us(req.wait, "wait", 0, MAX_WAIT_S) / 1e6,
        lease_us=(
            fields.duration_us(
                req.lease_duration, "lease_duration", MIN_LEASE_S, MAX_LEASE_REQUEST_S
            )
            if req.HasField("lease_duration")
            else None
        ),
        max_jobs=max(1, req.max_jobs),
    )


def acquire_next(
    req: worker_service_pb2.FinishJobRequest | worker_service_pb2.FinishJobsRequest,
) -> Acquire | None:
    """FinishJob's (or FinishJobs') optional ``acquire_next``, checked like
    an AcquireJob (errors name ``acquire_next.<field>``); None when unset."""
    if not req.HasField("acquire_next"):
        return None
    try:
        return acquire(req.acquire_next)
    except InvalidArgument as exc:
        raise InvalidArgument(exc.message, field=f"acquire_next.{exc.field}") from exc


def finishes(req: worker_service_pb2.FinishJobsRequest, limits: Limits) -> list[FinishItem]:
    """FinishJobs' finishes, each checked as a FinishJobRequest (errors name
    ``finishes[i].<field>``): 1..MAX_FINISH_BATCH of them, no job twice,
    none with an ``acquire_next`` of its own (the call has one)."""
    if not req.finishes:
        raise InvalidArgument("name at least one finish", field="finishes")
    fields.count(req.finishes, "finishes", MAX_FINISH_BATCH)
    items: list[FinishItem] = []
    seen: set[str] = set()
    for i, one in enumerate(req.finishes):
        where = f"finishes[{i}]"
        if one.HasField("acquire_next"):
            raise InvalidArgument(
                "is set; a FinishJobs call has one acquire_next, for all its finishes",
                field=f"{where}.acquire_next",
            )
        try:
            item = FinishItem(
                job_id=fields.job_id(one.job_id),
                lease_id=fields.lease_id(one.lease_id),
                finish=finish(one, limits),
            )
        except InvalidArgument as exc:
            raise InvalidArgument(exc.message, field=f"{where}.{exc.field}") from exc
        if item.job_id in seen:
            raise InvalidArgument(
                f"job {item.job_id!r} is finished twice in this call", field=f"{where}.job_id"
            )
        seen.add(item.job_id)
        items.append(item)
    return items


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
    return fields.duration_us(req.older_than, "older_than", 0, MAX_PURGE_AGE_S)


def stats_window_us(req: job_service_pb2.GetStatsRequest) -> int:
    """GetStats' window in microseconds (unset: the default)."""
    if not req.HasField("window"):
        return DEFAULT_STATS_WINDOW_S * 1_000_000
    return fields.duration_us(req.window, "window", 1, MAX_STATS_WINDOW_S)


def artifact_header(header: worker_service_pb2.ArtifactHeader, limits: Limits) -> ArtifactSpec:
    """The first message of an upload, checked."""
    if not 0 <= header.size_bytes <= limits.max_artifact_bytes:
        raise InvalidArgument(
            f"{header.size_bytes} is outside 0..{limits.max_artifact_bytes}",
            field="header.size_bytes",
        )
    return ArtifactSpec(
        job_id=fields.job_id(header.job_id, "header.job_id"),
        lease_id=fields.pattern(header.lease_id, LEASE_ID, "header.lease_id"),
        name=fields.artifact_name(header.name, "header.name"),
        content_type=fields.text(
            header.content_type, "header.content_type", MAX_CONTENT_TYPE_BYTES
        ),
        size_bytes=header.size_bytes,
        sha256=fields.pattern(header.sha256, SHA256_HEX, "header.sha256"),
    )


def download_offset(value: int, limits: Limits) -> int:
    """DownloadArtifact's offset (the upper bound is the artifact's size)."""
    if not 0 <= value <= limits.max_artifact_bytes:
        raise InvalidArgument(f"{value} is outside 0..{limits.max_artifact_bytes}", field="offset")
    return value


def request_key(
    request: job_service_pb2.RetryJobRequest | job_service_pb2.PurgeJobsRequest,
    method: str,
    owner: str,
) -> RequestKey | None:
    """The call's idempotency key (AIP-155), or None without a request_id.
    Its fingerprint is the request without the request_id, serialized
    deterministically: equal requests, equal fingerprints."""
    if not request.request_id:
        return None
    request_id = fields.text(request.request_id, "request_id", MAX_REQUEST_ID_BYTES)
    bare = type(request).FromString(request.SerializeToString())
    bare.ClearField("request_id")
    return RequestKey(
        method=method,
        owner=owner,
        request_id=request_id,
        fingerprint=hashlib.sha256(bare.SerializeToString(deterministic=True)).hexdigest(),
    )
