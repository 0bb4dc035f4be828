"""``jobstream completion bash|zsh``: the generated scripts, loaded into a
real bash (asked for completions the way bash asks) and a real interactive
zsh (TAB typed in a terminal), completing flags, values and, from a real
server, job ids and kinds."""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator

import pexpect
import pytest
from cli_runner import command_environ, run_cli
from conftest import Server
from helpers import eventually, job_in

from jobstream.client import JobClient

RUN_TIMEOUT_S = 30.0
"""Longest one bash run may take."""

SHELL_PATH = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")
"""PATH for the shells: the scripts call `jobstream`, this interpreter's."""

ZSH_PROMPT = "READY> "
"""The prompt of the zsh under test, to know when it waits for input."""


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
        env=command_environ({"PATH": SHELL_PATH}),
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
        (("jobstream", "ls", "--state", "r"), ["running"]),
        (("jobstream", "purge", "--state", "c"), ["cancelled"]),
        (("jobstream", "purge", "--state", "r"), []),  # only ended states purge
        (("jobstream", "results", "x", "--status", "f"), ["failed"]),
        (("jobstream", "completion", ""), ["bash", "zsh"]),
        (("jobstream", "--target", "to"), []),  # a flag's value, not a command
        (("jobstream", "--target", "h:1", "ls", "--kind", "x"), []),  # h:1 is down: nothing
    ],
)
def test_completes(script: str, words: tuple[str, ...], expected: list[str]) -> None:
    assert complete(script, *words) == expected


def test_every_command_is_offered(script: str) -> None:
    offered = set(complete(script, "jobstream", ""))
    assert {"serve", "db", "worker", "submit", "watch", "ls", "top", "get", "rm"} <= offered


@pytest.fixture(scope="module")
def jobs(server: Server) -> Iterator[dict[str, str]]:
    """A queued job (of a kind nobody serves) and an ended one (failed), by
    their role, on the module's server; the queued one cancelled afterwards."""
    with JobClient(server.target) as client:
        queued = client.submit("completion.queued")
        ended = client.submit("demo.fatal")
        eventually(lambda: job_in(client, ended.id))
        yield {"queued": queued.id, "ended": ended.id}
        client.cancel(queued.id)


def test_bash_completes_job_ids_and_kinds_from_the_server(
    script: str, server: Server, jobs: dict[str, str]
) -> None:
    queued, ended = jobs["queued"], jobs["ended"]
    line = ("jobstream", "--target", server.target)
    assert complete(script, *line, "get", queued[:-2]) == [queued]
    offered = complete(script, *line, "watch", "")
    assert queued in offered and ended in offered
    # cancel offers only live jobs, retry only ended ones.
    live = complete(script, *line, "cancel", "")
    assert queued in live and ended not in live
    done = complete(script, *line, "retry", "")
    assert ended in done and queued not in done
    # rm takes several ids; get only one.
    assert complete(script, *line, "rm", queued, ended[:-2]) == [ended]
    assert complete(script, *line, "get", queued, "") == []
    assert complete(script, *line, "submit", "completion.q") == ["completion.queued"]
    assert complete(script, *line, "ls", "--kind", "completion.q") == ["completion.queued"]
    assert complete(script, *line, "download", queued, "") == []  # a name, not an id


def test_complete_values_is_silent_when_the_server_is_down() -> None:
    started = time.monotonic()
    run = run_cli(["__complete", "ids", "--target", "127.0.0.1:1"])
    assert (run.returncode, run.stdout, run.stderr) == (0, b"", b"")
    assert time.monotonic() - started < 5
    run = run_cli(["__complete", "ids", "--state", "bogus"])
    assert (run.returncode, run.stdout, run.stderr) == (0, b"", b"")


@pytest.fixture
def zsh() -> Iterator[pexpect.spawn]:
    """An interactive zsh (no user rc files) with compinit done and the
    script loaded the way the README says."""
    if shutil.which("zsh") is None:
        pytest.fail("zsh is not installed: `make test-tools` installs it (make test does)")
    shell = pexpect.spawn(
        "zsh",
        ["-f", "-i"],
        env=command_environ({"PATH": SHELL_PATH, "TERM": "xterm"}),
        dimensions=(40, 200),
        timeout=RUN_TIMEOUT_S,
        encoding="utf-8",
    )
    shell.sendline(
        f"PS1='{ZSH_PROMPT}'; autoload -Uz compinit && compinit -u -D; "
        "source <(jobstream completion zsh); echo LOADED $+functions[_jobstream] $_comps[jobstream]"
    )
    shell.expect("LOADED 1 _jobstream")
    shell.expect_exact(ZSH_PROMPT)
    yield shell
    shell.sendline("exit")
    shell.expect(pexpect.EOF)
    shell.close()


ZSH_COMPLETION_WAIT_S = 5.0
"""How long a TAB may take to insert the expected completion (it may ask
the server) before the line is read back as it is."""


def zsh_complete(shell: pexpect.spawn, line: str, expected: str) -> str:
    """The command line after typing ``line`` and TAB, as zsh left it
    (waiting up to ZSH_COMPLETION_WAIT_S for it to read ``expected``)."""
    shell.send(line + "\t")
    # Typed text comes back with terminal codes around the completion, so
    # only the inserted tail is waited for; then the line becomes an echo
    # of itself to read it back whole.
    tail = expected[len(line) :]
    if tail:
        # On a timeout the line is read back as it is: the assertion says.
        with contextlib.suppress(pexpect.TIMEOUT):
            shell.expect_exact(tail, timeout=ZSH_COMPLETION_WAIT_S)
    shell.send("\x01echo COMPLETED \r")
    shell.expect(r"\r\nCOMPLETED ([^\r\n]*)\r\n")
    completed: str = shell.match.group(1)
    shell.expect_exact(ZSH_PROMPT)
    return completed.strip()


def test_zsh_completes_commands_flags_values_and_ids(
    zsh: pexpect.spawn, server: Server, jobs: dict[str, str]
) -> None:
    target = f"jobstream --target {server.target}"
    for line, expected in [
        ("jobstream subm", "jobstream submit"),
        ("jobstream ls --sta", "jobstream ls --state"),
        ("jobstream ls --state runn", "jobstream ls --state running"),
        ("jobstream completion z", "jobstream completion zsh"),
        (f"{target} get {jobs['queued'][:-6]}", f"{target} get {jobs['queued']}"),
        (f"{target} retry {jobs['ended'][:-6]}", f"{target} retry {jobs['ended']}"),
        (f"{target} submit completion.q", f"{target} submit completion.queued"),
    ]:
        assert zsh_complete(zsh, line, expected) == expected
