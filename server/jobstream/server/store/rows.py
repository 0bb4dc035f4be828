"""Stored rows and event bodies <-> domain values: the one place that knows
how a job, a step, an artifact or an error is laid out in the database."""

from __future__ import annotations

import json

from jobstream.server.db import ArtifactRow, JobRow, StepRow
from jobstream.server.domain import (
    JSON,
    Artifact,
    Counters,
    ErrorInfo,
    Job,
    JobState,
    Progress,
    Step,
    StepState,
)


def job_of(row: JobRow, steps: tuple[Step, ...] = ()) -> Job:
    """A job row (and its steps) as the domain value."""
    return Job(
        id=row.id,
        kind=row.kind,
        queue=row.queue,
        priority=row.priority,
        params=json.loads(row.params),
        labels=json.loads(row.labels),
        state=JobState(row.state),
        cancel_requested=bool(row.cancel_requested),
        progress=Progress(
            fraction=row.fraction,
            done=row.done,
            total=row.total,
            phase=row.phase,
            message=row.message,
        ),
        counters=Counters(succeeded=row.succeeded, failed=row.failed, skipped=row.skipped),
        result=json.loads(row.result) if row.result is not None else None,
        error=error_of(json.loads(row.error)) if row.error else None,
        attempt=row.attempt,
        max_attempts=row.max_attempts,
        not_before=row.not_before,
        owner=row.owner,
        request_id=row.request_id or "",
        create_time=row.create_time,
        start_time=row.start_time,
        end_time=row.end_time,
        update_time=row.update_time,
        last_seq=row.last_seq,
        worker_id=row.worker_id,
        steps=steps,
        files=tuple(json.loads(row.files)),
        checkpoint=json.loads(row.checkpoint) if row.checkpoint is not None else None,
    )


def step_of(row: StepRow) -> Step:
    """A stored step as the domain value."""
    return Step(
        name=row.name,
        state=StepState(row.state),
        attempts=row.attempts,
        error=row.error,
        data=json.loads(row.data) if row.data else None,
        start_time=row.start_time,
        end_time=row.end_time,
    )


def artifact_of(row: ArtifactRow) -> Artifact:
    """A stored artifact as the domain value."""
    return Artifact(
        name=row.name,
        size_bytes=row.size_bytes,
        sha256=row.sha256,
        content_type=row.content_type,
        create_time=row.create_time,
        attempt=row.attempt,
    )


def artifact_body(a: Artifact) -> JSON:
    """An artifact's columns, and the body of its artifact event."""
    return {
        "name": a.name,
        "size_bytes": a.size_bytes,
        "sha256": a.sha256,
        "content_type": a.content_type,
        "create_time": a.create_time,
        "attempt": a.attempt,
    }


def progress_body(p: Progress) -> JSON:
    """The body of a progress event."""
    return {
        "fraction": p.fraction,
        "done": p.done,
        "total": p.total,
        "phase": p.phase,
        "message": p.message,
    }


def step_body(s: Step) -> JSON:
    """The body of a step event."""
    return {
        "name": s.name,
        "state": s.state,
        "attempts": s.attempts,
        "error": s.error,
        "data": s.data,
        "start_time": s.start_time,
        "end_time": s.end_time,
    }


def error_body(e: ErrorInfo) -> JSON:
    """An error as the job's error column and a state event carry it."""
    return {"code": e.code, "message": e.message, "details": e.details}


def error_of(body: JSON) -> ErrorInfo:
    """A stored error as the domain value."""
    return ErrorInfo(code=body["code"], message=body["message"], details=body.get("details"))
