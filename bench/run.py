"""Running the measures: every one in every round, each beside its baseline."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from pathlib import Path

from bench import http, jobs, live, search, service, streams
from bench.env import Env, open_env
from bench.harness import Sample, Settings
from bench.report import RunResult, now

log = logging.getLogger(__name__)

MEASURE_TIMEOUT_FACTOR = 3
"""A measure (baseline and service, maybe two samples each) may take this
many sample timeouts before it is abandoned as stuck."""


@dataclass(frozen=True, slots=True)
class Measure:
    """A benchmark function and the report rows it fills."""

    rows: tuple[str, ...]
    run: Callable[[Env], Awaitable[dict[str, Sample]]]


MEASURES: tuple[Measure, ...] = (
    Measure(("T1",), service.t1),
    Measure(("T2",), service.t2),
    Measure(("T3",), service.t3),
    Measure(("T4",), streams.t4),
    Measure(("T5", "T7"), streams.t5),
    Measure(("T6",), streams.t6),
    Measure(("T8",), service.t8),
    Measure(("T9",), service.t9),
    Measure(("T10.p50", "T10.p99"), service.t10),
    Measure(("T11",), service.t11),
    Measure(("T12",), jobs.t12),
    Measure(("T13",), jobs.t13),
    Measure(("T14.p50", "T14.p99"), jobs.t14),
    Measure(("T15.2", "T15.8", "T15.32", "T15.backlog"), jobs.t15),
    Measure(
        tuple(f"T16.{w}.{q}" for w in ("log", "progress", "full") for q in ("p50", "p99")),
        live.t16,
    ),
    Measure(("T17",), http.t17),
    Measure(("T18",), http.t18),
    Measure(("T19", "T20"), search.t19),
    Measure(("T19.pg", "T20.pg"), search.t19_pg),
)
"""Every measure, in the order each round runs them."""


def selected(measure: Measure, only: Collection[str]) -> bool:
    """Whether ``--only`` picks this measure (``T10`` picks both T10 rows)."""
    return not only or any(row.split(".")[0] in only or row in only for row in measure.rows)


async def run(
    settings: Settings, workdir: Path, argv: list[str], only: Collection[str] = ()
) -> RunResult:
    """Runs ``settings.rounds`` rounds of every selected measure."""
    result = RunResult(settings=settings, argv=argv, started=now())
    t0 = time.perf_counter()
    timeout = settings.sample_timeout_s * MEASURE_TIMEOUT_FACTOR
    async with open_env(settings, workdir) as env:
        result.setup = env.setup
        for r in range(settings.rounds):
            env.round = r
            for measure in MEASURES:
                if not selected(measure, only):
                    continue
                name = "+".join(measure.rows)
                started = time.perf_counter()
                try:
                    async with asyncio.timeout(timeout):
                        samples = await measure.run(env)
                except Exception as exc:
                    log.exception("%s failed in round %d", name, r)
                    result.errors.append(
                        {"measure": name, "round": r, "error": f"{type(exc).__name__}: {exc}"}
                    )
                    continue
                for row, sample in samples.items():
                    result.samples.setdefault(row, []).append(sample)
                log.info(
                    "round %d %s (%.1fs): %s",
                    r,
                    name,
                    time.perf_counter() - started,
                    ", ".join(
                        f"{row} {s.service:.4g}/{s.baseline:.4g}={s.ratio:.2f}"
                        for row, s in samples.items()
                    ),
                )
        result.checks = env.checks
    result.elapsed_s = time.perf_counter() - t0
    return result
