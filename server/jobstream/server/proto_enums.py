"""The wire's enum numbers <-> the server domain's enums, both ways:
validation reads requests through these tables, convert writes answers
through them. Each table is built by member name (``JobState.QUEUED`` is
``JOB_STATE_QUEUED``), so a domain member the contract lacks fails at import."""

from __future__ import annotations

from jobstream.server.domain import JobState, LogLevel, Outcome, ResultStatus, StepState
from jobstream.v1 import job_pb2, worker_service_pb2

JOB_STATES = {job_pb2.JobState.Value(f"JOB_STATE_{m.name}"): m for m in JobState}
"""JobState by wire number."""

STEP_STATES = {job_pb2.StepState.Value(f"STEP_STATE_{m.name}"): m for m in StepState}
"""StepState by wire number."""

LOG_LEVELS = {job_pb2.LogLevel.Value(f"LOG_LEVEL_{m.name}"): m for m in LogLevel}
"""LogLevel by wire number."""

RESULT_STATUSES = {job_pb2.ResultStatus.Value(f"RESULT_STATUS_{m.name}"): m for m in ResultStatus}
"""ResultStatus by wire number."""

OUTCOMES = {worker_service_pb2.JobOutcome.Value(f"JOB_OUTCOME_{m.name}"): m for m in Outcome}
"""Outcome by wire number."""

JOB_STATE_NUMBERS = {member: number for number, member in JOB_STATES.items()}
"""The wire number of each JobState."""

STEP_STATE_NUMBERS = {member: number for number, member in STEP_STATES.items()}
"""The wire number of each StepState."""

LOG_LEVEL_NUMBERS = {member: number for number, member in LOG_LEVELS.items()}
"""The wire number of each LogLevel."""

RESULT_STATUS_NUMBERS = {member: number for number, member in RESULT_STATUSES.items()}
"""The wire number of each ResultStatus."""
