"""The report: a markdown table (printed and written) and a JSON file with
every raw number, both under bench/results/ unless told otherwise."""

from __future__ import annotations

import json
import os
import platform
import sys
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.harness import Check, Sample, Settings, median
from bench.targets import TARGETS, Judge, Target

RESULTS_DIR = Path(__file__).resolve().parent / "results"
"""Where reports go by default (gitignored)."""


@dataclass
class RunResult:
    """Everything a run produced."""

    settings: Settings
    argv: list[str]
    started: datetime
    samples: dict[str, list[Sample]] = field(default_factory=dict)
    checks: list[Check] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    setup: dict[str, float] = field(default_factory=dict)
    elapsed_s: float = 0.0

    @property
    def failed_checks(self) -> list[Check]:
        """Checks that failed."""
        return [c for c in self.checks if not c.ok]

    @property
    def ok(self) -> bool:
        """No errors and no failed correctness check (ratios do not count)."""
        return not self.errors and not self.failed_checks


@dataclass(frozen=True, kw_only=True, slots=True)
class Row:
    """One target's summary over the rounds."""

    target: Target
    service: float
    baseline: float
    ratio: float
    rounds: int

    @property
    def passes(self) -> bool:
        """Whether the floor is met."""
        return self.rounds > 0 and self.target.passes(self.ratio, self.service)

    @property
    def meets_goal(self) -> bool:
        """Whether the goal is met."""
        return self.rounds > 0 and self.target.meets_goal(self.ratio, self.service)


def summarize(result: RunResult) -> list[Row]:
    """Medians per target: of the service and baseline numbers, and of the
    per-round ratios (not the ratio of medians: each round's pair ran back to
    back, which is what cancels the machine's drift)."""
    rows = []
    for target in TARGETS:
        samples = result.samples.get(target.id, [])
        rows.append(
            Row(
                target=target,
                service=median([s.service for s in samples]),
                baseline=median([s.baseline for s in samples]),
                ratio=median([s.ratio for s in samples]),
                rounds=len(samples),
            )
        )
    return rows


def _number(value: float) -> str:
    """A readable number: thousands separated, a few significant digits."""
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}"


def _bound(target: Target, value: float) -> str:
    if target.judge is Judge.RATIO:
        return f"{value:.2f}"
    if target.judge is Judge.RATIO_AT_MOST:
        return f"<= {value:.2f}"
    if target.judge is Judge.REPORTED:
        return "-"
    return f"<= {_number(value)} {target.unit}"


def markdown(result: RunResult) -> str:
    """The report's table, with checks and errors below it."""
    s = result.settings
    lines = [
        f"jobstream bench ({result.settings.name}, {result.settings.rounds} round(s), "
        f"{result.started:%Y-%m-%d %H:%M} UTC, {result.elapsed_s:.0f} s)",
        "",
        f"Sizes: T5/T7 {s.fanout_lines:,} lines, T6 {s.tail_lines:,} lines, T4 8 x "
        f"{s.log_lines_per_job:,} lines, T8 {s.list_log_lines:,} stored log lines, "
        f"T11 {s.restart_jobs:,} stored jobs, T10 {s.latency_samples} submits, "
        f"T12/T13/T15 {s.run_jobs:,} jobs (T15 behind {s.backlog_jobs:,} queued), "
        f"T14 {s.done_latency_samples} jobs, T19/T20 {s.search_jobs:,} stored jobs, "
        f"T16 {s.live_updates} updates of each kind "
        f"and {s.full_rate_updates:,} at full rate; "
        f"throughput samples {s.duration_s:g} s. Ratio = service / baseline, median "
        "of the per-round ratios; rows in ms or s pass on the service value itself.",
        "",
        "| # | measure | service | baseline | ratio | floor | goal | result |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in summarize(result):
        t = row.target
        if not row.rounds:
            verdict = "no data"
        elif t.judge is Judge.REPORTED:
            verdict = "reported"
        elif row.passes:
            verdict = "pass (goal)" if row.meets_goal else "pass"
        else:
            verdict = "**FAIL**"
        lines.append(
            f"| {t.id} | {t.measure} | {_number(row.service)} {t.unit} | "
            f"{_number(row.baseline)} | {row.ratio:.2f} | {_bound(t, t.floor)} | "
            f"{_bound(t, t.goal)} | {verdict} |"
        )
    lines.append("")
    lines.append("Service vs baseline per row:")
    for t in TARGETS:
        lines.append(f"- {t.id}: {t.service} vs {t.baseline}")
    failed = result.failed_checks
    lines.append("")
    lines.append(
        f"Correctness checks: {len(result.checks) - len(failed)}/{len(result.checks)} passed."
    )
    for check in failed:
        lines.append(f"- FAILED {check.measure} {check.name}: {check.detail}")
    for error in result.errors:
        lines.append(f"- ERROR {error['measure']} (round {error['round']}): {error['error']}")
    return "\n".join(lines) + "\n"


def as_json(result: RunResult) -> dict[str, Any]:
    """Every raw number of the run."""
    rows = {}
    for row in summarize(result):
        t = row.target
        rows[t.id] = {
            "measure": t.measure,
            "service_what": t.service,
            "baseline_what": t.baseline,
            "unit": t.unit,
            "judge": t.judge.value,
            "floor": t.floor,
            "goal": t.goal,
            "service": row.service,
            "baseline": row.baseline,
            "ratio": row.ratio,
            "pass": row.passes,
            "goal_met": row.meets_goal,
            "rounds": [
                {"service": s.service, "baseline": s.baseline, "ratio": s.ratio, **s.extra}
                for s in result.samples.get(t.id, [])
            ],
        }
    return {
        "settings": asdict(result.settings),
        "argv": result.argv,
        "started": result.started.isoformat(),
        "elapsed_s": result.elapsed_s,
        "machine": {
            "python": sys.version.split()[0],
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
        },
        "setup_s": result.setup,
        "measures": rows,
        "checks": [asdict(c) for c in result.checks],
        "errors": result.errors,
        "ok": result.ok,
    }


def write(result: RunResult, out: Path) -> tuple[Path, Path]:
    """Writes ``bench-<settings>-<time>.md`` and ``.json`` into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    stem = f"bench-{result.settings.name}-{result.started:%Y%m%d-%H%M%S}"
    md_path = out / f"{stem}.md"
    json_path = out / f"{stem}.json"
    md_path.write_text(markdown(result))
    json_path.write_text(json.dumps(as_json(result), indent=2) + "\n")
    return md_path, json_path


def now() -> datetime:
    """The current UTC time (report timestamps)."""
    return datetime.now(UTC)
