"""The benchmark smoke run: one short round of every measure, so ``bench/``
cannot rot. It asserts that the run works and that its correctness checks
pass, never how fast anything is."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
"""Where ``python -m bench`` is importable from."""

SMOKE_TIMEOUT_S = 420.0
"""Upper bound on the smoke run, far above what it takes (about 20 s on 2
cores, most of it T12-T16 starting a server and a worker or peer consumer
per sample): a stuck run fails instead of hanging the suite."""

TARGET_IDS = [*(f"T{i}" for i in range(1, 21))]
"""Every target; T10, T14, T15 and T16 have several rows each, and T19 and
T20 a PostgreSQL twin each (.pg) when the database is reachable."""


@pytest.mark.timeout(SMOKE_TIMEOUT_S + 30)
def test_bench_smoke_runs_every_measure(tmp_path: Path) -> None:
    """``python -m bench --smoke`` exits 0 and reports every measure with a
    service and a baseline number."""
    out = tmp_path / "results"
    env = {**os.environ, "GRPC_VERBOSITY": "ERROR"}
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--out", str(out)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=SMOKE_TIMEOUT_S,
        check=False,
    )
    output = f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-8000:]}"
    assert proc.returncode == 0, output
    reports = list(out.glob("bench-smoke-*.json"))
    assert len(reports) == 1, output
    assert reports[0].with_suffix(".md").exists()
    report = json.loads(reports[0].read_text())
    assert report["ok"] is True, output
    assert report["errors"] == []
    assert all(check["ok"] for check in report["checks"]), report["checks"]
    measures = report["measures"]
    for target in TARGET_IDS:
        rows = [key for key in measures if key == target or key.startswith(f"{target}.")]
        assert rows, f"{target} missing from {sorted(measures)}"
        for key in rows:
            row = measures[key]
            for field in ("service", "baseline"):
                value = row[field]
                assert isinstance(value, int | float), f"{key}.{field} = {value!r}"
                assert math.isfinite(value) and value > 0, f"{key}.{field} = {value!r}"
            assert len(row["rounds"]) == 1, f"{key}: {row['rounds']}"
    # Lost or repeated lines are correctness failures the run must check.
    names = {(check["measure"], check["name"]) for check in report["checks"]}
    # Every stamped update of T16 reached the watcher.
    assert ("T16", "every log line seen") in names
    for measure in ("T5", "T6", "T18"):
        assert (measure, "no line lost") in names
        assert (measure, "no line duplicated") in names
        assert (measure, "last line before terminal event") in names
