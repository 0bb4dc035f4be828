"""``jobstream completion bash``: the generated script, loaded into a real
bash and asked for completions the way bash asks it."""

from __future__ import annotations

import shlex
import subprocess

import pytest
from test_cli import CLI, _env

RUN_TIMEOUT_S = 30.0
"""Longest one bash run may take."""


def complete(*words: str) -> list[str]:
    """What bash offers for the last of ``words`` (``jobstream`` first)."""
    script = subprocess.run(
        [*CLI, "completion", "bash"],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        env=_env(),
        check=True,
    ).stdout
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
def test_completes(words: tuple[str, ...], expected: list[str]) -> None:
    assert complete(*words) == expected


def test_every_command_is_offered() -> None:
    offered = set(complete("jobstream", ""))
    assert {"serve", "db", "worker", "submit", "watch", "ls", "top", "get", "rm"} <= offered
