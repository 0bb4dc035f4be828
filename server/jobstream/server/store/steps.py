"""A job's named steps across its attempts: the ``job_step`` table. Part of
the store: these functions run inside the store's transactions, and return
the steps they changed so the store can record a step event for each.

A step's ``attempts`` counts its starts in attempts that count. When an
attempt ends, no step stays "running": each ends with the attempt (succeeded,
failed, cancelled or interrupted, like the job). A released attempt (the
worker stopped before the handler finished) does not count for the job, so
its starts do not count for the steps either: they are taken back and the
steps it started are pending again.
"""

from __future__ import annotations

from jobstream.server.db import StepRow, dumps
from jobstream.server.domain import Step, StepState
from jobstream.server.store.rows import step_of


def upsert(job_id: str, attempt: int, step: Step, count: int, now: int) -> tuple[Step, int]:
    """Stores a reported step state for job attempt ``attempt``; returns the
    step and the job's step count."""
    row = StepRow.get_or_none((StepRow.job == job_id) & (StepRow.name == step.name))
    created = row is None
    if row is None:
        row = StepRow(job=job_id, name=step.name, position=count, state=StepState.PENDING)
        count += 1
    if step.state == StepState.RUNNING and row.state != StepState.RUNNING:
        row.attempts += 1
        if row.attempt == attempt:
            row.attempt_starts += 1
        else:
            row.attempt, row.attempt_starts = attempt, 1
        row.start_time = row.start_time or now
        row.end_time = None
    if step.state.ended:
        row.start_time = row.start_time or now
        row.end_time = now
    row.state = step.state
    row.error = step.error
    if step.data is not None:
        row.data = dumps(step.data)
    row.save(force_insert=created)
    return step_of(row), count


def end_running(job_id: str, state: StepState, now: int, error: str = "") -> list[Step]:
    """Ends every running step of the job in ``state`` (with ``error``, when
    given, as its error text); returns them in step order."""
    rows = list(
        StepRow.select()
        .where((StepRow.job == job_id) & (StepRow.state == StepState.RUNNING))
        .order_by(StepRow.position)
    )
    if not rows:
        return []
    update = {StepRow.state: state, StepRow.end_time: now}
    if error:
        update[StepRow.error] = error
    StepRow.update(update).where(
        (StepRow.job == job_id) & (StepRow.state == StepState.RUNNING)
    ).execute()
    for row in rows:
        row.state, row.end_time = state, now
        if error:
            row.error = error
    return [step_of(r) for r in rows]


def take_back(job_id: str, attempt: int) -> list[Step]:
    """Takes back the starts that job attempt ``attempt`` (being released)
    made: those steps lose them and are pending again, without the times
    and error of that attempt; returns them in step order."""
    rows = list(
        StepRow.select()
        .where(
            (StepRow.job == job_id) & (StepRow.attempt == attempt) & (StepRow.attempt_starts > 0)
        )
        .order_by(StepRow.position)
    )
    for row in rows:
        row.attempts = max(0, row.attempts - row.attempt_starts)
        if row.attempts == 0:
            row.start_time = None  # its first start was in this attempt
        row.state, row.end_time, row.error = StepState.PENDING, None, ""
        # The attempt number comes round again on the next acquire: a later
        # release must not take these starts twice.
        row.attempt = row.attempt_starts = 0
        row.save()
    return [step_of(r) for r in rows]
