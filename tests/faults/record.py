"""Figures of the fault suite and the table printed after the run.

Each scenario test calls :func:`record` with its measured figure before it
asserts, so a failing scenario still shows what it measured. A scenario that
did not run is listed as such, never as passing.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

FULL = os.environ.get("JOBSTREAM_FAULTS", "") == "full"
"""Full size (``make faults``) or the reduced size ``make test`` runs."""

SCENARIOS: dict[int, str] = {
    1: "kill -9 during 32-way concurrent submits",
    2: "50 jobs x 2,000 events, 100 watchers, 5 kill -9s",
    3: "slow and stalled watchers beside fast ones",
    4: "watches from a SIGSTOPped process reaped",
    5: "100,000 watch open/cancel cycles",
    6: "external workers SIGKILLed / SIGSTOPped past the lease",
    7: "recorded paths a job does not own: delete, force delete, purge, retention",
    8: "bad input for every field of every RPC (descriptors + hypothesis)",
    9: "hypothesis stateful model of the job lifecycle",
    10: "full auth matrix",
    11: "disk full",
    12: "stalled watchers memory (SIGSTOPped client, watch memory budget)",
}
"""Every scenario of the issue, by number."""


def size(reduced: int, full: int) -> int:
    """The scenario's size for this run."""
    return full if FULL else reduced


@dataclass
class Figure:
    """What one scenario measured."""

    figure: str
    passed: bool
    skipped: bool = False
    """The machine could not run the scenario (the figure says why)."""


FIGURES_DIR = "FAULT_SUITE_FIGURES_DIR"
"""Environment variable naming the directory that holds the run's figures, a
file per scenario: the suite runs in several worker processes, and the
table is printed by the one that started them (the conftest sets it; not
a ``JOBSTREAM_*`` name, which the session clears)."""


def _store(scenario: int, got: Figure) -> None:
    path = Path(os.environ[FIGURES_DIR]) / f"{scenario}.json"
    path.write_text(json.dumps(asdict(got)))


def _figures() -> dict[int, Figure]:
    folder = Path(os.environ[FIGURES_DIR])
    return {int(p.stem): Figure(**json.loads(p.read_text())) for p in folder.glob("*.json")}


def record(scenario: int, figure: str, passed: bool) -> None:
    """Notes a scenario's figure (call before asserting)."""
    _store(scenario, Figure(figure, passed))


def record_skip(scenario: int, reason: str) -> None:
    """Notes that a scenario could not run here, and why (only where the
    issue allows it: scenario 11 without a mountable tmpfs)."""
    _store(scenario, Figure(f"skipped: {reason}", passed=False, skipped=True))


def table(figures: dict[int, Figure]) -> list[tuple[str, str, str]]:
    """Rows (scenario, figure, result) for every scenario."""
    rows = []
    for number, name in SCENARIOS.items():
        label = f"{number:>2}. {name}"
        if number in figures:
            got = figures[number]
            result = "skipped" if got.skipped else "pass" if got.passed else "FAIL"
            rows.append((label, got.figure, result))
        else:
            rows.append((label, "not run in this session", "not run"))
    return rows


def print_table(reporter: Any) -> None:
    """Prints the table at the end of a pytest run that ran any scenario."""
    figures = _figures()
    if not figures:
        return
    rows = table(figures)
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    reporter.section(f"fault suite ({'full' if FULL else 'reduced'} size)")
    header = ("scenario", "figure", "result")
    widths = [max(w, len(h)) for w, h in zip(widths, header, strict=True)]
    for row in (header, tuple("-" * w for w in widths), *rows):
        reporter.write_line("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))
