"""Input limits: every bound the service enforces at its edge, named once.
Most are fixed; those an operator may set are the fields of :class:`Limits`,
whose defaults are the ``DEFAULT_MAX_*`` constants."""

from __future__ import annotations

import re
from dataclasses import dataclass

from jobstream.client.context import MAX_CHECKPOINT_BYTES

CLIENT_JOB_ID = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
"""Ids a client may choose (DESIGN.md). Server-made ids never match it."""

SERVER_JOB_ID = re.compile(r"job_[0-9a-z]{26}")
"""Ids the server makes: ``job_`` + a lowercase ULID."""

KIND = re.compile(r"[a-z0-9][a-z0-9._-]{0,127}")
"""Job kinds, e.g. ``enrich.companies``."""

QUEUE = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
"""Queue names."""

LABEL_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,62}")
"""Label keys, e.g. ``team`` or ``app.kubernetes.io/name``."""

WORKER_ID = re.compile(r"[A-Za-z0-9._:@-]{1,128}")
"""Worker names."""

LEASE_ID = re.compile(r"[0-9a-f]{32}")
"""Leases as the server makes them."""

DEFAULT_MAX_LABELS = 32
"""Labels per job (default of Limits.max_labels)."""

DEFAULT_MAX_LABEL_VALUE_BYTES = 256
"""Bytes (UTF-8) in a label value (default of Limits.max_label_value_bytes)."""

DEFAULT_MAX_PARAMS_BYTES = 256 * 1024
"""Bytes of a job's params as compact JSON (default of Limits.max_params_bytes)."""

DEFAULT_MAX_JSON_DEPTH = 32
"""Nesting depth of params, results and other JSON values (default of
Limits.max_json_depth). Protobuf's own
decoder refuses a little over 32 levels (it stops at 100 nested messages,
three per JSON level), so a larger setting cannot take effect."""

MAX_RESULT_BYTES = 1024 * 1024
"""Bytes of a job's final result or one item's data, as compact JSON."""

MAX_REQUEST_ID_BYTES = 128
"""Bytes in an idempotency key."""

MAX_TEXT_BYTES = 4 * 1024
"""Bytes in short texts: phase, message, reasons, error messages, names."""

MAX_RESULT_KEY_BYTES = 1024
"""Bytes in a result item's key. Keys are indexed (one row per job and key),
and a PostgreSQL B-tree entry holds at most about 2.7 KB: a longer key that
does not compress would fail the write."""

DEFAULT_MAX_LOG_LINE_BYTES = 32 * 1024
"""Bytes in one log line (default of Limits.max_log_line_bytes)."""

MAX_PATH_BYTES = 4096
"""Bytes in a recorded file path."""

MAX_REPORT_ITEMS = 5_000
"""Log lines + steps + results + files in one ReportJob."""

MAX_BATCH_SUBMIT = 1_000
"""Jobs in one SubmitJobs call."""

MAX_ATTEMPTS = 100
"""Upper bound of max_attempts."""

MAX_PRIORITY = 1_000
"""Priorities range over [-MAX_PRIORITY, MAX_PRIORITY]."""

DEFAULT_JOB_PAGE = 50
"""ListJobs page size when none is given."""

MAX_JOB_PAGE = 1_000
"""Largest ListJobs page."""

DEFAULT_WORKER_PAGE = 100
"""ListWorkers page size when none is given."""

MAX_WORKER_PAGE = 1_000
"""Largest ListWorkers page."""

DEFAULT_EVENT_PAGE = 500
"""ListJobLogs / ListJobResults page size when none is given."""

MAX_EVENT_PAGE = 5_000
"""Largest ListJobLogs / ListJobResults page."""

MAX_ARTIFACT_PAGE = 1_000
"""Largest ListArtifacts page, and its size when none is given (the
default --max-artifacts-per-job, so a job's artifacts come in one page
unless the operator allows more)."""

WATCH_BATCH_BYTES = 32 * 1024
"""A batching watcher's events go in messages of about this size: large
enough that per-message costs vanish (64 log lines of 1 KiB per message),
far below a client's 4 MiB receive limit (one event is at most a log line or
a result of bounded size). A watcher whose client stalls holds the message
being sent three times over (the message, its serialized bytes, gRPC's
copy), so this is also most of what a stalled watcher costs: at 256 KiB it
cost 1.3 MiB (see quotas.py)."""

EVENT_MESSAGE_CACHE_BYTES = 4 * 1024 * 1024
"""Recently sent events kept as messages for their other watchers."""

MAX_WAIT_S = 60.0
"""Longest AcquireJob long-poll."""

MIN_LEASE_S = 1
"""Shortest lease a worker may ask for: a shorter one would expire before
its first report could renew it."""

MAX_LEASE_REQUEST_S = 86_400
"""Longest lease_duration a worker may name (a day); the server then
shortens it to its own maximum. Past this the number is a mistake."""

MAX_DURATION_NANOS = 999_999_999
"""A Duration's nanos lie within ±this and share the sign of its seconds
(google/protobuf/duration.proto); anything else is malformed."""

MAX_FILTER_VALUES = 100
"""States, kinds or queues in one JobFilter: each value is one SQL
parameter, and a filter naming more is a mistake (SQLite refuses 32,766
parameters, PostgreSQL 65,535, with a retryable-looking error)."""

MAX_ACQUIRE_NAMES = 256
"""Kinds, and queues, one AcquireJob may name: a worker with handlers for
more kinds than this should run several workers. Each distinct pair of
counts compiles one acquire query, so this also bounds that cache."""

MAX_ACQUIRE_JOBS = 256
"""Jobs one AcquireJob (``max_jobs``) may lease at once: one per free slot
of a worker, and a worker runs at most MAX_CONCURRENCY jobs."""

MAX_FINISH_BATCH = 256
"""Finishes one FinishJobs call may carry: a worker's finished attempts,
at most one per slot."""

MAX_PAGE_TOKEN_BYTES = 512
"""Longest page token: the server's own are under 150 bytes, so anything
longer was not issued here and is refused before it is decoded."""

MAX_TIME_US = 253_402_300_799_999_999
"""The last microsecond of year 9999, the largest time a Timestamp holds."""

MAX_RESPONSE_BYTES = 3 * 1024 * 1024
"""Paged answers (ListJobs, ListJobLogs, ListJobResults) stop adding items
at about this size and hand out a page token for the rest, so every page
fits a client's default 4 MiB receive limit (one item alone is far smaller:
a log line, or a result of at most MAX_RESULT_BYTES)."""

MAX_BATCH_SUBMIT_BYTES = 3 * 1024 * 1024
"""Bytes of one SubmitJobs request: its answer carries every job back, and
must fit a client's default 4 MiB receive limit."""

MAX_SEQ = 2**62
"""Resume points beyond this are malformed, not merely in the future."""

ARTIFACT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
"""Artifact names: a plain file name (no path separators, no leading dot), so
a client saving a download under its name writes where it means to."""

DEFAULT_MAX_ARTIFACT_BYTES = 1024**3
"""Bytes in one artifact (default of Limits.max_artifact_bytes)."""

DEFAULT_MAX_ARTIFACTS_PER_JOB = 1_000
"""Artifacts one job may hold (a re-upload under the same name replaces;
default of Limits.max_artifacts_per_job)."""

MAX_ARTIFACT_CHUNK_BYTES = 1024 * 1024
"""Bytes in one UploadArtifact chunk message."""

MAX_CONTENT_TYPE_BYTES = 255
"""Bytes in an artifact's content type."""

DEFAULT_STATS_WINDOW_S = 3600
"""GetStats' window when none is given."""

MAX_STATS_WINDOW_S = 366 * 86400
"""Longest GetStats window."""

MAX_PURGE_AGE_S = 100 * 366 * 86400
"""Largest PurgeJobs older_than (a century); more is a typo."""

DEFAULT_MAX_LOG_LINES_PER_JOB = 1_000_000
"""Log lines one job may store (default of Limits.max_log_lines_per_job);
the report that reaches it stores one "truncated" line, and later reports
carrying log lines are refused (RESOURCE_EXHAUSTED)."""

DEFAULT_MAX_CHECKPOINT_BYTES = MAX_CHECKPOINT_BYTES
"""Bytes of a job's checkpoint as JSON (default of
Limits.max_checkpoint_bytes; the client refuses larger ones itself)."""

MAX_HOST_BYTES = 255
"""Bytes of the host a worker names in AcquireJob."""

MAX_CONCURRENCY = 100_000
"""Largest concurrency a worker may state."""

MAX_SEARCH_TEXT_BYTES = 1024
"""Bytes of a search substring (JobFilter.text, ListJobLogs text)."""

PARAM_PATH = re.compile(r"[A-Za-z0-9_-]{1,64}(\.[A-Za-z0-9_-]{1,64}){0,7}")
"""A path into a job's params in a filter: plain names joined by dots (they
are written into SQL JSON paths, so nothing else is allowed)."""

MAX_PARAM_VALUE_BYTES = 1024
"""Bytes of a params filter's value."""

TRUNCATED_MARKER = " …[truncated]"
"""Appended to a log line cut to Limits.max_log_line_bytes (its event also
says ``truncated``)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Limits:
    """The bounds an operator sets (``jobstream serve --max-*``): one frozen
    value per server, given to validation, the store and the services. The
    other bounds in this module are fixed."""

    max_params_bytes: int = DEFAULT_MAX_PARAMS_BYTES
    max_json_depth: int = DEFAULT_MAX_JSON_DEPTH
    max_labels: int = DEFAULT_MAX_LABELS
    max_label_value_bytes: int = DEFAULT_MAX_LABEL_VALUE_BYTES
    max_log_line_bytes: int = DEFAULT_MAX_LOG_LINE_BYTES
    max_log_lines_per_job: int = DEFAULT_MAX_LOG_LINES_PER_JOB
    max_artifact_bytes: int = DEFAULT_MAX_ARTIFACT_BYTES
    max_artifacts_per_job: int = DEFAULT_MAX_ARTIFACTS_PER_JOB
    max_checkpoint_bytes: int = DEFAULT_MAX_CHECKPOINT_BYTES
