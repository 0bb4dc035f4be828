"""The benchmark targets: one report row each, with its floor and goal."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Judge(StrEnum):
    """How a row passes."""

    RATIO = "ratio"
    """The median per-round ratio service/baseline must be at least the floor."""
    AT_MOST = "at_most"
    """The median service value must be at most the floor (a latency or a
    time); the baseline and ratio are shown for scale only."""
    REPORTED = "reported"
    """No floor: the row is shown for what it tells (the issue set none)."""
    RATIO_AT_MOST = "ratio_at_most"
    """The median per-round ratio service/baseline must be at most the floor
    (a latency against a peer's: 1.0 is "as fast")."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Target:
    """One row of the report."""

    id: str
    measure: str
    service: str
    baseline: str
    unit: str
    floor: float
    goal: float
    judge: Judge = Judge.RATIO

    def passes(self, ratio: float, service: float) -> bool:
        """Whether the floor is met."""
        if self.judge is Judge.RATIO:
            return ratio >= self.floor
        if self.judge is Judge.RATIO_AT_MOST:
            return ratio <= self.floor
        if self.judge is Judge.REPORTED:
            return True
        return service <= self.floor

    def meets_goal(self, ratio: float, service: float) -> bool:
        """Whether the goal is met."""
        if self.judge is Judge.RATIO:
            return ratio >= self.goal
        if self.judge is Judge.RATIO_AT_MOST:
            return ratio <= self.goal
        if self.judge is Judge.REPORTED:
            return False
        return service <= self.goal


TARGETS: tuple[Target, ...] = (
    Target(
        id="T1",
        measure="SubmitJob/s, 32 in flight",
        service="SubmitJob, 32 in flight",
        baseline="bare unary echo, 32 in flight",
        unit="calls/s",
        floor=0.50,
        goal=0.70,
    ),
    Target(
        id="T2",
        measure="SubmitJob/s, 1 in flight",
        service="SubmitJob, 1 in flight",
        baseline="bare unary echo, 1 in flight",
        unit="calls/s",
        floor=0.65,
        goal=0.80,
    ),
    Target(
        id="T3",
        measure="T1 with synchronous=FULL vs NORMAL",
        service="SubmitJob x32, --synchronous full",
        baseline="SubmitJob x32, --synchronous normal",
        unit="calls/s",
        floor=0.80,
        goal=0.95,
    ),
    Target(
        id="T4",
        measure="persisted log lines/s, 8 jobs via the Worker API",
        service="8 jobs ctx.log() until acknowledged",
        baseline="raw sqlite3 WAL, 100 rows/commit",
        unit="lines/s",
        floor=0.25,
        goal=0.50,
    ),
    Target(
        id="T5",
        measure="lines/s delivered to 100 watchers of one job",
        service="WatchJob x100 while a worker logs",
        baseline="bare fan-out to 100",
        unit="lines/s per watcher",
        floor=0.50,
        goal=0.75,
    ),
    Target(
        id="T6",
        measure="one watcher's tail rate",
        service="WatchJob x1 while a worker logs",
        baseline="bare 1-subscriber stream",
        unit="lines/s",
        floor=0.60,
        goal=0.85,
    ),
    Target(
        id="T7",
        measure="T5 with 1 of 100 watchers stalled vs none",
        service="WatchJob x100, 1 stalled",
        baseline="WatchJob x100 (T5)",
        unit="lines/s per watcher",
        floor=0.90,
        goal=0.97,
    ),
    Target(
        id="T8",
        measure="ListJobs (page of 50) with 10^6 log lines vs empty log table",
        service="ListJobs, 10^6 log lines stored",
        baseline="ListJobs, no log lines",
        unit="calls/s",
        floor=0.90,
        goal=0.95,
    ),
    Target(
        id="T9",
        measure="batch submit jobs/s vs raw sqlite3 batched rows/s",
        service="SubmitJobs, 500 jobs per call",
        baseline="raw sqlite3 WAL, 100 rows/commit",
        unit="jobs/s",
        floor=0.10,
        goal=0.25,
    ),
    Target(
        id="T10.p50",
        measure="submit -> handler start latency, p50",
        service="SubmitJob -> Worker handler start",
        baseline="bare unary echo round trip",
        unit="ms",
        floor=10.0,
        goal=5.0,
        judge=Judge.AT_MOST,
    ),
    Target(
        id="T10.p99",
        measure="submit -> handler start latency, p99",
        service="SubmitJob -> Worker handler start",
        baseline="bare unary echo round trip",
        unit="ms",
        floor=50.0,
        goal=20.0,
        judge=Judge.AT_MOST,
    ),
    Target(
        id="T11",
        measure="restart with 10^6 jobs: time to first GetJob answer",
        service="start with 10^6 jobs stored",
        baseline="start with an empty database",
        unit="s",
        floor=2.0,
        goal=0.5,
        judge=Judge.AT_MOST,
    ),
    Target(
        id="T12",
        measure="no-op jobs/s end to end, 2 worker slots, SQLite synchronous=FULL",
        service="SubmitJobs -> Worker (2 slots) -> done",
        baseline="huey SqliteHuey fsync=True, 2-thread consumer",
        unit="jobs/s",
        floor=1.0,
        goal=2.0,
    ),
    Target(
        id="T13",
        measure="no-op jobs/s end to end, 2 worker slots, PostgreSQL",
        service="SubmitJobs -> Worker (2 slots) -> done, PostgreSQL",
        baseline="Procrastinate, worker concurrency 2",
        unit="jobs/s",
        floor=1.0,
        goal=2.0,
    ),
    Target(
        id="T14.p50",
        measure="submit -> done latency of one job at a time, p50 (goal: under 2 ms)",
        service="submit, wait for done (SQLite)",
        baseline="Procrastinate defer, poll for succeeded",
        unit="ms",
        floor=1.0,
        goal=0.15,
        judge=Judge.RATIO_AT_MOST,
    ),
    Target(
        id="T14.p99",
        measure="submit -> done latency of one job at a time, p99",
        service="submit, wait for done (SQLite)",
        baseline="Procrastinate defer, poll for succeeded",
        unit="ms",
        floor=1.0,
        goal=0.5,
        judge=Judge.RATIO_AT_MOST,
    ),
    *(
        Target(
            id=f"T15.{slots}",
            measure=f"T12 with {slots} worker slots vs {fewer}",
            service=f"no-op jobs/s, {slots} slots",
            baseline=f"no-op jobs/s, {fewer} slot{'s' if fewer > 1 else ''}",
            unit="jobs/s",
            floor=0.90,
            goal=1.0,
        )
        for fewer, slots in ((1, 2), (2, 8), (8, 32))
    ),
    Target(
        id="T15.backlog",
        measure="T12 with 10^5 jobs queued before it vs none",
        service="no-op jobs/s, 2 slots, 10^5 queued",
        baseline="no-op jobs/s, 2 slots, empty queue",
        unit="jobs/s",
        floor=0.90,
        goal=1.0,
    ),
    *(
        Target(
            id=f"T16.{what}.{q}",
            measure=f"written -> seen latency of a {noun}, one every 10 ms, {q}",
            service=f"ctx.{call}() in a worker -> WatchJob in another process",
            baseline="bare unary echo round trip",
            unit="ms",
            floor=floor,
            goal=goal,
            judge=Judge.AT_MOST,
        )
        for what, noun, call in (
            ("log", "log line", "log"),
            ("progress", "progress update", "progress"),
        )
        for q, floor, goal in (("p50", 5.0, 2.0), ("p99", 20.0, 10.0))
    ),
    *(
        Target(
            id=f"T16.full.{q}",
            measure=f"written -> seen latency of a log line at full rate, {q} (no floor: "
            "lines queue in the worker's buffer as fast as the handler writes them)",
            service="ctx.log() as fast as it goes -> WatchJob in another process",
            baseline="bare unary echo round trip",
            unit="ms",
            floor=0.0,
            goal=0.0,
            judge=Judge.REPORTED,
        )
        for q in ("p50", "p99")
    ),
    Target(
        id="T17",
        measure="JSON ListJobs (page of 50) over HTTP vs gRPC ListJobs",
        service="GET /v1/jobs, HTTP face in the server",
        baseline="ListJobs over gRPC, same server",
        unit="calls/s",
        floor=0.50,
        goal=0.75,
    ),
    Target(
        id="T18",
        measure="lines/s delivered to 100 SSE subscribers of one job vs 100 gRPC watchers",
        service="GET /v1/jobs/{id}:watch x100 (text/event-stream)",
        baseline="WatchJob x100 over gRPC, same server",
        unit="lines/s per watcher",
        floor=0.50,
        goal=0.75,
    ),
    *(
        row
        for suffix, backend in (("", "SQLite"), (".pg", "PostgreSQL"))
        for row in (
            Target(
                id=f"T19{suffix}",
                measure="ListJobs filtered by a params member and a substring vs unfiltered, "
                f"10^5 jobs, {backend}",
                service="ListJobs, params i=N and text, 1 job found",
                baseline="ListJobs, first page of 50, no filter",
                unit="calls/s",
                floor=0.30,
                goal=0.70,
            ),
            Target(
                id=f"T20{suffix}",
                measure="ListJobLogs by level, substring and tail vs a plain page, "
                f"10^6 lines stored, {backend}",
                service="ListJobLogs min_level, text, tail 100",
                baseline="ListJobLogs, page of 100",
                unit="calls/s",
                floor=0.50,
                goal=0.80,
            ),
        )
    ),
)
"""Every row, in report order."""

BY_ID = {t.id: t for t in TARGETS}
"""Targets by row id."""
