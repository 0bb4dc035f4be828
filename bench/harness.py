"""What every benchmark shares: run settings, the load driver, samples and
correctness checks, and the median-of-ratios arithmetic."""

from __future__ import annotations

import asyncio
import math
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

PAYLOAD_BYTES = 100
"""Size of a bare echo request and of a fan-out message: about one short log
line or one small job submit."""

MANY_IN_FLIGHT = 32
"""Concurrent calls for the "32 in flight" throughput measures (T1, T3)."""

WATCHERS = 100
"""Watchers of one job in T5/T7, subscribers of the bare fan-out."""

LOG_JOBS = 8
"""Jobs logging at once in T4."""

LOG_LINE_BYTES = 100
"""Length of each log line the benchmark handlers write."""

BATCH_SUBMIT = 500
"""Jobs per SubmitJobs call in T9 (the server accepts up to 1,000)."""

BATCH_IN_FLIGHT = 2
"""SubmitJobs calls in flight in T9: enough to keep the server busy while
one response is being parsed."""

SQLITE_ROWS_PER_COMMIT = 100
"""The raw sqlite3 baseline's batch: executemany of this many rows, then commit."""

LIST_PAGE = 50
"""ListJobs page size in T8."""

LIST_JOBS = 10_000
"""Jobs stored for T8, identical in both databases; only the log differs."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Settings:
    """How long and how big a run is; :data:`FULL` or :data:`SMOKE`."""

    name: str
    """"full" or "smoke"."""
    rounds: int
    """Interleaved rounds; the report takes the median of per-round ratios."""
    duration_s: float
    """Length of one timed throughput sample (T1-T3, T8, T9 and baselines)."""
    sample_timeout_s: float
    """Upper bound on any one sample: a stuck server fails the sample, never
    the whole run's clock."""
    fanout_lines: int
    """Lines logged by the job that 100 watchers follow (T5, T7)."""
    tail_lines: int
    """Lines logged by the job that one watcher follows (T6)."""
    log_lines_per_job: int
    """Lines each of the 8 jobs logs in T4."""
    latency_samples: int
    """Submits timed one at a time in T10."""
    list_log_lines: int
    """Log lines stored for T8 (10^6 in a full run)."""
    restart_jobs: int
    """Jobs stored for T11 (10^6 in a full run)."""
    run_jobs: int
    """No-op jobs each system runs per sample of T12, T13 and T15: enough
    for a second or more of steady running, so the start of a sample (a
    worker waking from its long-poll, a consumer from its sleep) does not
    decide it."""
    backlog_jobs: int
    """Jobs queued before T15's backlog sample (10^5 in a full run)."""
    done_latency_samples: int
    """Jobs run one at a time per system in T14."""
    live_updates: int
    """Updates (one every 10 ms) timed per kind in T16."""
    full_rate_updates: int
    """Log lines written as fast as they go in T16's full-rate sample."""
    search_jobs: int
    """Jobs stored for T19/T20 (10^5 in a full run); the first LIST_JOBS of
    them hold the list_log_lines log lines."""
    postgres_url: str = ""
    """The PostgreSQL database of the T19.pg/T20.pg rows (a fresh schema in
    it, dropped afterwards); empty: those rows are not run."""


FULL = Settings(
    name="full",
    rounds=3,
    duration_s=2.0,
    sample_timeout_s=120.0,
    fanout_lines=500,
    tail_lines=10_000,
    log_lines_per_job=5_000,
    latency_samples=200,
    list_log_lines=1_000_000,
    restart_jobs=1_000_000,
    run_jobs=3_000,
    backlog_jobs=100_000,
    done_latency_samples=200,
    live_updates=300,
    full_rate_updates=20_000,
    search_jobs=100_000,
)
"""``python -m bench``: three rounds, sized for a few minutes on 2 cores."""

SMOKE = Settings(
    name="smoke",
    rounds=1,
    duration_s=0.1,
    sample_timeout_s=30.0,
    fanout_lines=100,
    tail_lines=1_000,
    log_lines_per_job=500,
    latency_samples=20,
    list_log_lines=10_000,
    restart_jobs=10_000,
    run_jobs=20,
    backlog_jobs=1_000,
    done_latency_samples=10,
    live_updates=20,
    full_rate_updates=500,
    search_jobs=2_000,
)
"""``python -m bench --smoke``: one short round of everything, for ``make test``.
Its sizes only have to drive every measure and its correctness checks
(every line delivered once, in order), not to give figures worth reading:
a throughput sample still makes several calls per slice, a fan-out still
reaches all 100 watchers."""


class CheckFailed(AssertionError):
    """A correctness check of a benchmark failed (lost or repeated lines…)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Check:
    """One correctness check that rode along with a measure."""

    measure: str
    name: str
    ok: bool
    detail: str = ""


@dataclass(frozen=True, kw_only=True, slots=True)
class Sample:
    """One round of one report row: the service's number and its baseline's."""

    service: float
    baseline: float
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        """service / baseline (0 when the baseline is 0)."""
        return self.service / self.baseline if self.baseline else 0.0


@dataclass(frozen=True, kw_only=True, slots=True)
class Throughput:
    """What :func:`drive` measured."""

    count: int
    elapsed_s: float
    latencies_s: list[float]

    @property
    def rate(self) -> float:
        """Completed operations per second."""
        return self.count / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @classmethod
    def merged(cls, parts: list[Throughput]) -> Throughput:
        """Several slices of one measurement as one."""
        return cls(
            count=sum(p.count for p in parts),
            elapsed_s=sum(p.elapsed_s for p in parts),
            latencies_s=[x for p in parts for x in p.latencies_s],
        )


async def drive(
    call: Callable[[], Awaitable[object]],
    *,
    in_flight: int,
    duration_s: float,
    max_calls: int = 10_000_000,
    weight: int = 1,
) -> Throughput:
    """Keeps ``in_flight`` calls going for ``duration_s`` (or ``max_calls``
    calls) and counts completions; ``weight`` counts one call as that many
    operations (a batch). Latencies are per call."""
    started = time.perf_counter()
    deadline = started + duration_s
    latencies: list[float] = []
    issued = 0

    async def lane() -> None:
        nonlocal issued
        while issued < max_calls and time.perf_counter() < deadline:
            issued += 1
            t0 = time.perf_counter()
            await call()
            latencies.append(time.perf_counter() - t0)

    await asyncio.gather(*(lane() for _ in range(in_flight)))
    elapsed = time.perf_counter() - started
    return Throughput(count=len(latencies) * weight, elapsed_s=elapsed, latencies_s=latencies)


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (0-100) by nearest rank; 0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, math.ceil(q / 100 * len(ordered)) - 1))
    return ordered[rank]


def median(values: list[float]) -> float:
    """The median, 0 for no values."""
    return statistics.median(values) if values else 0.0
