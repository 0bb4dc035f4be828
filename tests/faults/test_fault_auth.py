"""Scenario 10: the full auth matrix (every RPC x principal x own / other's /
missing job). The suite's only run of it: tests/test_auth.py covers the rest
of authentication and isolation."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from authmatrix import run_matrix, write_tokens
from conftest import InProcessServer

from faults.record import record


def test_full_auth_matrix(
    start_inprocess_server: Callable[..., InProcessServer], tmp_path: Path
) -> None:
    tokens = write_tokens(tmp_path / "tokens.json")
    server = start_inprocess_server(extra_args=("--tokens-file", str(tokens)))
    result = run_matrix(server.target)
    record(
        10,
        f"{result.cases} cases, {len(result.failures)} mismatches",
        not result.failures and result.cases > 150,
    )
    assert result.failures == []
