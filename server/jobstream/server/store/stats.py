"""Counts and timings over jobs: GetStats' summary (counts by state and
kind, success rate and run-time percentiles over a window) and the job
counts behind the metrics."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, cast

import peewee as pw

from jobstream.server.db import JobRow
from jobstream.server.domain import TERMINAL_STATES, JobFilter, JobState, Stats
from jobstream.server.store.dialect import Dialect
from jobstream.server.store.reads import filtered

STATS_PERCENTILES = (0.50, 0.95)
"""The run-time percentiles GetStats reports."""


class Statistics:
    """The store's aggregate queries."""

    def __init__(self, db: pw.Database) -> None:
        self.db = db
        self.dialect = Dialect.of(db)

    def summary(self, flt: JobFilter, *, window_us: int, now: int) -> Stats:
        """Counts by state and kind over every selected job; success rate,
        run-time percentiles and ended count over the jobs that ended within
        the window."""
        since = now - window_us
        with self.db.atomic():
            by_kind = [
                (kind, JobState(state), int(n))
                for kind, state, n in filtered(
                    JobRow.select(JobRow.kind, JobRow.state, pw.fn.COUNT(JobRow.id)),
                    flt,
                    self.dialect,
                )
                .group_by(JobRow.kind, JobRow.state)
                .order_by(JobRow.kind, JobRow.state)
                .tuples()
            ]
            ended = {
                JobState(state): int(n)
                for state, n in filtered(
                    JobRow.select(JobRow.state, pw.fn.COUNT(JobRow.id)), flt, self.dialect
                )
                .where(
                    JobRow.state.in_([s.value for s in TERMINAL_STATES])
                    & (JobRow.end_time >= since)
                )
                .group_by(JobRow.state)
                .tuples()
            }
            run = JobRow.end_time - JobRow.start_time
            timed = filtered(JobRow.select(run), flt, self.dialect).where(
                JobRow.state.in_([JobState.SUCCEEDED.value, JobState.FAILED.value])
                & (JobRow.end_time >= since)
                & JobRow.start_time.is_null(False)
            )
            n_timed = timed.count()
            p50, p95 = (_nearest_rank(timed.order_by(run), n_timed, q) for q in STATS_PERCENTILES)
        by_state: dict[JobState, int] = {}
        for _, state, n in by_kind:
            by_state[state] = by_state.get(state, 0) + n
        total_ended = sum(ended.values())
        decided = total_ended - ended.get(JobState.CANCELLED, 0)
        return Stats(
            by_state=tuple((s, by_state[s]) for s in JobState if s in by_state),
            by_kind=tuple(by_kind),
            window_us=window_us,
            ended=total_ended,
            success_rate=ended.get(JobState.SUCCEEDED, 0) / decided if decided else 0.0,
            duration_p50_us=p50,
            duration_p95_us=p95,
        )

    def counts(self, now: int) -> tuple[dict[str, int], dict[str, int]]:
        """Jobs by state, and queued jobs ready to run at ``now`` by queue
        (for metrics). Both GROUP BYs lead with ``state``, which the acquire
        index starts with."""
        by_state = dict(
            cast(
                Iterable[tuple[str, int]],
                JobRow.select(JobRow.state, pw.fn.COUNT(JobRow.id)).group_by(JobRow.state).tuples(),
            )
        )
        ready = dict(
            cast(
                Iterable[tuple[str, int]],
                JobRow.select(JobRow.queue, pw.fn.COUNT(JobRow.id))
                .where((JobRow.state == JobState.QUEUED.value) & (JobRow.not_before <= now))
                .group_by(JobRow.queue)
                .tuples(),
            )
        )
        return by_state, ready


def _nearest_rank(ordered: Any, n: int, q: float) -> int:
    """The ``q`` quantile (nearest-rank) of an ordered one-column query of
    ``n`` rows, read with OFFSET so only one row comes back; 0 when empty."""
    if n == 0:
        return 0
    rank = max(1, math.ceil(q * n))
    value = ordered.limit(1).offset(rank - 1).scalar()
    return int(value or 0)
