"""The server's own vocabulary: job states, events and the values that flow
between the service layer and the store. Protobuf never reaches past the
service layer; these frozen dataclasses do.

Times are integers: microseconds since the Unix epoch, UTC. That keeps them
exact, cheap to compare and identical on SQLite and PostgreSQL.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any, overload

JSON = dict[str, Any]


def now_us() -> int:
    """The current time in microseconds since the epoch."""
    return time.time_ns() // 1000


class JobState(StrEnum):
    """Where a job is in its life; stored as its lowercase value."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"

    @property
    def terminal(self) -> bool:
        """True for the four states a job never leaves."""
        return self not in (JobState.QUEUED, JobState.RUNNING)


TERMINAL_STATES = tuple(s for s in JobState if s.terminal)
"""The states a job never leaves, in declaration order."""


class EventKind(StrEnum):
    """What an event records: the name of its payload in the wire's
    JobEvent, and what the database stores."""

    STATE_CHANGE = "state_change"
    PROGRESS = "progress"
    LOG = "log"
    STEP = "step"
    RESULT_ITEM = "result_item"
    CANCEL_REQUESTED = "cancel_requested"
    ARTIFACT_ADDED = "artifact_added"


class StepState(StrEnum):
    """Where a named step is; stored as its lowercase value."""

    PENDING = "pending"
    """Declared (or given back by a released attempt) and not started."""
    RUNNING = "running"
    """The one state not at rest: it ends when the attempt does."""
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"

    @property
    def ended(self) -> bool:
        """True for the states that set a step's end time."""
        return self not in (StepState.PENDING, StepState.RUNNING)


class LogLevel(StrEnum):
    """How severe a log line is; stored as its lowercase value."""

    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


class ResultStatus(StrEnum):
    """How one item of a job's work ended; stored as its lowercase value,
    which is also the name of the job column counting it."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"


class Outcome(StrEnum):
    """How a worker ends an attempt."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    RELEASED = "released"


@dataclass(frozen=True, kw_only=True, slots=True)
class Progress:
    """How far a job has come."""

    fraction: float = 0.0
    done: int = 0
    total: int = 0
    phase: str = ""
    message: str = ""


@dataclass(frozen=True, kw_only=True, slots=True)
class Counters:
    """Per-item result counts."""

    succeeded: int = 0
    failed: int = 0
    skipped: int = 0


@dataclass(frozen=True, kw_only=True, slots=True)
class ErrorInfo:
    """Why a job failed, was cancelled or was interrupted."""

    code: str
    message: str
    details: JSON | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class Step:
    """One named step of a job."""

    name: str
    state: StepState
    attempts: int = 0
    error: str = ""
    data: JSON | None = None
    start_time: int | None = None
    end_time: int | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class Job:
    """A job as stored."""

    id: str
    kind: str
    queue: str
    priority: int
    params: JSON
    labels: dict[str, str]
    state: JobState
    cancel_requested: bool
    progress: Progress
    counters: Counters
    result: JSON | None
    error: ErrorInfo | None
    attempt: int
    max_attempts: int
    not_before: int
    owner: str
    request_id: str
    create_time: int
    start_time: int | None
    end_time: int | None
    update_time: int
    last_seq: int
    worker_id: str
    steps: tuple[Step, ...] = ()
    files: tuple[str, ...] = ()
    """Paths the job's workers recorded (``ctx.add_file``), removed with it."""
    checkpoint: JSON | None = None
    """The last checkpoint a handler stored; a rerun starts from it."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Event:
    """One stored change to a job; ``body`` holds the kind's fields as JSON."""

    job_id: str
    seq: int
    time: int
    kind: EventKind
    body: JSON

    @property
    def terminal(self) -> bool:
        """True when this event moved the job into a terminal state."""
        return self.kind is EventKind.STATE_CHANGE and JobState(self.body["state"]).terminal


EVENT_BASE_BYTES = 400
"""Memory an event takes besides its strings and JSON values: the object, its
body dict and the small values in it (measured: about 380 bytes for a log
line's event on CPython 3.11-3.13)."""


def event_bytes(event: Event) -> int:
    """About how much memory ``event`` holds, for the byte bounds on what a
    watcher may keep (broker.py, service.py): strings by length, nested JSON
    (a result's or a step's data) by its compact size. Cheap for the common
    case, a log line: one string."""
    size = EVENT_BASE_BYTES
    for value in event.body.values():
        if isinstance(value, str):
            size += len(value)
        elif isinstance(value, dict | list):
            size += len(json.dumps(value, separators=(",", ":")))
    return size


@dataclass(frozen=True, kw_only=True, slots=True)
class NewJob:
    """A validated submit request."""

    kind: str
    job_id: str | None = None
    queue: str = "default"
    priority: int = 0
    params: JSON = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    max_attempts: int = 0
    not_before: int | None = None
    request_id: str | None = None
    owner: str = ""
    params_json: str | None = None
    """``params`` as compact_json writes them, when the edge made that text
    already (measuring their size); None: made when the job is stored."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Submitted(Sequence[tuple["Job", bool]]):
    """What one submit did, as a (job, created) pair per spec in order:
    ``created`` is False when a repeated request_id found its job (stored
    by an earlier submit, or made by an earlier spec of the same batch).
    The jobs it made are kept as their specs, ids and the values they all
    share, and become Job values only when read: a batch's answer is built
    from these (convert.submitted) without a Job per job first."""

    specs: Sequence[NewJob]
    ids: Sequence[str]
    """Each spec's job id."""
    created: Sequence[bool]
    found: Mapping[int, Job]
    """By index, the job an earlier submit with the same request_id stored."""
    time: int
    """The create and update time of the jobs it made."""
    default_max_attempts: int
    """The max_attempts of a made job whose spec left it 0."""

    def __len__(self) -> int:
        return len(self.ids)

    @overload
    def __getitem__(self, index: int) -> tuple[Job, bool]: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[tuple[Job, bool]]: ...

    def __getitem__(self, index: int | slice) -> tuple[Job, bool] | Sequence[tuple[Job, bool]]:
        if isinstance(index, slice):
            return [self[i] for i in range(len(self))[index]]
        return self.job(index), self.created[index]

    def split(self, sizes: Sequence[int]) -> list[Submitted]:
        """This submit as consecutive ones of ``sizes`` specs each: the
        answers of several calls whose specs were stored together."""
        parts: list[Submitted] = []
        start = 0
        for size in sizes:
            end = start + size
            found = {i - start: job for i, job in self.found.items() if start <= i < end}
            parts.append(
                replace(
                    self,
                    specs=self.specs[start:end],
                    ids=self.ids[start:end],
                    created=self.created[start:end],
                    found=found,
                )
            )
            start = end
        return parts

    def job(self, index: int) -> Job:
        """The job of spec ``index``, as stored."""
        found = self.found.get(index)
        if found is not None:
            return found
        spec = self.specs[index]
        return Job(
            id=self.ids[index],
            kind=spec.kind,
            queue=spec.queue,
            priority=spec.priority,
            params=spec.params,
            labels=spec.labels,
            state=JobState.QUEUED,
            cancel_requested=False,
            progress=Progress(),
            counters=Counters(),
            result=None,
            error=None,
            attempt=0,
            max_attempts=spec.max_attempts or self.default_max_attempts,
            not_before=spec.not_before or self.time,
            owner=spec.owner,
            request_id=spec.request_id or "",
            create_time=self.time,
            start_time=None,
            end_time=None,
            update_time=self.time,
            last_seq=1,
            worker_id="",
        )


@dataclass(frozen=True, kw_only=True, slots=True)
class Acquire:
    """A validated acquire request."""

    worker_id: str
    kinds: tuple[str, ...]
    queues: tuple[str, ...]
    wait_s: float
    host: str = ""
    concurrency: int = 0
    """How long to wait for a job."""
    lease_us: int | None = None
    """The lease length asked for; None takes the server's default."""
    max_jobs: int = 1
    """Most jobs to lease at once (one per free slot of the worker)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class LogLine:
    """A log line reported by a worker."""

    level: LogLevel
    text: str
    stream: str = ""
    truncated: bool = False
    """The text was cut to the server's log line limit."""


@dataclass(frozen=True, kw_only=True, slots=True)
class ResultItem:
    """A per-item result reported by a worker."""

    key: str
    status: ResultStatus
    data: JSON | None = None
    error: str = ""


@dataclass(frozen=True, kw_only=True, slots=True)
class Report:
    """One validated ReportJob batch."""

    progress: Progress | None = None
    logs: tuple[LogLine, ...] = ()
    steps: tuple[Step, ...] = ()
    results: tuple[ResultItem, ...] = ()
    files: tuple[str, ...] = ()
    report_seq: int = 0
    checkpoint: JSON | None = None
    """A handler's resumable state, stored with the rest of the batch; None
    leaves the stored one as it is."""


@dataclass(frozen=True, kw_only=True, slots=True)
class ReportAck:
    """The answer to a report: renewed lease and whether to stop."""

    cancel_requested: bool
    lease_expire_time: int
    last_seq: int


@dataclass(frozen=True, kw_only=True, slots=True)
class Finish:
    """A validated FinishJob request."""

    outcome: Outcome
    result: JSON | None = None
    error: ErrorInfo | None = None
    retryable: bool = False


@dataclass(frozen=True, kw_only=True, slots=True)
class FinishItem:
    """One validated finish of a FinishJobs call."""

    job_id: str
    lease_id: str
    finish: Finish


@dataclass(frozen=True, kw_only=True, slots=True)
class Lease:
    """A job handed to a worker, and the lease that fences its calls."""

    job: Job
    lease_id: str
    expire_time: int


@dataclass(frozen=True, kw_only=True, slots=True)
class JobFilter:
    """Selects jobs; empty fields match everything."""

    states: tuple[JobState, ...] = ()
    kinds: tuple[str, ...] = ()
    labels: tuple[tuple[str, str], ...] = ()
    queues: tuple[str, ...] = ()
    owner: str | None = None
    """Only this principal's jobs (set by the server for non-admin callers)."""
    created_after: int | None = None
    """Created at or after this time (µs)."""
    created_before: int | None = None
    """Created before this time (µs)."""
    ended_after: int | None = None
    """Ended at or after this time (µs); jobs not ended do not match."""
    ended_before: int | None = None
    """Ended before this time (µs); jobs not ended do not match."""
    text: str = ""
    """A substring (any case) of the id, kind, a label key or value, or the
    error message."""
    params: tuple[tuple[tuple[str, ...], str], ...] = ()
    """(path into params, the value as canonical JSON: :func:`canonical_json`)
    pairs that must be equal."""

    def matches(self, job: Job) -> bool:
        """Whether ``job`` passes this filter (used on live changes)."""
        return (
            (self.owner is None or job.owner == self.owner)
            and (not self.states or job.state in self.states)
            and (not self.kinds or job.kind in self.kinds)
            and (not self.queues or job.queue in self.queues)
            and all(job.labels.get(k) == v for k, v in self.labels)
            and _within(job.create_time, self.created_after, self.created_before)
            and (
                (self.ended_after is None and self.ended_before is None)
                or _within(job.end_time, self.ended_after, self.ended_before)
            )
            and (not self.text or self.text.lower() in _searchable(job))
            and all(_param_json(job.params, path) == value for path, value in self.params)
        )


def _within(at: int | None, after: int | None, before: int | None) -> bool:
    return at is not None and (after is None or at >= after) and (before is None or at < before)


def _searchable(job: Job) -> str:
    """What ``JobFilter.text`` searches, lowercased (the store searches the
    same columns: id, kind, labels as JSON, error as JSON)."""
    labels = json.dumps(job.labels, separators=(",", ":"), ensure_ascii=False)
    error = job.error.message if job.error is not None else ""
    return f"{job.id}\n{job.kind}\n{labels}\n{error}".lower()


def _param_json(params: JSON, path: tuple[str, ...]) -> str | None:
    """The value at ``path`` in ``params`` as canonical JSON; None if absent."""
    value: Any = params
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return canonical_json(value)


_COMPACT = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
"""Built once: ``json.dumps`` with options builds a new encoder per call,
which showed in profiles of the event hot path."""


def compact_json(value: Any) -> str:
    """Compact JSON, as every JSON column stores it; control characters (NUL
    included) come out escaped, so the text is storable on both backends."""
    return _COMPACT.encode(value)


_CANONICAL = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, sort_keys=True)


def _canonical_numbers(value: Any) -> Any:
    """``value`` with every float that is a whole number as an int (so 1.0
    and 1 are one value, as they are in JSON's own arithmetic)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _canonical_numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_canonical_numbers(v) for v in value]
    return value


def canonical_json(value: Any) -> str:
    """The one text of a JSON value that params filters compare: compact,
    object keys sorted, numbers as Python writes them back (``1.50`` is
    ``1.5``, ``1.0`` is ``1``, ``1e2`` is ``100``). Computed here, not by
    the database, so SQLite and PostgreSQL (whose jsonb writes numbers and
    objects its own way) match the same jobs."""
    return _CANONICAL.encode(_canonical_numbers(value))


@dataclass(frozen=True, kw_only=True, slots=True)
class LogSearch:
    """Selects a job's log lines; empty fields match everything."""

    levels: tuple[LogLevel, ...] = ()
    """Only lines of these levels (``--level warn``: warning and error)."""
    text: str = ""
    """Only lines whose text holds this substring, in any case."""
    since: int | None = None
    """Only lines logged at or after this time (µs)."""
    tail: int = 0
    """Only the last this many of the lines selected (0: all)."""

    @property
    def empty(self) -> bool:
        """Selects every line (the plain, faster read applies)."""
        return not (self.levels or self.text or self.since is not None or self.tail)


@dataclass(frozen=True, kw_only=True, slots=True)
class JobChange:
    """One row of the job-change log that WatchJobs follows."""

    position: int
    job_id: str
    deleted: bool
    owner: str
    """The principal that owns (or owned) the job."""


@dataclass(frozen=True, kw_only=True, slots=True)
class WorkerSeen:
    """What a server learnt of a worker from its polls."""

    id: str
    host: str
    kinds: tuple[str, ...]
    queues: tuple[str, ...]
    concurrency: int
    last_seen: int


@dataclass(frozen=True, kw_only=True, slots=True)
class WorkerInfo(WorkerSeen):
    """A worker as ListWorkers shows it: its last sighting, and more."""

    first_seen: int
    running: int
    """Jobs it holds a live lease on."""
    live: bool
    """Seen polling lately, or holding a live lease."""

    def serves(self, kind: str, queue: str) -> bool:
        """Whether it takes jobs of ``kind`` on ``queue``."""
        return kind in self.kinds and queue in self.queues


@dataclass(frozen=True, kw_only=True, slots=True)
class Rescue:
    """A job taken from a worker that stopped reporting (or died with its
    server): queued again, or ended interrupted (no attempts left) or
    cancelled (a cancel was pending)."""

    job_id: str
    worker_id: str
    state: JobState
    reason: str


@dataclass(frozen=True, kw_only=True, slots=True)
class Deletion:
    """What deleting a job removed from the database, and the files to remove."""

    job_id: str
    files: tuple[str, ...]
    garbage: int = 0
    """Uploads whose chunks the delete left for the sweep to remove."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Artifact:
    """A stored output file of a job."""

    name: str
    size_bytes: int
    sha256: str
    content_type: str
    create_time: int
    attempt: int


@dataclass(frozen=True, kw_only=True, slots=True)
class ArtifactSpec:
    """A validated upload header: which leased job, which file, what to expect."""

    job_id: str
    lease_id: str
    name: str
    content_type: str
    size_bytes: int
    sha256: str


@dataclass(frozen=True, kw_only=True, slots=True)
class RequestKey:
    """A call's idempotency key (AIP-155) for the methods whose first answer
    is stored (RetryJob, PurgeJobs): unique per principal and method; the
    fingerprint tells a repeat from another request reusing the key."""

    method: str
    owner: str
    request_id: str
    fingerprint: str


@dataclass(frozen=True, kw_only=True, slots=True)
class Stats:
    """Counts and timings of a set of jobs (see GetStats)."""

    by_state: tuple[tuple[JobState, int], ...]
    by_kind: tuple[tuple[str, JobState, int], ...]
    window_us: int
    ended: int
    success_rate: float
    duration_p50_us: int
    duration_p95_us: int


@dataclass(kw_only=True, slots=True)
class Effects:
    """What one write did, as domain facts: collected while its transaction
    runs; at the commit they become the change log's entries and the other
    servers' notification, and once committed the broker's wake-ups."""

    events: list[Event] = field(default_factory=list)
    """The events it stored, in order."""
    changed_jobs: set[str] = field(default_factory=set)
    """Jobs it changed: each gets one change-log entry."""
    deleted_jobs: dict[str, str] = field(default_factory=dict)
    """Deleted job ids -> their owners (the change log keeps the owner; the
    job's row is gone by the time the log is written)."""
    owners: dict[str, str] = field(default_factory=dict)
    """Owners of changed jobs already known to the write (a submit knows
    them), so the change log need not look them up."""
    acquirable: set[tuple[str, str]] = field(default_factory=set)
    """(queue, kind) pairs that gained a runnable job: wakes matching workers."""
    ended: dict[str, Job] = field(default_factory=dict)
    """Jobs a worker's finish ended, as they ended: a watch that ends with
    the job sends this one rather than reading it back."""

    def merge(self, other: Effects) -> None:
        """Adds another (committed) operation's effects to these."""
        self.events.extend(other.events)
        self.changed_jobs |= other.changed_jobs
        self.deleted_jobs |= other.deleted_jobs
        self.owners |= other.owners
        self.acquirable |= other.acquirable
        self.ended |= other.ended
