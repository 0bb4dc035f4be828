"""``jobstream completion bash``: the generated script, loaded into a real
bash and asked for completions the way bash asks it."""

from __future__ import annotations

import shlex
import subprocess

import pytest
from cli_runner import run_cli

RUN_TIMEOUT_S = 30.0
"""Longest one bash run may take."""


@pytest.fixture(scope="module")
def script() -> str:
    """What ``jobstream completion bash`` prints."""
    run = run_cli(["completion", "bash"])
    assert run.returncode == 0 and run.stderr == b"", run
    return run.out


def complete(script: str, *words: str) -> list[str]:
    """What bash offers for the last of ``words`` (``jobstream`` first)."""
    probe = (
        f"{script}\n"
        f"COMP_WORDS=({shlex.join(words)}); COMP_CWORD={len(words) - 1}; _jobstream\n"
        'printf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    result = subprocess.run(
        ["bash", "--norc", "--noprofile", "-c", probe],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        check=True,
    )
    return [line for line in result.stdout.splitlines() if line]


@pytest.mark.parametrize(
    ("words", "expected"),
    [
        (("jobstream", "to"), ["top"]),
        (("jobstream", "--target", "h:1", "top", "--la"), ["--label"]),
        (("jobstream", "submit", "--max"), ["--max-attempts"]),
        (("jobstream", "db", "ba"), ["backup"]),
        (("jobstream", "--js"), ["--json"]),
    ],
)
def test_completes(script: str, words: tuple[str, ...], expected: list[str]) -> None:
    assert complete(script, *words) == expected


def test_every_command_is_offered(script: str) -> None:
    offered = set(complete(script, "jobstream", ""))
    assert {"serve", "db", "worker", "submit", "watch", "ls", "top", "get", "rm"} <= offered
