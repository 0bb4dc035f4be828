"""What the client hands out: str enums and frozen, keyword-only value
objects. Nothing here knows protobuf; :mod:`jobstream.client.convert` reads
them from the wire."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

__all__ = [
    "Artifact",
    "Counters",
    "DeleteResult",
    "EventKind",
    "Job",
    "JobChange",
    "JobError",
    "JobEvent",
    "JobOutcome",
    "JobSpec",
    "JobState",
    "JsonObject",
    "LogLevel",
    "LogLine",
    "Progress",
    "PurgeResult",
    "ResultItem",
    "ResultStatus",
    "StateChange",
    "Stats",
    "Step",
    "StepState",
    "WorkerInfo",
    "unserved_note",
]

JsonObject = dict[str, Any]
"""A JSON object as Python sees it (params, results, step and item data)."""


# --------------------------------------------------------------------- enums


class JobState(StrEnum):
    """Where a job is in its life; the last four are terminal."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"

    @property
    def terminal(self) -> bool:
        """True when the job never changes again (short of a retry)."""
        return self not in (JobState.QUEUED, JobState.RUNNING)


class StepState(StrEnum):
    """The state of one named step of a job."""

    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"
    CANCELLED = "cancelled"
    """Stopped because the job was cancelled."""
    INTERRUPTED = "interrupted"
    """Cut short: the attempt ended (lease expired, server restarted) while
    the step ran."""


class LogLevel(StrEnum):
    """Severity of a job's log line."""

    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


class ResultStatus(StrEnum):
    """Outcome of one item a job processed."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"


class JobOutcome(StrEnum):
    """How a worker ends an attempt."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    RELEASED = "released"


class EventKind(StrEnum):
    """What a JobEvent records; each value is the name of its payload field."""

    STATE_CHANGE = "state_change"
    PROGRESS = "progress"
    LOG = "log"
    STEP = "step"
    RESULT_ITEM = "result_item"
    CANCEL_REQUESTED = "cancel_requested"
    ARTIFACT_ADDED = "artifact_added"


# ------------------------------------------------------------- value objects


@dataclass(frozen=True, kw_only=True, slots=True)
class Progress:
    """How far a job has come."""

    fraction: float = 0.0
    """Fraction done, 0..1."""
    done: int = 0
    """Items done so far."""
    total: int = 0
    """Items in all (0 when unknown)."""
    phase: str = ""
    """Name of the current phase."""
    message: str = ""
    """A short human-readable status line."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Counters:
    """Per-item results a job reported, counted."""

    succeeded: int = 0
    failed: int = 0
    skipped: int = 0


@dataclass(frozen=True, kw_only=True, slots=True)
class Step:
    """One named step of a job."""

    name: str
    state: StepState = StepState.PENDING
    attempts: int = 0
    """How many times the step was started."""
    error: str = ""
    """Error text of the last failure ("" when none)."""
    data: JsonObject = field(default_factory=dict)
    start_time: datetime | None = None
    end_time: datetime | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class JobError:
    """Why a job failed, was cancelled or interrupted."""

    code: str
    """Short machine-readable code, e.g. "lease_expired" or an exception class name."""
    message: str = ""
    details: JsonObject = field(default_factory=dict)
    """Free-form details, e.g. {"traceback": "..."}."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Job:
    """A job and everything known about it (steps only from ``get``)."""

    id: str
    kind: str
    state: JobState
    queue: str = ""
    priority: int = 0
    params: JsonObject = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    cancel_requested: bool = False
    progress: Progress = field(default_factory=Progress)
    counters: Counters = field(default_factory=Counters)
    steps: tuple[Step, ...] = ()
    result: JsonObject | None = None
    """Final result of a succeeded job; None when unset."""
    error: JobError | None = None
    attempt: int = 0
    max_attempts: int = 0
    schedule_time: datetime | None = None
    owner: str = ""
    request_id: str = ""
    """Idempotency key given at submit ("" when none)."""
    create_time: datetime | None = None
    start_time: datetime | None = None
    end_time: datetime | None = None
    update_time: datetime | None = None
    last_seq: int = 0
    """Seq of the job's newest event; pass it as after_seq to watch from now."""
    worker_id: str = ""
    server_paths: tuple[str, ...] = ()
    """Files its handlers recorded (``ctx.add_file``), as the server sees
    them; removed with the job."""
    checkpoint: JsonObject | None = None
    """The last checkpoint a handler stored (``ctx.checkpoint``); a rerun
    starts from it. None before any."""


@dataclass(frozen=True, kw_only=True, slots=True)
class WorkerInfo:
    """A worker the servers saw polling for jobs (``JobClient.workers``)."""

    worker_id: str
    host: str = ""
    kinds: tuple[str, ...] = ()
    queues: tuple[str, ...] = ()
    concurrency: int = 0
    """Jobs it runs at once, as it said (0: not said)."""
    running_jobs: int = 0
    """Jobs it holds a live lease on."""
    first_seen_time: datetime | None = None
    last_seen_time: datetime | None = None
    live: bool = False
    """Seen polling within the last 15 s, or holding a live lease."""

    def serves(self, kind: str, queue: str = "default") -> bool:
        """Whether it takes jobs of ``kind`` on ``queue``."""
        return kind in self.kinds and queue in self.queues


def unserved_note(job: Job, workers: Iterable[WorkerInfo]) -> str | None:
    """For a queued job no live worker serves: the note saying so (it waits
    until one comes); None otherwise."""
    if job.state is not JobState.QUEUED:
        return None
    if any(w.live and w.serves(job.kind, job.queue) for w in workers):
        return None
    return f"no live worker serves kind {job.kind} on queue {job.queue}"


@dataclass(frozen=True, kw_only=True, slots=True)
class StateChange:
    """A job entering a state."""

    state: JobState
    reason: str = ""
    error: JobError | None = None
    attempt: int = 0


@dataclass(frozen=True, kw_only=True, slots=True)
class LogLine:
    """One line a job logged."""

    text: str
    level: LogLevel = LogLevel.INFO
    stream: str = ""
    """e.g. "stdout"; "" for the job's own log."""
    truncated: bool = False
    """The server cut the text to its log line limit."""


@dataclass(frozen=True, kw_only=True, slots=True)
class ResultItem:
    """Outcome of one item a job processed."""

    key: str
    status: ResultStatus = ResultStatus.SUCCEEDED
    data: JsonObject = field(default_factory=dict)
    error: str = ""
    replaced_status: ResultStatus | None = None
    """In a watched result event: the status of the earlier version of this
    key that the item replaced (None when the key is new)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Artifact:
    """A named output file of a job, kept by the server."""

    name: str
    size_bytes: int = 0
    sha256: str = ""
    """SHA-256 of the content, lowercase hex."""
    content_type: str = ""
    create_time: datetime | None = None
    attempt: int = 0
    """The attempt that uploaded it."""


@dataclass(frozen=True, kw_only=True, slots=True)
class JobEvent:
    """One change to a job; exactly the payload field named by ``kind`` is set."""

    job_id: str
    seq: int
    """Position in the job's event sequence: 1, 2, 3 … with no gaps."""
    kind: EventKind
    event_time: datetime | None = None
    state_change: StateChange | None = None
    progress: Progress | None = None
    log: LogLine | None = None
    step: Step | None = None
    result_item: ResultItem | None = None
    cancel_requested: str | None = None
    """The reason given with a cancel request."""
    artifact_added: Artifact | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class JobChange:
    """One change of a watched job list: a job's new state, a deletion, or
    the marker that ends the initial listing."""

    position: int
    """Pass as after_position to resume after this change."""
    job: Job | None = None
    deleted_job_id: str | None = None
    caught_up: bool = False
    listing_token: str = ""
    """On a job of the initial listing: pass as ``listing_token`` to resume
    the listing after it (``watch_jobs`` does so itself after a drop)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class PurgeResult:
    """What a purge deleted (or, as a dry run, would delete)."""

    purged_count: int
    job_ids: tuple[str, ...] = ()
    """Their ids, oldest first (the server lists up to 1000)."""
    removed_paths: tuple[str, ...] = ()
    """Files and directories removed, relative to the server's data directory
    (absolute under one of its output roots)."""
    refused_paths: tuple[str, ...] = ()
    """Recorded paths the job did not own (outside its own directories, or
    the database), left untouched."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Stats:
    """Counts and timings of a set of jobs (see ``JobClient.stats``)."""

    by_state: dict[JobState, int] = field(default_factory=dict)
    """Jobs per state (states without jobs left out)."""
    by_kind: dict[str, dict[JobState, int]] = field(default_factory=dict)
    """Jobs per kind, then per state."""
    window: timedelta = timedelta(0)
    """The recent window the figures below cover."""
    ended_count: int = 0
    """Jobs that ended within the window."""
    success_rate: float = 0.0
    """Succeeded / (ended within the window, cancelled ones not counted)."""
    duration_p50: timedelta = timedelta(0)
    """Median run time of jobs that succeeded or failed within the window."""
    duration_p95: timedelta = timedelta(0)
    """95th percentile of the same run times."""
    throughput_per_minute: float = 0.0
    """Jobs ended per minute over the window."""


@dataclass(frozen=True, kw_only=True, slots=True)
class DeleteResult:
    """What a delete removed."""

    deleted: bool
    """False when the job did not exist (allow_missing)."""
    removed_paths: tuple[str, ...] = ()
    """Files and directories removed, relative to the server's data directory
    (absolute under one of its output roots); artifacts are database rows,
    deleted with the job, and not listed."""
    refused_paths: tuple[str, ...] = ()
    """Recorded paths the job did not own (outside its own directories, or
    the database), left untouched."""


@dataclass(frozen=True, kw_only=True, slots=True)
class JobSpec:
    """One job to submit (``JobClient.submit_many``); fields as for ``submit``."""

    kind: str
    params: Mapping[str, Any] | None = None
    job_id: str | None = None
    queue: str = ""
    priority: int = 0
    labels: Mapping[str, str] | None = None
    max_attempts: int = 0
    schedule_time: datetime | None = None
    request_id: str | None = None
